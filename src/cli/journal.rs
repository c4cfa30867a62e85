//! Logging straight to journald, in its native protocol, when systemd gave gatehouse a
//! journal stream for stdout (`$JOURNAL_STREAM` names it): each event is one journal
//! entry whose fields are the event's fields (`BACKEND`, `SERVER`, `CLIENT`, …), so
//! `journalctl -u gatehouse BACKEND=control-plane` filters and `-o verbose` shows them.
//! `MESSAGE` is what the text format would print after the level. Entries go through
//! `log_queue` like every line: a stalled journald never stalls the caller.

use std::fmt::{self, Write as _};
use std::os::unix::net::UnixDatagram;

use gatehouse::log_queue;
use gatehouse::proxy::CLOSE_LOG_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's socket for native entries.
const SOCKET: &str = "/run/systemd/journal/socket";

/// journald's socket, connected, when stdout is the journal stream systemd set up.
pub fn socket() -> Option<UnixDatagram> {
    let stream = std::env::var("JOURNAL_STREAM").ok()?;
    let (dev, ino) = stream.split_once(':')?;
    let (dev, ino): (u64, u64) = (dev.parse().ok()?, ino.parse().ok()?);
    // SAFETY: fstat fills the stat we own; fd 1 may be closed, which it reports.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(1, &mut st) } != 0 || st.st_dev as u64 != dev || st.st_ino as u64 != ino {
        // Stdout was redirected after systemd set it up: log where it points now.
        return None;
    }
    let socket = UnixDatagram::unbound().ok()?;
    socket.connect(SOCKET).ok()?;
    Some(socket)
}

/// The layer that turns events into journal entries.
pub struct Journal;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let close = meta.target() == CLOSE_LOG_TARGET;
        log_queue::push(&entry(*meta.level(), meta.target(), close, &fields), !close);
    }
}

/// An event's message and its other fields, as text.
#[derive(Default)]
pub struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// One journal entry in the native protocol.
pub fn entry(level: Level, target: &str, close: bool, fields: &Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + fields.message.len());
    let priority = match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    };
    put(&mut out, "PRIORITY", priority);
    put(&mut out, "SYSLOG_IDENTIFIER", "gatehouse");
    put(&mut out, "TARGET", target);
    // A close line's message says it all; other events read as the text format does.
    let mut message = fields.message.clone();
    if !close {
        for (name, value) in &fields.others {
            let _ = write!(message, " {name}={value}");
        }
    }
    put(&mut out, "MESSAGE", &message);
    for (name, value) in &fields.others {
        put(&mut out, &field_name(name), value);
    }
    out
}

/// A field name as journald takes it: upper-case letters, digits and `_`, starting with
/// a letter (a leading `_` is journald's own).
fn field_name(name: &str) -> String {
    let mut n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !n.starts_with(|c: char| c.is_ascii_uppercase()) {
        n.insert_str(0, "F_");
    }
    n.truncate(64);
    n
}

/// `KEY=value\n`, or, for a value with a newline, `KEY\n` + its length (64-bit little
/// endian) + the value + `\n`.
fn put(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &str, others: &[(&'static str, &str)]) -> Fields {
        Fields {
            message: message.into(),
            others: others.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn a_close_line_carries_its_fields_as_journal_fields() {
        let f = fields(
            "127.0.0.1:5000 front/pool/a 0ms 0s in=5 out=5 client closed",
            &[("backend", "pool"), ("server", "a"), ("client", "127.0.0.1:5000")],
        );
        let e = String::from_utf8(entry(Level::INFO, CLOSE_LOG_TARGET, true, &f)).unwrap();
        assert_eq!(
            e,
            "PRIORITY=6\nSYSLOG_IDENTIFIER=gatehouse\nTARGET=gatehouse::connection\n\
             MESSAGE=127.0.0.1:5000 front/pool/a 0ms 0s in=5 out=5 client closed\n\
             BACKEND=pool\nSERVER=a\nCLIENT=127.0.0.1:5000\n"
        );
    }

    #[test]
    fn other_events_read_as_text_and_values_with_newlines_are_sized() {
        let f = fields("reload failed", &[("error", "line 1\nline 2"), ("9x", "y")]);
        let e = entry(Level::WARN, "gatehouse::app", false, &f);
        let text = String::from_utf8_lossy(&e);
        assert!(text.contains("PRIORITY=4\n"), "{text}");
        let mut sized = b"ERROR\n".to_vec();
        sized.extend_from_slice(&13u64.to_le_bytes());
        sized.extend_from_slice(b"line 1\nline 2\n");
        assert!(e.windows(sized.len()).any(|w| w == sized), "{text}");
        // MESSAGE holds a newline too, so it is sized; the odd name is made valid.
        assert!(text.contains("MESSAGE\n"), "{text}");
        assert!(text.contains("F_9X=y\n"), "{text}");
    }
}
