//! What the engine counts for `unrm status`: the API's counters, the
//! guards' figures, pin latencies, and the figures other threads keep
//! (pidfd exit watches, the socket server).

use std::{collections::VecDeque, sync::Arc, time::Instant};

use crate::{
    api::{
        proto::{Counters, LatencyHistogram},
        server::ServerStats,
    },
    daemon::exits::ExitStats,
};

/// Pin latencies kept for `unrm status`.
const LATENCY_SAMPLES: usize = 8192;

/// Upper bounds (µs) of the pin latency histogram's buckets, from the
/// fastest pins (tens of µs) to ones that waited for a snapshot (seconds).
pub const PIN_LATENCY_BOUNDS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Every pin latency since start, by bucket (the last one: over every
/// bound), for the metrics' histogram.
#[derive(Default)]
pub struct LatencyCounts {
    per_bucket: [u64; PIN_LATENCY_BOUNDS_US.len() + 1],
    sum_ns: u64,
}

impl LatencyCounts {
    fn add(&mut self, ns: u64) {
        let at = PIN_LATENCY_BOUNDS_US
            .iter()
            .position(|&le| ns <= le * 1000)
            .unwrap_or(PIN_LATENCY_BOUNDS_US.len());
        self.per_bucket[at] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The histogram as the API carries it: cumulative counts per bound.
    pub fn histogram(&self) -> LatencyHistogram {
        let cumulative = self
            .per_bucket
            .iter()
            .take(PIN_LATENCY_BOUNDS_US.len())
            .scan(0, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect();
        LatencyHistogram {
            le_us: PIN_LATENCY_BOUNDS_US.to_vec(),
            cumulative,
            sum_ns: self.sum_ns,
            count: self.per_bucket.iter().sum(),
        }
    }
}

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
    pub latency_counts: LatencyCounts,
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
            latency_counts: LatencyCounts::default(),
            started: Instant::now(),
            exit_stats,
            pidfd_budget,
            server_stats,
        }
    }

    /// How long a pin took after its deletion; the newest samples are
    /// kept, and every one is counted in the histogram.
    pub fn pin_latency(&mut self, ns: u64) {
        self.latency_counts.add(ns);
        if self.latencies_ns.len() == LATENCY_SAMPLES {
            self.latencies_ns.pop_front();
        }
        self.latencies_ns.push_back(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_what_is_over_every_bound() {
        let mut counts = LatencyCounts::default();
        for ns in [5_000, 10_000, 10_001, 3_000_000, 60_000_000_000] {
            counts.add(ns);
        }
        let h = counts.histogram();
        assert_eq!(h.le_us.len(), h.cumulative.len());
        assert_eq!((h.cumulative[0], h.cumulative[1]), (2, 3), "10 µs is inclusive");
        let at_5ms = PIN_LATENCY_BOUNDS_US.iter().position(|&b| b == 5_000).unwrap();
        assert_eq!(h.cumulative[at_5ms], 4);
        assert_eq!(*h.cumulative.last().unwrap(), 4, "60 s is over every bound");
        assert_eq!((h.count, h.sum_ns), (5, 60_003_025_001));
    }
}
