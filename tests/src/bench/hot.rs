//! What unrm costs everyone else: tight loops of an unrelated system call
//! and of the paths its probes sit on, with the daemon off and on, in
//! interleaved rounds.

use std::{ffi::CString, path::Path};

use serde_json::json;

use super::{Row, median, ns_per_op};
use crate::{Daemon, Mount};

const GETPID: u64 = 2_000_000;
const OPEN_CLOSE: u64 = 200_000;
const CREATE_UNLINK: u64 = 40_000;

struct Loops {
    getpid: f64,
    open_close: f64,
    create_unlink: f64,
}

/// `scale` divides the loops' lengths (an emulated machine is slower).
fn run_loops(dir: &Path, scale: u64) -> Loops {
    let existing = CString::new(dir.join("existing").as_os_str().as_encoded_bytes()).unwrap();
    let scratch = CString::new(dir.join("scratch").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY (all three loops): plain system calls on valid NUL-terminated
    // paths and descriptors this loop owns.
    let getpid = ns_per_op(GETPID / scale, || unsafe {
        libc::syscall(libc::SYS_getpid);
    });
    let open_close = ns_per_op(OPEN_CLOSE / scale, || unsafe {
        let fd = libc::open(existing.as_ptr(), libc::O_RDONLY);
        libc::close(fd);
    });
    let create_unlink = ns_per_op(CREATE_UNLINK / scale, || unsafe {
        let fd = libc::open(scratch.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, 0o600);
        libc::write(fd, b"0123456789abcdef".as_ptr().cast(), 16);
        libc::close(fd);
        libc::unlink(scratch.as_ptr());
    });
    Loops { getpid, open_close, create_unlink }
}

/// Where the rows were measured: this machine, or an emulated one (the
/// stock-kernel VM under TCG, where the VFS tiers load: only the ratios
/// mean anything there, and the loops are shorter).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Host,
    Emulated,
}

/// Rows for one probe tier (`extra` are the daemon's arguments).
pub fn measure(rounds: usize, tier: &str, extra: &[&str], machine: Machine) -> Vec<Row> {
    let scale = if machine == Machine::Emulated { 10 } else { 1 };
    let label = if machine == Machine::Emulated {
        format!("{tier} tier, emulated VM")
    } else {
        format!("{tier} tier")
    };
    // ext4 all the same, but on a RAM-backed loop device: the disk's
    // journal and writeback noise would swamp a few per cent.
    let fs = Mount::ext4_image_in(Path::new("/dev/shm"));
    let dir = tempfile::tempdir_in(&fs.path).unwrap();
    std::fs::write(dir.path().join("existing"), b"x").unwrap();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // The first loops on a fresh directory and journal run slow either way.
    run_loops(dir.path(), scale);
    for round in 0..rounds {
        off.push(run_loops(dir.path(), scale));
        let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), extra);
        on.push(run_loops(dir.path(), scale));
        daemon.stop();
        eprintln!("  hot paths, {tier} tier: round {}/{rounds}", round + 1);
    }
    let pick = |runs: &[Loops], f: fn(&Loops) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let row = |name: &str, how: &str, f: fn(&Loops) -> f64, target: f64| {
        let (base, with) = (pick(&off, f), pick(&on, f));
        // Each round's on/off pair ran back to back: the median of their
        // ratios is robust to the machine drifting between rounds.
        let mut paired: Vec<f64> = off.iter().zip(&on).map(|(a, b)| f(b) / f(a)).collect();
        let ratio = median(&mut paired);
        Row {
            measure: format!("{name} ({label})"),
            how: how.into(),
            result: format!("{ratio:.3}× (medians {base:.0} → {with:.0} ns)"),
            target: format!("≤ {target:.2}×"),
            met: Some(ratio <= target),
            data: json!({ "tier": tier, "off_ns": base, "on_ns": with, "ratio": ratio, "paired_ratios": paired,
                          "rounds_off": off.iter().map(f).collect::<Vec<_>>(),
                          "rounds_on": on.iter().map(f).collect::<Vec<_>>() }),
        }
    };
    vec![
        row("unrelated syscall", "getpid loop, daemon on / off", |l| l.getpid, 1.03),
        row("hot path: open+close", "open+close loop, ext4 on a RAM loop device", |l| l.open_close, 1.10),
        row(
            "hot path: create+write+unlink",
            "16-byte files, ext4 on a RAM loop device",
            |l| l.create_unlink,
            1.10,
        ),
    ]
}
