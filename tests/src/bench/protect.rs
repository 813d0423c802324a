//! Protected trees: what protecting a tree costs (time, kernel memory),
//! what a deleter pays with protection on vs off, side by side in one run
//! (`rm -rf` of the tree, an editor's save loop), and that every file
//! comes back: all captured, the store the tree's size.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Row, median};
use crate::Daemon;

/// The kernel's slab, in bytes (/proc/meminfo).
fn slab_bytes() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kb * 1024.0
}

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `dirs` directories of 1000 files, 512 to 8191 bytes each.
fn create_tree(root: &Path, dirs: usize) {
    let block: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            let len = 512 + (d * 1000 + f) * 2654435761 % 7680;
            std::fs::write(dir.join(format!("f{f}")), &block[..len]).unwrap();
        }
    }
}

fn captured(daemon: &Daemon) -> u64 {
    daemon.status()["counters"]["captured"].as_u64().unwrap_or(0)
}

/// One round of rm -rf: with protection (time to protect, slab per file,
/// then everything captured and the store's growth) or without.
struct Round {
    protect_s: f64,
    slab_per_file: f64,
    rm_s: f64,
    captured: u64,
    capture_s: f64,
    tree_bytes: u64,
    store_bytes: u64,
}

fn round(daemon: &Daemon, files: usize, protected: bool) -> Round {
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let tree = root.path().join("tree");
    create_tree(&tree, files.div_ceil(1000));
    let tree_bytes = disk_usage(&tree);
    let store = daemon.state_dir.join("store");
    let (store_before, captured_before) = (disk_usage(&store), captured(daemon));
    let mut r = Round {
        protect_s: 0.0,
        slab_per_file: 0.0,
        rm_s: 0.0,
        captured: 0,
        capture_s: 0.0,
        tree_bytes,
        store_bytes: 0,
    };
    if protected {
        let slab = slab_bytes();
        let started = Instant::now();
        let out = daemon.cli(&["protect", tree.to_str().unwrap()]);
        r.protect_s = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        r.slab_per_file = (slab_bytes() - slab) / files as f64;
    }
    let started = Instant::now();
    assert!(Command::new("rm").arg("-rf").arg(&tree).status().unwrap().success());
    r.rm_s = started.elapsed().as_secs_f64();
    if protected {
        let deadline = Instant::now() + Duration::from_secs(600);
        while captured(daemon) < captured_before + files as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        r.capture_s = started.elapsed().as_secs_f64();
        r.captured = captured(daemon) - captured_before;
        r.store_bytes = disk_usage(&store) - store_before;
        let _ = daemon.cli(&["unprotect", tree.to_str().unwrap()]);
    }
    r
}

