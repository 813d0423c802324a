//! What the daemon keeps in memory: its resident set with many records
//! (after the unlink storm) and with many pinned files.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Row;
use crate::Daemon;

/// The resident set of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

/// The daemon's resident set once it has pinned `files` deleted files that
/// one helper process holds.
pub fn pinned(files: usize) -> Row {
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &[]);
    let idle = rss_mib(daemon.pid());
    let mut child = super::scan::spawn_holder(root.path(), files, files, files);
    let deadline = Instant::now() + Duration::from_secs(120);
    let pins = loop {
        let pins = daemon
            .json(&["list", "--json", "--status", "held", "--limit", "0"])
            .as_array()
            .map_or(0, Vec::len);
        if pins >= files || Instant::now() > deadline {
            break pins;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rss = rss_mib(daemon.pid());
    drop(child.stdin.take());
    let _ = child.wait();
    Row {
        measure: "daemon memory, pinned files".into(),
        how: format!("resident set with {pins} deleted files pinned (idle before: {idle:.1} MiB)"),
        result: format!("{rss:.1} MiB"),
        target: "reported".into(),
        met: None,
        data: json!({ "pinned": pins, "rss_mib": rss, "idle_rss_mib": idle }),
    }
}
