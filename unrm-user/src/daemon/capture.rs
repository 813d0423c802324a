//! The capture worker: copies a pinned file into the store off the engine's
//! thread, so a large copy never delays the next pin.

use std::{
    fs::File,
    os::fd::AsFd,
    sync::{
        Arc,
        mpsc::{Receiver, Sender},
    },
    time::{Duration, Instant, SystemTime},
};

use crate::{
    holders::InodeId,
    store::{Store, Stored},
};

pub struct Job {
    pub record: i64,
    pub inode: InodeId,
    /// A duplicate of the pin; the worker reads it with explicit offsets.
    pub file: File,
    pub size: u64,
}

pub enum Done {
    /// The content is durable in the store (or the capture failed).
    Captured { record: i64, inode: InodeId, result: Result<Stored, String>, took: Duration, at: SystemTime },
    /// Its checksum, computed afterwards.
    Checksummed { record: i64, checksum: Result<String, String> },
}

pub fn spawn<M: From<Done> + Send + 'static>(store: Arc<Store>, jobs: Receiver<Job>, done: Sender<M>) {
    std::thread::Builder::new()
        .name("unrm-capture".into())
        .spawn(move || {
            super::sched::background();
            for job in jobs {
                let started = Instant::now();
                let result =
                    store.capture(job.record, job.file.as_fd(), job.size).map_err(|e| format!("{e:#}"));
                let ok = result.is_ok();
                let took = started.elapsed();
                let captured = Done::Captured {
                    record: job.record,
                    inode: job.inode,
                    result,
                    took,
                    at: SystemTime::now(),
                };
                if done.send(captured.into()).is_err() {
                    return;
                }
                if ok {
                    let checksum = store.checksum(job.record).map_err(|e| format!("{e:#}"));
                    if done.send(Done::Checksummed { record: job.record, checksum }.into()).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawning the capture thread");
}
