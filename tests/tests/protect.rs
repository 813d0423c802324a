//! Protected trees (README, Protected trees): files nobody held, deleted
//! the ways users delete them, come back byte for byte; new files are
//! covered, excluded ones are not; the limits hold and say so; a protected
//! filesystem can still be unmounted; a user protects only their own.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use unrm_tests::{
    Daemon, Mount, User, assert_one_line_error, content, editor_save, expected_tier, rm, run, wait_until,
};

/// `unrm protect DIR` through the CLI, expecting success; its line.
fn protect(daemon: &Daemon, dir: &Path) -> String {
    let out = daemon.cli(&["protect", dir.to_str().unwrap()]);
    assert!(out.status.success(), "protect: {}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    String::from_utf8(out.stdout).unwrap()
}

/// The protected tree at `dir`, as `unrm protect --list --json` shows it.
fn tree(daemon: &Daemon, dir: &Path) -> Value {
    let trees = daemon.json(&["protect", "--list", "--json"]);
    trees
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"] == dir.to_str().unwrap())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Restores the newest version of `path` (or the `version`th) by path, to `to`.
fn restore_path(daemon: &Daemon, path: &Path, version: Option<usize>, to: &Path) -> Vec<u8> {
    let mut args = vec!["restore".to_owned(), "--path".into(), path.display().to_string()];
    if let Some(n) = version {
        args.extend(["--version".into(), n.to_string()]);
    }
    args.extend(["--to".into(), to.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = daemon.cli(&args);
    assert!(out.status.success(), "restore {path:?}: {}", String::from_utf8_lossy(&out.stderr));
    fs::read(to).unwrap()
}

fn tagged(tag: &str) -> Vec<u8> {
    content(tag)
}

#[test]
fn rm_rm_rf_find_delete_and_mv_over_are_restorable_byte_exact() {
    let fs = Mount::ext4();
    let dir = fs.path.join("project");
    fs::create_dir_all(dir.join("src/deep")).unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> =
        ["README", "src/main.c", "src/deep/a.log", "src/deep/b.log", "notes"]
            .iter()
            .map(|name| (dir.join(name), tagged(name)))
            .collect();
    for (path, data) in &files {
        fs::write(path, data).unwrap();
    }
    let daemon = Daemon::start();
    let line = protect(&daemon, &dir);
    assert!(line.contains("protected") && line.contains("5 files"), "{line}");

    // rm: nothing held README but unrm.
    let rm_pid = rm(&files[0].0, None);
    let rec = daemon.wait_record(&files[0].0, "captured");
    assert_eq!(rec["deleted_by"]["pid"], rm_pid, "{rec}");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("by-id")), files[0].1);
    assert_eq!(restore_path(&daemon, &files[0].0, None, &fs.path.join("by-path")), files[0].1);

    // find -delete of the logs, then rm -rf of what is left of src.
    run(Command::new("find").arg(dir.join("src")).args(["-name", "*.log", "-delete"]));
    for (path, data) in &files[2..4] {
        let rec = daemon.wait_record(path, "captured");
        assert_eq!(rec["deleted_by"]["comm"], "find", "{rec}");
        assert_eq!(&restore_path(&daemon, path, None, &fs.path.join("log.back")), data);
        fs::remove_file(fs.path.join("log.back")).unwrap();
    }
    run(Command::new("rm").arg("-rf").arg(dir.join("src")));
    let rec = daemon.wait_record(&files[1].0, "captured");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("main.back")), files[1].1);

    // mv over: the replaced version is captured, the new one stays.
    let other = fs.file("other", b"the newcomer");
    run(Command::new("mv").arg(&other).arg(&files[4].0));
    let rec = daemon.wait_record(&files[4].0, "captured");
    assert_eq!(rec["op"], "rename", "{rec}");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("notes.back")), files[4].1);
    assert_eq!(fs::read(&files[4].0).unwrap(), b"the newcomer");
    // The newcomer is protected too (it was moved into the tree).
    wait_until("the newcomer protected", || tree(&daemon, &dir)["files"] == 1);
}

