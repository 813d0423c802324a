//! What deleting a held file costs the deleter, as the machine's open
//! descriptors grow: the `unlink(2)` call's own latency, from its start to
//! its return, daemon off and on, at each size, in interleaved rounds; and
//! the same through overlayfs. The probes once searched every process's
//! descriptors inside that call (~150 ns each); pinning by file handle
//! makes it flat.

use std::{ffi::CString, path::Path, process::Command};

use serde_json::json;

use super::{Row, median};
use crate::{Daemon, Holder, Mount, run};

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
        let started = std::time::Instant::now();
        // SAFETY: unlink(2) of a valid NUL-terminated path.
        let ret = unsafe { libc::unlink(path.as_ptr()) };
        samples.push(started.elapsed().as_nanos() as f64);
        assert_eq!(ret, 0, "unlink: {}", std::io::Error::last_os_error());
        drop(holder);
    }
    median(&mut samples)
}

/// Daemon off and on, `rounds` times, in `dir`: the medians of each side's
/// rounds, and the median of the paired ratios.
struct Paired {
    off: Vec<f64>,
    on: Vec<f64>,
}

impl Paired {
    fn measure(dir: &Path, rounds: usize, per_round: usize, extra: &[&str], label: &str) -> Paired {
        unlink_latency(dir, per_round);
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            off.push(unlink_latency(dir, per_round));
            let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), extra);
            on.push(unlink_latency(dir, per_round));
            daemon.stop();
            eprintln!("  held unlink, {label}: round {}/{rounds}", round + 1);
        }
        Paired { off, on }
    }

    fn ratio(&self) -> f64 {
        median(&mut self.off.iter().zip(&self.on).map(|(a, b)| b / a).collect::<Vec<_>>())
    }

    fn medians(&self) -> (f64, f64) {
        (median(&mut self.off.clone()), median(&mut self.on.clone()))
    }

    fn row(&self, measure: String, how: &str, extra: serde_json::Value) -> Row {
        let (ratio, (base, with)) = (self.ratio(), self.medians());
        Row {
            measure,
            how: how.into(),
            result: format!("{ratio:.2}× (medians {:.1} → {:.1} µs)", base / 1000.0, with / 1000.0),
            target: "≤ 1.10×".into(),
            met: Some(ratio <= 1.10),
            data: json!({ "off_ns": base, "on_ns": with, "ratio": ratio, "rounds_off": self.off,
                          "rounds_on": self.on, "more": extra }),
        }
    }
}

/// One row per machine size (total open descriptors held by helpers), one
/// for how the daemon-on latency grew from the first size to the last, and
/// one through overlayfs at the first size.
pub fn measure(sizes: &[usize], rounds: usize, per_round: usize, extra: &[&str]) -> Vec<Row> {
    let fs = Mount::ext4_image_in(Path::new("/dev/shm"));
    let dir = tempfile::tempdir_in(&fs.path).unwrap();
    let how = "the call's own latency, daemon on / off, ext4 on a RAM loop device";
    let mut rows = Vec::new();
    let mut helpers: Vec<Holder> = Vec::new();
    let mut held = 0;
    let mut by_size = Vec::new();
    for &size in sizes {
        while held < size {
            let n = (size - held).min(PER_PROCESS);
            helpers.push(Holder::devnull(n));
            held += n;
        }
        let paired =
            Paired::measure(dir.path(), rounds, per_round, extra, &format!("{size} open descriptors"));
        rows.push(paired.row(
            format!("unlink of a held file, {size} open descriptors"),
            how,
            json!({ "open_descriptors": size }),
        ));
        if by_size.is_empty() {
            let overlay = Overlay::on(&fs.path);
            let through = Paired::measure(&overlay.merged, rounds, per_round, extra, "through overlayfs");
            rows.push(through.row(
                format!("unlink of a held file through overlayfs, {size} open descriptors"),
                "the call's own latency, daemon on / off; upper and lower layers on the same ext4",
                json!({ "open_descriptors": size }),
            ));
        }
        by_size.push((size, paired.medians().1));
    }
    drop(helpers);
    if let (Some(first), Some(last)) = (by_size.first(), by_size.last())
        && by_size.len() > 1
    {
        let growth = last.1 / first.1;
        rows.push(Row {
            measure: format!("held unlink, {} → {} open descriptors", first.0, last.0),
            how: "daemon-on latency at the largest size / at the smallest".into(),
            result: format!("{growth:.2}× ({:.1} → {:.1} µs)", first.1 / 1000.0, last.1 / 1000.0),
            target: "≤ 1.10× (flat)".into(),
            met: Some(growth <= 1.10),
            data: json!({ "growth": growth, "on_ns_by_size": by_size }),
        });
    }
    rows
}

/// An overlayfs mount whose layers are directories of `base`.
struct Overlay {
    merged: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Overlay {
    fn on(base: &Path) -> Overlay {
        let dir = tempfile::tempdir_in(base).unwrap();
        for sub in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let p = |sub: &str| dir.path().join(sub).display().to_string();
        let options = format!("lowerdir={},upperdir={},workdir={}", p("lower"), p("upper"), p("work"));
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(p("merged")));
        Overlay { merged: dir.path().join("merged"), _dir: dir }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}
