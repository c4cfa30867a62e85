//! The shape of the source tree, as the README's module table promises it: every
//! module of the library imports only modules below it (no cycles among `src/`
//! modules), no source file, of the library or of the tests, is over 800 lines, and no
//! function in `src/` (test code there included) is over 100 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

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

/// Whether `line` opens a function: after its indentation, any of `pub`, `pub(..)`,
/// `const`, `async`, `unsafe`, `extern "ABI"`, `default`, then `fn NAME`. Comments
/// start with `//` and so never match.
fn opens_fn(line: &str) -> bool {
    let mut rest = line.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("fn ") {
            return r.starts_with(|c: char| c.is_alphabetic() || c == '_');
        }
        let word_end = match rest.strip_prefix("pub(") {
            Some(r) => r.find(')').map(|i| "pub(".len() + i + 1),
            None if rest.starts_with("extern \"") => rest[8..].find('"').map(|i| 8 + i + 1),
            None => ["pub", "const", "async", "unsafe", "default"]
                .into_iter()
                .find(|q| rest.strip_prefix(q).is_some_and(|r| r.starts_with(' ')))
                .map(str::len),
        };
        match word_end {
            Some(end) => rest = rest[end..].trim_start(),
            None => return false,
        }
    }
}

/// Each function of `text` with a body: the line it starts on (1-based) and its length
/// in lines, from `fn` to its closing brace, doc comments and attributes aside.
///
/// It reads code as rustfmt lays it out: the signature ends at the first line ending in
/// `{` (a body follows), `}` (a body on one line) or `;` (no body: skipped), and the
/// body ends at the first line after it that is `}` at the indentation of `fn`. Nested
/// functions are measured on their own and count in their parent's length too.
fn functions(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        if !opens_fn(line) {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let Some(sig_end) = (start..lines.len()).find(|&i| lines[i].trim_end().ends_with(['{', '}', ';'])) else {
            continue;
        };
        let last = lines[sig_end].trim_end();
        let end = if last.ends_with(';') {
            continue;
        } else if last.ends_with('}') {
            Some(sig_end)
        } else {
            (sig_end + 1..lines.len()).find(|&i| lines[i].trim_end().strip_prefix(indent) == Some("}"))
        };
        let end = end.unwrap_or_else(|| panic!("no closing brace for the function on line {}", start + 1));
        found.push((start + 1, end - start + 1));
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
fn no_function_in_src_is_over_100_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut measured = 0;
    let mut over = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (line, length) in functions(&text) {
            measured += 1;
            if length > MAX_FN_LINES {
                let rel = f.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(f);
                over.push(format!("{}:{line} is {length} lines", rel.display()));
            }
        }
    }
    assert!(measured > 500, "found only {measured} functions in src/");
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines (split each where a reader would pause): {over:#?}"
    );
}

#[test]
fn the_function_check_measures_from_fn_to_its_closing_brace() {
    let text = r#"/// A doc comment is not counted.
pub(crate) async fn spread(
    a: u8,
) -> u8 {
    let f = |x| {
        x
    };
    f(a)
}
impl T {
    const fn one() -> u8 { 1 }
    fn declared(&self);
    pub unsafe extern "C" fn nested<X>(x: X)
    where
        X: Copy,
    {
        fn inner() {}
    }
}
// fn in a comment
let name_fn = 1;
"#;
    assert_eq!(functions(text), [(2, 8), (11, 1), (13, 6), (17, 1)]);
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