#[test]
fn a_stop_right_after_an_rm_rf_loses_nothing() {
    let fs = Mount::ext4();
    let dir = fs.path.join("tree");
    fs::create_dir(&dir).unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> = (0..200)
        .map(|i| {
            let path = dir.join(format!("f{i}"));
            let data = tagged(&format!("stop {i}"));
            fs::write(&path, &data).unwrap();
            (path, data)
        })
        .collect();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &[]);
    protect(&daemon, &dir);
    run(Command::new("rm").arg("-rf").arg(&dir));
    // The tree's records, by status (the machine's other deleted files
    // have records too).
    let glob = format!("{}/*", dir.display());
    let statuses = |daemon: &Daemon| -> Vec<String> {
        let records = daemon.json(&["list", "--json", "--limit", "0", "--path", &glob]);
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // Every deletion is known (pinned through unrm's own reference, most
    // not copied yet), then the service manager says stop.
    wait_until("every deletion recorded", || statuses(&daemon).len() == files.len());
    let state = daemon.stop_keeping();
    let daemon = Daemon::start_in(state, &[]);
    let captured = statuses(&daemon).iter().filter(|s| *s == "captured").count();
    assert_eq!(captured, files.len(), "{}", daemon.log());
    for (i, (path, data)) in files.iter().enumerate().step_by(37) {
        let rec = daemon.wait_record(path, "captured");
        assert_eq!(&daemon.restore_to(&rec["id"], &fs.path.join(format!("back{i}"))), data);
    }
}

#[test]
fn an_editor_save_loop_keeps_versions_newest_first() {
    let fs = Mount::ext4();
    let config = "versions = 3\nmin_interval = \"0s\"\n";
    let (_cfg, daemon) = Daemon::with_config(config, &[]);
    let file = fs.file("draft.txt", b"version 0");
    protect(&daemon, &fs.path);
    for v in 1..=5 {
        editor_save(&file, format!("version {v}").as_bytes());
        // Each save's replaced version is captured before the next.
        let rec = daemon.wait_record(&file, "captured");
        assert_eq!(rec["size"], 9, "{rec}");
        wait_until("the versions bounded", || daemon.records_of(&file, Some("captured")).len() == v.min(3));
        // The replaced version's reference went when it was pinned: one
        // file held again means the new version is, before it is replaced.
        wait_until("the new version protected", || tree(&daemon, &fs.path)["files"] == 1);
    }
    let kept: Vec<i64> =
        daemon.records_of(&file, Some("captured")).iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(kept.windows(2).all(|w| w[0] > w[1]), "newest first: {kept:?}");
    // Versions 4, 3, 2 were replaced last: newest first.
    for (n, want) in [(1, "version 4"), (2, "version 3"), (3, "version 2")] {
        let back = restore_path(&daemon, &file, Some(n), &fs.path.join(format!("v{n}")));
        assert_eq!(back, want.as_bytes(), "--version {n}");
    }
    let out =
        daemon.cli(&["restore", "--path", file.to_str().unwrap(), "--version", "4", "--to", "/tmp/nowhere"]);
    assert_one_line_error(&out, "no version 4");
    let evicted = daemon.records_of(&file, Some("evicted"));
    assert_eq!(evicted.len(), 2, "{evicted:?}");
    assert_eq!(fs::read(&file).unwrap(), b"version 5");
}

#[test]
fn new_files_are_covered_and_excluded_ones_are_not() {
    let fs = Mount::ext4();
    let (_cfg, daemon) = Daemon::with_config("exclude = [\"**/*.o\", \"**/build/**\"]\n", &[]);
    fs.file("old.o", b"object");
    protect(&daemon, &fs.path);
    let made_later = fs.file("later.txt", &tagged("later"));
    fs::create_dir_all(fs.path.join("new/inner")).unwrap();
    let nested = fs.path.join("new/inner/n.txt");
    fs::write(&nested, tagged("nested")).unwrap();
    let object = fs.file("new.o", b"object");
    fs::create_dir(fs.path.join("build")).unwrap();
    let built = fs.file("build/out.bin", b"built");
    wait_until("the new files protected", || tree(&daemon, &fs.path)["files"] == 2);
    let t = tree(&daemon, &fs.path);
    assert!(t["excluded"].as_u64().unwrap() >= 1, "{t}");

    for (path, tag) in [(&made_later, "later"), (&nested, "nested")] {
        rm(path, None);
        let rec = daemon.wait_record(path, "captured");
        assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join(format!("{tag}.back"))), tagged(tag));
    }
    // Excluded: not recorded at all (the policy's exclude).
    rm(&object, None);
    rm(&built, None);
    // A file is covered once the daemon has heard of it (fanotify), not
    // the instant it is made: wait for that before deleting the canary
    // (held then: the canary and the two restored copies).
    let canary = fs.file("canary", b"c");
    wait_until("the canary protected", || tree(&daemon, &fs.path)["files"] == 3);
    rm(&canary, None);
    daemon.wait_record(&canary, "captured");
    let all = daemon.json(&["list", "--json", "--limit", "0"]);
    let paths: Vec<&str> = all.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(
        !paths.contains(&object.to_str().unwrap()) && !paths.contains(&built.to_str().unwrap()),
        "{paths:?}"
    );
}

