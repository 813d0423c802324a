//! The daemon's metrics as the monitoring a fleet runs reads them: the
//! textfile read by the real `prometheus-node-exporter` and accepted by
//! `promtool check metrics`; the HTTP listener's text format accepted by
//! promtool and its OpenMetrics accepted by the reference parser (Debian's
//! `python3-prometheus-client`); the bad addresses and paths refused.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use unrm_tests::{
    Daemon, Holder, Mount, assert_one_line_error, content, daemon_command, rm, run, wait_until,
};

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP request to 127.0.0.1:`port`; the status line, head and body,
/// or None if nothing answers.
fn get(port: u16, path: &str, accept: Option<&str>) -> Option<(String, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{accept}Connection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.to_owned();
    Some((status, head.to_owned(), body.to_owned()))
}

/// The value of the sample line that starts with `series ` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real node_exporter, only its textfile collector, killed when dropped.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(textfile_dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("prometheus-node-exporter")
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", textfile_dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (Debian package)");
        let exporter = NodeExporter { child, port };
        wait_until("node_exporter answers", || get(port, "/metrics", None).is_some());
        exporter
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file deleted while a process holds it: pinned, and so counted.
fn held_deletion(fs: &Mount, daemon: &Daemon) -> Holder {
    let path = fs.file("watched.bin", &content("metrics"));
    let holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");
    holder
}

#[test]
fn node_exporter_serves_the_textfile() {
    let textfiles = tempfile::tempdir().unwrap();
    let dir = textfiles.path().to_str().unwrap();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--metrics-textfile", dir]);
    let fs = Mount::tmpfs();
    let _holder = held_deletion(&fs, &daemon);

    let file = textfiles.path().join("unrm.prom");
    let mut text = String::new();
    wait_until("unrm.prom counts the pin and its latency", || {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        value(&text, "unrm_pins_total").is_some_and(|n| n >= 1.0)
            && value(&text, "unrm_pin_latency_seconds_count").is_some_and(|n| n >= 1.0)
    });
    promtool_accepts(&text);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
    let names: Vec<_> =
        std::fs::read_dir(textfiles.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["unrm.prom"], "no temporary file left behind");

    let exporter = NodeExporter::start(textfiles.path());
    let (status, _, scraped) = get(exporter.port, "/metrics", None).expect("node_exporter answers");
    assert!(status.contains("200"), "{status}");
    assert_eq!(value(&scraped, "node_textfile_scrape_error"), Some(0.0), "{scraped}");
    assert!(value(&scraped, "unrm_pins_total").is_some_and(|n| n >= 1.0), "{scraped}");
    assert!(value(&scraped, "unrm_records_total{outcome=\"captured\"}").is_some(), "{scraped}");
    // node_exporter re-renders the histogram; its +Inf bucket is the count.
    assert!(value(&scraped, "unrm_pin_latency_seconds_count").is_some_and(|n| n >= 1.0), "{scraped}");
    assert!(scraped.contains("unrm_pin_latency_seconds_bucket{le=\"0.001\"}"), "{scraped}");
    assert!(scraped.contains("# TYPE unrm_pin_latency_seconds histogram"), "{scraped}");
    let tier = format!("tier=\"{}\"", unrm_tests::expected_tier());
    let info = scraped.lines().find(|l| l.starts_with("unrm_probe_info{")).expect("unrm_probe_info");
    assert!(info.contains(&tier) && info.ends_with("} 1"), "{info}");
    assert!(value(&scraped, "unrm_uptime_seconds").is_some(), "{scraped}");
}

/// What the reference OpenMetrics parser makes of `text`: one
/// `family type samples` line per family, or its error.
fn openmetrics_families(text: &str) -> Result<Vec<String>, String> {
    const PARSE: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   print(f.name, f.type, len(f.samples))\n";
    // Debian's python, where python3-prometheus-client installs.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

#[test]
fn the_http_listener_speaks_both_formats() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--metrics-listen", &listen]);
    let fs = Mount::tmpfs();
    let _holder = held_deletion(&fs, &daemon);

    let mut text = String::new();
    wait_until("the listener counts the pin", || {
        let Some((status, head, body)) = get(port, "/metrics", None) else { return false };
        assert!(status.contains("200"), "{status}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        text = body;
        value(&text, "unrm_pins_total").is_some_and(|n| n >= 1.0)
    });
    promtool_accepts(&text);
    assert!(!text.contains("# EOF"));

    let (status, head, om) =
        get(port, "/metrics", Some("application/openmetrics-text; version=1.0.0")).unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    let families = openmetrics_families(&om).unwrap_or_else(|err| panic!("OpenMetrics refused: {err}\n{om}"));
    for want in
        ["unrm_pins counter 1", "unrm_records counter 6", "unrm_probe info 1", "unrm_held_bytes gauge 1"]
    {
        assert!(families.iter().any(|f| f == want), "no {want:?} in {families:?}");
    }
    // Every bucket (+Inf among them), _sum and _count.
    let buckets = om.lines().filter(|l| l.starts_with("unrm_pin_latency_seconds_bucket{")).count();
    let histogram = format!("unrm_pin_latency_seconds histogram {}", buckets + 2);
    assert!(buckets > 10 && families.contains(&histogram), "no {histogram:?} in {families:?}");
    // The parser is strict: it does refuse what is not OpenMetrics.
    assert!(openmetrics_families(&text).is_err(), "the text format is not OpenMetrics");

    let (status, _, _) = get(port, "/", None).unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"DELETE /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405") && answer.contains("Allow: GET"), "{answer}");
    // A head without end, past the cap: refused, not read forever.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = stream.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000)).as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// A directory bind-mounted read-only onto itself (as a unit's
/// `ProtectSystem=strict` leaves every path it does not list), unmounted
/// when dropped.
struct ReadOnly(tempfile::TempDir);

impl ReadOnly {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount").arg("--bind").arg(dir.path()).arg(dir.path()));
        let read_only = ReadOnly(dir);
        run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(read_only.0.path()));
        read_only
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn bad_metrics_places_are_refused_at_start() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let read_only = ReadOnly::new();
    let link = tempfile::tempdir().unwrap();
    let linked = link.path().join("textfiles");
    std::os::unix::fs::symlink(link.path(), &linked).unwrap();
    let cases = [
        (vec!["--metrics-listen", "0.0.0.0:9465"], "not a loopback address"),
        (vec!["--metrics-textfile", file.path().to_str().unwrap()], "not a directory"),
        (vec!["--metrics-textfile", "/nonexistent/unrm-metrics"], "No such file"),
        (vec!["--metrics-textfile", read_only.0.path().to_str().unwrap()], "not writable"),
        (vec!["--metrics-textfile", linked.to_str().unwrap()], "symbolic link"),
        (vec!["--metrics-textfile", "relative/dir"], "absolute path"),
    ];
    for (args, why) in cases {
        let state = tempfile::tempdir().unwrap();
        let out = daemon_command()
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .arg("--socket")
            .arg(state.path().join("unrm.sock"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(&out, why);
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{args:?}: never ready");
    }
}
