//! What deleting a held file costs the deleter, as the machine's open
//! descriptors grow: the `unlink(2)` call's own latency, from its start to
//! its return, daemon off and on, at each size, in interleaved rounds.
//! The probes once searched every process's descriptors inside that call
//! (~150 ns each); pinning by file handle makes it flat.

use std::{ffi::CString, path::Path, time::Instant};

use serde_json::json;

use super::{Row, median};
use crate::{Daemon, Holder, Mount};

/// Descriptors one helper process holds (below this machine's hard limit).
const PER_PROCESS: usize = 16_000;

/// The median latency, in ns, of `n` unlinks of files another process
/// holds open. Each holder is started after the processes that make the
/// machine busy, so a search for it through the process list (as unrm's
/// probes once did) walks all of theirs first, as it would on a server.
fn unlink_latency(dir: &Path, n: usize) -> f64 {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let file = dir.join(format!("held{i}"));
        std::fs::write(&file, b"held").unwrap();
        let holder = Holder::fd(&file);
        let path = CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        let started = Instant::now();
        // SAFETY: unlink(2) of a valid NUL-terminated path.
        let ret = unsafe { libc::unlink(path.as_ptr()) };
        samples.push(started.elapsed().as_nanos() as f64);
        assert_eq!(ret, 0, "unlink: {}", std::io::Error::last_os_error());
        drop(holder);
    }
    median(&mut samples)
}

/// One row per machine size (total open descriptors held by helpers).
pub fn measure(sizes: &[usize], rounds: usize, per_round: usize, extra: &[&str]) -> Vec<Row> {
    let fs = Mount::ext4_image_in(Path::new("/dev/shm"));
    let dir = tempfile::tempdir_in(&fs.path).unwrap();
    let mut rows = Vec::new();
    let mut helpers: Vec<Holder> = Vec::new();
    let mut held = 0;
    for &size in sizes {
        while held < size {
            let n = (size - held).min(PER_PROCESS);
            helpers.push(Holder::devnull(n));
            held += n;
        }
        unlink_latency(dir.path(), per_round);
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            off.push(unlink_latency(dir.path(), per_round));
            let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), extra);
            on.push(unlink_latency(dir.path(), per_round));
            daemon.stop();
            eprintln!("  held unlink, {size} open descriptors: round {}/{rounds}", round + 1);
        }
        let mut paired: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b / a).collect();
        let ratio = median(&mut paired);
        let (base, with) = (median(&mut off.clone()), median(&mut on.clone()));
        rows.push(Row {
            measure: format!("unlink of a held file, {size} open descriptors"),
            how: "the call's own latency, daemon on / off, ext4 on a RAM loop device".into(),
            result: format!("{ratio:.2}× (medians {:.1} → {:.1} µs)", base / 1000.0, with / 1000.0),
            target: "≤ 1.10×, flat as descriptors grow".into(),
            met: Some(ratio <= 1.10),
            data: json!({ "open_descriptors": size, "off_ns": base, "on_ns": with, "ratio": ratio,
                          "paired_ratios": paired, "rounds_off": off, "rounds_on": on }),
        });
    }
    drop(helpers);
    rows
}
