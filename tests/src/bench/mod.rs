//! `cargo xtask bench`: unrm measured against its anchors, side by side in
//! one run (daemon on vs off in interleaved rounds, medians), printed as a
//! table and written as JSON with the machine it ran on.
//!
//! Figures are ratios or percentiles measured in the same run; the machine
//! is noisy, so absolute numbers from different runs are not comparable.

pub mod held_unlink;
pub mod hot;
pub mod memory;
pub mod pin;
pub mod protect;
pub mod scan;
pub mod snapshot;
pub mod storm;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One line of the table.
pub struct Row {
    pub measure: String,
    pub how: String,
    pub result: String,
    pub target: String,
    /// None where a row reports a curve rather than a pass/fail figure.
    pub met: Option<bool>,
    pub data: Value,
}

impl Row {
    pub fn print(&self) {
        let met = match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        println!("| {} | {} | {} | {} | {} |", self.measure, self.how, self.result, self.target, met);
    }

    pub fn json(&self) -> Value {
        json!({
            "measure": self.measure,
            "how": self.how,
            "result": self.result,
            "target": self.target,
            "met": self.met,
            "data": self.data,
        })
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Nanoseconds per iteration of `f`, run `n` times.
pub fn ns_per_op(n: u64, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What the figures came from.
pub fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
    })
}
