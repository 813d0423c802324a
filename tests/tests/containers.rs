//! Which container deleted a file: a real podman container (runc, an image
//! made here from busybox, no registry) deletes a file on a bind mount
//! that a host process holds; the record names the container, the path
//! on the host and the path the container saw, and the file restores.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, content, rm, wait_until};

fn podman(args: &[&str]) -> Output {
    Command::new("podman").arg("--runtime").arg("runc").args(args).output().expect("podman")
}

/// An image of a static busybox and its applets, imported from a tar
/// (nothing pulled); removed when dropped.
struct Image(String);

impl Image {
    fn build() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("/usr/bin/busybox (busybox-static)");
        for applet in ["sh", "rm", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let tag = format!("localhost/unrm-test-busybox:{}", std::process::id());
        let tar = Command::new("tar").arg("-C").arg(root.path()).args(["-c", "."]).output().unwrap();
        assert!(tar.status.success());
        let mut import = Command::new("podman")
            .args(["import", "-", &tag])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        assert!(import.wait().unwrap().success(), "podman import");
        Image(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "--force", &self.0]).output();
    }
}

/// A running container; removed when dropped.
struct Container(String);

impl Container {
    fn run(image: &Image, data: &Path, script: &str) -> Self {
        let volume = format!("{}:/data", data.display());
        let out = podman(&[
            "run",
            "--detach",
            "--network",
            "none",
            "--ulimit",
            "nofile=10000:10000",
            "--ulimit",
            "nproc=10000:10000",
            "--volume",
            &volume,
            &image.0,
            "sh",
            "-c",
            script,
        ]);
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        Container(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", "--time", "0", &self.0]).output();
    }
}

fn ids(records: &Value) -> Vec<Value> {
    records.as_array().unwrap().iter().map(|r| r["id"].clone()).collect()
}

#[test]
fn a_deletion_in_a_podman_container_names_the_container_and_restores() {
    let fs = Mount::ext4();
    let data = fs.path.join("data");
    std::fs::create_dir(&data).unwrap();
    let bytes = content("container");
    let path = data.join("shared.bin");
    std::fs::write(&path, &bytes).unwrap();
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    let image = Image::build();
    // It waits for the word, deletes the file, then stays (so that its
    // cgroup is there to be named).
    let go = data.join("go");
    unrm_tests::run(Command::new("mkfifo").arg(&go));
    let container = Container::run(&image, &data, "cat /data/go && rm /data/shared.bin && exec sleep 600");
    // The word comes once the container's process is in the container's
    // cgroup, so that the deletion is the container's whenever the runtime
    // moves its process there.
    let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &container.0]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    wait_until("the container's process in its cgroup", || {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.starts_with("0::") && l.contains(&container.0)))
    });
    std::fs::write(&go, b"go\n").unwrap();

    let record = daemon.wait_record(&path, "held");
    let by = &record["deleted_by"];
    assert_eq!(by["container"]["runtime"], "podman", "{record}");
    assert_eq!(by["container"]["id"], container.0.as_str(), "{record}");
    assert!(by["cgroup"].as_str().is_some_and(|c| c.contains(&container.0)), "{record}");
    assert_eq!(by["path"], "/data/shared.bin", "the container's view: {record}");
    assert_eq!(record["path"], path.to_str().unwrap(), "the host's path: {record}");
    assert_eq!(by["comm"], "rm");

    // A host deletion beside it names no container.
    let host_file = fs.file("host.bin", b"host");
    rm(&host_file, None);
    let host = daemon.wait_record(&host_file, "unheld");
    assert!(host["deleted_by"]["container"].is_null(), "{host}");

    let short = &container.0[..12];
    // Its deletion, and only the container's (runc's own start-up files,
    // deleted from inside the container's cgroup, count too).
    let listed = daemon.json(&["list", "--json", "--container", short]);
    assert!(ids(&listed).contains(&record["id"]), "{listed}");
    assert!(!ids(&listed).contains(&host["id"]), "{listed}");
    for r in listed.as_array().unwrap() {
        assert_eq!(r["deleted_by"]["container"]["id"], container.0.as_str(), "{r}");
    }
    assert!(ids(&daemon.json(&["list", "--json", "--container", "podman"])).contains(&record["id"]));
    let other = daemon.json(&["list", "--json", "--container", "0000000000ff"]);
    assert!(other.as_array().unwrap().is_empty(), "{other}");
    let shown = daemon.cli(&["show", &record["id"].to_string()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("container:") && l.contains(&format!("podman {}", container.0))),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("seen as:") && l.contains("/data/shared.bin")), "{text}");

    holder.exit();
    let record = daemon.wait_show(&record["id"], |r| r["status"] == "captured");
    assert_eq!(record["deleted_by"]["container"]["id"], container.0.as_str(), "kept after capture: {record}");
    assert_eq!(daemon.restore_to(&record["id"], &fs.path.join("back.bin")), bytes);
}
