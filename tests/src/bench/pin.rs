//! How fast unrm holds a deleted file, and how often it wins the race
//! against a holder that lets go soon after the unlink.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::Row;
use crate::Daemon;

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Waits until `check` holds on the daemon's status, or gives up.
fn settle(daemon: &Daemon, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = daemon.json(&["status", "--json"]);
        if check(&status) || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 1000 files held by this process, deleted one by one, 1 ms apart; the
/// daemon times each pin from the kernel's timestamp of the start of the
/// unlink call.
pub fn latency(files: usize, extra: &[&str]) -> Row {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), extra);
    let paths: Vec<CString> = (0..files)
        .map(|i| {
            let p = dir.path().join(format!("held{i}"));
            std::fs::write(&p, b"held content").unwrap();
            cpath(&p)
        })
        .collect();
    // One held file first: the daemon attaches its release probes on its
    // first pin, and patching the kernel's tracepoint sites stalls every
    // CPU for a moment once. The figures are for the steady state after.
    let warm = dir.path().join("warm-up");
    std::fs::write(&warm, b"warm").unwrap();
    let warm_holder = crate::Holder::fd(&warm);
    crate::rm(&warm, None);
    daemon.wait_record(&warm, "held");
    // SAFETY: opening and unlinking files this benchmark created.
    let fds: Vec<i32> = paths.iter().map(|p| unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) }).collect();
    for p in &paths {
        unsafe { libc::unlink(p.as_ptr()) };
        std::thread::sleep(Duration::from_millis(1));
    }
    let want = files as u64 + 1;
    let status = settle(&daemon, Duration::from_secs(30), |s| s["counters"]["pins"].as_u64() >= Some(want));
    for fd in fds {
        unsafe { libc::close(fd) };
    }
    drop(warm_holder);
    let l = &status["pin_latency_us"];
    let (p50, p99) = (l["p50"].as_u64().unwrap_or(u64::MAX), l["p99"].as_u64().unwrap_or(u64::MAX));
    Row {
        measure: "pin latency".into(),
        how: format!(
            "{files} held files deleted 1 ms apart, after one warm-up; from the start of the unlink call"
        ),
        result: format!("p50 {p50} µs, p99 {p99} µs ({} fast pins)", status["counters"]["fast_pins"]),
        target: "p50 ≤ 100 µs, p99 ≤ 1 ms".into(),
        met: Some(p50 <= 100 && p99 <= 1000),
        data: json!({ "latency_us": l, "counters": status["counters"] }),
    }
}

/// The share of files captured when the holder closes each delay after the
/// unlink, over `runs` runs (a fresh daemon each): the worst run per delay.
pub fn capture_rate(per_delay: usize, runs: usize, extra: &[&str]) -> Row {
    let delays_us = [0u64, 100, 1000, 2000, 10000];
    let mut worst = vec![f64::INFINITY; delays_us.len()];
    let mut all_runs = Vec::new();
    for run in 0..runs {
        let curve = capture_curve(&delays_us, per_delay, extra);
        for (w, c) in worst.iter_mut().zip(&curve) {
            *w = w.min(c["share"].as_f64().unwrap_or(0.0));
        }
        all_runs.push(curve);
        eprintln!("  capture rate: run {}/{runs}", run + 1);
    }
    let text: Vec<String> = delays_us
        .iter()
        .zip(&worst)
        .map(|(us, share)| format!("{} ms: {:.0}%", *us as f64 / 1000.0, share * 100.0))
        .collect();
    let share_at = |us: u64| delays_us.iter().position(|d| *d == us).map_or(0.0, |i| worst[i]);
    Row {
        measure: "capture rate".into(),
        how: format!(
            "{per_delay} files per delay, worst of {runs} runs; holder closes that long after the unlink"
        ),
        result: text.join(", "),
        target: "100% at ≥ 1 ms in every run".into(),
        met: Some([1000, 2000, 10000].iter().all(|us| share_at(*us) >= 1.0)),
        data: json!({ "delays_us": delays_us, "worst_share": worst, "runs": all_runs }),
    }
}

/// One run of `capture_rate`: per delay, what became of the files.
fn capture_curve(delays_us: &[u64], per_delay: usize, extra: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // This process both deletes and holds each file, which the default
    // policy takes for a scratch file and does not copy: ask for copies.
    let config = dir.path().join("unrm.toml");
    std::fs::write(&config, "scratch_files = \"capture\"\n").unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &args);
    let mut curve = Vec::new();
    for &delay in delays_us {
        let sub = dir.path().join(format!("d{delay}"));
        std::fs::create_dir(&sub).unwrap();
        for i in 0..per_delay {
            let p = sub.join(format!("f{i}"));
            std::fs::write(&p, b"brief").unwrap();
            let c = cpath(&p);
            // SAFETY: this benchmark's own file and descriptor.
            unsafe {
                let fd = libc::open(c.as_ptr(), libc::O_RDONLY);
                libc::unlink(c.as_ptr());
                spin(Duration::from_micros(delay));
                libc::close(fd);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let glob = format!("{}/*", sub.display());
        let deadline = Instant::now() + Duration::from_secs(30);
        let records = loop {
            let records = daemon.json(&["list", "--json", "--limit", "0", "--path", &glob]);
            let list = records.as_array().unwrap().clone();
            let settled = list.len() >= per_delay && list.iter().all(|r| r["status"] != "held");
            if settled || Instant::now() > deadline {
                break list;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let count = |s: &str| records.iter().filter(|r| r["status"] == s).count();
        let saved = count("captured");
        curve.push(json!({
            "delay_us": delay,
            "files": per_delay,
            "captured": saved,
            "missed": count("missed"),
            "unheld": count("unheld"),
            "still_held": count("held"),
            "records": records.len(),
            "share": saved as f64 / per_delay as f64,
        }));
    }
    curve
}
