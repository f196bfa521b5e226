//! Output formats: readable tables by default, JSON with `-o json`.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::ca::unix_to_system_time;

/// Table or JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// A table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// RFC 3339 text for Unix seconds, `-` for 0.
pub fn time(unix: i64) -> String {
    if unix == 0 {
        "-".into()
    } else {
        humantime::format_rfc3339_seconds(unix_to_system_time(unix)).to_string()
    }
}

/// "3m ago"-style age of Unix seconds relative to `now_unix`, `never` for 0.
pub fn age(unix: i64, now_unix: i64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let seconds = u64::try_from(now_unix.saturating_sub(unix)).unwrap_or(0);
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(seconds))
    )
}

/// The first 16 digits of a hex serial or digest, `…` when longer, `-` when empty.
pub fn short_hex(serial: &str) -> String {
    match serial.get(..16) {
        _ if serial.is_empty() => "-".into(),
        Some(prefix) if serial.len() > 16 => format!("{prefix}…"),
        _ => serial.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hexs() {
        assert_eq!(short_hex(""), "-");
        assert_eq!(short_hex("abcd"), "abcd");
        assert_eq!(short_hex("0123456789abcdef0123"), "0123456789abcdef…");
    }
}
