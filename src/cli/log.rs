//! Logging for `gatehouse run`: the filter (flag, RUST_LOG, `[log] level`) and the two
//! formats. JSON carries every field of every event; text is for people, so a
//! connection's close line is its tcplog-like message alone, its fields being JSON's.

use std::fmt;

use gatehouse::config::{Config, LogFormat};
use gatehouse::proxy::CLOSE_LOG_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(super::log_buffer::Stdout);
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
