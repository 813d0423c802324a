//! File workers: one thread per filesystem for everything that must really
//! talk to a filesystem about a pinned file (opening it for reading, its
//! extended attributes and directories, copying it into the store).
//!
//! Any of these can block for as long as the filesystem likes: a FUSE
//! server that stopped answering, a hung NFS mount, a dying disk. None of
//! them may run on the ring-buffer reader or the engine, and one stuck
//! filesystem must not hold up work on the others; so each filesystem gets
//! a lane of its own, jobs in a lane run in order (urgent ones first: a
//! pin's open races its holders, a copy does not), and a lane that has sat
//! on one job for `STUCK_AFTER` is reported (and counted) as stuck. Lanes
//! come and go with the work: an idle one ends after `IDLE_FOR`. Past
//! `MAX_LANES` filesystems answering, the rest share one overflow lane.

use std::{
    collections::{HashMap, VecDeque},
    panic::AssertUnwindSafe,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Work for a lane: it runs on the lane's thread, and may block.
pub type Job = Box<dyn FnOnce() + Send>;

/// Lanes that are not stuck, at most; a stuck one (its thread blocked in
/// the kernel) does not count, so a few filesystems that stopped answering
/// cannot push every other filesystem into the overflow lane. Threads in
/// all, stuck ones included, are bounded by `MAX_THREADS`.
const MAX_LANES: usize = 32;
const MAX_THREADS: usize = 256;
const OVERFLOW: u64 = u64::MAX;
/// The lane of the store itself (checksums of captures).
pub const STORE: u64 = u64::MAX - 1;
/// A job running this long is reported as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
const IDLE_FOR: Duration = Duration::from_secs(30);

/// A lane's jobs, shared by the engine (which adds) and its thread.
#[derive(Default)]
struct Queue {
    jobs: Mutex<Waiting>,
    ready: Condvar,
}

#[derive(Default)]
struct Waiting {
    jobs: VecDeque<Job>,
    /// The lane is being let go: its thread ends once the queue is empty.
    closed: bool,
    /// When the running job started, in ms since the lanes' epoch, plus one
    /// (0: idle).
    busy_since_ms: u64,
}

struct Lane {
    queue: Arc<Queue>,
    /// When the lane last had nothing to do, in ms since the epoch.
    idle_since_ms: Arc<AtomicU64>,
    /// This lane is known to be stuck (reported once per episode).
    stuck: bool,
}

pub struct Lanes {
    lanes: HashMap<u64, Lane>,
    epoch: Instant,
    /// Jobs that were reported stuck, ever.
    stuck_total: u64,
}

impl Lanes {
    pub fn new() -> Self {
        Lanes { lanes: HashMap::new(), epoch: Instant::now(), stuck_total: 0 }
    }

    /// Queues `job` on the lane of the filesystem `dev`, after the others.
    pub fn run(&mut self, dev: u64, job: Job) {
        self.queue(dev, job, false);
    }

    /// Queues `job` on the lane of `dev`, before anything not yet started.
    pub fn run_first(&mut self, dev: u64, job: Job) {
        self.queue(dev, job, true);
    }

    fn queue(&mut self, dev: u64, job: Job, first: bool) {
        let live = self.lanes.values().filter(|lane| !lane.stuck).count();
        let room = live < MAX_LANES && self.lanes.len() < MAX_THREADS;
        let mut key = if self.lanes.contains_key(&dev) || room || dev == STORE { dev } else { OVERFLOW };
        if key == OVERFLOW && self.lanes.get(&OVERFLOW).is_some_and(|lane| lane.stuck) {
            // A stuck overflow lane is left to finish on its own; the
            // filesystems it served get a fresh one.
            if let Some(old) = self.lanes.remove(&OVERFLOW) {
                old.queue.jobs.lock().unwrap().closed = true;
            }
        }
        if !self.lanes.contains_key(&key) {
            match spawn(key, self.epoch) {
                Some(lane) => {
                    self.lanes.insert(key, lane);
                }
                // No thread to be had: the overflow lane, if there is one.
                None if self.lanes.contains_key(&OVERFLOW) => key = OVERFLOW,
                None => {
                    log::error!("no file worker for {}: a job is dropped", describe(dev));
                    return;
                }
            }
        }
        let lane = &self.lanes[&key];
        let mut waiting = lane.queue.jobs.lock().unwrap();
        if first {
            waiting.jobs.push_front(job);
        } else {
            waiting.jobs.push_back(job);
        }
        lane.queue.ready.notify_one();
    }

    /// Notices lanes that got stuck or came free, and ends idle ones.
    /// Returns the lanes stuck now.
    pub fn tick(&mut self) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let (mut stuck_now, mut newly) = (0, 0);
        self.lanes.retain(|dev, lane| {
            let mut waiting = lane.queue.jobs.lock().unwrap();
            let since = waiting.busy_since_ms;
            let stuck = since != 0 && now.saturating_sub(since) >= STUCK_AFTER.as_millis() as u64;
            if stuck && !lane.stuck {
                newly += 1;
                log::warn!(
                    "a file operation on filesystem {} has not returned for {}s (a FUSE server or network \
                     filesystem not answering?); work on that filesystem waits, the rest goes on",
                    describe(*dev),
                    now.saturating_sub(since) / 1000
                );
            } else if !stuck && lane.stuck {
                log::info!("filesystem {} answers again", describe(*dev));
            }
            lane.stuck = stuck;
            stuck_now += stuck as usize;
            let idle = since == 0
                && waiting.jobs.is_empty()
                && now.saturating_sub(lane.idle_since_ms.load(Ordering::Acquire))
                    >= IDLE_FOR.as_millis() as u64;
            if idle {
                waiting.closed = true;
                lane.queue.ready.notify_one();
            }
            !idle
        });
        self.stuck_total += newly;
        stuck_now
    }

    /// Jobs ever reported stuck.
    pub fn stuck_total(&self) -> u64 {
        self.stuck_total
    }
}

