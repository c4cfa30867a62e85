//! Forwarding through the real binary: bytes in equal bytes out, both ways at once,
//! half-close carried through, resets carried as resets — with splice and with copy.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::*;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Health checks off: these backends count every connection, and a check is one.
fn gatehouse_to(backend: std::net::SocketAddr, forwarding: &str) -> Gatehouse {
    Gatehouse::start(&config(
        &[server("only", backend)],
        "health = { check = \"none\" }",
        &format!("forwarding = \"{forwarding}\""),
    ))
}

fn large_payload_round_trips_intact(forwarding: &str) {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = gatehouse_to(echo.addr, forwarding);
    // Pipes gatehouse did not make (inherited, e.g. cargo's jobserver) are not counted.
    let inherited = sockets::pipes(g.pid());
    let payload = random_bytes(32 * 1024 * 1024, 7);
    let mut client = connect(g.addr("front"));
    let mut reader = client.try_clone().unwrap();
    // Write and read at the same time: both directions flow at once.
    let expected = payload.len();
    let receiver = thread::spawn(move || {
        let mut got = Vec::with_capacity(expected);
        reader.read_to_end(&mut got).map(|_| got)
    });
    client.write_all(&payload).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = receiver.join().unwrap().expect("read echo");
    assert_eq!(
        got.len(),
        payload.len(),
        "bytes out ({}) != bytes in ({})",
        got.len(),
        payload.len()
    );
    assert!(got == payload, "echoed bytes differ from the bytes sent");
    // Splice's pipes stay pooled after the burst: a bulk transfer that took none was
    // copied, whatever the setting said.
    let pipes = sockets::pipes(g.pid()).difference(&inherited).count();
    match forwarding {
        "splice" => assert!(
            pipes > 0,
            "32 MiB each way with splice, and gatehouse made no pipe: it copied"
        ),
        _ => assert_eq!(pipes, 0, "forwarding = {forwarding:?} made pipes"),
    }
    let (_, log) = g.stop(Duration::from_secs(10));
    assert!(
        log.contains(&format!("in={} out={}", payload.len(), payload.len())),
        "close log lacks byte counts:\n{log}"
    );
}

#[test]
fn a_large_payload_round_trips_intact_with_splice() {
    large_payload_round_trips_intact("splice");
}

#[test]
fn a_large_payload_round_trips_intact_with_copy() {
    large_payload_round_trips_intact("copy");
}

/// The pipe budget gatehouse logged at start (`max_pipes=N`).
fn max_pipes(g: &Gatehouse) -> usize {
    assert!(g.wait_log("max_pipes=", Duration::from_secs(5)), "{}", g.log());
    let log = g.log();
    let at = log.find("max_pipes=").unwrap() + "max_pipes=".len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().unwrap().max(1)
}

/// Reads the rest of the stream a flooding server sends and says whether it is `want`.
fn read_flood(s: &mut std::net::TcpStream, want: &[u8]) -> Result<(), String> {
    let mut got = Vec::with_capacity(want.len());
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.read_to_end(&mut got)
        .map_err(|e| format!("after {} bytes: {e}", got.len()))?;
    match got == want {
        true => Ok(()),
        false => Err(format!(
            "{} bytes arrived, not the {} sent, or others",
            got.len(),
            want.len()
        )),
    }
}

