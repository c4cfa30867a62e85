//! Unit tests of `health.rs`: rise and fall, jitter and spread, HTTP status lines and
//! what a failing `/readyz` says.

use super::*;

#[test]
fn a_readyz_answer_names_its_failing_checks_bounded() {
    let body = b"[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[+]poststarthook/start-kube-aggregator-informers ok\n[-]informer-sync failed: 3 informers not started yet\nreadyz check failed\n";
    assert_eq!(failing_checks(body), "etcd, informer-sync");
    assert_eq!(failing_checks(b"ok"), "");
    let many: String = (0..9).map(|i| format!("[-]check-{i} failed\n")).collect();
    assert_eq!(
        failing_checks(many.as_bytes()),
        "check-0, check-1, check-2, check-3, check-4, check-5, 3 more"
    );
    let long = format!("[-]{} failed\n", "x".repeat(500));
    assert_eq!(failing_checks(long.as_bytes()).len(), 48);
}

#[test]
fn the_first_result_decides_at_once() {
    let mut rf = RiseFall::new(2, 3);
    assert_eq!(rf.record(false, true), Some((false, 1, 3)));
    let mut rf = RiseFall::new(2, 3);
    assert_eq!(rf.record(true, true), None);
}

#[test]
fn fall_failures_in_a_row_take_a_server_down() {
    let mut rf = RiseFall::new(2, 3);
    rf.record(true, true);
    assert_eq!(rf.record(false, true), None);
    assert_eq!(rf.record(false, true), None);
    assert_eq!(rf.record(false, true), Some((false, 3, 3)));
}

#[test]
fn a_success_resets_the_failure_streak() {
    let mut rf = RiseFall::new(2, 3);
    rf.record(true, true);
    rf.record(false, true);
    rf.record(false, true);
    rf.record(true, true);
    assert_eq!(rf.record(false, true), None);
    assert_eq!(rf.record(false, true), None);
    assert_eq!(rf.record(false, true), Some((false, 3, 3)));
}

#[test]
fn rise_successes_in_a_row_bring_it_back() {
    let mut rf = RiseFall::new(2, 3);
    rf.record(false, true); // down at first result
    assert_eq!(rf.record(true, false), None);
    assert_eq!(rf.record(false, false), None);
    assert_eq!(rf.record(true, false), None);
    assert_eq!(rf.record(true, false), Some((true, 2, 2)));
}

#[test]
fn passive_down_needs_rise_successes() {
    let mut rf = RiseFall::new(3, 3);
    rf.record(true, true);
    rf.record(true, true);
    rf.record(true, true);
    // Marked down by traffic meanwhile: the streak starts again.
    assert_eq!(rf.record(true, false), None);
    assert_eq!(rf.record(true, false), None);
    assert_eq!(rf.record(true, false), Some((true, 3, 3)));
}

#[test]
fn jitter_stays_within_ten_percent() {
    let i = Duration::from_secs(2);
    assert_eq!(jittered(i, 0.0), Duration::from_millis(1800));
    assert_eq!(jittered(i, 1.0), Duration::from_millis(2200));
    for k in 0..1000 {
        let d = jittered(i, rand::random::<f64>());
        assert!(
            d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200),
            "{k}: {d:?}"
        );
    }
}

#[test]
fn the_second_round_spreads_over_the_second_half_of_the_interval() {
    let i = Duration::from_secs(2);
    assert_eq!(spread(i, 0.0), Duration::from_secs(1));
    assert_eq!(spread(i, 1.0), Duration::from_secs(2));
    let mut halves = [0; 2];
    for _ in 0..1000 {
        let d = spread(i, rand::random::<f64>());
        assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2), "{d:?}");
        halves[usize::from(d >= Duration::from_millis(1500))] += 1;
    }
    assert!(halves.iter().all(|&h| h > 350), "not spread: {halves:?}");
}

#[test]
fn checks_wait_for_the_next_tick() {
    let epoch = tokio::time::Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(on_tick(epoch, epoch), epoch);
    assert_eq!(on_tick(epoch + ms(1), epoch), epoch + ms(10));
    assert_eq!(on_tick(epoch + ms(10), epoch), epoch + ms(10));
    assert_eq!(on_tick(epoch + Duration::from_micros(10_001), epoch), epoch + ms(20));
    // Before the epoch: at it.
    assert_eq!(on_tick(epoch, epoch + ms(5)), epoch + ms(5));
}

#[test]
fn status_lines_are_parsed() {
    assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
    assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
    assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(parse_status(b"HTTP/1.1 20"), None);
}

/// An endpoint's task lives as long as its server, and most of that time it waits for
/// its next check: what it holds then is paid once per endpoint (900 of them on a big
/// config). The check itself is boxed, so its state (kilobytes for TLS) is not held
/// between checks; this fails when something large joins the task.
#[test]
fn an_endpoint_s_check_task_stays_small_between_checks() {
    fn size_of_returned<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    type Args = (Arc<Server>, Arc<Endpoint>, Arc<Prepared>, HealthConfig);
    let size = size_of_returned(|(s, e, p, c): Args| endpoint_loop(s, e, p, c));
    // 744 bytes with Rust 1.95; 7,640 with the check not boxed.
    assert!(size <= 1024, "endpoint_loop's future is {size} bytes");
}
