//! `unrm daemon`: wires the data path together.
//!
//! probe (kernel) → ring buffer → reader thread (grabs, ingest) → engine thread
//!                  pidfds (tokio) ↗      (pins, index) ↘ file workers (lanes) → store
//! socket server (tokio) ⇄ engine ⇠ metrics (tokio: asks through the server's handler)
//!
//! The reader only decodes, grabs and forwards; the engine takes decisions
//! and writes the index; file workers talk to the filesystems (which may
//! block). Nothing on the way from the kernel to a pin waits on I/O.
//!
//! If a thread the daemon cannot work without ends, the process exits
//! non-zero so that its supervisor restarts it, rather than live on
//! answering clients while protecting nothing.

mod engine;
mod exits;
mod jobs;
mod lanes;
pub mod logs;
mod sched;
mod systemd;

use std::{
    fs::File,
    io::Write,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc::UnboundedSender, oneshot},
};

use engine::{Config, Engine, Msg, Parts};

use crate::{
    anchors::Anchors,
    api::server::{self, Handler, Limits, ServerStats},
    budget::{Budget, Shares},
    events::sink::{EventLog, Rotation, Sink},
    index::Index,
    ingest, metrics,
    notify::Group,
    policy::{self, Policy},
    probe::Tier,
    probe::{self, LoadOptions, Probes},
    store::{StateDir, Store},
};

