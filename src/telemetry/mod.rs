//! Logging setup, the one way an error chain is printed, and the one way
//! text from outside (a cluster's report) is made safe to store and print;
//! the health endpoints (`health`) and the Prometheus metrics (`metrics`).

pub mod health;
pub mod metrics;

/// The format [`init`] set (text until then).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Reports the error a command ended with on stderr: `error: ...` as
/// text, or, with `--log-format json`, one `ERROR` event (message
/// `command failed`, field `error`) like every other line.
pub fn report_failure(error: &anyhow::Error) {
    match FORMAT.get() {
        Some(LogFormat::Json) => {
            tracing::error!(error = %error_text(error.as_ref()), "command failed")
        }
        _ => eprintln!("error: {}", error_text(error.as_ref())),
    }
}

/// Prints a progress line of a long command (e.g. `rotate advance
/// --wait`) on stderr: the line as it is, or, with `--log-format json`, one
/// `INFO` event whose message is the line, so that stderr stays one JSON
/// object per line.
pub fn progress(line: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!("{line}"),
        _ => eprintln!("{line}"),
    }
}

/// The same for a warning the user must read (`WARN` in JSON).
pub fn warning(line: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::warn!("{line}"),
        _ => eprintln!("{line}"),
    }
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp` (RFC 3339, UTC), `level`,
    /// `target` (the module), `message`, then the event's own fields
    /// (`cluster`, `serial`, `error`, ...) at the top level.
    Json,
}

/// Initialises `tracing` to stderr in `format`; `RUST_LOG` overrides
/// `default_level` (the same filter syntax: `info,trustplane::store=debug`).
pub fn init(default_level: &str, format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .try_init(),
    };
}

/// The error and its causes on one line ("a: b: c"), skipping a cause whose
/// text is already included.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

/// `text` with every control character (C0 and C1, so ANSI escapes, `\r`
/// and `\n` too) and every bidirectional-override character replaced by a
/// space: text a cluster supplies can then neither move a terminal's cursor,
/// colour it, fake a line of output, nor reorder what is shown.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() || is_bidi_control(character) {
                ' '
            } else {
                character
            }
        })
        .collect()
}

/// Unicode's explicit directional formatting characters.
fn is_bidi_control(character: char) -> bool {
    matches!(
        character,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_replaces_control_escape_and_bidi_characters() {
        assert_eq!(printable("ok"), "ok");
        assert_eq!(printable("a\nb\rc\td"), "a b c d");
        assert_eq!(printable("\u{1b}[2J\u{1b}[31mred"), " [2J [31mred");
        assert_eq!(printable("\u{9b}31m"), " 31m");
        assert_eq!(printable("\u{7f}x\u{0}"), " x ");
        assert_eq!(printable("abc\u{202e}fed"), "abc fed");
        assert_eq!(printable("grüße ✓"), "grüße ✓");
    }
}
