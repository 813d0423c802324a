//! Which metrics there are: one row per figure of `DaemonStatus`, so that
//! a new figure is one line here. Rows that share a name are one family,
//! one sample per label value. Names follow Prometheus' conventions: the
//! unit in the name (`_bytes`, `_seconds`), counters in `_total`.

use super::{Family, Histogram, Kind, Sample, Value};
use crate::api::proto::DaemonStatus;

/// One sample of a counter or gauge family.
pub struct Row {
    /// Its name in the text format (a counter's ends in `_total`).
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// A label and its value, where the family has one sample per value.
    pub label: Option<(&'static str, &'static str)>,
    pub value: fn(&DaemonStatus) -> u64,
}

const fn counter(name: &'static str, help: &'static str, value: fn(&DaemonStatus) -> u64) -> Row {
    Row { name, kind: Kind::Counter, help, label: None, value }
}

const fn gauge(name: &'static str, help: &'static str, value: fn(&DaemonStatus) -> u64) -> Row {
    Row { name, kind: Kind::Gauge, help, label: None, value }
}

/// A row of `unrm_records_total`, whose `outcome` label says what became of a deleted file.
const fn outcome(value_of_label: &'static str, value: fn(&DaemonStatus) -> u64) -> Row {
    Row {
        name: "unrm_records_total",
        kind: Kind::Counter,
        help: "What became of deleted files, by outcome: captured (copied into the store), missed (let go before unrm could pin it), unheld (nobody held it: nothing to keep), skipped (not pinned or not captured: over a bound), failed (the copy failed), evicted (a capture let go to keep the store within its bounds).",
        label: Some(("outcome", value_of_label)),
        value,
    }
}

