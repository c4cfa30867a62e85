//! Diagnostics that name the cause, through the real binary: a Kubernetes API server
//! whose `/readyz` fails says which of its checks fail, in the status API and the log.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// An API server whose etcd and informers are not ready: `/readyz` answers 500 with
/// the list kube-apiserver writes.
fn unready_api_server() -> Backend {
    Backend::serve("127.0.0.1:0".parse().unwrap(), |mut s| {
        let mut request = [0u8; 1024];
        let _ = s.read(&mut request);
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/generic-apiserver-start-informers ok\n[-]informer-sync failed: reason withheld\nreadyz check failed\n";
        let _ = write!(
            s,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

#[test]
fn a_failing_readyz_names_the_failing_checks() {
    let api = unready_api_server();
    let g = Gatehouse::start(&config(
        &[server("arkveld", api.addr)],
        r#"health = { check = "http", path = "/readyz", interval = "200ms", timeout = "1s", rise = 1, fall = 1 }"#,
        "",
    ));
    let admin = g.admin();
    let result = || -> String {
        let v = status(admin);
        v["backends"][0]["servers"][0]["check"]["last_result"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        wait_until(Duration::from_secs(10), || result().contains("failing")),
        "no check result names the failing checks: {:?}",
        result()
    );
    let r = result();
    figure!("readyz diagnostics: the check result reads {r:?}");
    assert!(r.contains("returned 500; failing: etcd, informer-sync"), "{r}");
    assert_eq!(server_state(admin, "pool", "arkveld"), "down");
    assert!(
        g.wait_log("failing: etcd, informer-sync", Duration::from_secs(5)),
        "the log does not name them:\n{}",
        g.log()
    );
}

/// An SNI-routed listener whose default backend echoes.
fn routed(default: std::net::SocketAddr, routed_to: std::net::SocketAddr) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
backend = "ingress"
inspect_timeout = "300ms"
routes = [{{ sni = ["k8s.example.com"], backend = "k8s" }}]
[backend.k8s]
servers = ["{routed_to}"]
health = {{ check = "none" }}
[backend.ingress]
servers = ["{default}"]
health = {{ check = "none" }}
"#
    )
}

#[test]
fn a_client_sent_to_the_default_backend_is_counted_and_logged_with_why() {
    let default = Backend::echo("127.0.0.1:0".parse().unwrap());
    let k8s = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&routed(default.addr, k8s.addr));
    let (front, admin) = (g.addr("tls"), g.admin());
    // A plain-text client: not TLS at all.
    let mut plain = connect(front);
    common::pool::round_trip(&mut plain, "GET / HTTP/1.0\r\n\r\n").expect("served by the default backend");
    drop(plain);
    // A client that sends nothing: the peek times out.
    let mut silent = connect(front);
    std::thread::sleep(Duration::from_millis(400)); // past inspect_timeout: the timeout is what is tested
    common::pool::round_trip(&mut silent, "late\n").expect("served by the default backend");
    drop(silent);
    let count = |reason: &str| {
        metric(
            admin,
            "gatehouse_sni_default_total",
            &[("listener", "tls"), ("reason", reason)],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || count("not_tls") == 1.0
            && count("timeout") == 1.0),
        "not_tls {} timeout {}",
        count("not_tls"),
        count("timeout")
    );
    assert_eq!(count("no_sni"), 0.0);
    assert_eq!(default.accepted(), 2);
    assert_eq!(k8s.accepted(), 0);
    for why in ["sni_default=not_tls", "sni_default=timeout"] {
        assert!(
            g.wait_log(why, Duration::from_secs(5)),
            "no close line with {why}:\n{}",
            g.log()
        );
    }
    figure!("sni default: not_tls and timeout counted and named in the close lines");
}
