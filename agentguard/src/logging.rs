//! tracing set-up: `RUST_LOG` filters (default `info`), text or JSON lines
//! on stderr, shaped for where stderr goes.
//!
//! - A terminal gets colour; a pipe or file never gets ANSI escapes (nor
//!   does a terminal when `NO_COLOR` is set, <https://no-color.org>).
//! - journald (systemd connects stderr to it and says so in
//!   `JOURNAL_STREAM`) gets each line prefixed with its syslog priority,
//!   `<3>` for errors to `<7>` for debug (sd-daemon(3)), so `journalctl -p
//!   warning` finds warnings; and no timestamp, which the journal adds.

use std::{
    fmt::Write as _,
    io::IsTerminal as _,
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, Ordering},
};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Where stderr goes, as far as formatting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Terminal,
    Journal,
    Plain,
}

/// Whether [`init`] found stderr connected to journald: errors printed
/// outside tracing ([`error_line`]) take a priority prefix too.
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Decides the [`Sink`] from stderr and the environment.
pub fn detect() -> Sink {
    let stderr = std::io::stderr();
    let stat = nix::sys::stat::fstat(stderr.as_fd()).ok();
    let journal = std::env::var("JOURNAL_STREAM").ok();
    if let (Some(stat), Some(journal)) = (stat, journal)
        && journal_stream_matches(&journal, stat.st_dev, stat.st_ino)
    {
        return Sink::Journal;
    }
    if stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) {
        Sink::Terminal
    } else {
        Sink::Plain
    }
}

/// `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected
/// to the journal (systemd.exec(5)). It is inherited by children whose
/// stderr may since have been redirected elsewhere, so it counts only
/// while stderr is still that very stream.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

pub fn init(format: LogFormat) {
    let sink = detect();
    JOURNAL.store(sink == Sink::Journal, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(sink == Sink::Terminal);
    // try_init: a second call (tests) is harmless.
    let _ = match (format, sink) {
        (LogFormat::Text, Sink::Journal) => builder
            .event_format(JournalPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Json, Sink::Journal) => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JournalPrefix(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ))
            .try_init(),
        (LogFormat::Text, _) => builder.try_init(),
        (LogFormat::Json, _) => builder.json().with_current_span(true).try_init(),
    };
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `message` as the one line the CLI prints for a fatal error: with the
/// error priority when stderr is the journal.
pub fn error_line(message: &str) -> String {
    if JOURNAL.load(Ordering::Relaxed) {
        prefix_lines(3, message)
    } else {
        message.to_owned()
    }
}

/// Every line of `text` prefixed with `<priority>`: journald makes one
/// entry of each line, and a continuation line without the prefix would be
/// logged at the default priority (an error's details as info).
fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.trim_end_matches('\n').split('\n') {
        let _ = writeln!(out, "<{priority}>{line}");
    }
    out.truncate(out.trim_end_matches('\n').len());
    out
}

/// Wraps an event formatter for journald: see [`prefix_lines`].
struct JournalPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writeln!(
            writer,
            "{}",
            prefix_lines(priority(event.metadata().level()), &line)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_very_stream() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[test]
    fn every_line_carries_the_priority() {
        assert_eq!(prefix_lines(6, "one\n"), "<6>one");
        assert_eq!(
            prefix_lines(3, "invalid policy:\nx.toml:3:10: bad\n"),
            "<3>invalid policy:\n<3>x.toml:3:10: bad"
        );
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
