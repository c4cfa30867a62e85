#!/usr/bin/env python3
"""Profile HAProxy and gatehouse on one workload of ../shared/bench/compare.py.

usage: benches/profile.py conn|req stat|record GATEHOUSE_BINARY...

conn: wrk -c64 with `Connection: close` (one request per connection); req: the same
with keep-alive. `stat` prints `perf stat` counts (task-clock in ms, context switches,
epoll_wait calls) per connection or request; `record` writes
target/profile/perf-<proxy>-<workload>.data (`perf record -g -F 1999`) for
`perf report -i FILE --children --sort sym`. Needs perf, haproxy, nginx, wrk, iperf3,
and the shared yardstick next to the repository."""
import importlib.util, os, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "compare", os.path.join(here, "..", "..", "shared", "bench", "compare.py"))
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)

if len(sys.argv) < 4 or sys.argv[1] not in ("conn", "req") or sys.argv[2] not in ("stat", "record"):
    sys.exit(__doc__)
work, mode, bins = sys.argv[1], sys.argv[2], sys.argv[3:]
out = os.path.join(here, "..", "target", "profile")
os.makedirs(out, exist_ok=True)
tmp = tempfile.mkdtemp()
backends = c.Backends(tmp)
proxies = [("haproxy", c.HAProxy(tmp, 1))]
for i, b in enumerate(bins):
    class G(c.Gatehouse):
        binary = os.path.abspath(b)
    d = os.path.join(tmp, f"g{i}")
    os.makedirs(d)
    proxies.append((f"gatehouse{i}", G(d, 2 + i)))
try:
    for name, p in proxies:
        p.start()
        try:
            pids = ",".join(str(x) for x in p.pids())
            data = os.path.join(out, f"perf-{name}-{work}.data")
            stat = os.path.join(out, f"stat-{name}-{work}.txt")
            if mode == "stat":
                cmd = ["perf", "stat", "-x,", "-o", stat, "-p", pids, "-e",
                       "task-clock,context-switches,cpu-migrations,syscalls:sys_enter_epoll_wait"]
            else:
                cmd = ["perf", "record", "-g", "-F", "1999", "-o", data, "-p", pids]
            perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            rps, p99, errors, n = c.wrk(p.ports[1], 4, work == "conn")
            perf.send_signal(2)
            perf.wait()
            print(f"{name}: {n} {'connections' if work == 'conn' else 'requests'}, {rps:.0f}/s")
            if mode == "stat":
                for line in open(stat):
                    f = line.strip().split(",")
                    if len(f) > 2 and f[0][:1].isdigit():
                        print(f"  {f[2]:<36} {float(f[0]) / n:10.4f} per unit")
            else:
                print(f"  perf report -i {os.path.relpath(data)} --children --sort sym --stdio")
        finally:
            p.stop()
finally:
    backends.stop()
