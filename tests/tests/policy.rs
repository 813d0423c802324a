//! The store policy: a TOML file validated at start and on SIGHUP, globs
//! and owners that decide what is kept, the scratch-file idiom, and the
//! bounds that keep the store from filling a disk.

use std::{fs, path::Path, process::Command};

use unrm_tests::{Daemon, Holder, Mount, assert_one_line_error, content, rm, unrm_bin, wait_until};

fn with_config(text: &str, extra: &[&str]) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unrm.toml");
    fs::write(&config, text).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &args);
    (dir, daemon)
}

fn wait_log(daemon: &Daemon, line: &str) {
    wait_until(&format!("no {line:?} in the daemon's log"), || daemon.log().contains(line));
}

#[test]
fn a_bad_config_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unrm.toml");
    fs::write(&config, "max_store_size = \"10G\"\nkeep_four = \"1d\"\n").unwrap();
    let out = Command::new(unrm_bin())
        .args(["daemon", "--config", config.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "keep_four");
    let missing = dir.path().join("missing.toml");
    let out =
        Command::new(unrm_bin()).args(["daemon", "--config", missing.to_str().unwrap()]).output().unwrap();
    assert_one_line_error(&out, "missing.toml");
}

#[test]
fn globs_decide_what_is_recorded_and_sighup_reloads_them() {
    let fs = Mount::ext4();
    let (dir, daemon) = with_config("exclude = [\"**/*.tmp\"]\n", &[]);
    let skipped = fs.file("build.tmp", b"x");
    let kept = fs.file("notes.txt", b"y");
    rm(&skipped, None);
    rm(&kept, None);
    // Events are handled in order: once the later one is recorded, the
    // earlier one was decided.
    daemon.wait_record(&kept, "unheld");
    let listed = |path: &Path| {
        let records = daemon.json(&["list", "--json", "--limit", "0", "--path", path.to_str().unwrap()]);
        !records.as_array().unwrap().is_empty()
    };
    assert!(!listed(&skipped));
    assert!(daemon.json(&["status", "--json"])["counters"]["ignored"].as_u64().unwrap() >= 1);

    // A bad file on reload is refused; the running policy stays.
    fs::write(dir.path().join("unrm.toml"), "exclude = [\"[broken\"]\n").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    wait_log(&daemon, "policy not reloaded");
    let again = fs.file("again.tmp", b"z");
    let marker = fs.file("marker-1.txt", b"m");
    rm(&again, None);
    rm(&marker, None);
    daemon.wait_record(&marker, "unheld");
    assert!(!listed(&again), "the old policy still excludes *.tmp");

    // A good one takes effect.
    fs::write(dir.path().join("unrm.toml"), "exclude = [\"**/*.txt\"]\n").unwrap();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    wait_log(&daemon, "policy reloaded");
    let now_tmp = fs.file("now.tmp", b"t");
    let now_txt = fs.file("now.txt", b"t");
    rm(&now_txt, None);
    rm(&now_tmp, None);
    daemon.wait_record(&now_tmp, "unheld");
    assert!(!listed(&now_txt));
}

#[test]
fn scratch_files_are_not_copied_unless_asked() {
    let fs = Mount::ext4();
    for (config, expect) in [("", "skipped"), ("scratch_files = \"capture\"\n", "captured")] {
        let (_dir, daemon) = with_config(config, &[]);
        let path = fs.file(&format!("scratch-{expect}"), b"temporary work");
        let holder = Holder::scratch(&path);
        daemon.wait_record(&path, "held");
        holder.exit();
        let rec = daemon.wait_record(&path, expect);
        if expect == "skipped" {
            assert!(rec["reason"].as_str().unwrap().contains("scratch"), "{rec}");
        }
    }
}

#[test]
fn the_store_cap_evicts_the_oldest_capture() {
    let fs = Mount::ext4();
    let (_dir, daemon) = with_config("max_store_size = \"1M\"\n", &[]);
    let capture = |name: &str| {
        let path = fs.file(name, &content(name).repeat(9)); // ~630 KiB
        let holder = Holder::fd(&path);
        rm(&path, None);
        daemon.wait_record(&path, "held");
        holder.exit();
        daemon.wait_record(&path, "captured")
    };
    let first = capture("first");
    capture("second");
    let evicted = daemon.wait_show(&first["id"], |r| r["status"] == "evicted");
    assert!(evicted["reason"].as_str().unwrap().contains("room"), "{evicted}");
    let out = daemon.cli(&["restore", &first["id"].to_string(), "--to", fs.path.join("x").to_str().unwrap()]);
    assert_one_line_error(&out, "evicted");
}

#[test]
fn the_free_space_floor_is_never_crossed() {
    let files = Mount::ext4();
    let tiny = Mount::ext4_sized(&std::env::temp_dir(), 16 << 20);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unrm.toml");
    fs::write(&config, "min_free = \"50%\"\n").unwrap();
    let daemon =
        Daemon::start_in(tempfile::tempdir_in(&tiny.path).unwrap(), &["--config", config.to_str().unwrap()]);
    let path = files.file("big", &content("floor").repeat(150)); // ~10 MiB
    let holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");
    holder.exit();
    let rec = daemon.wait_record(&path, "skipped");
    assert!(rec["reason"].as_str().unwrap().contains("floor"), "{rec}");
}

#[test]
fn records_older_than_keep_for_are_forgotten() {
    let fs = Mount::ext4();
    let (_dir, daemon) = with_config("keep_for = \"1s\"\n", &["--rescan-interval", "200ms"]);
    let path = fs.file("fleeting", b"f");
    rm(&path, None);
    let rec = daemon.wait_record(&path, "unheld");
    let mut out = None;
    wait_until(&format!("record {} outlived keep_for", rec["id"]), || {
        let shown = daemon.cli(&["show", &rec["id"].to_string()]);
        let gone = !shown.status.success();
        out = Some(shown);
        gone
    });
    assert_one_line_error(&out.unwrap(), "no record");
}
