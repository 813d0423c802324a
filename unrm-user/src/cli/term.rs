//! Who reads standard output. A person at a terminal gets local times,
//! colour and tables arranged to the terminal's width; anything else (a
//! pipe, a file, a script) gets one stable plain form: RFC 3339 times in
//! UTC, no escape sequences, nothing wrapped, whatever terminal the
//! script happens to run under. `--json` never asks.

use std::{ffi::OsString, io::IsTerminal, time::SystemTime};

use jiff::tz::TimeZone;

use super::format;

pub struct Term {
    /// Standard output is a terminal.
    pub tty: bool,
    /// Colour is wanted: a terminal that is not `TERM=dumb`, and no
    /// `NO_COLOR` (https://no-color.org).
    pub colour: bool,
    /// The terminal's width in columns (`COLUMNS` first), if known.
    pub width: Option<u16>,
    /// The local time zone (`TZ`, else the system's).
    zone: TimeZone,
}

impl Term {
    pub fn stdout() -> Self {
        let tty = std::io::stdout().is_terminal();
        let width = if tty { columns(std::env::var_os("COLUMNS")).or_else(window_width) } else { None };
        Term {
            tty,
            colour: colour_wanted(tty, std::env::var_os("NO_COLOR"), std::env::var_os("TERM")),
            width,
            zone: TimeZone::system(),
        }
    }

    /// A reader of one's choosing, in UTC (for tests).
    #[cfg(test)]
    pub fn fixed(tty: bool, colour: bool, width: Option<u16>) -> Self {
        Term { tty, colour, width, zone: TimeZone::UTC }
    }

    /// A moment in a table: local date and time on a terminal.
    pub fn time(&self, t: SystemTime) -> String {
        if self.tty { format::local_time(t, &self.zone, false) } else { format::time(t) }
    }

    /// A moment on its own: as in a table, with the zone's offset then.
    pub fn time_zoned(&self, t: SystemTime) -> String {
        if self.tty { format::local_time(t, &self.zone, true) } else { format::time(t) }
    }
}

/// Colour on a terminal only, never with `NO_COLOR` set to anything but
/// empty, nor on a terminal that says it cannot (`TERM` unset or `dumb`).
fn colour_wanted(tty: bool, no_color: Option<OsString>, term: Option<OsString>) -> bool {
    let no_color = no_color.is_some_and(|v| !v.is_empty());
    let dumb = term.is_none_or(|t| t.is_empty() || t == "dumb");
    tty && !no_color && !dumb
}

/// `COLUMNS`, when it holds a width.
fn columns(value: Option<OsString>) -> Option<u16> {
    value?.to_str()?.trim().parse().ok().filter(|&n| n > 0)
}

/// The width the terminal reports (0 when nobody set it: unknown).
fn window_width() -> Option<u16> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some(size.ws_col).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_rules() {
        let v = |s: &str| Some(OsString::from(s));
        assert!(colour_wanted(true, None, v("xterm-256color")));
        assert!(colour_wanted(true, v(""), v("xterm")), "an empty NO_COLOR does not count");
        assert!(!colour_wanted(false, None, v("xterm")), "not on a pipe");
        assert!(!colour_wanted(true, v("1"), v("xterm")));
        assert!(!colour_wanted(true, None, v("dumb")));
        assert!(!colour_wanted(true, None, None));
    }

    #[test]
    fn widths() {
        assert_eq!(columns(Some("60".into())), Some(60));
        assert_eq!(columns(Some("0".into())), None);
        assert_eq!(columns(Some("wide".into())), None);
        assert_eq!(columns(None), None);
    }
}
