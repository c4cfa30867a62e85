//! The shape of the source tree, as the README's module table promises it: every
//! module of the library imports only modules below it (no cycles among `src/`
//! modules), and no source file, of the library or of the tests, is over 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to: `src/config/validate.rs` -> `config`.
/// `main.rs` and `cli/` are the binary, above the whole library.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" => None,
        other => Some(other.to_string()),
    }
}

/// The modules a file's code (not its comments) names as `crate::NAME`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        assert!(
            !code.contains("crate::{"),
            "grouped `use crate::{{..}}` is not parsed by this check; write one use per module: {line}"
        );
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before_ok =
                at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if before_ok && !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Peels off modules that import nothing left, bottom up: returns that order and what
/// remains, which sits on a cycle or depends on one.
fn peel(graph: &Graph) -> (Vec<String>, Graph) {
    let mut order = Vec::new();
    let mut left = graph.clone();
    loop {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if free.is_empty() {
            return (order, left);
        }
        for m in free {
            left.remove(&m);
            order.push(m);
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let sources = files.len();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"), &mut files);
    assert!(
        files.len() > sources + 10,
        "found only {} test files",
        files.len() - sources
    );
    let over: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} has {n} lines", f.display()))
        })
        .collect();
    assert!(over.is_empty(), "files over {MAX_LINES} lines: {over:?}");
}

#[test]
fn modules_import_only_modules_below_them() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph = Graph::new();
    for f in &files {
        let Some(module) = module_of(f) else { continue };
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_references(&text).into_iter().filter(|d| *d != module));
    }
    assert!(
        graph.len() >= 10,
        "found only {} modules in src/: {graph:?}",
        graph.len()
    );
    let (order, left) = peel(&graph);
    let cycles: Vec<String> = left
        .iter()
        .map(|(m, deps)| {
            let on: Vec<&String> = deps.iter().filter(|d| left.contains_key(*d)).collect();
            format!("{m} -> {on:?}")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "{} module(s) import each other in a cycle: {cycles:?} (bottom-up order of the rest: {order:?})",
        left.len()
    );
    eprintln!("module order, bottom up: {}", order.join(" < "));
}

#[test]
fn the_check_reads_code_not_comments_and_finds_a_cycle() {
    let refs =
        crate_references("use crate::runtime::Server; // crate::proxy in a comment\nlet x = crate::clock::unix_now();");
    let want: BTreeSet<String> = ["runtime", "clock"].map(String::from).into();
    assert_eq!(refs, want);
    let graph: Graph = [("app", "admin"), ("admin", "app"), ("proxy", "clock"), ("clock", "")]
        .into_iter()
        .map(|(m, d)| (m.to_string(), d.split_terminator(',').map(String::from).collect()))
        .collect();
    let (order, left) = peel(&graph);
    assert_eq!(order, ["clock", "proxy"], "the modules outside the cycle, bottom up");
    assert_eq!(left.keys().collect::<Vec<_>>(), ["admin", "app"], "the cycle");
}
