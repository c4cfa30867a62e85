//! The import corpus: every `tests/import/NAME.cfg` is imported by the real binary,
//! and its TOML (stdout) and report (stderr and exit status) must equal the checked-in
//! `NAME.toml` and `NAME.report`; every TOML must pass `gatehouse check`.
//!
//! After an intended change of the importer, regenerate the expectations with
//! `UPDATE_EXPECT=1 cargo test --test import_corpus` and review the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import")
}

/// Runs `gatehouse import NAME.cfg` in the corpus directory, so that reports name
/// the file as `NAME.cfg`, with the one environment variable the corpus uses.
fn import(name: &str) -> Output {
    Command::new(BIN)
        .current_dir(corpus_dir())
        .args(["import", &format!("{name}.cfg")])
        .env("GATEHOUSE_IMPORT_TEST_ADDR", "192.168.1.99")
        .output()
        .expect("run gatehouse import")
}

fn report_of(out: &Output) -> String {
    format!(
        "{}exit status: {}\n",
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

fn corpus() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("tests/import exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".cfg").map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn every_corpus_file_imports_to_its_expected_toml_and_report() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut mismatches = Vec::new();
    let names = corpus();
    assert!(names.len() >= 5, "corpus too small: {names:?}");
    for name in &names {
        let out = import(name);
        let toml = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = report_of(&out);
        let toml_path = corpus_dir().join(format!("{name}.toml"));
        let report_path = corpus_dir().join(format!("{name}.report"));
        if update {
            if toml.is_empty() {
                let _ = std::fs::remove_file(&toml_path);
            } else {
                std::fs::write(&toml_path, &toml).unwrap();
            }
            std::fs::write(&report_path, &report).unwrap();
            continue;
        }
        let want_toml = std::fs::read_to_string(&toml_path).unwrap_or_default();
        let want_report = std::fs::read_to_string(&report_path).unwrap_or_default();
        if toml != want_toml {
            mismatches.push(format!("{name}.toml differs; got:\n{toml}"));
        }
        if report != want_report {
            mismatches.push(format!("{name}.report differs; got:\n{report}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} expectations differ (UPDATE_EXPECT=1 regenerates them):\n{}",
        mismatches.len(),
        names.len() * 2,
        mismatches.join("\n")
    );
}

#[test]
fn every_imported_config_passes_gatehouse_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in corpus() {
        let out = import(&name);
        if out.stdout.is_empty() {
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: no config but exit {:?}",
                out.status
            );
            continue;
        }
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, &out.stdout).unwrap();
        let check = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: gatehouse check refused the import: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} configs checked");
}

#[test]
fn gallades_haproxy_cfg_imports_with_no_line_dropped() {
    let out = import("gallade");
    let report = report_of(&out);
    let dropped: Vec<&str> = report.lines().filter(|l| l.contains(": dropped: ")).collect();
    assert!(dropped.is_empty(), "dropped lines: {dropped:?}");
    let cfg = std::fs::read_to_string(corpus_dir().join("gallade.cfg")).unwrap();
    let meaningful = cfg
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    let reported = report
        .lines()
        .filter(|l| l.starts_with("gallade.cfg:") && !l.contains(" lines "))
        .count();
    assert_eq!(
        reported, meaningful,
        "every line of gallade.cfg is reported once:\n{report}"
    );
    assert_eq!(out.status.code(), Some(1), "approximations exit 1:\n{report}");
}

#[test]
fn exit_codes_say_exact_approximated_or_unreadable() {
    assert_eq!(
        import("exact").status.code(),
        Some(0),
        "{}",
        report_of(&import("exact"))
    );
    assert_eq!(import("edge-cases").status.code(), Some(1));
    let nothing = import("http-only");
    assert_eq!(nothing.status.code(), Some(2), "only mode http: nothing to import");
    assert!(nothing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("http-only.cfg:12: dropped: frontend www"));
    let broken = import("parse-error");
    assert_eq!(broken.status.code(), Some(2));
    assert!(broken.stdout.is_empty(), "a file that does not parse gives no config");
    let missing = Command::new(BIN)
        .args(["import", "/nonexistent/haproxy.cfg"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[test]
fn output_file_gets_the_config_and_stderr_keeps_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.toml");
    let out = Command::new(BIN)
        .current_dir(corpus_dir())
        .args(["import", "--from", "haproxy", "gallade.cfg", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, String::from_utf8_lossy(&import("gallade").stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gallade.cfg:15: translated: bind *:6443"));
}
