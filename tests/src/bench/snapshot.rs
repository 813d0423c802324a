//! Capturing a large held file, against `cp` on the same filesystem; and
//! on filesystems that share extents, a reflink that costs nothing per byte.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;

use super::{Row, median};
use crate::{Daemon, Holder, Mount, run};

fn write_file(path: &Path, size: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for byte in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..size >> 20 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

/// `cp` then fsync of the copy (unrm's capture is fsynced too).
fn time_cp(dir: &Path, size: u64, reflink: &str) -> f64 {
    let src = dir.join("cp-src");
    let dst = dir.join("cp-dst");
    write_file(&src, size);
    let started = Instant::now();
    run(Command::new("cp").arg(format!("--reflink={reflink}")).arg(&src).arg(&dst));
    run(Command::new("sync").arg(&dst));
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&src).unwrap();
    std::fs::remove_file(&dst).unwrap();
    secs
}

/// From the holder's exit to the record's `captured_at`.
fn time_capture(daemon: &Daemon, dir: &Path, size: u64) -> f64 {
    let path = dir.join("held-big");
    write_file(&path, size);
    let holder = Holder::fd(&path);
    crate::rm(&path, None);
    daemon.wait_record(&path, "held");
    let released = SystemTime::now();
    holder.exit();
    let rec = daemon.wait_record(&path, "captured");
    let captured = humantime::parse_rfc3339(rec["captured_at"].as_str().unwrap()).unwrap();
    let secs = captured.duration_since(released).unwrap_or(Duration::ZERO).as_secs_f64();
    let id = rec["id"].to_string();
    let _ = std::fs::remove_file(daemon.state_dir.join("store").join(id));
    secs
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 { format!("{} GiB", bytes >> 30) } else { format!("{} MiB", bytes >> 20) }
}

fn state_in(dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let p = tmp.path().to_path_buf();
    (tmp, p)
}

pub fn measure(size: u64, rounds: usize) -> Vec<Row> {
    let label = size_label(size);
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let (state, _) = state_in(Path::new("/var/tmp"));
    let daemon = Daemon::start_in(state, &["--max-file-size", "4G"]);
    let (mut cp, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        cp.push(time_cp(work.path(), size, "never"));
        ours.push(time_capture(&daemon, work.path(), size));
        eprintln!("  snapshot: round {}/{rounds}", round + 1);
    }
    drop(daemon);
    let (cp, ours) = (median(&mut cp), median(&mut ours));
    let speed = cp / ours;
    let mut rows = vec![Row {
        measure: "snapshot (copy)".into(),
        how: format!("capture of a {label} held file vs cp + fsync, ext4"),
        result: format!("{speed:.2}× cp's speed ({ours:.2} s vs {:.2} s)", cp),
        target: "≥ 0.9× cp".into(),
        met: Some(speed >= 0.9),
        data: json!({ "capture_s": ours, "cp_s": cp, "speed_vs_cp": speed, "bytes": size }),
    }];
    for fs in ["xfs", "btrfs"] {
        match Mount::image(fs, 3 * size) {
            Some(mount) => rows.push(reflink(&mount, fs, size, rounds)),
            None => eprintln!("  snapshot: mkfs.{fs} unavailable; reflink row skipped"),
        }
    }
    rows
}

fn reflink(mount: &Mount, fs: &str, size: u64, rounds: usize) -> Row {
    let (state, _) = state_in(&mount.path);
    let daemon = Daemon::start_in(state, &["--max-file-size", "4G"]);
    let (mut cp, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        cp.push(time_cp(&mount.path, size, "always"));
        ours.push(time_capture(&daemon, &mount.path, size));
    }
    let (cp, ours) = (median(&mut cp), median(&mut ours));
    Row {
        measure: format!("snapshot (reflink, {fs})"),
        how: format!("capture of a {} held file, store on the same {fs}", size_label(size)),
        result: format!("{:.0} ms (cp --reflink: {:.0} ms)", ours * 1000.0, cp * 1000.0),
        target: "O(1): well under 100 ms".into(),
        met: Some(ours < 0.1),
        data: json!({ "fs": fs, "capture_s": ours, "cp_reflink_s": cp, "bytes": size }),
    }
}