pub const ROWS: &[Row] = &[
    counter("unrm_events_total", "Events the probes reported (deletions and releases).", |s| {
        s.counters.events
    }),
    counter("unrm_deletions_total", "Deletions the probes reported.", |s| s.counters.deletions),
    counter("unrm_releases_total", "Last-holder releases of pinned files the probes reported.", |s| {
        s.counters.releases
    }),
    counter(
        "unrm_lost_events_total",
        "Events the probes had to drop (ring buffer or table full); snapshots find what they would have said.",
        |s| s.counters.lost_events,
    ),
    counter("unrm_scans_total", "Snapshots of every process' open and mapped files.", |s| s.counters.scans),
    counter("unrm_pins_total", "Deleted files pinned (a reference of unrm's own taken).", |s| {
        s.counters.pins
    }),
    counter(
        "unrm_fast_pins_total",
        "Pins taken through the holder the probe found in the kernel, without waiting for a snapshot.",
        |s| s.counters.fast_pins,
    ),
    outcome("captured", |s| s.counters.captured),
    outcome("missed", |s| s.counters.missed),
    outcome("unheld", |s| s.counters.unheld),
    outcome("skipped", |s| s.counters.skipped),
    outcome("failed", |s| s.counters.failed),
    outcome("evicted", |s| s.counters.evicted),
    counter("unrm_policy_ignored_total", "Deletions the policy's globs or owner filter left out.", |s| {
        s.counters.ignored
    }),
    gauge("unrm_held_files", "Deleted files pinned now.", |s| s.held_files),
    gauge("unrm_held_bytes", "Size of the deleted files pinned now.", |s| s.held_bytes),
    gauge("unrm_store_bytes", "Bytes the store's captures take.", |s| s.store_bytes),
    gauge("unrm_store_files", "Captures in the store.", |s| s.store_files),
    gauge("unrm_protected_files", "Files unrm holds in protected trees.", |s| s.protected_files),
    gauge("unrm_protected_trees", "Trees being protected.", |s| s.protected_trees),
    gauge("unrm_index_records", "Records in the index.", |s| s.records),
    gauge(
        "unrm_release_probes_attached",
        "1 while the release probes are attached (some pinned file has holders).",
        |s| s.probes.release_attached as u64,
    ),
    gauge("unrm_uptime_seconds", "Seconds since the daemon started.", |s| s.uptime_secs),
    // The guards (`Safety`).
    gauge("unrm_pin_budget", "Pins the descriptor limit allows.", |s| s.safety.pin_budget),
    gauge("unrm_pins_open", "Pins (and grabs) open now.", |s| s.safety.pins_open),
    counter("unrm_over_budget_total", "Held deletions not pinned because the pin budget was spent.", |s| {
        s.safety.over_budget
    }),
    counter(
        "unrm_over_user_pins_total",
        "Held deletions not pinned because their owner had too many pins.",
        |s| s.safety.over_user_pins,
    ),
    counter(
        "unrm_over_user_store_total",
        "Captures refused because their owner's share of the store was full.",
        |s| s.safety.over_user_store,
    ),
    counter(
        "unrm_rate_limited_total",
        "Records of unheld deletions not written: their deleter went over per_user.records_per_minute.",
        |s| s.safety.rate_limited,
    ),
    counter(
        "unrm_probe_failed_calls_total",
        "Failed unlink and rename calls the probes dropped in the kernel.",
        |s| s.safety.failed_calls,
    ),
    counter(
        "unrm_probe_failed_reads_total",
        "Reads of kernel memory the probes' helper refused (each leaves a fact unknown).",
        |s| s.safety.failed_reads,
    ),
    counter(
        "unrm_watch_full_total",
        "Inodes or processes the probes' full watch tables could not take.",
        |s| s.safety.watch_full,
    ),
    gauge("unrm_pidfds", "Holder exits watched by pidfd now.", |s| s.safety.pidfds),
    gauge("unrm_pidfd_budget", "Holder exits that may be watched by pidfd at once.", |s| {
        s.safety.pidfd_budget
    }),
    counter("unrm_pidfds_refused_total", "Holder exits not watched: the pidfd budget was spent.", |s| {
        s.safety.pidfds_refused
    }),
    counter("unrm_index_errors_total", "Writes the index refused (full disk, I/O error).", |s| {
        s.safety.index_errors
    }),
    gauge("unrm_index_waiting_writes", "Index writes waiting to be replayed.", |s| s.safety.index_waiting),
    counter("unrm_index_dropped_total", "Unheld records dropped while index writes were waiting.", |s| {
        s.safety.index_dropped
    }),
    counter("unrm_engine_errors_total", "Errors the engine logged and went on from.", |s| {
        s.safety.engine_errors
    }),
    gauge("unrm_client_connections", "Client connections to the socket open now.", |s| s.safety.connections),
    counter("unrm_client_connections_refused_total", "Client connections refused (over a limit).", |s| {
        s.safety.connections_refused
    }),
    counter("unrm_clients_dropped_total", "Clients closed for idling or reading too slowly.", |s| {
        s.safety.clients_dropped
    }),
    counter("unrm_accept_errors_total", "accept(2) failures on the socket.", |s| s.safety.accept_errors),
    gauge("unrm_stuck_filesystems", "Filesystems whose file worker is stuck now.", |s| {
        s.safety.stuck_filesystems
    }),
    counter("unrm_filesystems_stuck_total", "Times a filesystem's file worker got stuck.", |s| {
        s.safety.stuck_total
    }),
    counter(
        "unrm_evicted_for_space_total",
        "Captures evicted because something else filled the store's filesystem.",
        |s| s.safety.evicted_for_space,
    ),
    counter(
        "unrm_records_pruned_total",
        "Records without content forgotten to keep the index within its size.",
        |s| s.safety.records_pruned,
    ),
    counter(
        "unrm_events_written_total",
        "Events written to the event log (one per new record and status change).",
        |s| s.safety.events_written,
    ),
    counter(
        "unrm_events_dropped_total",
        "Events not written to the event log: its writer was behind (a slow disk, a pipe nobody drains) or its sink failed.",
        |s| s.safety.events_dropped,
    ),
    counter(
        "unrm_followers_dropped_total",
        "Followers (unrm list --follow) cut off for falling behind.",
        |s| s.safety.followers_dropped,
    ),
];

