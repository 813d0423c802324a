//! The command line: argument definitions and one module per command.

mod follow;
mod format;
mod hue;
mod privilege;
mod protect;

pub use format::clean;
mod restore;
mod scan;
mod select;
mod show;
mod table;
mod term;
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
    record::{Record, Status, nanos},
};
use select::Filters;

#[derive(Parser)]
#[command(name = "unrm", version, about = "Makes rm undoable for every file some process still holds")]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "UNRM_SOCKET", default_value = "/run/unrm/unrm.sock")]
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
        /// Where to write one JSON line per deletion and status change:
        /// `file` (--events-file), `stdout`, `journal` or `off`. Overrides
        /// the config file's [events] to.
        #[arg(long, value_name = "SINK", value_parser = ["file", "stdout", "journal", "off"])]
        events: Option<String>,
        /// The event file (default /var/log/unrm/events.jsonl); implies
        /// --events file unless --events says otherwise.
        #[arg(long, value_name = "PATH")]
        events_file: Option<PathBuf>,
        /// Events the event log may be behind by before it drops them.
        #[arg(long, hide = true, default_value_t = crate::events::sink::QUEUE)]
        events_queue: usize,
        /// Keep DIR/unrm.prom up to date for node_exporter's textfile
        /// collector (Debian: /var/lib/prometheus/node-exporter). Overrides
        /// the config file's metrics_textfile.
        #[arg(long, value_name = "DIR")]
        metrics_textfile: Option<PathBuf>,
        /// Serve the metrics over HTTP at /metrics on this loopback address
        /// and port (127.0.0.1:9465, [::1]:9465). Overrides the config
        /// file's metrics_listen.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Recent deletions, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Go on printing each new record and status change as it happens,
        /// a line each (with --json, one compact JSON object per line: the
        /// event log's). With --since, the records since then first, oldest
        /// first. `unrm watch` is the same.
        #[arg(long, short = 'f', conflicts_with_all = ["until", "limit"])]
        follow: bool,
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
        #[arg(long)]
        limit: Option<usize>,
        /// Only deletions by processes in this container: the start of its
        /// id (as `docker ps` or `podman ps` shows it), an nspawn machine's
        /// name, or a runtime (docker, podman, containerd, cri-o, nspawn).
        #[arg(long, value_name = "ID")]
        container: Option<String>,
    },
    /// `unrm list --follow`: each new record and status change as it happens.
    Watch {
        #[arg(long)]
        json: bool,
        /// First the records since then (as for `unrm list`), oldest first.
        #[arg(long, value_name = "WHEN", value_parser = when::parse_when)]
        since: Option<SystemTime>,
        /// Only paths matching this glob (as for `unrm list`).
        #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
        path: Option<String>,
        /// Only records in this status.
        #[arg(long)]
        status: Option<Status>,
        /// Only deletions by processes in this container (as for `unrm list`).
        #[arg(long, value_name = "ID")]
        container: Option<String>,
    },
    /// Hold a reference to every file under each directory, so that
    /// deleting one (rm, rm -rf, mv or an editor's save over it) is undoable
    /// even when nothing had it open: see README, Protected trees.
    Protect {
        /// Directories (yours, unless you are root).
        paths: Vec<PathBuf>,
        /// List the protected trees instead: files held, left out, and why.
        #[arg(long, conflicts_with_all = ["paths", "any_fs"])]
        list: bool,
        #[arg(long, requires = "list")]
        json: bool,
        /// Root only: also on a network, FUSE or removable filesystem (where
        /// unrm's references make a plain umount fail: see README).
        #[arg(long)]
        any_fs: bool,
    },
    /// Stop protecting these directories: unrm lets go of their files (and
    /// their filesystem can be unmounted).
    Unprotect {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// One record in full.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Bring a deleted file back, byte for byte, with its mode and owner.
    Restore(RestoreArgs),
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
    /// For packaging: the man pages, or a shell's completion script.
    #[command(hide = true, subcommand)]
    Generate(Generate),
}

#[derive(Subcommand)]
enum Generate {
    /// unrm(1), one page per subcommand and unrm.toml(5), written into DIR.
    Man { dir: PathBuf },
    /// The config file with every key commented out at its default, on
    /// standard output (the package's /etc/unrm.toml).
    Config,
    /// The completion script for SHELL, on standard output.
    Completions { shell: clap_complete::Shell },
}

