//! Nothing a user does stops unrm: floods of held deletions past the
//! descriptor limit, full watch tables, idle and slow clients by the
//! thousand, storms of failing calls, a full disk under the index. After
//! each, the daemon is alive, serves everyone, counts what happened in
//! `unrm status`, and protects the next deleted file.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, User, content, expected_tier, rm, wait_until};

/// A held file deleted now is still pinned and restorable.
fn still_protects(daemon: &Daemon, fs: &Mount, name: &str) {
    let data = content(name);
    let path = fs.file(name, &data);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join(format!("{name}.back"))), data);
    holder.exit();
    daemon.wait_record(&path, "captured");
}

fn safety(daemon: &Daemon) -> Value {
    daemon.status()["safety"].clone()
}

#[test]
fn thirty_thousand_held_deletions_stay_within_the_descriptor_budget() {
    // Held deletions far past what the daemon's descriptor limit allows
    // (20,000 on the development machines: nothing can raise a hard limit):
    // thirty processes each deleting a thousand files they hold. Where the
    // limit is lower (the VM), twice the budget is enough.
    let fs = Mount::ext4_sized(&unrm_tests::memory_dir(), 256 << 20);
    let daemon = Daemon::start();
    let budget = safety(&daemon)["pin_budget"].as_u64().unwrap();
    // Whatever else on the machine is deleted and held, pinned at start.
    let before = daemon.status()["held_files"].as_u64().unwrap();
    let total = 30_000.min(2 * budget + 1000);
    let per_process = total.div_ceil(30);
    let holders: Vec<Holder> = (0..30)
        .map(|i| {
            let dir = fs.path.join(format!("p{i}"));
            fs::create_dir(&dir).unwrap();
            Holder::scratch_many(&dir, per_process as usize, None)
        })
        .collect();
    let total = per_process * 30;
    wait_until("every deletion decided", || {
        let s = daemon.status();
        s["counters"]["pins"].as_u64().unwrap() + s["safety"]["over_budget"].as_u64().unwrap() >= total
    });
    let s = daemon.status();
    assert!(s["held_files"].as_u64().unwrap() <= budget, "{s}");
    assert!(s["safety"]["pins_open"].as_u64().unwrap() <= budget, "{s}");
    assert!(s["safety"]["over_budget"].as_u64().unwrap() >= total - budget, "{s}");
    let skipped = daemon.json(&["list", "--json", "--status", "skipped", "--limit", "1"]);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("descriptor budget"), "{skipped}");
    assert!(!daemon.log().contains("Too many open files"), "EMFILE somewhere:\n{}", daemon.log());

    // Once the holders let go, the budget comes back and protects again.
    drop(holders);
    wait_until("the pins let go", || daemon.status()["held_files"].as_u64().unwrap() <= before);
    still_protects(&daemon, &fs, "after-the-flood");
}

#[test]
fn full_watch_tables_leave_releases_to_snapshots() {
    let fs = Mount::ext4();
    // Room for four watched processes and inodes; ten held files by ten.
    let daemon = Daemon::start_in(
        tempfile::tempdir().unwrap(),
        &["--watch-entries", "4", "--rescan-interval", "300ms"],
    );
    let mut held = Vec::new();
    for i in 0..10 {
        let path = fs.file(&format!("w{i}"), &content(&format!("w{i}")));
        let holder = Holder::fd(&path);
        rm(&path, None);
        held.push((path, holder));
    }
    for (path, _) in &held {
        daemon.wait_record(path, "held");
    }
    wait_until("a full table counted", || safety(&daemon)["watch_full"].as_u64().unwrap() > 0);
    for (path, holder) in held {
        holder.exit();
        daemon.wait_record(&path, "captured");
    }
    assert_eq!(safety(&daemon)["engine_errors"], 0, "{}", daemon.log());
    still_protects(&daemon, &fs, "after-full-tables");
}