#[test]
fn past_the_pipe_budget_bulk_is_copied_and_arrives_intact() {
    // With few descriptors the pipe budget is a few pipes. Clients that do not read
    // while their server floods them each hold a pipe full of bytes; one more flood
    // finds no pipe to take and must be copied, and arrive whole, as must theirs.
    const FLOOD: usize = 48 * 1024 * 1024;
    const HEAD: usize = 1024 * 1024;
    let flood = std::sync::Arc::new(random_bytes(FLOOD, 5));
    let data = flood.clone();
    let flooder = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
        if s.write_all(&data).is_ok() {
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let g = Gatehouse::start_with_nofile(
        &config(&[server("only", flooder.addr)], "health = { check = \"none\" }", ""),
        128,
    );
    let (front, pid) = (g.addr("front"), g.pid());
    let budget = max_pipes(&g);
    // Pipes gatehouse did not make (inherited, e.g. cargo's jobserver) are not counted.
    let inherited = sockets::pipes(pid);
    let made = || sockets::pipes(pid).difference(&inherited).count();
    // Stalled floods until the budget is spent: a flood takes its pipe once a read
    // fills its buffer (bulk), which one stalled early may never reach.
    let mut stuck = Vec::new();
    while made() < budget && stuck.len() < 4 * budget {
        // Read the first MiB (the window grows, the flood turns bulk), then stall.
        let mut s = connect(front);
        let mut head = vec![0u8; HEAD];
        s.read_exact(&mut head).expect("the flood's first MiB");
        assert!(head == flood[..HEAD], "the flood's first MiB differs");
        stuck.push(s);
        wait_until(Duration::from_secs(2), || made() >= budget.min(stuck.len()));
    }
    assert_eq!(
        made(),
        budget,
        "{} stalled floods hold {} pipes; the budget is {budget}",
        stuck.len(),
        made()
    );
    let mut past = connect(front);
    read_flood(&mut past, &flood).unwrap_or_else(|e| panic!("the flood past the budget: {e}"));
    let pipes = made();
    for (i, s) in stuck.iter_mut().enumerate() {
        read_flood(s, &flood[HEAD..]).unwrap_or_else(|e| panic!("stalled flood {i}: {e}"));
    }
    figure!(
        "pipe budget {budget}: {} stalled floods held it, one more of {FLOOD} bytes was copied intact",
        stuck.len()
    );
    assert_eq!(pipes, budget, "a pipe was made past the budget of {budget}");
}

#[test]
fn both_directions_carry_independent_streams_at_once() {
    // The server sends its own stream while reading the client's: nothing is an echo.
    let down = random_bytes(8 * 1024 * 1024, 11);
    let up_len = 8 * 1024 * 1024;
    let server_down = down.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
        let mut w = s.try_clone().unwrap();
        let data = server_down.clone();
        let writer = thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        tx.send(got).unwrap();
    });
    let g = gatehouse_to(backend.addr, "splice");
    let up = random_bytes(up_len, 13);
    let mut client = connect(g.addr("front"));
    let mut reader = client.try_clone().unwrap();
    let receiver = thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    client.write_all(&up).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got_down = receiver.join().unwrap().unwrap();
    let got_up = rx.recv_timeout(Duration::from_secs(20)).expect("server got the upload");
    assert!(
        got_up == up,
        "client-to-server stream differs ({} of {} bytes)",
        got_up.len(),
        up.len()
    );
    assert!(
        got_down == down,
        "server-to-client stream differs ({} of {} bytes)",
        got_down.len(),
        down.len()
    );
}

#[test]
fn a_client_half_close_reaches_the_server_and_the_answer_still_flows_back() {
    // The server reads until the client's FIN, then answers with what it counted.
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        thread::sleep(Duration::from_millis(50));
        s.write_all(format!("received {} bytes", got.len()).as_bytes()).unwrap();
    });
    let g = gatehouse_to(backend.addr, &std::env::var("FWD").unwrap_or("splice".into()));
    let mut client = connect(g.addr("front"));
    client.write_all(&[b'x'; 100_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "received 100000 bytes");
    let (_, log) = g.stop(Duration::from_secs(10));
    assert!(
        log.contains("client closed"),
        "the close log names who closed first:\n{log}"
    );
}

#[test]
fn a_server_half_close_reaches_the_client_while_the_client_keeps_sending() {
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got.len()).unwrap();
    });
    let g = gatehouse_to(backend.addr, "splice");
    let mut client = connect(g.addr("front"));
    let mut greeting = Vec::new();
    client.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"hello", "the server's FIN arrives as EOF after its bytes");
    // The other direction is still open.
    client.write_all(&[7u8; 50_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 50_000);
}

/// The segments `s` has received (Linux TCP_INFO), and the bytes it has sent that its
/// peer has not acknowledged yet.
#[cfg(target_os = "linux")]
fn segments_in_and_unacked(s: &std::net::TcpStream) -> (u32, u32) {
    use std::os::fd::AsRawFd;
    // SAFETY: TCP_INFO into a zeroed tcp_info of the size passed; the kernel writes at
    // most that many bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    (info.tcpi_segs_in, info.tcpi_unacked)
}