/// `unrm restore`: one record (by id or path), or all a listing selects.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The record (see `unrm list`).
    id: Option<i64>,
    /// Instead of an id: the newest record of this path (relative to the
    /// current directory) that still has its content; with --all, a
    /// glob as for `unrm list`.
    #[arg(long, conflicts_with = "id")]
    path: Option<PathBuf>,
    /// With --path: the Nth newest version that still has its content
    /// (1, the default, is the newest; a protected file keeps `versions`).
    #[arg(long, value_name = "N", requires = "path", conflicts_with = "all")]
    version: Option<usize>,
    /// Every record the filters (--path, --since, --until, --pid) select
    /// that still has its content; of each path, the newest.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// With --all: deleted since then (as for `unrm list`).
    #[arg(long, value_name = "WHEN", value_parser = when::parse_when, requires = "all")]
    since: Option<SystemTime>,
    /// With --all: deleted until then.
    #[arg(long, value_name = "WHEN", value_parser = when::parse_when, requires = "all")]
    until: Option<SystemTime>,
    /// With --all: deleted by this process.
    #[arg(long, requires = "all")]
    pid: Option<u32>,
    /// Where to write it (default: where it was). An existing directory
    /// receives the file under its original name.
    #[arg(long)]
    to: Option<PathBuf>,
    /// Replace an existing file at the destination.
    #[arg(long)]
    force: bool,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        command @ Command::Daemon { .. } => run_daemon(cli.socket, command)?,
        Command::List { json, follow, since, until, path, status, limit, container } => {
            let filters = listing(since, until, status, path, container)?;
            if follow {
                follow::run(&cli.socket, &filters, json)?;
            }
            let records = select::list(&cli.socket, &filters, limit.unwrap_or(100))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                show::table(&records, &term::Term::stdout());
            }
        }
        Command::Watch { json, since, path, status, container } => {
            follow::run(&cli.socket, &listing(since, None, status, path, container)?, json)?;
        }
        Command::Show { id, json } => {
            let Response::Record { record } = call(&cli.socket, &Request::Show { id })? else {
                bail!("unexpected answer")
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                show::detail(&record, &term::Term::stdout());
            }
        }
        Command::Restore(args) => return restore_cmd(&cli.socket, args),
        Command::Protect { paths, list, json, any_fs } => {
            return if list {
                protect::list(&cli.socket, json)
            } else {
                protect::protect(&cli.socket, &paths, any_fs)
            };
        }
        Command::Unprotect { paths } => return protect::unprotect(&cli.socket, &paths),
        Command::Scan { json } => scan::run(&cli.socket, json)?,
        Command::Generate(what) => generate(what)?,
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

/// A listing's filters from the command line's; a relative path glob
/// starts in the current directory.
fn listing(
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    status: Option<Status>,
    path: Option<String>,
    container: Option<String>,
) -> Result<Filters> {
    let cwd = std::env::current_dir()?;
    Ok(Filters {
        since_ns: since.map(nanos),
        until_ns: until.map(nanos),
        status,
        path: path.map(|glob| when::absolute_glob(&glob, &cwd)),
        container,
    })
}

/// `unrm daemon`.
fn run_daemon(socket: PathBuf, command: Command) -> Result<()> {
    let Command::Daemon {
        state_dir,
        config,
        max_file_size,
        ring_size,
        tier,
        rescan_interval,
        btf,
        watch_entries,
        client_timeout,
        events,
        events_file,
        events_queue,
        metrics_textfile,
        metrics_listen,
    } = command
    else {
        unreachable!("a daemon command")
    };
    daemon::run(daemon::Options {
        config,
        tier,
        btf,
        state_dir,
        socket,
        max_file_size,
        ring_bytes: ring_size,
        rescan_every: rescan_interval,
        watch_entries,
        client_timeout,
        events,
        events_file,
        events_queue,
        metrics_textfile,
        metrics_listen,
    })?;
    Ok(())
}

fn call(socket: &std::path::Path, request: &Request) -> Result<Response> {
    Ok(Client::connect(socket)?.call(request)?.0)
}

fn generate(what: Generate) -> Result<()> {
    use clap::CommandFactory;
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            let page = crate::policy::keys::man_page(env!("CARGO_PKG_VERSION"));
            std::fs::write(dir.join("unrm.toml.5"), page)?;
        }
        Generate::Config => print!("{}", crate::policy::keys::commented_config()),
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "unrm", &mut std::io::stdout());
        }
    }
    Ok(())
}

fn restore_cmd(socket: &std::path::Path, args: RestoreArgs) -> Result<ExitCode> {
    let RestoreArgs { id, path, version, all, since, until, pid, to, force } = args;
    if all {
        let cwd = std::env::current_dir()?;
        let path = path.map(|glob| when::absolute_glob(&glob.to_string_lossy(), &cwd));
        let filters = Filters {
            since_ns: since.map(nanos),
            until_ns: until.map(nanos),
            status: None,
            path,
            container: None,
        };
        return restore_all(socket, &select::all_of(socket, &filters, pid)?, to, force);
    }
    let id = match (id, path) {
        (Some(id), _) => id,
        (None, Some(path)) => select::version_of(socket, &path, version.unwrap_or(1))?,
        (None, None) => bail!("name a record: its id, its path with --path, or --all"),
    };
    restore::run(socket, id, to, force)?;
    Ok(ExitCode::SUCCESS)
}

/// Restores each record where it was (or into the directory `to`); one
/// line per record, and a failure of one does not stop the others.
fn restore_all(
    socket: &std::path::Path,
    records: &[Record],
    to: Option<PathBuf>,
    force: bool,
) -> Result<ExitCode> {
    if records.is_empty() {
        bail!("no record with its content matches");
    }
    let mut failed = 0;
    for r in records {
        // Each success says so itself ("restored record …").
        match restore::run(socket, r.id, to.clone(), force) {
            Ok(()) => {}
            Err(err) => {
                failed += 1;
                eprintln!(
                    "unrm: record {} ({}): {}",
                    r.id,
                    format::clean(&r.path),
                    format::clean(&format!("{err:#}"))
                );
            }
        }
    }
    if failed > 0 {
        eprintln!("unrm: {failed} of {} records not restored", records.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
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
