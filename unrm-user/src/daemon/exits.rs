//! Holder exits, exactly: a pidfd becomes readable once its process has
//! exited, after the kernel has closed its files and dropped its mappings.
//! No probe is needed for the commonest final release, and none can be
//! missed: the pidfd is opened right after the pin.

use std::sync::mpsc::Sender;

use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::{io::unix::AsyncFd, sync::mpsc::UnboundedReceiver};

pub async fn watch<M: From<Exited> + Send + 'static>(mut pids: UnboundedReceiver<u32>, tx: Sender<M>) {
    while let Some(pid) = pids.recv().await {
        let tx = tx.clone();
        let pidfd = Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::NONBLOCK).ok());
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open while registered.
        match pidfd.and_then(|fd| unsafe { AsyncFd::register(fd) }.ok()) {
            Some(fd) => {
                tokio::spawn(async move {
                    let _ = fd.readable().await;
                    let _ = tx.send(Exited(pid).into());
                });
            }
            // Already gone.
            None => {
                let _ = tx.send(Exited(pid).into());
            }
        }
    }
}

/// A watched holder has exited.
pub struct Exited(pub u32);
