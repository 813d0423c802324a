//! Holder exits, exactly: a pidfd becomes readable once its process has
//! exited, after the kernel has closed its files and dropped its mappings.
//! No probe is needed for the commonest final release, and none can be
//! missed: the pidfd is opened right after the pin.
//!
//! One pidfd per watched process, opened when the engine starts watching
//! it and closed when it stops, and no more than the descriptor budget's
//! share for them: past it, those holders' exits are noticed by the release
//! probes and snapshots instead.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::Sender,
    },
};

use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::{io::unix::AsyncFd, sync::mpsc::UnboundedReceiver, task::AbortHandle};

/// What the engine asks of the exit watcher.
#[derive(Debug)]
pub enum Watch {
    Start(u32),
    Stop(u32),
}

/// A watched holder has exited.
pub struct Exited(pub u32);

/// The watcher's figures, for `unrm status`.
#[derive(Debug, Default)]
pub struct ExitStats {
    pub watched: AtomicU64,
    /// Processes not watched by pidfd because the share was used up.
    pub refused: AtomicU64,
}

pub async fn watch<M: From<Exited> + Send + 'static>(
    mut requests: UnboundedReceiver<Watch>,
    tx: Sender<M>,
    limit: usize,
    stats: Arc<ExitStats>,
) {
    let mut watching: HashMap<u32, AbortHandle> = HashMap::new();
    while let Some(request) = requests.recv().await {
        watching.retain(|_, task| !task.is_finished());
        match request {
            Watch::Stop(pid) => {
                if let Some(task) = watching.remove(&pid) {
                    task.abort();
                }
            }
            Watch::Start(pid) if watching.contains_key(&pid) => {}
            Watch::Start(_) if watching.len() >= limit => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            Watch::Start(pid) => {
                let tx = tx.clone();
                let pidfd = Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::NONBLOCK).ok());
                // SAFETY: the OwnedFd moves into the AsyncFd and stays open while registered.
                match pidfd.and_then(|fd| unsafe { AsyncFd::register(fd) }.ok()) {
                    Some(fd) => {
                        let task = tokio::spawn(async move {
                            let _ = fd.readable().await;
                            let _ = tx.send(Exited(pid).into());
                        });
                        watching.insert(pid, task.abort_handle());
                    }
                    // Already gone.
                    None => {
                        let _ = tx.send(Exited(pid).into());
                    }
                }
            }
        }
        stats.watched.store(watching.len() as u64, Ordering::Relaxed);
    }
}
