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

/// The last Unix second RFC 3339 can show (9999-12-31T23:59:59Z).
const MAX_RFC3339_UNIX: i64 = 253_402_300_799;

/// RFC 3339 text for Unix seconds, `-` for 0, `invalid (N)` for a time
/// before the epoch or after year 9999. Total: any value a server or a
/// cluster sends is shown, never a panic.
pub fn time(unix: i64) -> String {
    match unix {
        0 => "-".into(),
        1..=MAX_RFC3339_UNIX => {
            humantime::format_rfc3339_seconds(unix_to_system_time(unix)).to_string()
        }
        _ => format!("invalid ({unix})"),
    }
}

/// "3m ago"-style age of Unix seconds relative to `now_unix`, `never` for 0,
/// `invalid (N)` for a negative time, `in the future` for one after `now_unix`.
pub fn age(unix: i64, now_unix: i64) -> String {
    if unix == 0 {
        return "never".into();
    }
    if unix < 0 {
        return format!("invalid ({unix})");
    }
    match u64::try_from(now_unix.saturating_sub(unix)) {
        Ok(seconds) => format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(seconds))
        ),
        Err(_) => "in the future".into(),
    }
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

    #[test]
    fn times_and_ages_are_total() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time(MAX_RFC3339_UNIX), "9999-12-31T23:59:59Z");
        for value in [-1, i64::MIN, i64::MAX, MAX_RFC3339_UNIX + 1] {
            assert_eq!(time(value), format!("invalid ({value})"));
        }
        assert_eq!(age(0, 100), "never");
        assert_eq!(age(40, 100), "1m ago");
        assert_eq!(age(-1, 100), "invalid (-1)");
        assert_eq!(age(i64::MIN, 100), format!("invalid ({})", i64::MIN));
        assert_eq!(age(i64::MAX, 100), "in the future");
        assert!(age(1, i64::MAX).ends_with(" ago"));
    }
}
