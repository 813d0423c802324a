//! What the integration tests run against: the real `unrm` binary, real
//! processes holding real files, and filesystems of their own (a loop-mounted
//! ext4 image and a tmpfs), all cleaned up when dropped.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bench;

/// How `cargo xtask image` assembles and builds the container image, shared
/// so the deploy test builds it the same way from UNRM_BIN without running
/// cargo from inside a test.
#[path = "../../xtask/src/image.rs"]
pub mod image;

/// The probe tier `auto` should pick on this kernel: `tracepoint` where
/// tracing programs cannot attach (the development machines), `fentry` in
/// the stock-kernel VM (`cargo xtask vm-test` sets UNRM_EXPECT_TIER).
pub fn expected_tier() -> String {
    std::env::var("UNRM_EXPECT_TIER").unwrap_or_else(|_| "tracepoint".into())
}

/// How long a test waits for the daemon to reach a state before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Checks `done` until it holds, failing the test with `what` after
/// `PATIENCE`: for states nothing signals (a log line written, a
/// descriptor closed, a record forgotten).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `unrm daemon` as the packaged service runs it: within the unit's
/// capability bounding set and with no new privileges (setpriv), so that
/// the whole suite proves the set in packaging/unrm.service is enough.
pub fn daemon_command() -> Command {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/unrm.service");
    let text = std::fs::read_to_string(&unit).expect("packaging/unrm.service");
    // UNRM_TEST_CAPS replaces the set, to check that each one is needed.
    let set = std::env::var("UNRM_TEST_CAPS").ok();
    let caps: Vec<String> = set
        .as_deref()
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--inh-caps=-all")
        .arg("--no-new-privs")
        .arg("--")
        .arg(unrm_bin())
        .arg("daemon");
    cmd
}

pub fn unrm_bin() -> PathBuf {
    match std::env::var_os("UNRM_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/unrm"),
    }
}

/// The `holder` helper, built beside the binaries that use it (the bench in
/// target/release, the tests one level down in target/release/deps).
pub fn holder_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("holder"))
        .find(|p| p.exists())
        .expect("the holder helper is built")
}

/// Reads lines from a child's stdout on a thread, so waits can time out.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str, what: &str) {
    match rx.recv_timeout(PATIENCE) {
        Ok(line) if line == want => {}
        Ok(line) => panic!("{what}: expected {want:?}, got {line:?}"),
        Err(_) => panic!("{what}: no {want:?} within {PATIENCE:?}"),
    }
}

/// A running `unrm daemon` with its own state directory and socket.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    log: PathBuf,
    /// Its event file, unless the test gave it another.
    pub events: PathBuf,
    stdout: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

