//! What the engine counts for `unrm status`: the API's counters, the
//! guards' figures, pin latencies, and the figures other threads keep
//! (pidfd exit watches, the socket server).

use std::{collections::VecDeque, sync::Arc, time::Instant};

use crate::{
    api::{proto::Counters, server::ServerStats},
    daemon::exits::ExitStats,
};

/// Pin latencies kept for `unrm status`.
const LATENCY_SAMPLES: usize = 8192;

/// Counters that are not the API's `Counters`: the guards' figures.
#[derive(Default)]
pub struct Guards {
    pub over_budget: u64,
    pub over_user_pins: u64,
    pub over_user_store: u64,
    pub engine_errors: u64,
    pub evicted_for_space: u64,
    pub records_pruned: u64,
}

pub struct Figures {
    pub counters: Counters,
    pub guards: Guards,
    pub latencies_ns: VecDeque<u64>,
    pub started: Instant,
    pub exit_stats: Arc<ExitStats>,
    pub pidfd_budget: usize,
    pub server_stats: Arc<ServerStats>,
}

impl Figures {
    pub fn new(exit_stats: Arc<ExitStats>, pidfd_budget: usize, server_stats: Arc<ServerStats>) -> Self {
        Figures {
            counters: Counters::default(),
            guards: Guards::default(),
            latencies_ns: VecDeque::new(),
            started: Instant::now(),
            exit_stats,
            pidfd_budget,
            server_stats,
        }
    }

    /// How long a pin took after its deletion; the newest samples are kept.
    pub fn pin_latency(&mut self, ns: u64) {
        if self.latencies_ns.len() == LATENCY_SAMPLES {
            self.latencies_ns.pop_front();
        }
        self.latencies_ns.push_back(ns);
    }
}
