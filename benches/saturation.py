#!/usr/bin/env python3
"""Who uses the CPU while iperf3 streams through a proxy: the proxy, iperf3's server, and
the rest (iperf3's client), as shares of the machine, for HAProxy and gatehouse.

usage: benches/saturation.py GATEHOUSE_BINARY [--rounds N]

Runs the `tput1`/`tput4` workloads of ../shared/bench/compare.py (4 s each) in front of
the same iperf3 server, for HAProxy, gatehouse with `forwarding = "splice"` (the
default) and gatehouse with `forwarding = "copy"`, and prints Gbit/s, how busy the
machine was (100% per core), and each party's CPU and CPU per gigabyte. On a machine
with as many cores as the test has busy threads, the rate is decided by how the cores
are shared, and a proxy's cost shows partly in its peers' columns. Needs haproxy, nginx,
iperf3 and wrk, and the shared yardstick next to the repository."""
import importlib.util, os, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "compare", os.path.join(here, "..", "..", "shared", "bench", "compare.py"))
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    sys.exit(__doc__)
binary = os.path.abspath(sys.argv[1])
rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1


def machine():
    """(all ticks, idle ticks) of every CPU so far."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / c.TICK
        except OSError:
            pass
    return total


def gatehouse(mode, slot):
    class G(c.Gatehouse):
        pass
    G.binary = binary
    d = os.path.join(tmp, mode)
    os.makedirs(d)
    g = G(d, slot)
    with open(g.cfg) as f:
        text = f.read()
    with open(g.cfg, "w") as f:
        f.write(f'[defaults]\nforwarding = "{mode}"\n' + text)
    return g


tmp = tempfile.mkdtemp()
backends = c.Backends(tmp)
proxies = [("haproxy", c.HAProxy(tmp, 1)), ("gatehouse splice", gatehouse("splice", 2)),
           ("gatehouse copy", gatehouse("copy", 3))]
cores = os.cpu_count() or 1
print(f"{'proxy':<18}{'streams':>8}{'Gbit/s':>8}{'machine':>9}{'proxy':>7}{'server':>8}"
      f"{'client':>8}   CPU s/GB: proxy server client")
try:
    for _ in range(rounds):
        for name, p in proxies:
            p.start()
            try:
                server = subprocess.run(["pgrep", "-f", "iperf3 -s"], capture_output=True,
                                        text=True).stdout.split()
                for streams in (1, 4):
                    m0, p0, s0, t0 = machine(), cpu_seconds(p.pids()), cpu_seconds(server), time.time()
                    gbps, gb = c.iperf(p.ports[0], 4, streams)
                    m1, p1, s1, dt = machine(), cpu_seconds(p.pids()), cpu_seconds(server), time.time() - t0
                    busy = cores * (1 - (m1[1] - m0[1]) / (m1[0] - m0[0]))
                    proxy, srv = (p1 - p0) / dt, (s1 - s0) / dt
                    client = busy - proxy - srv
                    rate = gb / dt
                    print(f"{name:<18}{streams:>8}{gbps:>8.1f}{busy:>8.0%}{proxy:>7.0%}{srv:>8.0%}"
                          f"{client:>8.0%}   {proxy / rate:>12.2f} {srv / rate:>6.2f} {client / rate:>6.2f}")
            finally:
                p.stop()
finally:
    backends.stop()
