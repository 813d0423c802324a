//! `unrm scan` against `lsof +L1`, over tens of thousands of open
//! descriptors spread across processes, some on deleted files.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::Instant,
};

use serde_json::json;

use super::{Row, median};
use crate::unrm_bin;

/// A child that opens `fds` descriptors on files in `dir`, deletes `delete`
/// of those files, says `ready` and waits for its stdin to close.
pub fn hold_many(dir: &str, fds: usize, delete: usize) {
    let limit = libc::rlimit { rlim_cur: (fds + 64) as u64, rlim_max: (fds + 64) as u64 };
    // SAFETY: raising our own descriptor limit (we run as root).
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let mut held = Vec::with_capacity(fds);
    for i in 0..fds {
        let path = std::path::Path::new(dir).join(format!("f{}", i % 50));
        held.push(std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap());
    }
    for i in 0..delete.min(50) {
        let _ = std::fs::remove_file(std::path::Path::new(dir).join(format!("f{i}")));
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

pub fn measure(processes: usize, fds_each: usize, runs: usize) -> Row {
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let me = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = (0..processes)
        .map(|p| {
            let dir = root.path().join(format!("p{p}"));
            std::fs::create_dir(&dir).unwrap();
            // One process in ten deletes a few of its files.
            let delete = if p % 10 == 0 { 5 } else { 0 };
            let mut child = Command::new(&me)
                .args(["hold-many", dir.to_str().unwrap(), &fds_each.to_string(), &delete.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            child
        })
        .collect();
    let time = |cmd: &mut Command| {
        let started = Instant::now();
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).output().unwrap();
        (started.elapsed().as_secs_f64() * 1000.0, out.stdout)
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_files, mut their_lines) = (0, 0);
    for _ in 0..runs {
        let (ms, out) = time(Command::new(unrm_bin()).args(["scan", "--json"]));
        ours.push(ms);
        our_files = serde_json::from_slice::<serde_json::Value>(&out).map(|v| v.as_array().map_or(0, |a| a.len())).unwrap_or(0);
        let (ms, out) = time(Command::new("lsof").args(["-nP", "+L1"]));
        theirs.push(ms);
        their_lines = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count().saturating_sub(1);
    }
    for child in &mut children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    let speedup = theirs / ours;
    Row {
        measure: "scan".into(),
        how: format!("unrm scan vs lsof -nP +L1, {} open fds in {processes} processes", processes * fds_each),
        result: format!("{speedup:.1}× faster ({ours:.0} ms vs {theirs:.0} ms)"),
        target: "≥ 20× faster".into(),
        met: Some(speedup >= 20.0),
        data: json!({ "unrm_ms": ours, "lsof_ms": theirs, "speedup": speedup, "fds": processes * fds_each,
                      "unrm_files": our_files, "lsof_lines": their_lines }),
    }
}
