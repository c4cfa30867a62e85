#!/usr/bin/env python3
"""What a large config costs at rest: N listeners, each with one backend of three
servers, TCP health checks every second, no client traffic; gatehouse and HAProxy side
by side in one run (issue 23).

usage: benches/scale.py GATEHOUSE_BINARY [--listeners 300] [--secs 60] [--json FILE]

Servers are 127.1.x.y on three ports, served by one acceptor that takes and closes
every connection (a TCP check wants a handshake and nothing more). Each proxy runs
alone for --secs seconds after a settling period; reported per proxy: CPU used (% of one
core), RSS before and after one /metrics scrape (gatehouse) or stats read (HAProxy),
and gatehouse's metric series in total and per server. Needs haproxy (Debian package).
Traffic goes to loopback only."""
import argparse, json, os, re, selectors, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "bench"))
import compare as c  # noqa: E402  (rss_kib, cpu_secs, Proc)

PORTS = (24001, 24002, 24003)  # the three servers of every backend
FRONT = 25000                  # listener i binds FRONT + i
ADMIN = 24990


def server_addr(i, k):
    """Server k (0..2) of backend i: a distinct loopback address per backend."""
    return f"127.1.{i // 250}.{i % 250 + 1}", PORTS[k]


def acceptor(stop):
    """Accepts on the three ports (every loopback address) and closes at once."""
    sel = selectors.DefaultSelector()
    socks = []
    for p in PORTS:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        s.listen(4096)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            while True:
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    break
                conn.close()
    for s in socks:
        s.close()


def gatehouse_config(n):
    out = [f'[admin]\nlisten = "127.0.0.1:{ADMIN}"\n']
    for i in range(n):
        servers = ", ".join(
            f'{{ name = "s{k}", address = "{a}:{p}" }}' for k, (a, p) in ((k, server_addr(i, k)) for k in range(3)))
        out.append(f'[[listener]]\nname = "l{i}"\nbind = ["127.0.0.1:{FRONT + i}"]\nbackend = "b{i}"\n')
        out.append(f'[backend.b{i}]\nservers = [{servers}]\n'
                   f'health = {{ check = "tcp", interval = "1s", timeout = "1s", rise = 2, fall = 3 }}\n')
    return "\n".join(out)


def haproxy_config(n, sock):
    out = [f"global\n    maxconn 4000\n    stats socket {sock} mode 600 level admin\n",
           "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1h\n    timeout server 1h\n"
           "    default-server inter 1s rise 2 fall 3\n"]
    for i in range(n):
        out.append(f"listen l{i}\n    bind 127.0.0.1:{FRONT + i}\n")
        for k in range(3):
            a, p = server_addr(i, k)
            out.append(f"    server s{k} {a}:{p} check\n")
    return "".join(out)


def metrics_text():
    return urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=10).read().decode()


def haproxy_stats(sock):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"show stat\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data.decode(errors="replace")


def measure(name, proc, secs, scrape):
    time.sleep(5)  # settling: every server checked a few times, the first state changes done
    pids = proc.pids()
    rss_before = c.rss_kib(pids)
    cpu0, t0 = c.cpu_secs(pids), time.time()
    time.sleep(secs)
    cpu = (c.cpu_secs(pids) - cpu0) / (time.time() - t0) * 100
    text = scrape()
    rss_after = c.rss_kib(proc.pids())
    return {"proxy": name, "cpu_pct": round(cpu, 2), "rss_before_kib": rss_before,
            "rss_after_scrape_kib": rss_after, "scrape_bytes": len(text), "text": text}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gatehouse")
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--secs", type=int, default=60)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not shutil.which("haproxy"):
        sys.exit("needs haproxy (apt-get install haproxy)")
    tmp = tempfile.mkdtemp()
    stop = threading.Event()
    t = threading.Thread(target=acceptor, args=(stop,), daemon=True)
    t.start()
    results = []
    try:
        hcfg, sock = os.path.join(tmp, "haproxy.cfg"), os.path.join(tmp, "stats.sock")
        open(hcfg, "w").write(haproxy_config(a.listeners, sock))
        p = c.Proc(["haproxy", "-db", "-f", hcfg])
        try:
            c.wait_port(FRONT)
            results.append(measure("haproxy", p, a.secs, lambda: haproxy_stats(sock)))
        finally:
            p.stop()
        gcfg = os.path.join(tmp, "gatehouse.toml")
        open(gcfg, "w").write(gatehouse_config(a.listeners))
        p = c.Proc([os.path.abspath(a.gatehouse), "--config", gcfg], env={**os.environ, "RUST_LOG": "warn"})
        try:
            c.wait_port(ADMIN)
            r = measure("gatehouse", p, a.secs, metrics_text)
            series = [l for l in r["text"].splitlines() if l and not l.startswith("#")]
            servers = 3 * a.listeners
            per_server = [l for l in series if 'server="' in l]
            r["series"] = len(series)
            r["series_per_server"] = round(len(per_server) / servers, 1)
            names = {}
            for l in per_server:
                n = re.split(r"[{ ]", l, 1)[0]
                names[n] = names.get(n, 0) + 1
            r["per_server_by_name"] = {k: round(v / servers, 1) for k, v in sorted(names.items(), key=lambda x: -x[1])}
            results.append(r)
        finally:
            p.stop()
    finally:
        stop.set()
        t.join(2)
    h, g = results
    print(f"{a.listeners} listeners, {3 * a.listeners} servers, TCP checks every 1 s, {a.secs} s each")
    print(f"{'':<28}{'haproxy':>12}{'gatehouse':>12}{'ratio':>8}")
    for key, label in (("cpu_pct", "CPU, % of a core"), ("rss_before_kib", "RSS before a scrape, KiB"),
                       ("rss_after_scrape_kib", "RSS after a scrape, KiB")):
        print(f"{label:<28}{h[key]:>12}{g[key]:>12}{g[key] / h[key]:>8.2f}")
    print(f"gatehouse series: {g['series']} ({g['series_per_server']} per server, "
          f"scrape {g['scrape_bytes'] / 1e6:.1f} MB)")
    for n, v in g["per_server_by_name"].items():
        print(f"  {n:<52}{v:>6} per server")
    if a.json:
        for r in results:
            r.pop("text", None)
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
