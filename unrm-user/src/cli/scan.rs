//! `unrm scan`: what `lsof +L1` shows, from the iterators. When the daemon
//! runs, it answers from its loaded probes (a snapshot costs milliseconds);
//! otherwise this process loads the iterators itself (as root).

use std::path::Path;

use anyhow::{Result, bail};

use super::{
    format,
    table::{Align, Column, Grid, text},
    term::Term,
};
use crate::{
    api::{
        client::Client,
        proto::{Request, Response},
    },
    holders::{HeldView, HolderKind, Snapshot},
    probe::{LoadOptions, Probes},
};

pub fn run(socket: &Path, json: bool) -> Result<()> {
    let files = match Client::connect(socket) {
        Ok(mut client) => match client.call(&Request::Scan)?.0 {
            Response::Scan { files } => files,
            _ => bail!("unexpected answer from the daemon"),
        },
        Err(_) => standalone()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&files)?);
        return Ok(());
    }
    if files.is_empty() {
        println!("no deleted files are held");
        return Ok(());
    }
    let mut grid = Grid::new(
        &Term::stdout(),
        &[
            Column("PID", Align::Right),
            Column("COMM", Align::Left),
            Column("KIND", Align::Left),
            Column("FD/MAPPING", Align::Left),
            Column("SIZE", Align::Right),
            Column("INODE", Align::Left),
            Column("PATH", Align::Left),
        ],
    );
    for f in &files {
        for h in &f.holders {
            let at = h.fd.map(|fd| fd.to_string()).or_else(|| h.map.clone()).unwrap_or_default();
            grid.row([
                text(h.pid.to_string()),
                text(&h.comm),
                text(kind(h.kind)),
                text(at),
                text(format::size(f.size)),
                text(format!("{}:{}/{}", libc::major(f.dev), libc::minor(f.dev), f.ino)),
                text(&f.path),
            ]);
        }
    }
    println!("{}", grid.render());
    Ok(())
}

fn standalone() -> Result<Vec<HeldView>> {
    crate::probe::require_root("unrm scan, when it cannot reach the daemon,")?;
    let load = LoadOptions {
        tier: crate::probe::Tier::Fs,
        ring_bytes: 4096,
        hooks: false,
        watch_entries: None,
        btf: None,
    };
    let mut probes = Probes::load(&load)?;
    let mut snapshot = Snapshot::take(&mut probes)?;
    hide_daemon_pins(&mut snapshot);
    Ok(snapshot.views())
}

/// A daemon we could not talk to may still be running: its references are
/// its pins, not holders a user cares about. Its pid is in its lock file.
fn hide_daemon_pins(snapshot: &mut Snapshot) {
    let Some(daemon) =
        std::fs::read_to_string(crate::daemon::LOCK).ok().and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    if !Path::new(&format!("/proc/{daemon}")).exists() {
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