#[test]
fn thousands_of_idle_connections_do_not_stop_the_daemon() {
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--client-timeout", "2s"]);
    // The socket's directory is the test's, 0700: let bob reach it.
    fs::set_permissions(daemon.socket.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    // More connections than the daemon has descriptors (with a limit of
    // 20,000 it died at about 24,000 before), a few thousand per process.
    let s = safety(&daemon);
    let limit = s["pin_budget"].as_u64().unwrap() + s["pidfd_budget"].as_u64().unwrap() + 768;
    let total = limit + 4000;
    let flood: Vec<Holder> =
        (0..total.div_ceil(3000)).map(|_| Holder::connect(&daemon.socket, 3000, Some(&bob))).collect();
    let s = safety(&daemon);
    assert!(s["connections_refused"].as_u64().unwrap() >= limit, "{s}");
    assert!(s["connections"].as_u64().unwrap() <= 17, "bob holds at most 16, plus this one: {s}");
    // Idle ones are let go after the client timeout (the kernel's backlog
    // of bob's queued connections may refill his slots meanwhile).
    wait_until("bob's idle connections dropped", || {
        safety(&daemon)["clients_dropped"].as_u64().unwrap() >= 16
    });
    still_protects(&daemon, &fs, "after-idle-clients");
    // Once bob's flood is over, he is served again.
    drop(flood);
    wait_until("bob served again", || daemon.cli_as(&bob, &["status"]).status.success());
}

#[test]
fn a_client_that_never_reads_its_answer_is_dropped() {
    use std::io::Write;
    let fs = Mount::ext4();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--client-timeout", "1s"]);
    // Enough records that a listing does not fit in the socket's buffers.
    for i in 0..400 {
        rm(&fs.file(&format!("r{i:03}-{}", "x".repeat(150)), b"r"), None);
    }
    let last = fs.path.join(format!("r399-{}", "x".repeat(150)));
    daemon.wait_record(&last, "unheld");
    let mut slow = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let request = br#"{"op":"list","since_ns":null,"status":null,"path":null,"limit":0}"#;
    for _ in 0..20 {
        slow.write_all(&(request.len() as u32).to_le_bytes()).unwrap();
        slow.write_all(request).unwrap();
    }
    wait_until("the slow reader dropped", || safety(&daemon)["clients_dropped"].as_u64().unwrap() >= 1);
    still_protects(&daemon, &fs, "after-a-slow-reader");
}

#[test]
fn a_storm_of_failing_calls_is_counted_not_sent() {
    let bob = User::ensure("unrm-test-bob");
    let daemon = Daemon::start();
    let before = daemon.status();
    let storm = Holder::fail_unlink(200_000, Some(&bob));
    drop(storm);
    let after = daemon.status();
    let events = |s: &Value| s["counters"]["events"].as_u64().unwrap();
    assert!(events(&after) - events(&before) < 1_000, "failed calls reached the daemon: {after}");
    assert_eq!(after["counters"]["lost_events"], 0);
    if expected_tier() == "tracepoint" {
        // Only the syscall tracepoints see a call that fails before the VFS.
        assert!(after["safety"]["failed_calls"].as_u64().unwrap() >= 200_000, "{after}");
    }
}

#[test]
fn a_full_disk_under_the_index_delays_records_and_loses_none() {
    let files = Mount::ext4();
    // The state directory on a small filesystem with no blocks reserved
    // for root, which anyone could then fill.
    let tiny = Mount::ext4_with(&std::env::temp_dir(), 16 << 20, &["-m", "0"]);
    let daemon = Daemon::start_with_state(&tiny.path.join("state"), &[]);
    rm(&files.file("before", b"b"), None);
    daemon.wait_record(&files.path.join("before"), "unheld");

    let filler = tiny.path.join("filler");
    fill_up(&filler);
    let data = content("during");
    let during = files.file("during", &data);
    let holder = Holder::fd(&during);
    rm(&during, None);
    for i in 0..500 {
        rm(&files.file(&format!("n{i}"), b"n"), None);
    }
    wait_until("the index fails", || safety(&daemon)["index_errors"].as_u64().unwrap() > 0);
    assert!(safety(&daemon)["index_waiting"].as_u64().unwrap() > 0);
    let scan = daemon.json(&["scan", "--json"]);
    let pinned = scan.as_array().unwrap().iter().any(|f| f["path"] == during.to_str().unwrap());
    assert!(pinned, "the pin is kept meanwhile: {scan}");

    fs::remove_file(&filler).unwrap();
    let rec = daemon.wait_record(&during, "held");
    daemon.wait_record(&files.path.join("n499"), "unheld");
    assert_eq!(safety(&daemon)["index_waiting"], 0);
    assert_eq!(daemon.restore_to(&rec["id"], &files.path.join("during.back")), data);
    drop(holder);
}

/// Writes to `path` until its filesystem is full.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let chunk = vec![0x5a; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&chunk[..512]).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_long_lived_holder_watched_again_and_again_costs_no_descriptors() {
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let descriptors = || fs::read_dir(format!("/proc/{}/fd", daemon.pid())).unwrap().count();
    let mut holder = Holder::idle();
    let warm = |holder: &mut Holder, i: usize| {
        let path = fs.file(&format!("cycle{i}"), b"c");
        holder.scratch_more(&path);
        daemon.wait_record(&path, "held");
        holder.close_scratch();
        daemon.wait_record(&path, "skipped");
    };
    warm(&mut holder, 0);
    let before = descriptors();
    for i in 1..=100 {
        warm(&mut holder, i);
    }
    let after = descriptors();
    assert!(after < before + 10, "{} descriptors more after 100 cycles of one holder", after - before);
}
