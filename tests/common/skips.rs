//! Skipped tests, and the one list of skips CI accepts.
//!
//! A test that needs something this machine lacks (root, a tool) calls `skip!("why")`:
//! it says so, is recorded in `target/tmp/skips.txt` (which `.ci/run` prints with the
//! count of tests run), and returns. With `CI` set (`.ci/run` sets it: root, every tool
//! installed), a skip is a failure unless [`ALLOWED`] lists it with its reason. A
//! setup error (a namespace that cannot be made, a tool that does not come up) is never
//! a skip: tests panic on it, everywhere.

use std::io::Write;
use std::path::Path;

/// Skips CI accepts: (test, how its reason starts, why it may skip in CI). Nothing else
/// may skip there.
pub const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "kubernetes::kubectl_kustomize_builds_the_same_objects",
        "kubectl is not installed",
        "kubectl comes with the machine image, not from .ci/run: Debian's kubernetes-client \
         (kubectl 1.20, kustomize v2) cannot build the kustomization; the assembled \
         manifests are checked by the other tests of tests/kubernetes.rs",
    ),
    (
        "kubernetes::kubectl_builds_an_overlay_that_moves_the_objects_and_labels_them",
        "kubectl is not installed",
        "as above",
    ),
    (
        "control::a_socket_passed_by_systemd_is_accepted_on_every_event_loop",
        "this machine has one core",
        "a one-core machine runs one event loop: there is no spread to check",
    ),
    (
        "unattended::every_event_loop_accepts_and_is_counted",
        "this machine has one core",
        "a one-core machine runs one event loop: there is no spread to check",
    ),
];

/// The test running on this thread: libtest names each test's thread after it.
pub fn current_test(module: &str) -> String {
    let name = std::thread::current().name().unwrap_or("unknown").to_string();
    format!("{module}::{name}")
}

/// Whether CI accepts `test` skipping for `reason`; the allow-list's why if it does.
pub fn allowed(test: &str, reason: &str) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(t, r, _)| test == *t && reason.starts_with(r))
        .map(|(_, _, why)| *why)
}

/// Whether this run is CI's (`CI` set and not empty, nor `0`/`false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Records a skip of the test on this thread (in crate `module`); panics in CI unless
/// the skip is on [`ALLOWED`]. `skip!` calls it, then returns from the test.
pub fn skip(module: &str, reason: &str) {
    let test = current_test(module);
    let verdict = match (in_ci(), allowed(&test, reason)) {
        (false, _) => "skipped",
        (true, Some(_)) => "skipped (allowed in CI)",
        (true, None) => "FAILED: skipped in CI",
    };
    eprintln!("SKIPPED: {reason}");
    println!("SKIPPED: {reason}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skips.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{test}: {verdict}: {reason}");
    }
    if in_ci() && allowed(&test, reason).is_none() {
        panic!(
            "{test} skipped in CI: {reason}\n(CI installs every tool and runs as root; a skip there is \
             a failure unless tests/common/skips.rs allows it, with a reason)"
        );
    }
}
