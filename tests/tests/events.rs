//! What leaves the host: `unrm list --follow` (and `unrm watch`), and the
//! event log a shipper tails: its schema, its rotation, a sink too slow
//! to keep up, the other sinks, and a real shipper pair (rsyslog's imfile
//! forwarding to a second rsyslog over TCP).

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, User, content, rm, rm_as, unrm_bin, wait_until};

/// `unrm list --follow ARGS`, its lines as they come; killed when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(daemon: &Daemon, user: Option<&User>, args: &[&str]) -> Self {
        let mut cmd = Command::new(unrm_bin());
        cmd.arg("--socket").arg(&daemon.socket).args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        if let Some(user) = user {
            user.apply(&mut cmd);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line that `wanted` accepts; the lines before it.
    fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            match self.lines.recv_timeout(unrm_tests::PATIENCE) {
                Ok(line) if wanted(&line) => return (line, before),
                Ok(line) => before.push(line),
                Err(_) => panic!("follower: no {what} within {:?}; got {before:#?}", unrm_tests::PATIENCE),
            }
        }
    }

    /// The next event about record `id`, parsed.
    fn event_of(&self, id: &Value, kind: &str) -> Value {
        let wanted = |line: &str| {
            let event: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            event["record"]["id"] == *id && event["event"] == kind
        };
        serde_json::from_str(&self.until(&format!("{kind} event of record {id}"), wanted).0).unwrap()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339(std::time::SystemTime::now()).to_string()
}

#[test]
fn follow_prints_each_new_record_and_status_change_as_it_happens() {
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let since = now_rfc3339();
    // A record from before the follower starts: its first line proves the
    // follow request was taken (it goes before the listing).
    let early = fs.file("early", b"early");
    rm(&early, None);
    let early = daemon.wait_record(&early, "unheld");
    let follower = Follower::start(&daemon, None, &["list", "--follow", "--json", "--since", &since]);
    let listed = follower.event_of(&early["id"], "deleted");
    assert_eq!(listed["schema"], 1);

    let data = content("followed");
    let path = fs.file("followed.bin", &data);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let record = daemon.wait_record(&path, "held");
    let deleted = follower.event_of(&record["id"], "deleted");
    assert_eq!(deleted["record"]["status"], "held");
    assert_eq!(deleted["record"]["path"], path.to_str().unwrap());
    assert_eq!(deleted["record"]["deleted_by"]["comm"], "rm");
    assert!(deleted["host"].as_str().is_some_and(|h| !h.is_empty()), "{deleted}");
    holder.exit();
    let captured = follower.event_of(&record["id"], "status");
    assert_eq!(captured["record"]["status"], "captured");
    // Its checksum is computed after the copy, and may come later than this.
    assert!(captured["record"]["captured_at"].is_string(), "{captured}");
    assert_eq!(captured["record"]["size"], data.len());

    // `unrm watch`, in text, filtered by status: a line per captured record only.
    let watcher = Follower::start(&daemon, None, &["watch", "--status", "captured", "--since", &since]);
    let (line, before) = watcher.until("the captured record's line", |l| l.contains("followed.bin"));
    assert!(before.is_empty(), "only captured records: {before:?}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.contains(&"captured") && fields.contains(&record["id"].to_string().as_str()), "{line}");
}

#[test]
fn a_follower_sees_only_what_it_may_list() {
    let fs = Mount::ext4();
    let alice = User::ensure("unrm-test-alice");
    let daemon = Daemon::start();
    std::os::unix::fs::chown(&fs.path, Some(alice.uid), Some(alice.gid)).unwrap();
    let since = now_rfc3339();
    let hers = fs.file("hers", b"alice's");
    std::os::unix::fs::chown(&hers, Some(alice.uid), Some(alice.gid)).unwrap();
    rm_as(&alice, &hers);
    let hers = daemon.wait_record(&hers, "unheld");
    let follower = Follower::start(&daemon, Some(&alice), &["watch", "--json", "--since", &since]);
    follower.event_of(&hers["id"], "deleted");

    // Root's deletion, then another of hers: she sees hers, never root's.
    let roots = fs.file("roots", b"root's");
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o600)).unwrap();
    rm(&roots, None);
    let roots = daemon.wait_record(&roots, "unheld");
    let again = fs.file("hers-again", b"again");
    std::os::unix::fs::chown(&again, Some(alice.uid), Some(alice.gid)).unwrap();
    rm_as(&alice, &again);
    let again = daemon.wait_record(&again, "unheld");
    let (_, before) = follower.until("her second record", |l| l.contains(&format!("\"id\":{}", again["id"])));
    assert!(
        before.iter().all(|l| !l.contains(&format!("\"id\":{}", roots["id"]))),
        "root's record leaked: {before:?}"
    );
}

