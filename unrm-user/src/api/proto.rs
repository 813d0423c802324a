//! Frames and messages. A frame is a little-endian u32 length, then that
//! many bytes of JSON. Requests are small and capped hard; a frame over its
//! cap is refused before anything is allocated for it.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    events::Event,
    holders::HeldView,
    protect::TreeView,
    record::{Record, RestoreMeta, Status},
};

/// Largest request the daemon accepts.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest response the CLI accepts.
pub const MAX_RESPONSE: usize = 256 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    List {
        /// Only deletions at or after this time (ns since the epoch).
        since_ns: Option<i64>,
        status: Option<Status>,
        /// A glob over the full path.
        path: Option<String>,
        /// 0 for all.
        limit: usize,
        /// Continue a listing where the previous page stopped.
        #[serde(default)]
        after: Option<(i64, i64)>,
        /// Only deletions by a process in this container (the start of its
        /// id, or a runtime's name).
        #[serde(default)]
        container: Option<String>,
    },
    Show {
        id: i64,
    },
    /// Sends a readable descriptor of the content along with the record.
    Open {
        id: i64,
    },
    Status,
    /// Deleted files held right now, from a fresh snapshot.
    Scan,
    /// Every new record and status change from now on that the filters
    /// select, as `Response::Event`s after a `Response::Following`.
    Follow {
        status: Option<Status>,
        /// A glob over the full path.
        path: Option<String>,
        /// A container id (a prefix of it) or runtime name.
        #[serde(default)]
        container: Option<String>,
    },
    /// Protects the directory tree at `path` (absolute, as the caller
    /// resolved it): see README, Protected trees.
    Protect {
        path: String,
        /// Also on a network, FUSE or removable filesystem (root only).
        #[serde(default)]
        any_fs: bool,
    },
    Unprotect {
        path: String,
    },
    /// The protected trees the caller may see.
    Protected,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// One page of a listing; `next` says where the following one starts
    /// (the daemon answers in bounded pages so that no query holds it up).
    Records {
        records: Vec<Record>,
        #[serde(default)]
        next: Option<(i64, i64)>,
    },
    Record {
        record: Record,
    },
    Opened {
        record: Record,
        meta: RestoreMeta,
    },
    Status {
        status: DaemonStatus,
    },
    Scan {
        files: Vec<HeldView>,
    },
    /// A follow request was taken: events follow, one per frame.
    Following,
    /// Protected trees.
    Trees {
        trees: Vec<TreeView>,
    },
    Event {
        event: Event<'static>,
    },
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_secs: u64,
    pub state_dir: String,
    pub probes: ProbeStatus,
    pub counters: Counters,
    /// Files pinned right now and their total size.
    pub held_files: u64,
    pub held_bytes: u64,
    pub store_bytes: u64,
    /// Captures in the store.
    #[serde(default)]
    pub store_files: u64,
    /// Files unrm holds in protected trees, and the trees.
    #[serde(default)]
    pub protected_files: u64,
    #[serde(default)]
    pub protected_trees: u64,
    pub records: u64,
    /// Time from a deletion returning to unrm holding its pin.
    pub pin_latency_us: Latency,
    /// What protects unrm from exhaustion and abuse, and how often it acted.
    #[serde(default)]
    pub safety: Safety,
}

/// The guards that keep one user, or one misbehaving filesystem, from
/// stopping unrm for everyone, and how often each stepped in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Safety {
    /// Pins the descriptor limit allows, and pins (and grabs) open now.
    pub pin_budget: u64,
    pub pins_open: u64,
    /// Held deletions not pinned because the budget was spent.
    pub over_budget: u64,
    /// Held deletions not pinned because their owner had too many pins.
    pub over_user_pins: u64,
    /// Captures refused because their owner's share of the store was full.
    pub over_user_store: u64,
    /// Records of unheld deletions not written: their deleter went over
    /// `per_user.records_per_minute`.
    pub rate_limited: u64,
    /// Failed unlink/rename calls the probes dropped in the kernel.
    pub failed_calls: u64,
    /// Reads of kernel memory the probes' helper refused (each leaves a
    /// fact unknown: an event without its inode, a path cut short).
    #[serde(default)]
    pub failed_reads: u64,
    /// Inodes or processes the probes' full watch tables could not take.
    pub watch_full: u64,
    /// Holder exits watched by pidfd now, the most allowed, and refused.
    pub pidfds: u64,
    pub pidfd_budget: u64,
    pub pidfds_refused: u64,
    /// Writes the index refused (full disk, I/O error), writes waiting to
    /// be replayed, and unheld records dropped meanwhile.
    pub index_errors: u64,
    pub index_waiting: u64,
    pub index_dropped: u64,
    /// Errors the engine logged and went on from.
    pub engine_errors: u64,
    /// Client connections open now; refused (over a limit); closed for
    /// idling or reading too slowly; accept(2) failures.
    pub connections: u64,
    pub connections_refused: u64,
    pub clients_dropped: u64,
    pub accept_errors: u64,
    /// Filesystems whose file worker is stuck now, and stuck ever.
    pub stuck_filesystems: u64,
    pub stuck_total: u64,
    /// Captures evicted because something else filled the store's filesystem.
    pub evicted_for_space: u64,
    /// Records without content forgotten to keep the index within its size.
    pub records_pruned: u64,
    /// Events written to the event log, and dropped (its writer was behind
    /// or its sink failed); followers cut off for falling behind.
    #[serde(default)]
    pub events_written: u64,
    #[serde(default)]
    pub events_dropped: u64,
    #[serde(default)]
    pub followers_dropped: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// Which hooks the probes ride on: `fentry`, `tracepoint` or `fs`.
    pub tier: String,
    /// Why a better tier was refused, when the daemon fell back.
    #[serde(default)]
    pub fallback: Option<String>,
    pub attached: bool,
    /// Filesystem hooks that name the deleted inode, where attached.
    pub fs_hooks: Vec<String>,
    /// Release probes ride hot syscalls and are attached only while a pinned
    /// file still has holders.
    pub release_attached: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub events: u64,
    pub deletions: u64,
    pub releases: u64,
    /// Events the probes had to drop (ring buffer full or table full).
    pub lost_events: u64,
    pub scans: u64,
    pub pins: u64,
    /// Pins taken through the holder the probe found in the kernel, without
    /// waiting for a snapshot.
    pub fast_pins: u64,
    pub captured: u64,
    pub missed: u64,
    pub unheld: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Deletions the policy's globs or owner filter left out.
    pub ignored: u64,
    /// Captures let go to keep the store within its bounds.
    pub evicted: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// Every latency since start, not only the recent `samples`.
    #[serde(default)]
    pub histogram: LatencyHistogram,
}

