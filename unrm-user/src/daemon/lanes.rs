//! File workers: one thread per filesystem for everything that must really
//! talk to a filesystem about a pinned file (opening it for reading, its
//! extended attributes and directories, copying it into the store).
//!
//! Any of these can block for as long as the filesystem likes: a FUSE
//! server that stopped answering, a hung NFS mount, a dying disk. None of
//! them may run on the ring-buffer reader or the engine, and one stuck
//! filesystem must not hold up work on the others; so each filesystem gets
//! a lane of its own, jobs in a lane run in order, and a lane that has sat
//! on one job for `STUCK_AFTER` is reported (and counted) as stuck. Lanes
//! come and go with the work: an idle one ends after `IDLE_FOR`. Past
//! `MAX_LANES` filesystems, the rest share one overflow lane.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, Sender, channel},
    },
    time::{Duration, Instant},
};

/// Work for a lane: it runs on the lane's thread, and may block.
pub type Job = Box<dyn FnOnce() + Send>;

const MAX_LANES: usize = 32;
const OVERFLOW: u64 = u64::MAX;
/// A job running this long is reported as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
const IDLE_FOR: Duration = Duration::from_secs(30);

struct Lane {
    tx: Sender<Job>,
    state: Arc<LaneState>,
    /// This lane is known to be stuck (reported once per episode).
    stuck: bool,
}

#[derive(Default)]
struct LaneState {
    queued: AtomicUsize,
    /// When the running job started, in ms since `epoch`; 0 when idle.
    busy_since_ms: AtomicU64,
    /// When the last job ended, in ms since `epoch`.
    idle_since_ms: AtomicU64,
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

    /// Queues `job` on the lane of the filesystem `dev`.
    pub fn run(&mut self, dev: u64, job: Job) {
        let key = if self.lanes.contains_key(&dev) || self.lanes.len() < MAX_LANES { dev } else { OVERFLOW };
        let epoch = self.epoch;
        let lane = self.lanes.entry(key).or_insert_with(|| spawn(key, epoch));
        lane.state.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(err) = lane.tx.send(job) {
            // The lane's thread is gone (it could not be started): run the
            // job on a fresh one rather than lose it.
            lane.state.queued.fetch_sub(1, Ordering::AcqRel);
            *lane = spawn(key, epoch);
            lane.state.queued.fetch_add(1, Ordering::AcqRel);
            let _ = lane.tx.send(err.0);
        }
    }

    /// Notices lanes that got stuck or came free, and ends idle ones.
    /// Returns the lanes stuck now.
    pub fn tick(&mut self) -> usize {
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut stuck_now = 0;
        for (dev, lane) in &mut self.lanes {
            let since = lane.state.busy_since_ms.load(Ordering::Acquire);
            let stuck = since != 0 && now.saturating_sub(since) >= STUCK_AFTER.as_millis() as u64;
            if stuck && !lane.stuck {
                self.stuck_total += 1;
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
        }
        self.lanes.retain(|_, lane| {
            let idle = lane.state.queued.load(Ordering::Acquire) == 0
                && now.saturating_sub(lane.state.idle_since_ms.load(Ordering::Acquire))
                    >= IDLE_FOR.as_millis() as u64;
            !idle
        });
        stuck_now
    }

    /// Jobs ever reported stuck.
    pub fn stuck_total(&self) -> u64 {
        self.stuck_total
    }
}

fn describe(dev: u64) -> String {
    if dev == OVERFLOW { "(shared lane)".into() } else { format!("{}:{}", libc::major(dev), libc::minor(dev)) }
}

fn spawn(dev: u64, epoch: Instant) -> Lane {
    let (tx, rx) = channel::<Job>();
    let state = Arc::new(LaneState::default());
    state.idle_since_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Release);
    let worker = state.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("unrm-fs-{}", describe(dev)))
        .spawn(move || work(rx, &worker, epoch));
    if let Err(err) = spawned {
        log::error!("could not start a file worker for {}: {err}", describe(dev));
    }
    Lane { tx, state, stuck: false }
}

fn work(jobs: Receiver<Job>, state: &LaneState, epoch: Instant) {
    super::sched::background();
    for job in jobs {
        // Never 0: 0 means idle.
        state.busy_since_ms.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            log::error!("a file worker's job panicked; the lane goes on");
        }
        state.busy_since_ms.store(0, Ordering::Release);
        state.idle_since_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Release);
        state.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_lane_holds_up_only_its_own_filesystem() {
        let mut lanes = Lanes::new();
        let (gate_tx, gate_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<u64>();
        lanes.run(1, Box::new(move || gate_rx.recv().unwrap()));
        let done = done_tx.clone();
        lanes.run(1, Box::new(move || done.send(1).unwrap()));
        lanes.run(2, Box::new(move || done_tx.send(2).unwrap()));
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(2), "the other filesystem goes on");
        assert!(done_rx.try_recv().is_err(), "lane 1 waits behind its blocked job");
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert_eq!(lanes.tick(), 0);
    }
}