/// A short answer followed by the server's close is the common end of an API call
/// (HTTP/1.1 `Connection: close`): when its FIN has already arrived behind the last
/// bytes, gatehouse passes both on in one segment, as HAProxy does, instead of the
/// bytes, then a bare FIN (a packet, a wake-up of the client and a read fewer).
#[cfg(target_os = "linux")]
fn last_bytes_and_fin_go_in_one_segment(forwarding: &str) {
    let (got_request, request_seen) = std::sync::mpsc::channel();
    let (answer, go) = std::sync::mpsc::channel::<()>();
    let go = std::sync::Mutex::new(go);
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
        let mut request = [0u8; 4];
        s.read_exact(&mut request).unwrap();
        got_request.send(()).unwrap();
        go.lock().unwrap().recv_timeout(Duration::from_secs(10)).unwrap();
        // The answer and the FIN in one segment: gatehouse sees both in one wake-up.
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and 4 readable bytes.
        let sent = unsafe { libc::send(s.as_raw_fd(), b"pong".as_ptr().cast(), 4, libc::MSG_MORE) };
        assert_eq!(sent, 4);
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    let g = gatehouse_to(backend.addr, forwarding);
    let mut client = connect(g.addr("front"));
    client.write_all(b"ping").unwrap();
    request_seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reaches the server");
    // Wait (bounded) for gatehouse to acknowledge the request, so that the count below
    // starts with nothing else in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while segments_in_and_unacked(&client).1 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was never acknowledged"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let (before, _) = segments_in_and_unacked(&client);
    answer.send(()).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    let (after, _) = segments_in_and_unacked(&client);
    assert_eq!(got, b"pong");
    assert_eq!(
        after - before,
        1,
        "the answer and the FIN came in {} segments, not one",
        after - before
    );
    drop(client);
    assert!(
        g.wait_log("in=4 out=4 server closed", Duration::from_secs(5)),
        "{}",
        g.log()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn the_last_bytes_and_the_fin_go_in_one_segment_with_splice() {
    last_bytes_and_fin_go_in_one_segment("splice");
}

#[cfg(target_os = "linux")]
#[test]
fn the_last_bytes_and_the_fin_go_in_one_segment_with_copy() {
    last_bytes_and_fin_go_in_one_segment("copy");
}

#[test]
fn a_server_reset_reaches_the_client_as_a_reset() {
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), |mut s| {
        let mut b = [0u8; 5];
        let _ = s.read_exact(&mut b);
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    });
    let g = gatehouse_to(backend.addr, "splice");
    let mut client = connect(g.addr("front"));
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let r = client.read(&mut buf);
    match r {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, got a read of {n} bytes (a FIN when n = 0)"),
    }
    assert!(g.wait_log("server reset", Duration::from_secs(5)), "{}", g.log());
}

#[test]
fn a_client_reset_reaches_the_server_as_a_reset_with_splice() {
    client_reset_reaches_the_server_as_a_reset("splice");
}

#[test]
fn a_client_reset_reaches_the_server_as_a_reset_with_copy() {
    client_reset_reaches_the_server_as_a_reset("copy");
}

fn client_reset_reaches_the_server_as_a_reset(forwarding: &str) {
    let (got_ping, ping_seen) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = got_ping.send(());
        let r = s.read(&mut buf);
        tx.send(r.map_err(|e| e.kind())).unwrap();
    });
    let g = gatehouse_to(backend.addr, forwarding);
    let mut client = connect(g.addr("front"));
    client.write_all(b"ping").unwrap();
    // The reset must find the connection through to the server.
    ping_seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the server got the ping");
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        r,
        Err(ErrorKind::ConnectionReset),
        "server saw {r:?} instead of a reset; log:\n{}",
        g.log()
    );
    assert!(g.wait_log("client reset", Duration::from_secs(5)), "{}", g.log());
}

#[test]
fn an_idle_connection_is_closed_after_idle_timeout() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(
        &[server("only", echo.addr)],
        "health = { check = \"none\" }",
        "idle_timeout = \"300ms\"",
    ));
    let mut client = connect(g.addr("front"));
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    client.read_exact(&mut b).unwrap();
    let started = std::time::Instant::now();
    let r = client.read(&mut b);
    assert!(
        r.is_err() || r.as_ref().ok() == Some(&0),
        "connection still open: {r:?}"
    );
    let waited = started.elapsed();
    // Not before the timeout (counted from the echo, which left gatehouse just before
    // it reached us), and not long after it.
    assert!(
        waited >= Duration::from_millis(290),
        "closed {waited:?} after the last byte, before idle_timeout (300ms)"
    );
    assert!(waited < Duration::from_secs(5), "closed only after {waited:?}");
    assert!(g.wait_log("idle timeout", Duration::from_secs(5)), "{}", g.log());
}

#[test]
fn idle_connections_hold_no_pipes() {
    // Each connection has moved bytes (so its pipes were used) and then sits idle:
    // gatehouse must hold its two sockets and nothing more; only the bounded pool
    // of spare pipes (64 per thread) may stay open.
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = gatehouse_to(echo.addr, "splice");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    let n = 400;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = connect(g.addr("front"));
        c.write_all(&[i as u8; 100]).unwrap();
        let mut back = [0u8; 100];
        c.read_exact(&mut back).unwrap();
        clients.push(c);
    }
    let after = fds();
    let per_connection = (after - before) as f64 / n as f64;
    let pool_bound = 2 * 2 * 64 + 16; // two fds per pooled pipe, per worker thread, and slack
    assert!(
        after - before <= 2 * n + pool_bound,
        "{n} idle connections hold {} fds ({per_connection:.2} each); with a pipe pair per connection it would be ~{}",
        after - before,
        6 * n
    );
    drop(clients);
}