#[test]
fn the_limits_hold_are_counted_and_shown() {
    let fs = Mount::ext4();
    let (_cfg, daemon) = Daemon::with_config("protect_max_tree_files = 5\n", &[]);
    let files: Vec<PathBuf> =
        (0..8).map(|i| fs.file(&format!("f{i}"), format!("file {i}").as_bytes())).collect();
    let line = protect(&daemon, &fs.path);
    assert!(
        line.contains("5 files")
            && line.contains("3 not protected")
            && line.contains("protect_max_tree_files"),
        "{line}"
    );
    let t = tree(&daemon, &fs.path);
    assert_eq!((t["files"].as_u64(), t["not_protected"].as_u64()), (Some(5), Some(3)), "{t}");
    let listing = String::from_utf8(daemon.cli(&["protect", "--list"]).stdout).unwrap();
    assert!(listing.contains("protect_max_tree_files"), "{listing}");
    // A file over the limit is not held: its deletion is only a record.
    for path in &files {
        rm(path, None);
    }
    let mut captured = 0;
    for path in &files {
        let rec = wait_any(&daemon, path, &["captured", "unheld"]);
        captured += usize::from(rec["status"] == "captured");
    }
    assert_eq!(captured, 5);
}

/// The newest record of `path` once its status is one of `statuses`.
fn wait_any(daemon: &Daemon, path: &Path, statuses: &[&str]) -> Value {
    let mut found = Value::Null;
    wait_until(&format!("a record of {}", path.display()), || {
        found = daemon.records_of(path, None).first().cloned().unwrap_or(Value::Null);
        statuses.iter().any(|s| found["status"] == *s)
    });
    found
}

/// The loop device behind the mount at `path`.
fn loop_device(path: &Path) -> String {
    let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_protected_mount_can_be_unprotected_and_unmounted() {
    let fs = Mount::ext4();
    fs.file("kept", b"kept");
    let daemon = Daemon::start();
    protect(&daemon, &fs.path);
    // unrm's references keep the filesystem busy, as any open file would.
    let busy = Command::new("umount").arg(&fs.path).output().unwrap();
    assert!(!busy.status.success(), "umount of a protected mount succeeded");
    let out = daemon.cli(&["unprotect", fs.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&daemon, &fs.path), Value::Null);
    run(Command::new("umount").arg(&fs.path));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(fs.path.parent().unwrap().join("ext4.img"))
        .arg(&fs.path));

    // A lazy unmount: unrm sees the mount go and lets go of its files, so
    // the filesystem (and its loop device) is really released.
    protect(&daemon, &fs.path);
    let device = loop_device(&fs.path);
    assert!(device.starts_with("/dev/loop"), "{device}");
    run(Command::new("umount").arg("-l").arg(&fs.path));
    wait_until("the tree shown as not mounted", || tree(&daemon, &fs.path)["state"] == "not mounted");
    let name = device.trim_start_matches("/dev/");
    wait_until("the loop device released", || {
        fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).is_err()
    });
}

