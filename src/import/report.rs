//! The import report: for every HAProxy line, whether it was translated exactly,
//! approximated (and how), or dropped (and why), and the exit code that follows.
//!
//! One entry per line: several notes on one line (a `server` line with many options)
//! are joined, and the line takes the worst of their verdicts. Owns no translation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Translated,
    Approximated,
    Dropped,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Translated => "translated",
            Verdict::Approximated => "approximated",
            Verdict::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    text: String,
    verdict: Verdict,
    notes: Vec<(Verdict, String)>,
}

/// Everything said about the lines of one HAProxy file.
#[derive(Debug, Clone, Default)]
pub struct Report {
    file: String,
    entries: BTreeMap<usize, Entry>,
}

impl Report {
    pub fn new(file: &str) -> Report {
        Report {
            file: file.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// The file as named in reports and comments.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn note(&mut self, line: usize, text: &str, verdict: Verdict, note: impl Into<String>) {
        let note = note.into();
        let e = self.entries.entry(line).or_insert_with(|| Entry {
            text: text.to_string(),
            verdict,
            notes: Vec::new(),
        });
        if e.text.is_empty() {
            e.text = text.to_string();
        }
        e.verdict = e.verdict.max(verdict);
        if !note.is_empty() && !e.notes.iter().any(|(_, n)| *n == note) {
            e.notes.push((verdict, note));
        }
    }

    /// The worst verdict of any line; `Translated` for an empty report.
    pub fn worst(&self) -> Verdict {
        self.entries
            .values()
            .map(|e| e.verdict)
            .max()
            .unwrap_or(Verdict::Translated)
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.entries.values().filter(|e| e.verdict == verdict).count()
    }

    /// The verdict on `line`, if it was reported.
    pub fn verdict(&self, line: usize) -> Option<Verdict> {
        self.entries.get(&line).map(|e| e.verdict)
    }

    /// The report as printed: one line per HAProxy line, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (line, e) in &self.entries {
            let _ = write!(out, "{}:{line}: {}: {}", self.file, e.verdict.word(), e.text);
            // Notes of a lesser verdict are said plainly; a worse one is named.
            let notes: Vec<String> = e
                .notes
                .iter()
                .map(|(v, n)| {
                    if *v == Verdict::Translated || *v == e.verdict {
                        n.clone()
                    } else {
                        format!("{}: {n}", v.word())
                    }
                })
                .collect();
            if !notes.is_empty() {
                let _ = write!(out, " -> {}", notes.join("; "));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}: {} lines translated, {} approximated, {} dropped",
            self.file,
            self.count(Verdict::Translated),
            self.count(Verdict::Approximated),
            self.count(Verdict::Dropped)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_takes_the_worst_verdict_of_its_notes() {
        let mut r = Report::new("h.cfg");
        r.note(
            7,
            "server a 1.2.3.4:80 check maxconn 5",
            Verdict::Translated,
            "server a",
        );
        r.note(
            7,
            "server a 1.2.3.4:80 check maxconn 5",
            Verdict::Dropped,
            "`maxconn 5`: no queue",
        );
        r.note(3, "mode tcp", Verdict::Translated, "");
        assert_eq!(r.verdict(7), Some(Verdict::Dropped));
        assert_eq!(r.worst(), Verdict::Dropped);
        assert_eq!(
            r.render(),
            "h.cfg:3: translated: mode tcp\n\
             h.cfg:7: dropped: server a 1.2.3.4:80 check maxconn 5 -> server a; `maxconn 5`: no queue\n\
             h.cfg: 1 lines translated, 0 approximated, 1 dropped\n"
        );
    }
}
