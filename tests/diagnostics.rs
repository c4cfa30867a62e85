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
