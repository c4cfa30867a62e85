//! Logging for `gatehouse run`: the filter (flag, RUST_LOG, `[log] level`), the sink and
//! the formats. Every line goes through `log_queue`, so no thread ever waits for the
//! sink. Under journald (see `journal.rs`) events are native journal entries; elsewhere
//! they are lines on stdout, in one of two formats. JSON carries every field of every
//! event; text is for people, so a connection's close line is its tcplog-like message
//! alone, its fields being JSON's.

use std::fmt;
use std::io;

use gatehouse::config::{Config, LogFormat};
use gatehouse::log_queue::{self, Output};
use gatehouse::proxy::CLOSE_LOG_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use super::{Cli, Format};

pub fn init(cli: &Cli) {
    // The config's [log] table, if the file reads; errors there are reported by start.
    let from_file = Config::load(&cli.config).ok().map(|c| c.log);
    let filter = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| from_file.as_ref().and_then(|l| l.level.clone()))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("gatehouse: invalid log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let format = match cli.log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => from_file.and_then(|l| l.format).unwrap_or_default(),
    };
    let journal = super::journal::socket();
    let to_journal = journal.is_some();
    if let Err(e) = log_queue::start(journal.map_or(Output::Stdout, Output::Journal)) {
        eprintln!("gatehouse: cannot start the log writer thread ({e}); log lines will be dropped");
    }
    if to_journal {
        tracing_subscriber::registry()
            .with(filter)
            .with(super::journal::Journal)
            .init();
        return;
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Queue);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        // ANSI colours only on a terminal.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .event_format(Text {
                full: format::Format::default().with_target(false),
            })
            .init(),
    }
}

/// The writer the stdout formats are given: each formatted line goes to `log_queue`.
struct Queue;

/// One event's line; close lines wait for the writer's next round, others wake it.
struct Line {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: meta.target() != CLOSE_LOG_TARGET,
        }
    }
}

impl io::Write for Line {
    /// The formatter hands over a whole line in one call.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        log_queue::push(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The text format: every event as tracing-subscriber writes it, except close lines.
struct Text {
    full: format::Format<format::Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if event.metadata().target() != CLOSE_LOG_TARGET {
            return self.full.format_event(ctx, writer, event);
        }
        let mut message = Message::default();
        event.record(&mut message);
        SystemTime.format_time(&mut writer)?;
        writeln!(writer, " {:>5} {}", event.metadata().level(), message.0)
    }
}

/// Picks the message out of an event's fields.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
