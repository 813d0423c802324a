//! Human-readable output of records and status.

use super::{
    format::{self, clean},
    hue::Hue,
    table::{Align, Column, Grid, text},
    term::Term,
};
use crate::{api::proto::DaemonStatus, record::Record};

/// `unrm list`: a row per record, newest first.
pub fn table(records: &[Record], term: &Term) {
    if records.is_empty() {
        println!("no deletions recorded");
        return;
    }
    let mut grid = Grid::new(
        term,
        &[
            Column("ID", Align::Right),
            Column("DELETED", Align::Left),
            Column("STATUS", Align::Left),
            Column("SIZE", Align::Right),
            Column("BY", Align::Left),
            Column("PATH", Align::Left),
        ],
    );
    for r in records {
        let size = r.size.map(format::size).unwrap_or_else(|| "-".into());
        let by =
            r.deleted_by.as_ref().map(|d| format!("{}[{}]", d.comm, d.pid)).unwrap_or_else(|| "-".into());
        grid.row([
            text(r.id.to_string()),
            text(term.time(r.deleted_at)),
            text(r.status.as_str()).hue(Hue::of(r.status)),
            text(size),
            text(by),
            text(&r.path),
        ]);
    }
    println!("{}", grid.render());
}

/// `unrm show`: one record, a field a line.
pub fn detail(r: &Record, term: &Term) {
    let field = |name: &str, value: String| println!("{:<10} {}", format!("{name}:"), clean(&value));
    field("id", r.id.to_string());
    field("path", r.path.clone());
    if !r.path_resolved {
        field("", "(not verified as a path on this host: restore it with --to)".into());
    }
    let status = if term.colour { Hue::of(r.status).paint(r.status.as_str()) } else { r.status.to_string() };
    let reason = r.reason.as_ref().map(|why| format!(" ({})", clean(why))).unwrap_or_default();
    // Put together from clean parts: the colour's escapes must get through.
    println!("{:<10} {status}{reason}", "status:");
    if let Some(size) = r.size {
        field("size", format!("{size} bytes"));
    }
    if let (Some(dev), Some(ino)) = (r.dev, r.ino) {
        field("inode", format!("{}:{} ino {ino}", libc::major(dev), libc::minor(dev)));
    }
    if let Some(mode) = r.mode {
        let owner = match (r.uid, r.gid) {
            (Some(uid), Some(gid)) => format!(" uid {uid} gid {gid}"),
            _ => String::new(),
        };
        field("mode", format!("{} ({:04o}){owner}", format::mode(mode), mode & 0o7777));
    }
    let by = match &r.deleted_by {
        Some(d) => format!(" by {} (pid {}, uid {}) via {}", d.comm, d.pid, d.uid, r.op),
        None => " (found held by a scan; deleter unknown)".into(),
    };
    field("deleted", format!("{}{by}", term.time_zoned(r.deleted_at)));
    if let Some(seen) = r.deleted_by.as_ref().and_then(|d| d.path.as_ref()) {
        field("seen as", format!("{seen} (in the deleter's mount namespace)"));
    }
    if let Some(cgroup) = r.deleted_by.as_ref().and_then(|d| d.cgroup.as_ref()) {
        field("cgroup", cgroup.clone());
    }
    if let Some(c) = r.deleted_by.as_ref().and_then(|d| d.container.as_ref()) {
        let pod = c.pod.as_ref().map(|pod| format!(", pod {pod}")).unwrap_or_default();
        field("container", format!("{} {}{pod}", c.runtime, c.id));
    }
    if !r.holders.is_empty() {
        let holders: Vec<String> = r
            .holders
            .iter()
            .map(|h| {
                format!(
                    "{}[{}] {}",
                    h.comm,
                    h.pid,
                    serde_json::to_value(h.kind).unwrap().as_str().unwrap_or("")
                )
            })
            .collect();
        field("holders", holders.join(", "));
    }
    if let Some(at) = r.captured_at {
        field("captured", term.time_zoned(at));
    }
    if let Some(sum) = &r.checksum {
        field("blake3", sum.clone());
    }
}

pub fn status(s: &DaemonStatus) {
    let c = &s.counters;
    println!("unrm daemon pid {} up {}s, state in {}", s.pid, s.uptime_secs, clean(&s.state_dir));
    println!(
        "probes: {} tier, {}; filesystem hooks: {}; release probes {}",
        s.probes.tier,
        if s.probes.attached { "attached" } else { "NOT attached" },
        if s.probes.fs_hooks.is_empty() { "none".into() } else { s.probes.fs_hooks.join(", ") },
        if s.probes.release_attached { "attached" } else { "idle (nothing to watch)" },
    );
    if let Some(why) = &s.probes.fallback {
        println!("tier chosen by fallback: {}", clean(why));
    }
    println!(
        "events: {} ({} deletions, {} releases), lost: {}, scans: {}",
        c.events, c.deletions, c.releases, c.lost_events, c.scans
    );
    println!(
        "pins: {} ({} fast), captured: {}, missed: {}, unheld: {}, skipped: {}, failed: {}",
        c.pins, c.fast_pins, c.captured, c.missed, c.unheld, c.skipped, c.failed
    );
    println!(
        "held now: {} files, {}; store: {}; records: {}",
        s.held_files,
        format::size(s.held_bytes),
        format::size(s.store_bytes),
        s.records
    );
    if s.protected_trees > 0 {
        println!("protected: {} files in {} trees", s.protected_files, s.protected_trees);
    }
    let l = &s.pin_latency_us;
    if let (Some(p50), Some(p99)) = (l.p50, l.p99) {
        println!("pin latency: p50 {p50} µs, p99 {p99} µs over {} pins", l.samples);
    }
    safety(&s.safety);
}

/// The guards, and how often each stepped in.
fn safety(g: &crate::api::proto::Safety) {
    println!(
        "budget: {} of {} pins open; not pinned: {} over the budget, {} over per-user pins; \
         {} captures over per-user store; {} unheld records rate-limited",
        g.pins_open, g.pin_budget, g.over_budget, g.over_user_pins, g.over_user_store, g.rate_limited
    );
    println!(
        "kernel: {} failed calls dropped, {} failed reads, {} watches refused by full tables; \
         pidfds: {} of {} ({} refused)",
        g.failed_calls, g.failed_reads, g.watch_full, g.pidfds, g.pidfd_budget, g.pidfds_refused
    );
    println!(
        "index: {} errors, {} writes waiting, {} records dropped, {} pruned for size; engine errors: {}; \
         store evictions for space: {}",
        g.index_errors,
        g.index_waiting,
        g.index_dropped,
        g.records_pruned,
        g.engine_errors,
        g.evicted_for_space
    );
    println!(
        "clients: {} connected, {} refused, {} dropped (idle or slow), {} accept errors; \
         filesystems not answering: {} now, {} ever",
        g.connections,
        g.connections_refused,
        g.clients_dropped,
        g.accept_errors,
        g.stuck_filesystems,
        g.stuck_total
    );
}