/// A client through a gatehouse of `defaults` and `backend` lines (no checks) to an
/// echo server, a round trip made; then the options on gatehouse's two sockets of it,
/// the server side once it has its options (`connect::SETTLE` after the connect; `settled`
/// says when, as a settled socket shows it).
fn socket_options(
    defaults: &str,
    backend: &str,
    settled: impl Fn(&sockets::TcpOptions) -> bool,
) -> (sockets::TcpOptions, sockets::TcpOptions) {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(
        &[server("only", echo.addr)],
        &format!("health = {{ check = \"none\" }}\n{backend}"),
        defaults,
    ));
    let front = g.addr("front");
    let mut client = connect(front);
    client.write_all(b"k").unwrap();
    let mut b = [0u8; 1];
    client.read_exact(&mut b).unwrap();
    // gatehouse's end of the client connection: local = the listener, peer = our client.
    let towards_client = sockets::options_of(g.pid(), front, client.local_addr().unwrap())
        .expect("gatehouse holds the client's connection");
    let mut towards_server = None;
    let ok = wait_until(Duration::from_secs(5), || {
        towards_server = sockets::options_towards(g.pid(), echo.addr);
        towards_server.as_ref().is_some_and(&settled)
    });
    assert!(ok, "the server side never settled: {towards_server:?}");
    // Read again: what `settled` saw may be the first of its options, set a moment before the rest.
    let towards_server =
        sockets::options_towards(g.pid(), echo.addr).expect("gatehouse holds a connection to the server");
    drop(client);
    (towards_client, towards_server)
}

#[test]
fn both_sides_of_a_connection_have_tcp_keepalive() {
    // A dead peer of a long-idle watch must be found: gatehouse's socket towards the
    // client (inherited from the listener) and towards the server both run keepalive,
    // probing after `keepalive` of silence (not the kernel's 2 hours), every 10 s, 6 times.
    let (client, server) = socket_options("keepalive = \"30s\"", "", |o| o.keepalive);
    for (side, o) in [("client", client), ("server", server)] {
        assert!(o.keepalive, "{side} side lacks SO_KEEPALIVE: {o:?}");
        assert_eq!(o.idle, Duration::from_secs(30), "{side} side TCP_KEEPIDLE: {o:?}");
        assert_eq!(o.interval, Duration::from_secs(10), "{side} side TCP_KEEPINTVL: {o:?}");
        assert_eq!(o.probes, 6, "{side} side TCP_KEEPCNT: {o:?}");
    }
}

#[test]
fn keepalive_off_leaves_both_sides_without_keepalive() {
    // The server side's options come together once it lasts; its user timeout says when.
    let (client, server) = socket_options("keepalive = \"off\"\nuser_timeout = \"7s\"", "", |o| {
        o.user_timeout.is_some()
    });
    for (side, o) in [("client", client), ("server", server)] {
        assert!(
            !o.keepalive,
            "{side} side has keepalive with keepalive = \"off\": {o:?}"
        );
        assert_eq!(o.user_timeout, Some(Duration::from_secs(7)), "{side} side: {o:?}");
    }
}

#[test]
fn user_timeout_off_leaves_both_sides_without_one() {
    let (client, server) = socket_options("keepalive = \"20s\"\nuser_timeout = \"off\"", "", |o| o.keepalive);
    for (side, o) in [("client", client), ("server", server)] {
        assert_eq!(o.user_timeout, None, "{side} side has TCP_USER_TIMEOUT: {o:?}");
        assert_eq!(o.idle, Duration::from_secs(20), "{side} side TCP_KEEPIDLE: {o:?}");
    }
}

#[test]
fn a_backend_s_user_timeout_applies_to_its_server_side_only() {
    let (client, server) = socket_options("user_timeout = \"30s\"", "user_timeout = \"4s\"", |o| o.keepalive);
    assert_eq!(
        server.user_timeout,
        Some(Duration::from_secs(4)),
        "server side: the backend's user_timeout: {server:?}"
    );
    assert_eq!(
        client.user_timeout,
        Some(Duration::from_secs(30)),
        "client side: the default's: {client:?}"
    );
}
