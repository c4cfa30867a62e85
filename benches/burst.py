#!/usr/bin/env python3
"""Does gatehouse give back the memory of a burst? Opens N idle connections through the
idle listener of ../shared/bench/compare.py's setup, holds them 1 s, closes them, and
reads gatehouse's RSS at each step, twice: the RSS each idle connection adds, and how
much of a burst's memory goes back to the kernel once its connections close.

usage: benches/burst.py GATEHOUSE_BINARY [N]   (N: 8000 by default)

Needs nginx and iperf3 (the yardstick's backends), and the yardstick next to the
repository."""
import importlib.util, os, socket, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "compare", os.path.join(here, "..", "..", "shared", "bench", "compare.py"))
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)

if len(sys.argv) < 2:
    sys.exit(__doc__)
c.Gatehouse.binary = os.path.abspath(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8000


tmp = tempfile.mkdtemp()
backends = c.Backends(tmp)
try:
    g = c.Gatehouse(tmp, 2)
    g.start()
    try:
        start = c.rss_kib(g.pids())
        print(f"{'step':<22}{'RSS KiB':>10}{'per conn':>10}")
        print(f"{'at start':<22}{start:>10}")
        for _ in range(2):
            socks = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", g.ports[2]), timeout=5)
                s.send(b"x")
                socks.append(s)
            time.sleep(1.0)
            rss = c.rss_kib(g.pids())
            print(f"{f'{n} open':<22}{rss:>10}{(rss - start) / n:>9.2f}K")
            for s in socks:
                s.close()
            time.sleep(2.0)
            rss = c.rss_kib(g.pids())
            print(f"{'closed':<22}{rss:>10}{f'{100 * (rss - start) / start:+.0f}%':>10}")
    finally:
        g.stop()
finally:
    backends.stop()
