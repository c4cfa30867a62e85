//! The files shipped for gallade agree with each other, so that they work together out
//! of the box: keepalived checks `/readyz` on an address the admin listener of
//! `config/gallade.toml` listens on, and the admin port is not one a common exporter
//! claims (`tests/kubernetes.rs` holds the scrape target to the same table); and an
//! admin listener on a list of addresses, as gallade's, serves on every one of them.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `[admin] listen` of config/gallade.toml, one address or a list.
fn gallade_admin() -> Vec<SocketAddr> {
    let gallade: toml::Value = toml::from_str(&read("config/gallade.toml")).expect("config/gallade.toml");
    let listen = &gallade["admin"]["listen"];
    let texts: Vec<&str> = match listen {
        toml::Value::String(one) => vec![one.as_str()],
        toml::Value::Array(more) => more.iter().filter_map(toml::Value::as_str).collect(),
        other => panic!("[admin] listen is {other}"),
    };
    texts
        .iter()
        .map(|t| t.parse().unwrap_or_else(|e| panic!("[admin] listen {t:?}: {e}")))
        .collect()
}

#[test]
fn keepalived_checks_readyz_where_the_admin_listener_listens() {
    let conf = read("deploy/keepalived/keepalived.conf");
    let urls: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(['"', ' ']))
        .filter(|w| w.starts_with("http://") && w.ends_with("/readyz"))
        .collect();
    assert_eq!(urls.len(), 1, "one /readyz check in keepalived.conf: {urls:?}");
    let addr: SocketAddr = urls[0]
        .trim_start_matches("http://")
        .trim_end_matches("/readyz")
        .parse()
        .expect("keepalived's check URL names an address and port");
    let admin = gallade_admin();
    assert!(
        admin.contains(&addr),
        "keepalived checks {addr}, but config/gallade.toml's admin listener listens on {admin:?}"
    );
    assert!(addr.ip().is_loopback(), "keepalived runs on the gateway itself: {addr}");
}

#[test]
fn the_admin_port_is_not_a_common_exporters() {
    // node_exporter (9100), Prometheus (9090), Alertmanager (9093), Pushgateway (9091),
    // blackbox (9115), VictoriaMetrics (8428), vmagent (8429), Grafana (3000).
    let taken = [9100, 9090, 9093, 9091, 9115, 8428, 8429, 3000];
    for addr in gallade_admin() {
        assert!(
            !taken.contains(&addr.port()),
            "admin listen {addr}: that port is another program's"
        );
    }
    let container: toml::Value = toml::from_str(&read("config/container.toml")).expect("config/container.toml");
    let listen = container["admin"]["listen"].as_str().unwrap_or_default();
    assert!(
        gallade_admin()
            .iter()
            .any(|a| listen.ends_with(&format!(":{}", a.port()))),
        "the container's admin port ({listen}) differs from gallade's"
    );
}

#[test]
fn an_admin_listener_on_several_addresses_serves_on_each_and_keeps_them_on_reload() {
    let backend = Backend::echo("127.0.0.1:0".parse().unwrap());
    let (a, b) = (fresh_ip(), fresh_ip());
    let config = |admin: &str| {
        format!(
            "[admin]\nlisten = {admin}\n\n[[listener]]\nname = \"front\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [backend.pool]\nservers = [{}]\nhealth = {{ check = \"none\" }}\n",
            server("a", backend.addr)
        )
    };
    let g = Gatehouse::start(&config(&format!("[\"{a}:0\", \"{b}:0\"]")));
    let admins = g.bound["admin"].clone();
    assert_eq!(
        admins.iter().map(|s| s.ip()).collect::<Vec<_>>(),
        [std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)],
        "{admins:?}"
    );
    for admin in &admins {
        assert_eq!(http(*admin, "GET", "/healthz", &[]).0, 200, "{admin}");
        assert_eq!(http(*admin, "GET", "/readyz", &[]).0, 200, "{admin}");
    }
    // A reload that keeps the first address and drops the second: the first keeps
    // its socket (its port 0 resolved stays), the second stops listening.
    let ready = g.reload(&config(&format!("[\"{a}:0\"]")));
    assert!(ready.contains("READY=1"), "{ready}");
    assert_eq!(http(admins[0], "GET", "/healthz", &[]).0, 200);
    // Its accept loop is aborted at the reload and closes the socket as it goes.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            std::net::TcpStream::connect_timeout(&admins[1], std::time::Duration::from_secs(1)).is_err()
        }),
        "the dropped admin address still accepts"
    );
}
