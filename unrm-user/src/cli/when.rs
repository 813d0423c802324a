//! What the user types for a time and a path: `--since 10m` or
//! `--since 2026-11-28T10:00:00Z` or `--since "2026-11-28 10:00"` (local
//! time); `--path .` or `--path 'src/*'` from the current directory.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use jiff::{Timestamp, civil, tz::TimeZone};

/// A moment: that long ago (a duration: `10m`, `2h 30m`, `3days`), an
/// RFC 3339 time with its offset, or a date and time (or a date, at
/// midnight) in the local time zone.
pub fn parse_when(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{text:?} is before the epoch"));
    }
    let local = |dt: civil::DateTime| TimeZone::system().to_timestamp(dt).ok();
    let at = text
        .parse::<Timestamp>()
        .ok()
        .or_else(|| local(text.parse::<civil::DateTime>().ok()?))
        .or_else(|| local(text.parse::<civil::Date>().ok()?.to_datetime(civil::Time::midnight())))
        .ok_or_else(|| {
            format!("{text:?}: not a duration (10m, 2h) nor a time (2026-11-28T10:00:00Z, \"2026-11-28 10:00\", 2026-11-28)")
        })?;
    SystemTime::try_from(at).map_err(|e| format!("{text:?}: {e}"))
}

/// A path glob as the daemon matches it: absolute, with a relative one taken
/// from `cwd` (whose own characters match only themselves). `.` is all
/// under `cwd`; leading `./` and `../` are applied.
pub fn absolute_glob(glob: &str, cwd: &Path) -> String {
    if glob.starts_with('/') {
        return glob.to_owned();
    }
    let (mut base, mut rest) = (cwd.to_path_buf(), glob);
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            base.pop();
            rest = r;
        } else if rest == ".." {
            base.pop();
            rest = ".";
        } else {
            break;
        }
    }
    let rest = if rest.is_empty() || rest == "." { "**" } else { rest };
    let base = globset::escape(&base.to_string_lossy());
    format!("{}/{rest}", base.trim_end_matches('/'))
}

/// A path the user named, absolute and lexically normalised (no symlink is
/// followed: the record holds the path as it was named).
pub fn absolute_path(path: &Path, cwd: &Path) -> PathBuf {
    crate::ingest::normalize(&cwd.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_globs_start_at_the_current_directory() {
        let cwd = Path::new("/home/a b/[x]");
        assert_eq!(absolute_glob("/etc/*", cwd), "/etc/*");
        assert_eq!(absolute_glob(".", cwd), "/home/a b/[[]x[]]/**");
        assert_eq!(absolute_glob("src/*.rs", cwd), "/home/a b/[[]x[]]/src/*.rs");
        assert_eq!(absolute_glob("./../*.log", cwd), "/home/a b/*.log");
        assert_eq!(absolute_glob("..", cwd), "/home/a b/**");
        assert_eq!(absolute_glob(".", Path::new("/")), "/**");
    }

    #[test]
    fn times_are_durations_or_moments() {
        let before = SystemTime::now();
        let ago = parse_when("10m").unwrap();
        assert!(ago < before && before.duration_since(ago).unwrap().as_secs() >= 599);
        let utc = parse_when("2026-11-28T10:00:00Z").unwrap();
        assert_eq!(utc.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_795_860_000);
        assert!(parse_when("2026-11-28 10:00").is_ok());
        assert!(parse_when("2026-11-28").is_ok());
        assert!(parse_when("yesterday-ish").unwrap_err().contains("not a duration"));
    }
}
