//! `unrm daemon`: wires the data path together.
//!
//! probe (kernel) → ring buffer → ingest task → engine thread (pins, index)
//!                                   pidfds ↗        ↘ capture thread → store
//! socket server (tokio) ⇄ engine
//!
//! The ring buffer is drained on the tokio runtime, which never touches disk;
//! the engine takes decisions and writes the index; the capture thread does
//! the copying. Nothing on the way from the kernel to a pin waits on I/O.

mod capture;
mod engine;
mod exits;
mod sched;

use std::{
    fs::File,
    io::Write,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::oneshot,
};

pub use engine::monotonic_ns;
use engine::{Config, Engine, Msg};

use crate::{
    api::server::{self, Handler},
    index::Index,
    ingest,
    policy::{self, Policy},
    probe::{LoadOptions, Probes},
    store::Store,
};

pub struct Options {
    pub config: Option<PathBuf>,
    pub tier: crate::probe::Tier,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub max_file_size: Option<u64>,
    pub ring_bytes: u32,
    pub rescan_every: Duration,
}

/// One daemon per machine: two would each see the other's pins as holders
/// and neither would ever capture.
pub const LOCK: &str = "/run/unrm.lock";

pub fn run(opts: Options) -> Result<()> {
    crate::require_root("the daemon")?;
    let load_policy = {
        let (path, explicit) = match &opts.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(policy::DEFAULT_CONFIG), false),
        };
        let max_file_size = opts.max_file_size;
        move || -> Result<Policy> {
            let mut policy = Policy::load(&path, explicit)?;
            if let Some(size) = max_file_size {
                policy.max_file_size = size;
            }
            Ok(policy)
        }
    };
    let policy = load_policy()?;
    // Everything the daemon creates is root's alone.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let _lock = lock()?;
    sched::room_for_pins();
    let store = Arc::new(Store::open(&opts.state_dir)?);
    let index = Index::open(&opts.state_dir.join("index.sqlite"))?;
    let mut probes =
        Probes::load(&LoadOptions { tier: opts.tier, ring_bytes: opts.ring_bytes, hooks: true })?;
    log::info!("probes attached ({} tier; hooks: {:?})", probes.tier().name(), probes.fs_hooks());
    let ring = probes.take_events()?;
    let logger = probes.logger();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let (capture_tx, capture_rx) = std::sync::mpsc::channel();
    capture::spawn(store.clone(), capture_rx, tx.clone());
    let ring_tx = tx.clone();
    std::thread::Builder::new().name("unrm-ingest".into()).spawn(move || {
        sched::urgent();
        if let Err(err) = ingest::forward(ring, ring_tx) {
            log::error!("the ring buffer reader stopped: {err:#}");
        }
    })?;
    runtime.spawn(exits::watch(exit_rx, tx.clone()));
    if let Some(logger) = logger {
        runtime.spawn(forward_probe_logs(logger));
    }

    let cfg = Config { state_dir: opts.state_dir.clone(), policy, rescan_every: opts.rescan_every };
    let mut engine = Engine::new(cfg, probes, index, store, exit_tx, capture_tx)?;
    engine.start().context("the start-up scan")?;
    let engine = std::thread::Builder::new().name("unrm-engine".into()).spawn(move || {
        sched::background();
        engine.run(rx)
    })?;

    let served = runtime.block_on(async {
        let listener = server::bind(&opts.socket)?;
        log::info!("serving {}", opts.socket.display());
        println!("ready");
        std::io::stdout().flush()?;
        let api_tx = tx.clone();
        let handler: Handler = Arc::new(move |request, caller| {
            let (reply_tx, reply_rx) = oneshot::channel();
            let _ = api_tx.send(Msg::Api(request, caller, reply_tx));
            reply_rx
        });
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let serving = server::serve(listener, handler);
        tokio::pin!(serving);
        loop {
            tokio::select! {
                result = &mut serving => return result,
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                // A bad file is reported and the running policy kept.
                _ = hup.recv() => match load_policy() {
                    Ok(policy) => {
                        log::info!("policy reloaded");
                        let _ = tx.send(Msg::Reload(Box::new(policy)));
                    }
                    Err(err) => log::error!("policy not reloaded: {err:#}"),
                },
            }
        }
    });
    let _ = tx.send(Msg::Shutdown);
    let stopped = engine.join().map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    let _ = std::fs::remove_file(&opts.socket);
    served.and(stopped)
}

fn lock() -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
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