#[test]
fn a_user_protects_only_their_own_trees() {
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let root_dir = fs.path.join("roots");
    fs::create_dir(&root_dir).unwrap();
    let bobs = fs.path.join("bobs");
    fs::create_dir(&bobs).unwrap();
    std::os::unix::fs::chown(&bobs, Some(bob.uid), Some(bob.gid)).unwrap();
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o755)).unwrap();
    let mine = bobs.join("mine.txt");
    fs::write(&mine, tagged("bob")).unwrap();
    std::os::unix::fs::chown(&mine, Some(bob.uid), Some(bob.gid)).unwrap();
    // What is not bob's in his tree is not his to have kept: root's file,
    // and root's private directory (not entered: what is in it is not his
    // to learn, nor to count).
    let roots_file = bobs.join("roots.txt");
    fs::write(&roots_file, b"root's").unwrap();
    let private = bobs.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = private.join("secret");
    fs::write(&secret, b"secret").unwrap();

    let out = daemon.cli_as(&bob, &["protect", root_dir.to_str().unwrap()]);
    assert_one_line_error(&out, "a user may protect only a directory of their own");
    let out = daemon.cli_as(&bob, &["protect", "--any-fs", bobs.to_str().unwrap()]);
    assert_one_line_error(&out, "only root may");
    let out = daemon.cli_as(&bob, &["protect", bobs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = tree(&daemon, &bobs);
    assert_eq!(t["files"], 1, "{t}");
    assert!(t["why"].as_str().is_some_and(|why| why.contains("another user's: not entered")), "{t}");
    protect(&daemon, &root_dir);
    // bob sees his tree only, and may not unprotect root's.
    let listed = daemon.cli_as(&bob, &["protect", "--list", "--json"]);
    let trees: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(trees.as_array().unwrap().len(), 1, "{trees}");
    assert_eq!(trees[0]["uid"], bob.uid);
    let out = daemon.cli_as(&bob, &["unprotect", root_dir.to_str().unwrap()]);
    assert_one_line_error(&out, "protected by another user");

    let out = bob.run(Command::new("rm").arg(&mine));
    assert!(out.status.success());
    let rec = daemon.wait_record(&mine, "captured");
    let back = bobs.join("back.txt");
    let out = daemon.cli_as(&bob, &["restore", &rec["id"].to_string(), "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&back).unwrap(), tagged("bob"));
    assert_eq!(fs::metadata(&back).unwrap().uid(), bob.uid);
    for path in [&roots_file, &secret] {
        rm(path, None);
        daemon.wait_record(path, "unheld");
    }
}

#[test]
fn protection_works_in_every_tier_that_loads() {
    let tiers: &[&str] = if expected_tier() == "fentry" {
        &["fentry", "kprobe", "tracepoint", "fs"]
    } else {
        &["tracepoint", "fs"]
    };
    for tier in tiers {
        for fs in [Mount::ext4(), Mount::tmpfs()] {
            let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--tier", tier]);
            let file = fs.file("precious", &tagged(tier));
            let saved = fs.file("saved", b"old");
            protect(&daemon, &fs.path);
            let pid = rm(&file, None);
            editor_save(&saved, b"new");
            let rec = daemon.wait_record(&file, "captured");
            assert_eq!(rec["deleted_by"]["pid"], pid, "{tier}: {rec}");
            assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), tagged(tier), "{tier}");
            let rec = daemon.wait_record(&saved, "captured");
            assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("old.back")), b"old", "{tier}");
            daemon.stop();
        }
    }
}

#[test]
fn another_users_file_of_the_same_name_evicts_none_of_the_owners_versions() {
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o755)).unwrap();
    let shared = fs.path.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let config = format!("protect = [{:?}]\nversions = 2\nmin_interval = \"0s\"\n", shared.to_str().unwrap());
    let (_cfg, daemon) = Daemon::with_config(&config, &[]);
    wait_until("the config's tree protected", || tree(&daemon, &shared)["state"] == "protected");
    let doc = shared.join("doc");
    fs::write(&doc, b"root v0").unwrap();
    wait_until("the file protected", || tree(&daemon, &shared)["files"] == 1);
    editor_save(&doc, b"root v1");
    daemon.wait_record(&doc, "captured");
    rm(&doc, None);
    let captured =
        |uid: u32| daemon.records_of(&doc, Some("captured")).iter().filter(|r| r["uid"] == uid).count();
    wait_until("root's two versions", || captured(0) == 2);
    // bob makes a file of the same name, again and again, and deletes it.
    for i in 0..4 {
        let out = bob.run(Command::new("sh").arg("-c").arg(format!("echo bob {i} > {}", doc.display())));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_until("bob's file protected", || tree(&daemon, &shared)["files"] == 1);
        let out = bob.run(Command::new("rm").arg(&doc));
        assert!(out.status.success());
        wait_until("bob's deletion captured", || {
            tree(&daemon, &shared)["files"] == 0 && captured(bob.uid) == (i + 1).min(2)
        });
    }
    assert_eq!(captured(0), 2, "root's versions evicted by bob's files");
    let back = restore_path(&daemon, &doc, Some(1), &fs.path.join("mine"));
    assert!(back.starts_with(b"bob"), "root sees bob's newest too (root sees all)");
}
