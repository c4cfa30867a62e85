//! The running state's specification: server states before and after checks, places
//! at servers with a limit, and the queue of a backend whose servers are full.

use super::*;

fn server(check: CheckKind) -> Arc<Server> {
    let config = ServerConfig {
        name: "a".into(),
        host: Host::Ip([127, 0, 0, 1].into()),
        port: 6443,
        weight: 1,
        backup: false,
        max_connections: None,
    };
    let health = HealthConfig {
        check,
        ..HealthConfig::default()
    };
    Server::new("pool", &config, &health)
}

#[test]
fn a_checked_server_is_starting_until_its_first_check_decides() {
    let s = server(CheckKind::Tcp);
    assert_eq!(s.state(), ServerState::Starting);
    assert!(
        s.accepts_new(),
        "treated as up until the check decides, as HAProxy does"
    );
    assert_eq!(s.last_change().1, "configured", "a state change before any check");
    s.decided("tcp connect ok");
    assert_eq!(s.state(), ServerState::Up);
    assert_eq!(s.last_change().1, "tcp connect ok");
}

#[test]
fn a_first_failed_check_takes_a_starting_server_down() {
    let s = server(CheckKind::Tcp);
    let e = s.endpoints()[0].clone();
    assert!(s.set_endpoint_up(&e, false, "connection refused (1/3)"));
    assert_eq!(s.state(), ServerState::Down);
    assert_eq!(s.last_change().1, "connection refused (1/3)");
}

#[test]
fn without_a_check_a_server_is_up_at_once() {
    let s = server(CheckKind::None);
    assert_eq!(s.state(), ServerState::Up);
}

fn snapshot(backend_keys: &str, old: Option<&Snapshot>) -> Snapshot {
    let text = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:6443\"\nbackend = \"pool\"\n\n\
         [backend.pool]\nservers = [\"127.0.4.11:6443\", {{ address = \"127.0.4.12:6443\", max_connections = 1 }}]\n\
         health = {{ check = \"none\" }}\n{backend_keys}"
    );
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Snapshot::build(Arc::new(config), old).0
}

#[test]
fn a_backend_without_limits_has_no_queue() {
    let text = "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:6443\"\nbackend = \"pool\"\n\n\
                [backend.pool]\nservers = [\"127.0.4.11:6443\"]\n";
    let config = Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let s = Snapshot::build(Arc::new(config), None).0;
    assert!(s.backends[0].queue.is_none());
    assert!(s.listeners[0].traffic.queue_closed.is_none(), "no queue series either");
}

#[test]
fn a_server_at_its_limit_gives_no_place_until_one_is_given_back() {
    let s = snapshot("max_connections = 2", None);
    let b = &s.backends[0];
    assert_eq!(b.servers[0].max_connections, Some(2), "the backend's default");
    assert_eq!(b.servers[1].max_connections, Some(1), "the server's own");
    let first = b.servers[0].take_place().expect("room for one");
    let second = b.servers[0].take_place().expect("room for two");
    assert!(b.servers[0].take_place().is_none(), "a third is over the limit");
    assert!(!b.servers[0].has_room());
    assert_eq!(b.servers[0].server.active.load(Ordering::SeqCst), 2);
    drop(first);
    assert!(b.servers[0].has_room());
    drop(second);
    assert_eq!(b.servers[0].server.active.load(Ordering::SeqCst), 0);
}

#[test]
fn clients_wait_their_turn_first_come_first_served() {
    let s = snapshot("max_connections = 1", None);
    let q = s.backends[0].queue.clone().expect("a backend with limits has a queue");
    let a = q.join(None).unwrap();
    let b = q.join(None).unwrap();
    let c = q.join(None).unwrap();
    assert!(a.is_first() && !b.is_first() && !c.is_first());
    drop(b); // gave up: the order of the others stays
    assert!(a.is_first());
    drop(a);
    assert!(c.is_first());
    assert_eq!(q.counts().waiting, 1);
    assert_eq!(q.counts().queued, 3);
}

#[test]
fn max_queue_refuses_the_client_past_it() {
    let s = snapshot("max_connections = 1\nmax_queue = 1", None);
    let q = s.backends[0].queue.clone().unwrap();
    let _a = q.join(Some(1)).unwrap();
    assert!(matches!(q.join(Some(1)), Err(Refusal::Full)));
    let counts = q.counts();
    assert_eq!((counts.waiting, counts.full), (1, 1));
}

#[test]
fn a_place_given_back_wakes_the_first_client_and_only_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = snapshot("max_connections = 1", None);
        let b = &s.backends[0];
        let q = b.queue.clone().unwrap();
        let place = b.servers[0].take_place().unwrap();
        let first = q.join(None).unwrap();
        let second = q.join(None).unwrap();
        let wait = Duration::from_millis(50);
        drop(place);
        // The wake-up is kept for a client that is not waiting yet.
        assert!(
            tokio::time::timeout(wait, first.woken()).await.is_ok(),
            "the first was not woken"
        );
        assert!(
            tokio::time::timeout(wait, second.woken()).await.is_err(),
            "the second was woken before its turn"
        );
        drop(first);
        assert!(
            tokio::time::timeout(wait, second.woken()).await.is_ok(),
            "the next one tries when the first leaves"
        );
    });
}

#[test]
fn a_reload_keeps_the_queue_and_its_waiting_clients() {
    let old = snapshot("max_connections = 1", None);
    let q = old.backends[0].queue.clone().unwrap();
    let _waiting = q.join(None).unwrap();
    let new = snapshot("max_connections = 3", Some(&old));
    let carried = new.backends[0].queue.clone().unwrap();
    assert!(Arc::ptr_eq(&q, &carried), "a new queue would strand the waiting client");
    assert_eq!(carried.counts().waiting, 1);
    assert_eq!(new.backends[0].servers[0].max_connections, Some(3));
}

#[test]
fn a_reload_that_brings_limits_is_woken_by_connections_made_before_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let text = "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:6443\"\nbackend = \"pool\"\n\n\
                    [backend.pool]\nservers = [\"127.0.4.11:6443\"]\nhealth = { check = \"none\" }\n";
        let old = Snapshot::build(Arc::new(Config::parse(text, "test.toml").unwrap()), None).0;
        assert!(old.backends[0].queue.is_none());
        let before = old.backends[0].servers[0].occupy();
        let new = Snapshot::build(
            Arc::new(Config::parse(&format!("{text}max_connections = 1\n"), "test.toml").unwrap()),
            Some(&old),
        )
        .0;
        let entry = &new.backends[0].servers[0];
        assert!(!entry.has_room(), "the connection from before the reload counts");
        let ticket = new.backends[0].queue.as_ref().unwrap().join(None).unwrap();
        drop(before);
        let woken = tokio::time::timeout(Duration::from_millis(50), ticket.woken()).await;
        assert!(woken.is_ok(), "the place given back did not wake the queue");
        assert!(entry.take_place().is_some());
    });
}
