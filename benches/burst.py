#!/usr/bin/env python3
"""Does gatehouse give back the memory of a burst? Opens N idle connections through the
idle listener of ../shared/bench/compare.py's setup, holds them 1 s, closes them, and
reads gatehouse's RSS and `gatehouse_heap_pool_bytes` at each step, twice.

usage: benches/burst.py GATEHOUSE_BINARY [N]   (N: 8000 by default)

Needs nginx and iperf3 (the yardstick's backends), and the yardstick next to the
repository."""
import importlib.util, os, socket, sys, tempfile, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "compare", os.path.join(here, "..", "..", "shared", "bench", "compare.py"))
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)

if len(sys.argv) < 2:
    sys.exit(__doc__)
c.Gatehouse.binary = os.path.abspath(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8000


def pools(g):
    """gatehouse_heap_pool_bytes in MB, from the admin listener (compare.py's port + 9)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{g.ports[0] + 9}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("gatehouse_heap_pool_bytes "):
            return f"{float(line.split()[1]) / 1e6:.1f} MB"
    return "-"


tmp = tempfile.mkdtemp()
backends = c.Backends(tmp)
try:
    g = c.Gatehouse(tmp, 2)
    g.start()
    try:
        print(f"{'step':<22}{'RSS KiB':>10}{'pools':>10}")
        print(f"{'at start':<22}{c.rss_kib(g.pids()):>10}{pools(g):>10}")
        for _ in range(2):
            socks = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", g.ports[2]), timeout=5)
                s.send(b"x")
                socks.append(s)
            time.sleep(1.0)
            print(f"{f'{n} open':<22}{c.rss_kib(g.pids()):>10}{pools(g):>10}")
            for s in socks:
                s.close()
            time.sleep(2.0)
            print(f"{'closed':<22}{c.rss_kib(g.pids()):>10}{pools(g):>10}")
    finally:
        g.stop()
finally:
    backends.stop()