/// Protecting a tree of `files`, and rm -rf of it on vs off, `rounds`
/// interleaved rounds.
pub fn rm_rf(files: usize, rounds: usize) -> Vec<Row> {
    let (_cfg, daemon) = Daemon::with_config("protect_max_tree_files = 1000000\n", &["--events", "off"]);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        eprintln!("  protect: round {} of {rounds} ({files} files)", i + 1);
        // Alternating which goes first, so that neither always meets a
        // warmer cache.
        for protected in if i % 2 == 0 { [true, false] } else { [false, true] } {
            let r = round(&daemon, files, protected);
            if protected { on.push(r) } else { off.push(r) }
        }
    }
    let m = |rs: &[Round], f: fn(&Round) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
    let (protect_s, slab) = (m(&on, |r| r.protect_s), m(&on, |r| r.slab_per_file));
    let (rm_on, rm_off) = (m(&on, |r| r.rm_s), m(&off, |r| r.rm_s));
    let all_captured = on.iter().all(|r| r.captured == files as u64);
    let (tree_mib, store_mib) = (on[0].tree_bytes as f64 / 1048576.0, on[0].store_bytes as f64 / 1048576.0);
    let capture_s = m(&on, |r| r.capture_s);
    let protect = Row {
        measure: "protect a tree".into(),
        how: format!(
            "unrm protect of {files} files in {} directories (cached, as right after use); kernel slab before/after",
            files / 1000
        ),
        result: format!("{protect_s:.2} s; {slab:.0} bytes of slab per file"),
        target: "≤ 2 s; ≤ 1 KiB per file".into(),
        met: Some(protect_s <= 2.0 && slab <= 1024.0),
        data: json!({ "files": files, "protect_s": on.iter().map(|r| r.protect_s).collect::<Vec<_>>(),
                      "slab_per_file": on.iter().map(|r| r.slab_per_file).collect::<Vec<_>>() }),
    };
    let ratio = rm_on / rm_off;
    let rm = Row {
        measure: "rm -rf of a protected tree".into(),
        how: format!(
            "rm -rf of the {files} files ({tree_mib:.0} MiB), protected vs not, daemon running both; median of {rounds}"
        ),
        result: format!(
            "{ratio:.2}× ({rm_on:.2} s vs {rm_off:.2} s); {} captured of {files} ({capture_s:.0} s after the rm began); store grew {store_mib:.0} MiB for a {tree_mib:.0} MiB tree",
            on.iter().map(|r| r.captured).min().unwrap_or(0)
        ),
        target: "≤ 1.5×; every file captured; store = tree size".into(),
        met: Some(ratio <= 1.5 && all_captured && on.iter().all(|r| r.store_bytes <= r.tree_bytes * 11 / 10)),
        data: json!({ "rm_on_s": on.iter().map(|r| r.rm_s).collect::<Vec<_>>(),
                      "rm_off_s": off.iter().map(|r| r.rm_s).collect::<Vec<_>>(),
                      "captured": on.iter().map(|r| r.captured).collect::<Vec<_>>(),
                      "capture_s": on.iter().map(|r| r.capture_s).collect::<Vec<_>>(),
                      "tree_bytes": on.iter().map(|r| r.tree_bytes).collect::<Vec<_>>(),
                      "store_bytes": on.iter().map(|r| r.store_bytes).collect::<Vec<_>>() }),
    };
    vec![protect, rm]
}

/// Seconds one save of `path` takes.
fn timed_save(path: &Path, data: &[u8]) -> f64 {
    let started = Instant::now();
    crate::editor_save(path, data);
    started.elapsed().as_secs_f64()
}

/// An editor's save loop on a protected file vs an unprotected one.
pub fn save_loop_cost(saves: usize, rounds: usize) -> Row {
    let versions = 10;
    let config = format!("versions = {versions}\nmin_interval = \"0s\"\n");
    let (_cfg, daemon) = Daemon::with_config(&config, &["--events", "off"]);
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let (guarded, plain) = (root.path().join("guarded"), root.path().join("plain"));
    std::fs::create_dir(&guarded).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let (file_on, file_off) = (guarded.join("draft.txt"), plain.join("draft.txt"));
    std::fs::write(&file_on, b"first").unwrap();
    std::fs::write(&file_off, b"first").unwrap();
    let out = daemon.cli(&["protect", guarded.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One save each in turn, the order swapped every time: both meet the
    // same disk (a save's fsync waits on whatever else the disk does).
    let data = vec![b'x'; 4096];
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..saves * rounds {
        if i % 2 == 0 {
            on.push(timed_save(&file_on, &data));
            off.push(timed_save(&file_off, &data));
        } else {
            off.push(timed_save(&file_off, &data));
            on.push(timed_save(&file_on, &data));
        }
    }
    let kept = |d: &Daemon| d.records_of(&file_on, Some("captured")).len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while kept(&daemon) != versions && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = kept(&daemon);
    // What the saver pays in all: the mean (the median is shown too).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (on_s, off_s) = (mean(&on), mean(&off));
    let median_ratio = median(&mut on.clone()) / median(&mut off.clone());
    let ratio = on_s / off_s;
    Row {
        measure: "editor save loop".into(),
        how: format!(
            "write 4 KiB to a temporary file, fsync, rename over: {} saves each of a protected file and an \
             unprotected one, in turn (versions = {versions}, min_interval = 0s)",
            saves * rounds
        ),
        result: format!(
            "{ratio:.3}× ({:.0} µs vs {:.0} µs per save, mean; median {median_ratio:.3}×); {kept} versions kept",
            on_s * 1e6,
            off_s * 1e6
        ),
        target: format!("≤ 1.10×; {versions} versions kept"),
        met: Some(ratio <= 1.10 && kept == versions),
        data: json!({ "mean_on_s": on_s, "mean_off_s": off_s, "median_ratio": median_ratio, "saves": on.len(),
                      "versions_kept": kept }),
    }
}
