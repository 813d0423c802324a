//! `unrm scan` against `lsof +L1`, over tens of thousands of open
//! descriptors spread across processes, some on deleted files.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::Instant,
};

use serde_json::json;

use super::{Row, median};
use crate::{Daemon, unrm_bin};

/// A child that opens `fds` descriptors on `files` files in `dir`, deletes
/// `delete` of those files, says `ready` and waits for its stdin to close.
pub fn hold_many(dir: &str, fds: usize, files: usize, delete: usize) {
    let limit = libc::rlimit { rlim_cur: (fds + 64) as u64, rlim_max: (fds + 64) as u64 };
    // SAFETY: raising our own descriptor limit (we run as root).
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let mut held = Vec::with_capacity(fds);
    for i in 0..fds {
        let path = std::path::Path::new(dir).join(format!("f{}", i % files));
        held.push(std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap());
    }
    for i in 0..delete.min(files) {
        let _ = std::fs::remove_file(std::path::Path::new(dir).join(format!("f{i}")));
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

/// Starts `hold-many` in this benchmark binary on `dir` and waits until it
/// holds what it was asked to; closing its stdin lets it go.
pub fn spawn_holder(dir: &std::path::Path, fds: usize, files: usize, delete: usize) -> Child {
    let me = std::env::current_exe().unwrap();
    let args = [fds, files, delete].map(|n| n.to_string());
    let mut child = Command::new(me)
        .args(["hold-many", dir.to_str().unwrap(), &args[0], &args[1], &args[2]])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// How the open descriptors are spread: over how many files per process,
/// and how many of those each process deletes (one process in ten, or all).
pub struct Shape {
    pub processes: usize,
    pub fds_each: usize,
    pub files_each: usize,
    pub deleted_each: usize,
    pub every_process_deletes: bool,
}

pub fn measure(shape: &Shape, runs: usize) -> Row {
    let Shape { processes, fds_each, files_each, deleted_each, every_process_deletes } = *shape;
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut children: Vec<Child> = (0..processes)
        .map(|p| {
            let dir = root.path().join(format!("p{p}"));
            std::fs::create_dir(&dir).unwrap();
            let delete = if every_process_deletes || p % 10 == 0 { deleted_each } else { 0 };
            spawn_holder(&dir, fds_each, files_each, delete)
        })
        .collect();
    let time = |cmd: &mut Command| {
        let started = Instant::now();
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).output().unwrap();
        (started.elapsed().as_secs_f64() * 1000.0, out.stdout)
    };
    // Alternately unrm and lsof, `runs` times each; unrm via `socket`.
    let compare = |socket: &std::path::Path| {
        let (mut ours, mut theirs, mut found) = (Vec::new(), Vec::new(), 0);
        for _ in 0..runs {
            let (ms, out) =
                time(Command::new(unrm_bin()).args(["scan", "--json"]).env("UNRM_SOCKET", socket));
            ours.push(ms);
            found = serde_json::from_slice::<serde_json::Value>(&out)
                .map_or(0, |v| v.as_array().map_or(0, |a| a.len()));
            theirs.push(time(Command::new("lsof").args(["-nP", "+L1"])).0);
        }
        (median(&mut ours), median(&mut theirs), found)
    };
    let nowhere = root.path().join("no-daemon.sock");
    let (alone, lsof_alone, found_alone) = compare(&nowhere);
    // The daemon leaves these files alone (it would pin and later copy
    // each): `scan` still lists them, which is what is measured.
    let policy = format!("exclude = [\"{}/**\"]\n", root.path().display());
    let (_state, daemon) = Daemon::with_config(&policy, &[]);
    let (served, lsof_served, found_served) = compare(&daemon.socket);
    drop(daemon);
    for child in &mut children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let speedup = lsof_served / served;
    let speedup_alone = lsof_alone / alone;
    Row {
        measure: "scan".into(),
        how: format!(
            "unrm scan vs lsof -nP +L1, {} open fds in {processes} processes, {} deleted files held",
            processes * fds_each,
            found_alone
        ),
        result: format!(
            "{speedup:.1}× faster with the daemon ({served:.0} vs {lsof_served:.0} ms); {speedup_alone:.1}× standalone ({alone:.0} vs {lsof_alone:.0} ms)"
        ),
        target: "≥ 20× faster".into(),
        met: Some(speedup >= 20.0),
        data: json!({ "daemon_ms": served, "standalone_ms": alone, "lsof_ms": lsof_served,
                      "lsof_standalone_ms": lsof_alone, "speedup": speedup, "speedup_standalone": speedup_alone,
                      "fds": processes * fds_each, "files_found": [found_alone, found_served] }),
    }
}
