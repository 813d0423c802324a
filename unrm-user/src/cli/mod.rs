//! The command line: argument definitions and one module per command.

mod format;
mod privilege;

pub use format::clean;
mod restore;
mod scan;
mod show;
mod when;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    api::{
        client::Client,
        proto::{Request, Response},
    },
    daemon,
    policy::parse_size,
    record::{Status, nanos},
};

#[derive(Parser)]
#[command(name = "unrm", version, about = "Makes rm undoable for every file some process still holds")]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "UNRM_SOCKET", default_value = "/run/unrm.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (as root).
    Daemon {
        /// Where the index and the captured files live.
        #[arg(long, default_value = "/var/lib/unrm")]
        state_dir: PathBuf,
        /// The policy file (TOML; see README). Default /etc/unrm.toml, if it
        /// exists. Reloaded on SIGHUP.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Largest file to copy into the store when its last holder lets go
        /// (larger ones stay restorable only while held). Overrides the
        /// config file's max_file_size.
        #[arg(long, value_parser = parse_size)]
        max_file_size: Option<u64>,
        /// Ring buffer between the probes and the daemon (a power of two).
        #[arg(long, default_value = "4M", value_parser = parse_ring_size)]
        ring_size: u32,
        /// Which hooks report deletions: `fentry` (the VFS itself: every
        /// filesystem, free for unrelated system calls; needs a kernel that
        /// allows it), `kprobe` (the same hooks as kprobes, for kernels
        /// without BPF trampolines), `tracepoint` (every filesystem, costs
        /// every system call while attached), `fs` (ext4's own tracepoints,
        /// and fanotify for tmpfs and xfs: free for unrelated system
        /// calls; other filesystems only through periodic snapshots), or
        /// `auto`: fentry if the kernel accepts it, else kprobe, else
        /// tracepoint.
        #[arg(long, value_enum, default_value = "auto")]
        tier: crate::probe::Tier,
        /// How often to reconcile with the kernel's state without events.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        rescan_interval: Duration,
        /// The kernel's BTF, for a kernel that keeps it elsewhere than
        /// /sys/kernel/btf/vmlinux (the kernel structures' layout comes from it).
        #[arg(long, value_name = "PATH")]
        btf: Option<PathBuf>,
        /// Entries in the probes' watch tables (tests use a small one).
        #[arg(long, hide = true)]
        watch_entries: Option<u32>,
        /// How long a client may take to send a request or read an answer.
        #[arg(long, hide = true, default_value = "10s", value_parser = humantime::parse_duration)]
        client_timeout: Duration,
    },
    /// Recent deletions, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Only deletions since then: a duration ago (10m, 2h, 3days) or a
        /// time (2026-11-28T10:00:00Z, "2026-11-28 10:00" local, 2026-11-28).
        #[arg(long, value_name = "WHEN", value_parser = when::parse_when)]
        since: Option<SystemTime>,
        /// Only deletions until then (the same forms as --since).
        #[arg(long, value_name = "WHEN", value_parser = when::parse_when)]
        until: Option<SystemTime>,
        /// Only paths matching this glob (`*` also matches `/`); a relative
        /// one starts in the current directory (`.` is all under it).
        #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
        path: Option<String>,
        /// Only records in this status: held, captured, missed, unheld, skipped,
        /// failed, evicted.
        #[arg(long)]
        status: Option<Status>,
        /// At most this many records (0 for all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One record in full.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Bring a deleted file back, byte for byte, with its mode and owner.
    Restore {
        /// The record (see `unrm list`).
        id: Option<i64>,
        /// Instead of an id: the newest record of this path (relative to the
        /// current directory) that still has its content.
        #[arg(long, conflicts_with = "id")]
        path: Option<PathBuf>,
        /// Where to write it (default: where it was). An existing directory
        /// receives the file under its original name.
        #[arg(long)]
        to: Option<PathBuf>,
        /// Replace an existing file at the destination.
        #[arg(long)]
        force: bool,
    },
    /// Deleted files that processes hold right now (works without the daemon).
    Scan {
        #[arg(long)]
        json: bool,
    },
    /// Whether the daemon is up with its probes attached; its counters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            state_dir,
            config,
            max_file_size,
            ring_size,
            tier,
            rescan_interval,
            btf,
            watch_entries,
            client_timeout,
        } => {
            daemon::run(daemon::Options {
                config,
                tier,
                btf,
                state_dir,
                socket: cli.socket,
                max_file_size,
                ring_bytes: ring_size,
                rescan_every: rescan_interval,
                watch_entries,
                client_timeout,
            })?;
        }
        Command::List { json, since, until, path, status, limit } => {
            let cwd = std::env::current_dir()?;
            let filters = Filters {
                since_ns: since.map(nanos),
                until_ns: until.map(nanos),
                status,
                path: path.map(|glob| when::absolute_glob(&glob, &cwd)),
            };
            let records = list(&cli.socket, &filters, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                show::table(&records);
            }
        }
        Command::Show { id, json } => {
            let Response::Record { record } = call(&cli.socket, &Request::Show { id })? else {
                bail!("unexpected answer")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                show::detail(&record);
            }
        }
        Command::Restore { id, path, to, force } => {
            let id = match (id, path) {
                (Some(id), _) => id,
                (None, Some(path)) => newest_restorable(&cli.socket, &path)?,
                (None, None) => bail!("name a record: its id, or its path with --path"),
            };
            restore::run(&cli.socket, id, to, force)?
        }
        Command::Scan { json } => scan::run(&cli.socket, json)?,
        Command::Status { json } => {
            let Response::Status { status } = call(&cli.socket, &Request::Status)? else {
                bail!("unexpected answer")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                show::status(&status);
            }
            if !status.probes.attached {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn call(socket: &std::path::Path, request: &Request) -> Result<Response> {
    Ok(Client::connect(socket)?.call(request)?.0)
}

/// What `unrm list` selects.
struct Filters {
    since_ns: Option<i64>,
    until_ns: Option<i64>,
    status: Option<Status>,
    /// An absolute glob.
    path: Option<String>,
}

/// Every record the filters select, newest first, up to `limit` (0: all),
/// page by page: the daemon answers a listing in bounded pages.
fn list(socket: &std::path::Path, f: &Filters, limit: usize) -> Result<Vec<crate::record::Record>> {
    let mut client = Client::connect(socket)?;
    let mut records = Vec::new();
    // The listing walks back in time from its cursor: starting it just
    // after `until` leaves out what came later.
    let mut after = f.until_ns.map(|until| (until.saturating_add(1), i64::MIN));
    loop {
        let want = if limit == 0 { 0 } else { limit - records.len() };
        let request =
            Request::List { since_ns: f.since_ns, status: f.status, path: f.path.clone(), limit: want, after };
        let Response::Records { records: page, next } = client.call(&request)?.0 else {
            bail!("unexpected answer")
        };
        records.extend(page);
        match next {
            Some(at) if limit == 0 || records.len() < limit => after = Some(at),
            _ => return Ok(records),
        }
    }
}

/// The newest record of `path` that a restore can bring back (held or
/// captured), among those the caller may see.
fn newest_restorable(socket: &std::path::Path, path: &std::path::Path) -> Result<i64> {
    let path = when::absolute_path(path, &std::env::current_dir()?);
    let glob = globset::escape(&path.to_string_lossy());
    let filters = Filters { since_ns: None, until_ns: None, status: None, path: Some(glob) };
    let records = list(socket, &filters, 0)?;
    let restorable = records.iter().find(|r| matches!(r.status, Status::Held | Status::Captured));
    match (restorable, records.first()) {
        (Some(r), _) => Ok(r.id),
        (None, Some(newest)) => bail!(
            "{}: no record with its content ({} records; the newest, {}, is {})",
            format::clean(&path.to_string_lossy()),
            records.len(),
            newest.id,
            newest.status.as_str()
        ),
        (None, None) => bail!("{}: no deletion of this path is recorded", format::clean(&path.to_string_lossy())),
    }
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    if !size.is_power_of_two() || !(4096..=(1 << 30)).contains(&size) {
        return Err(format!("{text:?}: the ring buffer must be a power of two between 4K and 1G"));
    }
    Ok(size as u32)
}

fn parse_glob(text: &str) -> Result<String, String> {
    globset::Glob::new(text).map(|_| text.to_owned()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert_eq!(parse_ring_size("64K").unwrap(), 65536);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