/// A histogram as Prometheus keeps one: for each upper bound (µs), how
/// many samples were at or under it; then all samples and their sum.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub le_us: Vec<u64>,
    pub cumulative: Vec<u64>,
    pub sum_ns: u64,
    pub count: u64,
}

pub fn frame(message: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("messages serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A request from a frame's body, or why not.
pub fn parse_request(body: &[u8]) -> Result<Request> {
    serde_json::from_slice(body).map_err(|err| anyhow::anyhow!("malformed request: {err}"))
}

/// The body length a frame header announces, refused when over `max`.
pub fn body_len(header: [u8; 4], max: usize) -> Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        bail!("message of {len} bytes is over the {max}-byte limit");
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::List {
                since_ns: Some(5),
                status: Some(Status::Held),
                path: Some("*.log".into()),
                limit: 3,
                after: Some((7, 8)),
                container: Some("3f4e".into()),
            },
            Request::Show { id: 1 },
            Request::Open { id: 2 },
            Request::Status,
            Request::Scan,
            Request::Follow { status: Some(Status::Captured), path: Some("/a/*".into()), container: None },
        ];
        for req in reqs {
            let bytes = frame(&req);
            let len = body_len(bytes[..4].try_into().unwrap(), MAX_REQUEST).unwrap();
            assert_eq!(len, bytes.len() - 4);
            let back: Request = serde_json::from_slice(&bytes[4..]).unwrap();
            assert_eq!(back, req);
        }
    }

    proptest::proptest! {
        /// Whatever bytes arrive, decoding answers with a request or an
        /// error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if bytes.len() >= 4 {
                let _ = body_len(bytes[..4].try_into().unwrap(), MAX_REQUEST);
            }
            let _ = parse_request(&bytes);
        }

        /// Near-valid JSON: requests with random field values and shapes.
        #[test]
        fn mangled_requests_never_panic(op in "[a-z_]{0,12}", id in proptest::num::i64::ANY, junk in ".{0,40}") {
            for text in [
                format!(r#"{{"op":"{op}","id":{id}}}"#),
                format!(r#"{{"op":"list","since_ns":{id},"status":"{op}","path":"{junk}","limit":{id}}}"#),
                format!(r#"{{"op":"{op}"{junk}"#),
            ] {
                let _ = parse_request(text.as_bytes());
            }
        }

        /// Every valid request survives framing and parsing unchanged.
        #[test]
        fn valid_requests_round_trip(id in proptest::num::i64::ANY, limit in 0usize..1_000_000, glob in "[a-z*/]{0,20}") {
            for req in [Request::Show { id }, Request::Open { id }, Request::List { since_ns: Some(id), status: None, path: Some(glob.clone()), limit, after: None, container: None }] {
                let bytes = frame(&req);
                let len = body_len(bytes[..4].try_into().unwrap(), MAX_REQUEST).unwrap();
                proptest::prop_assert_eq!(len, bytes.len() - 4);
                proptest::prop_assert_eq!(parse_request(&bytes[4..]).unwrap(), req);
            }
        }
    }

    #[test]
    fn oversized_and_malformed_are_refused() {
        assert!(body_len((MAX_REQUEST as u32 + 1).to_le_bytes(), MAX_REQUEST).is_err());
        assert!(serde_json::from_slice::<Request>(br#"{"op":"drop_tables"}"#).is_err());
        assert!(serde_json::from_slice::<Request>(br#"{"op":"show","id":"x"}"#).is_err());
        assert!(serde_json::from_slice::<Request>(br#"{"op":"show","id":1,"extra":2}"#).is_err());
    }
}
