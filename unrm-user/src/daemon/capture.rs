//! The capture worker: copies a pinned file into the store off the engine's
//! thread, so a large copy never delays the next pin.

use std::{
    fs::File,
    os::fd::AsFd,
    sync::{Arc, mpsc::{Receiver, Sender}},
};

use crate::{holders::InodeId, store::{Store, Stored}};

pub struct Job {
    pub record: i64,
    pub inode: InodeId,
    /// A duplicate of the pin; the worker reads it with explicit offsets.
    pub file: File,
    pub size: u64,
}

pub struct Done {
    pub record: i64,
    pub inode: InodeId,
    pub result: Result<Stored, String>,
}

pub fn spawn<M: From<Done> + Send + 'static>(store: Arc<Store>, jobs: Receiver<Job>, done: Sender<M>) {
    std::thread::Builder::new()
        .name("unrm-capture".into())
        .spawn(move || {
            for job in jobs {
                let result = store.capture(job.record, job.file.as_fd(), job.size).map_err(|e| format!("{e:#}"));
                let finished = Done { record: job.record, inode: job.inode, result };
                if done.send(finished.into()).is_err() {
                    return;
                }
            }
        })
        .expect("spawning the capture thread");
}