pub struct Options {
    pub config: Option<PathBuf>,
    pub tier: probe::Tier,
    /// The kernel's BTF, when not in /sys/kernel/btf/vmlinux.
    pub btf: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub max_file_size: Option<u64>,
    pub ring_bytes: u32,
    pub rescan_every: Duration,
    /// Entries in the probes' watch tables (default: the object's).
    pub watch_entries: Option<u32>,
    pub client_timeout: Duration,
    /// Where events go (`file`, `stdout`, `journal`, `off`) and the event
    /// file; over the policy's `[events]`.
    pub events: Option<String>,
    pub events_file: Option<PathBuf>,
    /// Events the event log's writer may be behind by before it drops them.
    pub events_queue: usize,
    /// Where the metrics go (each wins over its policy key).
    pub metrics_textfile: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// One daemon per machine: two would each see the other's pins as holders
/// and neither would ever capture.
pub const LOCK: &str = "/run/unrm/daemon.lock";

pub fn run(opts: Options) -> Result<()> {
    probe::require_root("the daemon")?;
    let load_policy = policy_loader(&opts);
    let policy = load_policy()?;
    // Everything the daemon creates is root's alone.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let _lock = lock()?;
    let metrics = prepare_metrics(&opts, &policy)?;
    sched::room_for_pins();
    let shares = Shares::current();
    let budget = Budget::new(shares.pins);
    let state = StateDir::open(&opts.state_dir)?;
    let store = Arc::new(Store::open(&state)?);
    let first_id = store.ids()?.into_iter().max().unwrap_or(0) + 1;
    let index = Index::open(&state.path.join("index.sqlite"), first_id)?;
    let events = EventLog::start(event_sink(&opts, &policy)?, opts.events_queue)?;
    let mut probes = load_probes(&opts, policy.btf.clone())?;
    let tier_name = probes.tier().name();
    logs::set_tier(tier_name);
    log::info!("descriptor budget: {} pins, {} holder pidfds", shares.pins, shares.pidfds);
    let ring = probes.take_events()?;
    let logger = probes.logger();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let threads = Threads::new();
    let exit_stats = Arc::new(exits::ExitStats::default());
    let server_stats = Arc::new(ServerStats::default());

    let anchors = Arc::new(Anchors::default());
    let group = notify_group(probes.tier());
    let sources =
        ingest::Sources { ring, group: group.clone(), budget: budget.clone(), anchors: anchors.clone() };
    let ring_tx = tx.clone();
    threads.supervised("the ring buffer reader", move || {
        sched::urgent();
        ingest::forward(sources, ring_tx)
    })?;
    runtime.spawn(exits::watch(exit_rx, tx.clone(), shares.pidfds, exit_stats.clone()));
    if let Some(logger) = logger {
        runtime.spawn(forward_probe_logs(logger));
    }

    let cfg = Config { state_dir: state.path.clone(), policy, rescan_every: opts.rescan_every };
    let parts = Parts {
        probes,
        index,
        store,
        budget,
        tx: tx.clone(),
        exits: exit_tx,
        exit_stats,
        pidfd_budget: shares.pidfds,
        server_stats: server_stats.clone(),
        anchors,
        group,
        events,
    };
    let mut engine = Engine::new(cfg, parts)?;
    engine.start().context("the start-up scan")?;
    let engine = threads.supervised("the engine", move || {
        sched::background();
        engine.run(rx);
        Ok(())
    })?;

    let status = format!("{} tier; serving {}", tier_name, opts.socket.display());
    let serving =
        Serving { opts: &opts, tx: tx.clone(), load_policy: &load_policy, stats: server_stats, status };
    let served = runtime.block_on(serve(serving, metrics, threads.fatal));
    threads.stopping.store(true, Ordering::Release);
    let _ = tx.send(Msg::Shutdown);
    runtime.spawn(pass_on_a_second_stop(tx));
    if served.is_ok() {
        let _ = engine.join();
    }
    let _ = std::fs::remove_file(&opts.socket);
    served
}

/// Reads the policy file (the one named, or the default if it exists) and
/// applies the command line's overrides; again at each SIGHUP.
/// Loads and attaches the probes the options ask for.
/// `--btf` wins over the config's `btf`.
fn load_probes(opts: &Options, configured_btf: Option<PathBuf>) -> Result<Probes> {
    let load = LoadOptions {
        tier: opts.tier,
        ring_bytes: opts.ring_bytes,
        hooks: true,
        watch_entries: opts.watch_entries,
        btf: opts.btf.clone().or(configured_btf),
    };
    let probes = Probes::load(&load)?;
    log::info!("probes attached ({} tier; hooks: {:?})", probes.tier().name(), probes.fs_hooks());
    Ok(probes)
}

/// Where events go: the policy's `[events]`, then the command line's say.
fn event_sink(opts: &Options, policy: &Policy) -> Result<Sink> {
    let mut sink = policy.events.clone();
    if let Some(path) = &opts.events_file {
        let rotation = match sink.clone() {
            Sink::File(rotation) => Rotation { path: path.clone(), ..rotation },
            _ => Rotation { path: path.clone(), ..default_rotation() },
        };
        sink = Sink::File(rotation);
    }
    if let Some(to) = &opts.events {
        let rotation = match &sink {
            Sink::File(rotation) => rotation.clone(),
            _ => default_rotation(),
        };
        sink = policy::sink_named(to, rotation).context("--events")?;
    }
    Ok(sink)
}

fn default_rotation() -> Rotation {
    match Policy::default().events {
        Sink::File(rotation) => rotation,
        _ => unreachable!("events go to a file by default"),
    }
}

/// The fs tier hooks only ext4: a fanotify group reports deletions on the
/// other filesystems it can (`notify`). None in the other tiers, whose
/// hooks see every filesystem, or where the kernel refuses (before 5.17).
fn notify_group(tier: Tier) -> Option<Arc<Group>> {
    if tier != Tier::Fs {
        return None;
    }
    match Group::new() {
        Ok(group) => Some(Arc::new(group)),
        Err(err) => {
            log::warn!(
                "fanotify: {err}; deletions on filesystems other than ext4 are found by snapshots only"
            );
            None
        }
    }
}

fn policy_loader(opts: &Options) -> impl Fn() -> Result<Policy> + use<> {
    let (path, explicit) = match &opts.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(policy::DEFAULT_CONFIG), false),
    };
    let max_file_size = opts.max_file_size;
    move || {
        let mut policy = Policy::load(&path, explicit)?;
        if let Some(size) = max_file_size {
            policy.max_file_size = size;
        }
        Ok(policy)
    }
}

/// The metrics' textfile directory and listening socket, checked before
/// anything else starts; `--metrics-*` wins over the policy's keys.
fn prepare_metrics(opts: &Options, policy: &Policy) -> Result<metrics::Prepared> {
    let textfile = opts.metrics_textfile.as_deref().or(policy.metrics_textfile.as_deref());
    metrics::prepare(textfile, opts.metrics_listen.or(policy.metrics_listen))
}

/// The engine finishes the copies only it can make before it stops; a
/// second SIGTERM or SIGINT has it stop at once.
async fn pass_on_a_second_stop(tx: std::sync::mpsc::Sender<Msg>) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(Msg::Shutdown);
}

/// What the socket server and the signal handlers need.
struct Serving<'a, F> {
    opts: &'a Options,
    tx: std::sync::mpsc::Sender<Msg>,
    load_policy: &'a F,
    stats: Arc<ServerStats>,
    /// What the service manager shows (`systemctl status`).
    status: String,
}

