//! `unrm scan`: what `lsof +L1` shows, from the iterators, daemon or not.

use anyhow::Result;
use serde::Serialize;

use super::format;
use crate::{
    holders::{HeldFile, Hold, HolderKind, Snapshot},
    probe::{LoadOptions, Probes},
};

#[derive(Serialize)]
struct Entry<'a> {
    path: String,
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    holders: Vec<HoldJson<'a>>,
}

#[derive(Serialize)]
struct HoldJson<'a> {
    pid: u32,
    comm: &'a str,
    kind: HolderKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<String>,
}

pub fn run(json: bool) -> Result<()> {
    crate::require_root("unrm scan")?;
    let mut probes = Probes::load(&LoadOptions { ring_bytes: 4096, hooks: false })?;
    let mut snapshot = Snapshot::take(&mut probes)?;
    hide_daemon_pins(&mut snapshot);
    let mut files: Vec<&HeldFile> = snapshot.files.values().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path).then(a.inode.cmp(&b.inode)));
    if json {
        let entries: Vec<Entry> = files.iter().map(|f| entry(f)).collect();
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if files.is_empty() {
        println!("no deleted files are held");
        return Ok(());
    }
    println!("{:>7}  {:<15}  {:<4}  {:<28}  {:>7}  {:<16}  PATH", "PID", "COMM", "KIND", "FD/MAPPING", "SIZE", "INODE");
    for f in files {
        for h in &f.holds {
            println!(
                "{:>7}  {:<15}  {:<4}  {:<28}  {:>7}  {:<16}  {}",
                h.pid,
                h.comm,
                kind(h.kind),
                location(h).unwrap_or_default(),
                format::size(f.size),
                format!("{}:{}/{}", libc::major(f.inode.dev), libc::minor(f.inode.dev), f.inode.ino),
                f.path.display()
            );
        }
    }
    Ok(())
}

/// The daemon's own references are its pins, not holders a user cares
/// about; its pid is in its lock file while it runs.
fn hide_daemon_pins(snapshot: &mut Snapshot) {
    let Some(daemon) = std::fs::read_to_string(crate::daemon::LOCK).ok().and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    if !std::path::Path::new(&format!("/proc/{daemon}")).exists() {
        return;
    }
    snapshot.files.retain(|_, f| {
        f.holds.retain(|h| h.pid != daemon);
        !f.holds.is_empty()
    });
}

fn kind(kind: HolderKind) -> &'static str {
    match kind {
        HolderKind::Fd => "fd",
        HolderKind::Mmap => "mmap",
        HolderKind::Exe => "exe",
    }
}

fn location(h: &Hold) -> Option<String> {
    match h.kind {
        HolderKind::Fd => Some(h.fd.to_string()),
        HolderKind::Mmap | HolderKind::Exe => Some(format!("{:x}-{:x}", h.vm_start, h.vm_end)),
    }
}

fn entry(f: &HeldFile) -> Entry<'_> {
    Entry {
        path: f.path.display().to_string(),
        dev: f.inode.dev,
        ino: f.inode.ino,
        size: f.size,
        mode: f.mode,
        uid: f.uid,
        gid: f.gid,
        holders: f
            .holds
            .iter()
            .map(|h| HoldJson {
                pid: h.pid,
                comm: &h.comm,
                kind: h.kind,
                fd: (h.kind == HolderKind::Fd).then_some(h.fd),
                map: (h.kind != HolderKind::Fd).then(|| location(h).unwrap_or_default()),
            })
            .collect(),
    }
}