/// Every family, from `status`: the rows, the probes' info, the pin latency histogram.
pub fn families(status: &DaemonStatus) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for row in ROWS {
        let labels = row.label.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let sample = Sample { labels, value: Value::Number((row.value)(status)) };
        match out.last_mut() {
            Some(family) if family.name == row.name => family.samples.push(sample),
            _ => out.push(Family { name: row.name, help: row.help, kind: row.kind, samples: vec![sample] }),
        }
    }
    out.push(probe_info(status));
    out.push(pin_latency(status));
    out
}

/// The start of why a better tier was refused (the whole, with the
/// verifier's output, is in the log and `unrm status`): a label stays a
/// line a person can read.
const FALLBACK_CHARS: usize = 240;

fn shortened(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn probe_info(status: &DaemonStatus) -> Family {
    let p = &status.probes;
    let mut labels = vec![("tier", p.tier.clone()), ("hooks", p.fs_hooks.join(","))];
    if let Some(why) = &p.fallback {
        labels.push(("fallback", shortened(why, FALLBACK_CHARS)));
    }
    Family {
        name: "unrm_probe_info",
        help: "The probes' tier (fentry, kprobe, tracepoint or fs), the filesystem hooks attached, and why a better tier was refused.",
        kind: Kind::Info,
        samples: vec![Sample { labels, value: Value::Number(1) }],
    }
}

fn pin_latency(status: &DaemonStatus) -> Family {
    let h = &status.pin_latency_us.histogram;
    let buckets = h.le_us.iter().zip(&h.cumulative).map(|(&le, &n)| (le as f64 / 1e6, n)).collect();
    Family {
        name: "unrm_pin_latency_seconds",
        help: "Time from a deletion returning to unrm holding its pin.",
        kind: Kind::Histogram,
        samples: vec![Sample {
            labels: Vec::new(),
            value: Value::Histogram(Histogram { buckets, sum: h.sum_ns as f64 / 1e9, count: h.count }),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_follow_the_conventions_and_families_do_not_clash() {
        let families = families(&DaemonStatus::default());
        let mut stems = HashSet::new();
        for f in &families {
            assert!(f.name.starts_with("unrm_"), "{}", f.name);
            assert!(f.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(f.kind == Kind::Counter, f.name.ends_with("_total"), "{}", f.name);
            assert_eq!(f.kind == Kind::Info, f.name.ends_with("_info"), "{}", f.name);
            // OpenMetrics names a counter's family without `_total`, an info's without `_info`.
            let stem = f.name.trim_end_matches("_total").trim_end_matches("_info");
            assert!(stems.insert(stem), "two families named {stem}");
        }
        let rows_named = |name: &str| ROWS.iter().filter(|r| r.name == name).count();
        assert_eq!(rows_named("unrm_records_total"), 6);
        let records = families.iter().find(|f| f.name == "unrm_records_total").unwrap();
        assert_eq!(records.samples.len(), 6, "rows of one family are one family");
    }

    #[test]
    fn a_long_fallback_is_shortened() {
        assert_eq!(shortened("ab", 2), "ab");
        assert_eq!(shortened("abcé", 3), "abc…");
        let mut status = DaemonStatus::default();
        status.probes.fallback = Some("x".repeat(10_000));
        let info = probe_info(&status);
        let (_, why) = info.samples[0].labels.iter().find(|(k, _)| *k == "fallback").unwrap();
        assert_eq!(why.chars().count(), FALLBACK_CHARS + 1);
    }

    #[test]
    fn every_safety_figure_is_a_metric() {
        // Each Safety field set alone moves exactly one row.
        let safety = serde_json::to_value(crate::api::proto::Safety::default()).unwrap();
        for field in safety.as_object().unwrap().keys() {
            let mut status = serde_json::to_value(DaemonStatus::default()).unwrap();
            status["safety"][field] = 7.into();
            let status: DaemonStatus = serde_json::from_value(status).unwrap();
            let moved = ROWS.iter().filter(|r| (r.value)(&status) == 7).count();
            assert_eq!(moved, 1, "Safety.{field} is not exactly one metric");
        }
    }
}