/// Serves the socket until a signal asks to stop (Ok) or something the
/// daemon cannot work without ends (Err).
async fn serve<F: Fn() -> Result<Policy>>(
    serving: Serving<'_, F>,
    metrics: metrics::Prepared,
    mut fatal: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Result<()> {
    let Serving { opts, tx, load_policy, stats, status } = serving;
    let listener = server::bind(&opts.socket)?;
    log::info!("serving {}", opts.socket.display());
    println!("ready");
    std::io::stdout().flush()?;
    let notifier = systemd::Notifier::from_env();
    notifier.ready(&status);
    let api_tx = tx.clone();
    let handler: Handler = Arc::new(move |request, caller| {
        let (reply_tx, reply_rx) = oneshot::channel();
        let _ = api_tx.send(Msg::Api(request, caller, reply_tx));
        reply_rx
    });
    let metrics = metrics.start(handler.clone(), opts.rescan_every)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let limits = Limits { client_timeout: opts.client_timeout };
    let serving = server::serve(listener, handler, limits, stats);
    tokio::pin!(serving);
    loop {
        tokio::select! {
            () = &mut serving => bail!("the socket server stopped"),
            Some(why) = fatal.recv() => bail!("{why}; exiting so that a supervisor can restart unrm"),
            _ = term.recv() => break,
            _ = int.recv() => break,
            // A bad file is reported and the running policy kept.
            _ = hup.recv() => {
                notifier.reloading();
                match load_policy() {
                    Ok(policy) => {
                        log::info!("policy reloaded");
                        let _ = tx.send(Msg::Reload(Box::new(policy)));
                    }
                    Err(err) => log::error!("policy not reloaded: {err:#}"),
                }
                notifier.reloaded();
            }
        }
    }
    notifier.stopping();
    metrics.finish().await;
    Ok(())
}

/// The threads the daemon cannot work without, and how their end is told.
struct Threads {
    fatal_tx: UnboundedSender<String>,
    fatal: tokio::sync::mpsc::UnboundedReceiver<String>,
    stopping: Arc<AtomicBool>,
}

impl Threads {
    fn new() -> Self {
        let (fatal_tx, fatal) = tokio::sync::mpsc::unbounded_channel();
        Threads { fatal_tx, fatal, stopping: Arc::new(AtomicBool::new(false)) }
    }

    /// Runs `work` on a thread of its own; its end (returned, failed or
    /// panicked), unless the daemon is stopping, ends the daemon.
    fn supervised(
        &self,
        name: &'static str,
        work: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>> {
        let watchdog =
            Watchdog { name, fatal: self.fatal_tx.clone(), stopping: self.stopping.clone(), why: None };
        let thread = std::thread::Builder::new().name(format!("unrm-{}", name.trim_start_matches("the ")));
        Ok(thread.spawn(move || {
            let mut watchdog = watchdog;
            watchdog.why = Some(match work() {
                Ok(()) => "it returned".into(),
                Err(err) => format!("{err:#}"),
            });
        })?)
    }
}

/// Reports, unless the daemon is stopping, that a thread it cannot work
/// without has ended (returned, failed or panicked).
struct Watchdog {
    name: &'static str,
    fatal: UnboundedSender<String>,
    stopping: Arc<AtomicBool>,
    why: Option<String>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let why = self.why.take().unwrap_or_else(|| "panicked".into());
        log::error!("{} stopped: {why}", self.name);
        let _ = self.fatal.send(format!("{} stopped: {why}", self.name));
    }
}

fn lock() -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    server::public_dir(Path::new(LOCK).parent().expect("LOCK is in a directory"))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = std::fs::read_to_string(LOCK).unwrap_or_default();
        bail!("another unrm daemon is running (pid {}, holding {LOCK})", pid.trim());
    }
    // `unrm scan` reads the pid to tell the daemon's pins from real holders.
    file.set_len(0)?;
    writeln!(&file, "{}", std::process::id())?;
    Ok(file)
}

/// aya-log's reader has a descriptor but no `AsRawFd`; tokio needs one.
struct LogFd<T>(T);

impl<T: AsFd> AsRawFd for LogFd<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Probe log lines (aya-log) go to the daemon's log.
async fn forward_probe_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its descriptor and keeps it open while registered.
    let Ok(mut fd) = (unsafe { AsyncFd::register(LogFd(logger)) }) else { return };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else { return };
        guard.get_inner_mut().0.flush();
        guard.clear_ready();
    }
}