/// Every line of `path` and its rotated files, oldest first, parsed.
fn events_in(path: &Path, keep: u32) -> Vec<Value> {
    let mut files: Vec<PathBuf> =
        (1..=keep).rev().map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for file in files.iter().filter(|f| f.exists()) {
        for line in fs::read_to_string(file).unwrap().lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display())),
            );
        }
    }
    out
}

#[test]
fn the_event_log_rotates_by_size_and_keeps_a_bounded_number_of_files() {
    let fs = Mount::ext4();
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("events.jsonl");
    let config = format!("[events]\nfile = {:?}\nmax_size = \"4K\"\nkeep = 2\n", file.display().to_string());
    let (_dir, daemon) = Daemon::with_config(&config, &[]);
    let dir = fs.path.join("many");
    fs::create_dir(&dir).unwrap();
    for n in 0..60 {
        fs::write(dir.join(format!("f{n:02}")), b"x").unwrap();
    }
    unrm_tests::run(Command::new("rm").arg("-r").arg(&dir));
    wait_until("60 records", || {
        daemon.json(&["list", "--json", "--limit", "0", "--status", "unheld"]).as_array().unwrap().len() == 60
    });
    wait_until("60 events written", || daemon.status()["safety"]["events_written"].as_u64() >= Some(60));

    let mut names: Vec<String> =
        fs::read_dir(logs.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["events.jsonl", "events.jsonl.1", "events.jsonl.2"], "two old files kept, no more");
    for name in &names {
        let len = fs::metadata(logs.path().join(name)).unwrap().len();
        assert!(len <= 4096, "{name} is {len} bytes, over max_size");
    }
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // The newest survive rotation, whole and in order, each with its schema
    // (others on the machine may have deleted files too).
    let all = events_in(&file, 2);
    assert!(all.iter().all(|e| e["schema"] == 1), "{all:?}");
    let ours: Vec<&Value> = all
        .iter()
        .filter(|e| e["record"]["path"].as_str().unwrap().starts_with(dir.to_str().unwrap()))
        .collect();
    assert!(ours.len() >= 10, "{} events kept", ours.len());
    assert!(ours.iter().all(|e| e["event"] == "deleted"));
    let ids: Vec<i64> = ours.iter().map(|e| e["record"]["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let glob = format!("{}/*", dir.display());
    let newest = daemon.json(&["list", "--json", "--limit", "1", "--path", &glob]);
    assert_eq!(ids.last(), newest[0]["id"].as_i64().as_ref());
}

#[test]
fn a_sink_too_slow_drops_events_and_counts_them_but_never_holds_up_the_engine() {
    let fs = Mount::ext4();
    let logs = tempfile::tempdir().unwrap();
    // A pipe nobody reads: the writer blocks once its 64 KiB buffer is full.
    let fifo = logs.path().join("events.jsonl");
    unrm_tests::run(Command::new("mkfifo").arg(&fifo));
    let mut reader = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let daemon = Daemon::start_in(
        tempfile::tempdir().unwrap(),
        &["--events-file", fifo.to_str().unwrap(), "--events-queue", "16"],
    );
    let dir = fs.path.join("many");
    fs::create_dir(&dir).unwrap();
    let total = 400;
    for n in 0..total {
        fs::write(dir.join(format!("{n:03}-{}", "x".repeat(200))), b"x").unwrap();
    }
    unrm_tests::run(Command::new("rm").arg("-r").arg(&dir));
    // The engine went on: every record is there, and it answers.
    wait_until("every record", || {
        daemon.json(&["list", "--json", "--limit", "0", "--status", "unheld"]).as_array().unwrap().len()
            == total
    });
    let safety = daemon.status()["safety"].clone();
    assert!(safety["events_dropped"].as_u64().unwrap() > 0, "{safety}");

    // Drained now: whole lines only, and written + dropped cover every
    // event (and those of whatever else on the machine deleted a file).
    let mut text = Vec::new();
    let mut counted = (0, 0);
    wait_until("written + dropped to cover every event", || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        let s = daemon.status()["safety"].clone();
        counted = (s["events_written"].as_u64().unwrap(), s["events_dropped"].as_u64().unwrap());
        let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
        counted.0 + counted.1 >= total as u64 && lines == counted.0
    });
    for line in String::from_utf8(text).unwrap().lines() {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a broken line ({e}): {line}"));
        assert_eq!(event["schema"], 1);
    }
    assert!(counted.0 > 0, "some were written: {counted:?}");
}

#[test]
fn events_can_go_to_standard_output_the_journal_or_nowhere() {
    let fs = Mount::ext4();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--events", "stdout"]);
    let path = fs.file("out", b"x");
    rm(&path, None);
    let record = daemon.wait_record(&path, "unheld");
    // Others on the machine may delete files meanwhile: its line comes in turn.
    let event = loop {
        let event: Value = serde_json::from_str(&daemon.stdout_line()).unwrap();
        if event["record"]["id"] == record["id"] {
            break event;
        }
    };
    assert_eq!(event["event"], "deleted");
    assert_eq!(event["record"]["path"], path.to_str().unwrap());
    daemon.stop();

    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--events", "off"]);
    let path = fs.file("off", b"x");
    rm(&path, None);
    daemon.wait_record(&path, "unheld");
    assert_eq!(daemon.status()["safety"]["events_written"], 0);
    assert!(!daemon.events.exists());
    daemon.stop();

    // The journal: through the daemon's log, which is the journal under
    // systemd (the package test reads it there); here, its stderr.
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--events", "journal"]);
    let path = fs.file("journal", b"x");
    rm(&path, None);
    let record = daemon.wait_record(&path, "unheld");
    let id = format!("\"record\":{{\"id\":{}", record["id"]);
    wait_until("the event in the daemon's log", || {
        daemon.log().lines().any(|l| l.contains("\"schema\":1") && l.contains(&id))
    });
    assert!(!daemon.events.exists());
}

/// An rsyslogd of its own: `conf` in `dir`, killed by PID when dropped.
struct Rsyslog(Child);

impl Rsyslog {
    fn start(dir: &Path, name: &str, conf: &str) -> Self {
        let work = dir.join(name);
        fs::create_dir_all(&work).unwrap();
        let file = dir.join(format!("{name}.conf"));
        fs::write(
            &file,
            format!("global(workDirectory=\"{}\" maxMessageSize=\"64k\")\n{conf}", work.display()),
        )
        .unwrap();
        let check = Command::new("rsyslogd").arg("-N1").arg("-f").arg(&file).output().unwrap();
        assert!(check.status.success(), "rsyslogd -N1 {name}: {}", String::from_utf8_lossy(&check.stderr));
        let child = Command::new("rsyslogd")
            .args(["-n", "-i"])
            .arg(dir.join(format!("{name}.pid")))
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        Rsyslog(child)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn rsyslog_ships_the_event_log_to_a_second_rsyslog_over_tcp() {
    let fs = Mount::ext4();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let received = dir.path().join("received.jsonl");
    let port = free_port();
    // The collector: whatever arrives over TCP, one message a line.
    let _collector = Rsyslog::start(
        dir.path(),
        "collector",
        &format!(
            "module(load=\"imtcp\")\n\
             template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
             ruleset(name=\"in\") {{ action(type=\"omfile\" file=\"{}\" template=\"line\") }}\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"in\")\n",
            received.display()
        ),
    );
    wait_until("the collector listening", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // The node's shipper: README's configuration, with this test's paths.
    let _shipper = Rsyslog::start(
        dir.path(),
        "shipper",
        &fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rsyslog-unrm.conf"))
            .unwrap()
            .replace("/var/log/unrm/events.jsonl", events.to_str().unwrap())
            .replace("collector.example.net", "127.0.0.1")
            .replace("port=\"514\"", &format!("port=\"{port}\"")),
    );
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--events-file", events.to_str().unwrap()]);
    let data = content("shipped");
    let path = fs.file("shipped.bin", &data);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let record = daemon.wait_record(&path, "held");
    holder.exit();
    daemon.wait_show(&record["id"], |r| r["status"] == "captured");

    let mut shipped = Vec::new();
    wait_until("both events at the collector", || {
        shipped = fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["record"]["id"] == record["id"])
            .collect();
        shipped.len() == 2
    });
    assert_eq!(
        (shipped[0]["event"].as_str(), shipped[0]["record"]["status"].as_str()),
        (Some("deleted"), Some("held"))
    );
    assert_eq!(
        (shipped[1]["event"].as_str(), shipped[1]["record"]["status"].as_str()),
        (Some("status"), Some("captured"))
    );
    assert_eq!(shipped[0]["record"]["path"], path.to_str().unwrap());
    // Only metadata travels.
    let all = fs::read(&received).unwrap();
    assert!(
        !all.windows(data.len().min(32)).any(|w| w == &data[..data.len().min(32)]),
        "file content was shipped"
    );
}

#[test]
fn a_follower_that_stops_reading_is_cut_off_and_holds_nothing_up() {
    let fs = Mount::ext4();
    let alice = User::ensure("unrm-test-alice");
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--client-timeout", "2s"]);
    // An ordinary user follows everything she may see and stops reading
    // once it has begun (her first record's line says so).
    std::os::unix::fs::chown(&fs.path, Some(alice.uid), Some(alice.gid)).unwrap();
    let since = now_rfc3339();
    let first = fs.file("first", b"x");
    std::os::unix::fs::chown(&first, Some(alice.uid), Some(alice.gid)).unwrap();
    rm_as(&alice, &first);
    let first = daemon.wait_record(&first, "unheld");
    let follower = Follower::start(&daemon, Some(&alice), &["watch", "--json", "--since", &since]);
    follower.event_of(&first["id"], "deleted");
    // SAFETY: stopping a child of ours.
    unsafe { libc::kill(follower.child.id() as i32, libc::SIGSTOP) };
    let dir = fs.path.join("many");
    fs::create_dir(&dir).unwrap();
    let total = 6000;
    for n in 0..total {
        fs::write(dir.join(format!("{n:04}-{}", "x".repeat(100))), b"x").unwrap();
    }
    unrm_tests::run(Command::new("chown").arg("-R").arg(format!("{}:{}", alice.uid, alice.gid)).arg(&dir));
    let mut rm = Command::new("rm");
    rm.arg("-r").arg(&dir);
    alice.apply(&mut rm);
    assert!(rm.status().unwrap().success());
    wait_until("every record", || {
        daemon.json(&["list", "--json", "--limit", "0", "--status", "unheld"]).as_array().unwrap().len()
            == total + 1
    });
    wait_until("the follower cut off", || {
        let safety = daemon.status()["safety"].clone();
        safety["followers_dropped"].as_u64() >= Some(1) || safety["clients_dropped"].as_u64() >= Some(1)
    });
    // Woken, it reads what was sent before the cut, then is told it ended.
    let mut follower = follower;
    // SAFETY: as above.
    unsafe { libc::kill(follower.child.id() as i32, libc::SIGCONT) };
    let mut exit = None;
    wait_until("the follower to end", || {
        exit = follower.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(!exit.unwrap().success(), "a follower cut off exits nonzero");
    let got = follower.lines.try_iter().count();
    assert!(got < total, "it could not have had them all: {got}");
}
