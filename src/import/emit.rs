//! The gatehouse configuration an import produces, and its TOML text: every key and
//! server preceded by comments naming the HAProxy lines it came from.
//!
//! Owns layout and quoting only; which keys to write is `translate`'s business.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A TOML value, rendered.
pub fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A table key: bare where TOML allows (letters, digits, `-`, `_`), quoted elsewhere: a
/// dot in a bare key would make a nested table (`[backend."kodirsync.example.org"]`).
pub fn key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match bare {
        true => name.to_string(),
        false => string(name),
    }
}

/// A line of HAProxy's as a TOML comment holds it: control characters but the tab
/// (a form feed, a vertical tab, which HAProxy reads as blanks) are not allowed there.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// `key = value`, and the HAProxy lines (and a remark) behind it.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: &'static str,
    pub value: String,
    pub lines: Vec<usize>,
    pub remark: Option<String>,
}

impl Key {
    pub fn new(name: &'static str, value: String, lines: Vec<usize>) -> Key {
        Key {
            name,
            value,
            lines,
            remark: None,
        }
    }

    pub fn remark(mut self, remark: impl Into<String>) -> Key {
        self.remark = Some(remark.into());
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub keys: Vec<Key>,
}

impl Table {
    pub fn set(&mut self, key: Key) {
        self.keys.retain(|k| k.name != key.name);
        self.keys.push(key);
    }

    pub fn get(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub lines: Vec<usize>,
    pub table: Table,
}

/// A server as an inline table, or (`commented`) a server left out but kept in view.
#[derive(Debug, Clone)]
pub struct Server {
    pub line: usize,
    pub fields: Vec<(&'static str, String)>,
    pub commented: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub lines: Vec<usize>,
    pub table: Table,
    pub servers: Vec<Server>,
    /// Inline-table keys of `health`, with the lines behind them.
    pub health: Vec<(&'static str, String)>,
    pub health_lines: Vec<usize>,
}

/// The whole output.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub defaults: Table,
    pub resolver: Table,
    pub admin: Table,
    pub listeners: Vec<Listener>,
    pub backends: Vec<Backend>,
}

/// Renders `out`; `file` and `texts` (line number to its text) name the origins.
pub fn render(out: &Output, file: &str, texts: &BTreeMap<usize, String>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Imported from {file} by `gatehouse import`. Each setting names the HAProxy lines it\n\
         # came from; the import report (stderr) says what was approximated or dropped."
    );
    let indented = |s: &mut String, lines: &[usize], indent: &str| {
        let mut sorted = lines.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for l in sorted {
            let text = texts.get(&l).map_or(String::new(), |t| comment_text(t));
            let _ = writeln!(s, "{indent}# {file}:{l}: {text}");
        }
    };
    let origin = |s: &mut String, lines: &[usize]| indented(s, lines, "");
    let table = |s: &mut String, t: &Table| {
        for k in &t.keys {
            origin(s, &k.lines);
            if let Some(r) = &k.remark {
                for l in r.lines() {
                    let _ = writeln!(s, "# {l}");
                }
            }
            let _ = writeln!(s, "{} = {}", k.name, k.value);
        }
    };
    for (name, t) in [
        ("defaults", &out.defaults),
        ("resolver", &out.resolver),
        ("admin", &out.admin),
    ] {
        if !t.keys.is_empty() {
            let _ = writeln!(s, "\n[{name}]");
            table(&mut s, t);
        }
    }
    for l in &out.listeners {
        s.push('\n');
        origin(&mut s, &l.lines);
        s.push_str("[[listener]]\n");
        table(&mut s, &l.table);
    }
    for b in &out.backends {
        s.push('\n');
        origin(&mut s, &b.lines);
        let _ = writeln!(s, "[backend.{}]", key(&b.name));
        table(&mut s, &b.table);
        s.push_str("servers = [\n");
        for srv in &b.servers {
            indented(&mut s, &[srv.line], "  ");
            let fields: Vec<String> = srv.fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let inline = format!("{{ {} }},", fields.join(", "));
            match &srv.commented {
                Some(why) => {
                    let _ = writeln!(s, "  # ({why})\n  # {inline}");
                }
                None => {
                    let _ = writeln!(s, "  {inline}");
                }
            }
        }
        s.push_str("]\n");
        if !b.health.is_empty() {
            origin(&mut s, &b.health_lines);
            let fields: Vec<String> = b.health.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = writeln!(s, "health = {{ {} }}", fields.join(", "));
        }
    }
    s
}
