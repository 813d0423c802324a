//! One clock per purpose: latencies from the kernel's monotonic clock
//! (`bpf_ktime_get_ns` and CLOCK_MONOTONIC agree), wall-clock time only for
//! what people read.

use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC in nanoseconds: the probes' timestamps.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a kernel monotonic timestamp.
pub fn wall_time_of(ktime_ns: u64) -> SystemTime {
    let ago = monotonic_ns().saturating_sub(ktime_ns);
    SystemTime::now() - Duration::from_nanos(ago)
}