/// Whether `--config FILE` among `args` has an `[events]` section.
fn config_names_events(args: &[&str]) -> bool {
    let file = args.iter().position(|a| *a == "--config").and_then(|i| args.get(i + 1));
    file.and_then(|f| std::fs::read_to_string(f).ok()).is_some_and(|text| text.contains("[events]"))
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts a daemon whose state lives in `dir` (so a second daemon can
    /// pick up where a first one stopped).
    /// Starts a daemon with the policy file `config`; returns the directory
    /// holding that file too (rewrite it and send SIGHUP to reload).
    pub fn with_config(config: &str, extra: &[&str]) -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unrm.toml");
        std::fs::write(&file, config).unwrap();
        let mut args = vec!["--config", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let daemon = Self::start_in(tempfile::tempdir().unwrap(), &args);
        (dir, daemon)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let state_dir = dir.path().join("state");
        Self::start_at(dir, state_dir, extra, &[])
    }

    /// Starts a daemon with these environment variables set (as a service
    /// manager would).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        Self::start_at(dir, state_dir, &[], env)
    }

    /// Starts a daemon whose state lives in `state_dir`, anywhere (its
    /// socket and log stay in a directory of their own).
    pub fn start_with_state(state_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(tempfile::tempdir().unwrap(), state_dir.to_path_buf(), extra, &[])
    }

    fn start_at(dir: tempfile::TempDir, state_dir: PathBuf, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let socket = dir.path().join("unrm.sock");
        let log = dir.path().join("daemon.log");
        // Each daemon's events go to a file of its own, unless the test says
        // where (never the machine's /var/log/unrm).
        let events = dir.path().join("events.jsonl");
        let mut events_arg = vec![];
        if !extra.iter().any(|a| a.starts_with("--events")) && !config_names_events(extra) {
            events_arg = vec!["--events-file".to_owned(), events.display().to_string()];
        }
        let mut child = daemon_command()
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--socket")
            .arg(&socket)
            .args(&events_arg)
            .args(extra)
            .env("RUST_LOG", "debug,aya=info,aya_obj=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning unrm daemon");
        let ready = lines_of(child.stdout.take().unwrap());
        let started = ready.recv_timeout(PATIENCE);
        if started.as_deref() != Ok("ready") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon did not become ready ({started:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Daemon { child, socket, state_dir, log, events, stdout: ready, _dir: dir }
    }

    /// The next line the daemon writes on its standard output after
    /// "ready" (events, with `--events stdout`).
    pub fn stdout_line(&self) -> String {
        self.stdout.recv_timeout(PATIENCE).expect("a line on the daemon's standard output")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(unrm_bin()).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    /// Runs the CLI against this daemon as `user`.
    pub fn cli_as(&self, user: &User, args: &[&str]) -> Output {
        let mut cmd = Command::new(unrm_bin());
        user.apply(&mut cmd);
        cmd.arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    /// `unrm status --json`.
    pub fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// Waits until the daemon has taken `n` more snapshots than now: every
    /// decision a snapshot makes has been made by then.
    pub fn wait_scans(&self, n: u64) {
        let scans = |d: &Self| d.status()["counters"]["scans"].as_u64().unwrap();
        let want = scans(self) + n;
        wait_until(&format!("{n} more snapshots"), || scans(self) >= want);
    }

    /// Runs the CLI expecting success and JSON on stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(out.status.success(), "unrm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Every record of exactly `path` (in `status`, if given), newest first.
    pub fn records_of(&self, path: &Path, status: Option<&str>) -> Vec<Value> {
        let mut args = vec!["list", "--json", "--limit", "0", "--path", path.to_str().unwrap()];
        if let Some(status) = status {
            args.extend(["--status", status]);
        }
        match self.json(&args) {
            Value::Array(records) => records,
            other => panic!("unrm list answered {other}"),
        }
    }

    /// The newest record for `path`, waiting until one exists whose status
    /// is `status`.
    pub fn wait_record(&self, path: &Path, status: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let records = self.json(&["list", "--json", "--limit", "0"]);
            last = records
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["path"] == path.to_str().unwrap())
                .cloned()
                .unwrap_or(Value::Null);
            if last["status"] == status {
                return last;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no {status:?} record for {} within {PATIENCE:?}; last: {last}\n{}",
            path.display(),
            self.log()
        );
    }

    /// Restores record `id` to `to`, expecting success; the bytes that came back.
    pub fn restore_to(&self, id: &Value, to: &Path) -> Vec<u8> {
        let out = self.cli(&["restore", &id.to_string(), "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(to).unwrap()
    }

    /// `unrm show ID`, waiting until `ready` holds for it.
    pub fn wait_show(&self, id: &Value, ready: impl Fn(&Value) -> bool) -> Value {
        let id = id.to_string();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rec = self.json(&["show", &id, "--json"]);
            if ready(&rec) {
                return rec;
            }
            assert!(Instant::now() < deadline, "record {id} never got there: {rec}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon the way a service manager would (SIGTERM) and
    /// waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGTERM, then the daemon's own time to finish what only it holds
    /// (30 s) and some; how it exited, None if it had to be killed.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon (SIGTERM), expects it to exit by itself and
    /// cleanly, and gives back its directory, state and all, for the next
    /// daemon.
    pub fn stop_keeping(mut self) -> tempfile::TempDir {
        let status = self.terminate();
        assert!(status.is_some_and(|s| s.success()), "the daemon did not stop cleanly ({status:?})");
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }

    /// Kills the daemon at once (SIGKILL), as a crash would.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
        if std::thread::panicking() {
            // The test harness shows this only for the failed test.
            println!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// A real process holding a file (see `src/bin/holder.rs`).
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    out: mpsc::Receiver<String>,
}

impl Holder {
    pub fn fd(path: &Path) -> Self {
        Self::spawn("fd", path, None)
    }

    pub fn mmap(path: &Path) -> Self {
        Self::spawn("mmap", path, None)
    }

    /// Opens `path` and deletes it itself: the scratch-file idiom.
    pub fn scratch(path: &Path) -> Self {
        Self::spawn("scratch", path, None)
    }

    /// Holds `path` through a descriptor, running as `user`.
    pub fn fd_as(path: &Path, user: &User) -> Self {
        Self::spawn("fd", path, Some(user))
    }

    /// Holds `path` through a read-only descriptor, running as `user` (who
    /// may read it but not write it).
    pub fn fd_as_reader(path: &Path, user: &User) -> Self {
        Self::spawn_with(&["read", path.to_str().unwrap()], Some(user))
    }

    /// Creates `n` files in `dir`, holds each and deletes it (as `user`).
    pub fn scratch_many(dir: &Path, n: usize, user: Option<&User>) -> Self {
        Self::spawn_with(&["scratch-many", dir.to_str().unwrap(), &n.to_string()], user)
    }

    /// Opens `n` connections to `socket` and sends nothing (as `user`).
    pub fn connect(socket: &Path, n: usize, user: Option<&User>) -> Self {
        Self::spawn_with(&["connect", socket.to_str().unwrap(), &n.to_string()], user)
    }

    /// Calls unlink(2) `n` times on a path that does not exist (as `user`).
    pub fn fail_unlink(n: usize, user: Option<&User>) -> Self {
        Self::spawn_with(&["fail-unlink", "-", &n.to_string()], user)
    }

    /// A process holding `n` descriptors (of /dev/null): a busy machine.
    pub fn devnull(n: usize) -> Self {
        Self::spawn_with(&["devnull", "-", &n.to_string()], None)
    }

    /// A process holding nothing yet (see `scratch_more`).
    pub fn idle() -> Self {
        Self::spawn_with(&["idle", "-"], None)
    }

    fn spawn(mode: &str, path: &Path, user: Option<&User>) -> Self {
        Self::spawn_with(&[mode, path.to_str().unwrap()], user)
    }

    fn spawn_with(args: &[&str], user: Option<&User>) -> Self {
        let mut cmd = Command::new(holder_bin());
        if let Some(user) = user {
            user.apply(&mut cmd);
        }
        let mut child =
            cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawning holder");
        let stdin = child.stdin.take().unwrap();
        let out = lines_of(child.stdout.take().unwrap());
        expect_line(&out, "ready", "holder");
        Holder { child, stdin, out }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `text` at the end of the held file (fd mode).
    pub fn append(&mut self, text: &str) {
        writeln!(self.stdin, "append {text}").unwrap();
        expect_line(&self.out, "ok", "holder append");
    }

    /// Opens `path`, deletes it and keeps it open (any mode).
    pub fn scratch_more(&mut self, path: &Path) {
        writeln!(self.stdin, "scratch {}", path.display()).unwrap();
        expect_line(&self.out, "ok", "holder scratch");
    }

    /// Closes what `scratch_more` opened.
    pub fn close_scratch(&mut self) {
        writeln!(self.stdin, "close").unwrap();
        expect_line(&self.out, "ok", "holder close");
    }

    /// Changes the held file's mode through its descriptor (fd mode).
    pub fn chmod(&mut self, mode: u32) {
        writeln!(self.stdin, "chmod {mode:o}").unwrap();
        expect_line(&self.out, "ok", "holder chmod");
    }

    /// Lets go of the file by exiting, and waits until the process is gone.
    pub fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local account for tests of per-user access, created once (`useradd`)
/// and left in place: a system account with no home and no login shell.
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn ensure(name: &str) -> Self {
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).arg(name).output().unwrap();
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap())
        };
        if id("-u").is_none() {
            run(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]));
        }
        User { uid: id("-u").unwrap(), gid: id("-g").unwrap() }
    }

    pub fn apply(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        cmd.uid(self.uid).gid(self.gid).env("HOME", "/");
    }

    /// Runs `cmd` as this user; its output.
    pub fn run(&self, cmd: &mut Command) -> Output {
        self.apply(cmd);
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }
}

/// The `e_tag` values of POSIX ACL entries (`acl(5)`).
pub mod acl {
    pub const USER_OBJ: u16 = 0x01;
    pub const USER: u16 = 0x02;
    pub const GROUP_OBJ: u16 = 0x04;
    pub const MASK: u16 = 0x10;
    pub const OTHER: u16 = 0x20;
}

/// Sets `path`'s access ACL to `entries` (tag, permission bits, id), as
/// setfacl(1) would: the `system.posix_acl_access` attribute.
pub fn set_acl(path: &Path, entries: &[(u16, u16, u32)]) {
    let mut value = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        value.extend(tag.to_le_bytes());
        value.extend(perm.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("system.posix_acl_access").unwrap();
    // SAFETY: valid C strings and a buffer of the length given.
    let ret = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(ret, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A filesystem mounted for one test, unmounted when dropped.
pub struct Mount {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// A fresh ext4 filesystem on a loop device (the probes' hooked path).
    pub fn ext4() -> Self {
        Self::ext4_image_in(&std::env::temp_dir())
    }

    /// The same, with its image in `dir` (/dev/shm for an ext4 without a
    /// disk's noise underneath).
    pub fn ext4_image_in(dir: &Path) -> Self {
        Self::ext4_sized(dir, 64 << 20)
    }

    /// An ext4 of `size` bytes, its image in `dir`.
    pub fn ext4_sized(dir: &Path, size: u64) -> Self {
        Self::ext4_with(dir, size, &[])
    }

    /// The same, made with extra `mkfs.ext4` options.
    pub fn ext4_with(dir: &Path, size: u64, mkfs: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(dir).unwrap();
        let image = dir.path().join("ext4.img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size).unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).args(mkfs).arg(&image));
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&path));
        Mount { path, _dir: dir }
    }

    /// A fresh filesystem of type `fs` on a sparse loop image of `size`
    /// bytes, or None when this machine has no `mkfs.<fs>`.
    pub fn image(fs: &str, size: u64) -> Option<Self> {
        let mkfs = format!("mkfs.{fs}");
        let found =
            ["/sbin", "/usr/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(&mkfs).exists());
        if !found {
            return None;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let image = dir.path().join(format!("{fs}.img"));
        std::fs::File::create(&image).unwrap().set_len(size).unwrap();
        run(Command::new(&mkfs).arg("-q").arg(&image));
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&path));
        Some(Mount { path, _dir: dir })
    }

    /// A fresh tmpfs (no filesystem hook: found through scans).
    pub fn tmpfs() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "unrm-test"]).arg(&path));
        Mount { path, _dir: dir }
    }

    pub fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazily, in case a process the test started still holds something.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Deletes `path` with the real `rm`, from `cwd` if given.
pub fn rm(path: &Path, cwd: Option<&Path>) -> u32 {
    let mut cmd = Command::new("rm");
    cmd.arg(path);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rm {}", path.display());
    pid
}

/// An editor's save: a temporary file beside `path` written and synced,
/// then renamed over it.
pub fn editor_save(path: &Path, data: &[u8]) {
    let temp = path.with_file_name(format!(".{}.swp", path.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&temp, data).unwrap();
    std::fs::File::open(&temp).unwrap().sync_all().unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// A directory in memory for loop images, so that a test's filesystem has
/// no disk's noise underneath: /dev/shm where it is a tmpfs, else the
/// temporary directory (a tmpfs in the VM).
pub fn memory_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let usable =
        tempfile::tempdir_in(shm).is_ok_and(|d| std::fs::File::create(d.path().join("probe")).is_ok());
    if usable { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// Deletes `path` with the real `rm`, as `user`.
pub fn rm_as(user: &User, path: &Path) {
    let out = user.run(Command::new("rm").arg(path));
    assert!(
        out.status.success(),
        "rm {} as uid {}: {}",
        path.display(),
        user.uid,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Content unlikely to survive a wrong copy: every byte value, then text.
pub fn content(tag: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

/// One line on stderr, nonzero exit.
pub fn assert_one_line_error(out: &Output, contains: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line, got: {stderr}");
    assert!(stderr.contains(contains), "expected {contains:?} in: {stderr}");
}

/// bindfs mirroring `source` at a mount point of its own, in the foreground
/// so the test can stop and continue it by pid.
pub struct Fuse {
    server: Child,
    pub point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fuse {
    pub fn mirror(source: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let server = Command::new("bindfs")
            .arg("-f")
            .arg(source)
            .arg(&point)
            .stdout(Stdio::null())
            .spawn()
            .expect("bindfs (cargo xtask test installs it)");
        let fuse = Fuse { server, point, _dir: dir };
        wait_until("the FUSE mount", || mounted(&fuse.point));
        fuse
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(self.server.id() as i32, signal) };
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn mounted(point: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(point.to_str().unwrap()))
}