fn describe(dev: u64) -> String {
    match dev {
        OVERFLOW => "(shared lane)".into(),
        STORE => "(the store)".into(),
        dev => format!("{}:{}", libc::major(dev), libc::minor(dev)),
    }
}

fn spawn(dev: u64, epoch: Instant) -> Option<Lane> {
    let queue = Arc::new(Queue::default());
    let idle_since_ms = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let (work_queue, work_idle) = (queue.clone(), idle_since_ms.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("unrm-fs-{}", describe(dev)))
        .spawn(move || work(&work_queue, &work_idle, epoch));
    match spawned {
        Ok(_) => Some(Lane { queue, idle_since_ms, stuck: false }),
        Err(err) => {
            log::error!("could not start a file worker for {}: {err}", describe(dev));
            None
        }
    }
}

fn work(queue: &Queue, idle_since_ms: &AtomicU64, epoch: Instant) {
    super::sched::background();
    loop {
        let job = {
            let mut waiting = queue.jobs.lock().unwrap();
            loop {
                if let Some(job) = waiting.jobs.pop_front() {
                    waiting.busy_since_ms = epoch.elapsed().as_millis() as u64 + 1;
                    break job;
                }
                if waiting.closed {
                    return;
                }
                waiting = queue.ready.wait(waiting).unwrap();
            }
        };
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            log::error!("a file worker's job panicked; the lane goes on");
        }
        queue.jobs.lock().unwrap().busy_since_ms = 0;
        idle_since_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    #[test]
    fn a_stuck_lane_holds_up_only_its_own_filesystem() {
        let mut lanes = Lanes::new();
        let (gate_tx, gate_rx) = channel::<()>();
        let (started_tx, started_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<u64>();
        lanes.run(
            1,
            Box::new(move || {
                started_tx.send(()).unwrap();
                gate_rx.recv().unwrap()
            }),
        );
        started_rx.recv().unwrap();
        let (later, first) = (done_tx.clone(), done_tx.clone());
        lanes.run(1, Box::new(move || later.send(1).unwrap()));
        lanes.run_first(1, Box::new(move || first.send(0).unwrap()));
        lanes.run(2, Box::new(move || done_tx.send(2).unwrap()));
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(2), "the other filesystem goes on");
        assert!(done_rx.try_recv().is_err(), "lane 1 waits behind its blocked job");
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(0), "urgent work first");
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert_eq!(lanes.tick(), 0);
    }
}
