//! Small text helpers for human output.

use std::{borrow::Cow, time::SystemTime};

use jiff::{Timestamp, tz::TimeZone};

/// Text from the outside world (paths, command names, reasons), safe to
/// print on a terminal: control characters and the marks that reorder text
/// (bidirectional overrides) are shown escaped, so a file name cannot
/// rewrite or disguise what the user sees.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_to_print) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if unsafe_to_print(c) { c.escape_default().to_string() } else { c.to_string() })
            .collect(),
    )
}

fn unsafe_to_print(c: char) -> bool {
    // Bidirectional marks and overrides, zero-width characters, line and
    // paragraph separators, the byte-order mark: each can reorder, hide or
    // break what a name looks like.
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.1}{}", UNITS[unit]) }
}

/// RFC 3339 in UTC, to the second: what scripts read.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2026-11-28 18:02:11` in `zone`; with `offset`, followed by the zone's
/// offset at that moment (`+05:30`). A moment jiff cannot place (out of its
/// range) is given as RFC 3339.
pub fn local_time(t: SystemTime, zone: &TimeZone, offset: bool) -> String {
    let Ok(at) = Timestamp::try_from(t) else { return time(t) };
    let shape = if offset { "%Y-%m-%d %H:%M:%S %:z" } else { "%Y-%m-%d %H:%M:%S" };
    at.to_zoned_datetime(zone.clone()).strftime(shape).to_string()
}

/// `-rw-r--r--` from a `st_mode`.
pub fn mode(mode: u32) -> String {
    let kind = if mode & libc::S_IFMT == libc::S_IFREG { '-' } else { '?' };
    let bits = "rwxrwxrwx";
    let perms: String =
        bits.chars().enumerate().map(|(i, c)| if mode & (1 << (8 - i)) != 0 { c } else { '-' }).collect();
    format!("{kind}{perms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(size(5), "5B");
        assert_eq!(size(1536), "1.5K");
        assert_eq!(size(3 << 30), "3.0G");
        assert_eq!(mode(0o100640), "-rw-r-----");
        assert_eq!(time(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let kolkata = TimeZone::fixed(jiff::tz::Offset::from_seconds(19_800).unwrap());
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_888_931);
        assert_eq!(time(at), "2026-11-28T18:02:11Z");
        assert_eq!(local_time(at, &kolkata, false), "2026-11-28 23:32:11");
        assert_eq!(local_time(at, &kolkata, true), "2026-11-28 23:32:11 +05:30");
        assert_eq!(local_time(at, &TimeZone::UTC, true), "2026-11-28 18:02:11 +00:00");
        assert_eq!(clean("plain/path"), "plain/path");
        assert_eq!(clean("a\x1b[31mred\nline\u{9b}"), "a\\u{1b}[31mred\\nline\\u{9b}");
        assert_eq!(clean("txt.\u{202e}exe"), "txt.\\u{202e}exe");
    }
}
