//! Under a service manager: the daemon speaks `sd_notify(3)`'s protocol on
//! `$NOTIFY_SOCKET` (READY=1 once it serves, RELOADING=1 then READY=1
//! around a reload, WATCHDOG=1 from the engine's loop, STATUS= with its
//! counters, STOPPING=1), as a
//! `Type=notify` unit with `WatchdogSec=` needs. Here the test plays
//! systemd's part with a datagram socket of its own.

use std::{os::unix::net::UnixDatagram, time::Duration};

use unrm_tests::{Daemon, Holder, Mount, rm};

/// Messages until one contains `want`; panics after a while.
fn until(socket: &UnixDatagram, want: &str) -> String {
    until_one(socket, want, |m| m.contains(want))
}

/// Messages until one satisfies `wanted`; panics after `PATIENCE` (the
/// watchdog's pings keep coming, so each read alone would not time out).
fn until_one(socket: &UnixDatagram, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + unrm_tests::PATIENCE;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("no {what:?} (got {seen:?}): {e}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if wanted(&message) {
            return message;
        }
        assert!(std::time::Instant::now() < deadline, "no {what:?} in time; got {seen:?}");
        if !message.starts_with("WATCHDOG") {
            seen.push(message);
        }
    }
}

/// `N held` in a STATUS= line.
fn held_in(status: &str) -> Option<u64> {
    let (before, _) = status.split_once(" held,")?;
    before.rsplit(' ').next()?.parse().ok()
}

#[test]
fn the_service_manager_hears_ready_reload_watchdog_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let notify = path.to_str().unwrap();
    // systemd pings at half of WatchdogSec; 2 s here.
    let daemon = Daemon::start_with_env(&[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "2000000")]);
    let ready = until(&socket, "READY=1");
    assert!(ready.contains("STATUS=") && ready.contains("tier"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", daemon.pid())), "{ready}");
    // The daemon said "ready" on stdout first: it serves already.
    assert!(daemon.status()["probes"]["attached"].as_bool().unwrap());

    until(&socket, "WATCHDOG=1");
    // STATUS= follows what the engine keeps, at its next snapshot.
    let fs = Mount::ext4();
    let path = fs.file("held", b"kept");
    let holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");
    // Other deleted files held on this machine count too: at least this one.
    let status = until_one(&socket, "a STATUS= counting a held file", |m| held_in(m).is_some_and(|n| n >= 1));
    assert!(
        status.starts_with("STATUS=") && status.contains("tier;") && status.contains("lost events"),
        "{status}"
    );
    drop(holder);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let reloading = until(&socket, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    until(&socket, "READY=1");
    daemon.stop();
    until(&socket, "STOPPING=1");
}

/// The nice level of the daemon's thread whose name starts with `prefix`.
fn nice_of_thread(pid: u32, prefix: &str) -> i64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if stat[open + 1..close].starts_with(prefix) {
            // After the name: state is field 3, nice field 19.
            return stat[close + 2..].split(' ').nth(16).unwrap().parse().unwrap();
        }
    }
    panic!("no thread {prefix}* in {pid}");
}

/// What CAP_SYS_NICE in the unit buys: the ring buffer's reader takes the
/// highest priority (a pin within microseconds of the deletion is what
/// makes capture possible when the holder lets go at once), and the
/// engine, which copies, steps back.
#[test]
fn the_ring_reader_runs_first_and_the_engine_steps_back() {
    let daemon = Daemon::start();
    assert_eq!(nice_of_thread(daemon.pid(), "unrm-ring"), -20);
    assert_eq!(nice_of_thread(daemon.pid(), "unrm-engine"), 10);
}
