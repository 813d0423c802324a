//! unrm as a Kubernetes DaemonSet (deploy/): the manifest asks for what the
//! service unit has and no more, and the image, run by podman in the
//! manifest's shape (its security context, host mounts, arguments and
//! memory limit, in the host's pid namespace), starts, picks the tier this
//! kernel allows, answers the node's own CLI through the shared socket
//! directory, passes its readiness probe, and records, captures and
//! restores a file deleted on the host. No cluster runs here: podman plays
//! the kubelet's part, with the same runtime (runc) Kubernetes nodes use.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use unrm_tests::{Holder, content, expected_tier, image, rm, unrm_bin, wait_until};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The manifest's documents, by kind.
fn manifest() -> HashMap<String, Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(deploy_dir().join("unrm-daemonset.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let doc: Value = Value::deserialize(doc).expect("the manifest is YAML");
            (doc["kind"].as_str().expect("each document has a kind").to_owned(), doc)
        })
        .collect()
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array().unwrap_or(&Vec::new()).iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// packaging/unrm.service's CapabilityBoundingSet, without the `CAP_`.
fn unit_capabilities() -> Vec<String> {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/unrm.service"))
            .unwrap();
    let set = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap();
    set.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_owned()).collect()
}

#[test]
fn the_manifest_grants_what_the_unit_has_and_no_more() {
    let docs = manifest();
    assert_eq!(docs.keys().len(), 3, "Namespace, ConfigMap, DaemonSet: {:?}", docs.keys());
    let pod = &docs["DaemonSet"]["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null())
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let version = image::version_of(&unrm_bin()).unwrap();
    assert_eq!(c["image"], format!("{}:{version}", image::REPOSITORY), "the image `cargo xtask image` tags");
    let sc = &c["securityContext"];
    assert_eq!(
        (&sc["privileged"], &sc["allowPrivilegeEscalation"]),
        (&Value::Bool(false), &Value::Bool(false))
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut granted = strings(&sc["capabilities"]["add"]);
    let mut unit = unit_capabilities();
    granted.sort();
    unit.sort();
    assert_eq!(granted, unit, "the manifest's capabilities are the unit's");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(strings(&c[probe]["exec"]["command"]), ["unrm", "status"], "{probe}");
    }
    // Every mount has its volume, and the ConfigMap it names exists.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounted: Vec<&str> =
        c["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    for mount in c["volumeMounts"].as_array().unwrap() {
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]);
        let volume = volume.unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        if let Some(name) = volume["configMap"]["name"].as_str() {
            assert_eq!(docs["ConfigMap"]["metadata"]["name"], name);
        }
    }
    // The image's state and socket directories, and the config it is given,
    // are on mounts (the root is read-only).
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    let args = strings(&c["args"]);
    for (flag, path) in [("--state-dir", "/var/lib/unrm/state"), ("--socket", "/run/unrm/unrm.sock")] {
        assert!(containerfile.contains(&format!("\"{flag}\", \"{path}\"")), "ENTRYPOINT has {flag} {path}");
        assert!(mounted.iter().any(|m| Path::new(path).starts_with(m)), "{path} is not on a mount");
    }
    let config = args.iter().position(|a| a == "--config").map(|i| &args[i + 1]).unwrap();
    assert!(mounted.iter().any(|m| Path::new(config).starts_with(m)), "{config} is not on a mount");
}

/// The image built from UNRM_BIN the way `cargo xtask image` builds it,
/// under a tag of this run's; removed when dropped.
struct Image {
    tag: String,
    _context: tempfile::TempDir,
}

impl Image {
    fn build() -> Self {
        let context = tempfile::tempdir().unwrap();
        image::assemble_rootfs(&unrm_bin(), &context.path().join("rootfs")).unwrap();
        let tag = format!("{}:test-{}", image::REPOSITORY, std::process::id());
        let built = Image { tag, _context: context };
        let quiet = ["--quiet".to_owned()];
        image::build(
            "podman",
            &deploy_dir().join("Containerfile"),
            built._context.path(),
            std::slice::from_ref(&built.tag),
            &quiet,
        )
        .unwrap();
        built
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "--force", &self.tag]).output();
    }
}

/// The manifest's container, run by podman: the same security context,
/// mounts (the daemon's own host directories made fresh here, as the
/// kubelet makes a `DirectoryOrCreate`: root's, 0755; the kernel's shared
/// as they are), arguments and memory limit. Removed when dropped.
struct Container {
    id: String,
    /// Host directories by volume name.
    dirs: HashMap<String, tempfile::TempDir>,
}

impl Container {
    fn run(image: &Image) -> Self {
        let docs = manifest();
        let pod = &docs["DaemonSet"]["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let mut dirs = HashMap::new();
        let mut args = vec![
            // What this machine's podman needs (runc: crun refuses its
            // hybrid cgroups; hard rlimits cannot be raised) and a test's
            // isolation: the daemon uses no network.
            "--runtime=runc".to_owned(),
            "run".to_owned(),
            "--detach".to_owned(),
            "--network=none".to_owned(),
            "--ulimit=nofile=10000:10000".to_owned(),
            "--ulimit=nproc=10000:10000".to_owned(),
        ];
        args.extend(pod_args(pod));
        args.extend(security_args(&c["securityContext"]));
        for mount in c["volumeMounts"].as_array().unwrap() {
            let name = mount["name"].as_str().unwrap();
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
            let host = host_dir(volume, &docs["ConfigMap"], &mut dirs);
            let ro = if mount["readOnly"] == true { ":ro" } else { "" };
            args.push(format!("--volume={}:{}{ro}", host.display(), mount["mountPath"].as_str().unwrap()));
        }
        for env in c["env"].as_array().unwrap() {
            args.push(format!("--env={}={}", env["name"].as_str().unwrap(), env["value"].as_str().unwrap()));
        }
        let memory = c["resources"]["limits"]["memory"].as_str().unwrap();
        args.push(format!("--memory={}", memory.replace("Mi", "m").replace("Gi", "g")));
        args.push(image.tag.clone());
        args.extend(strings(&c["args"]));
        eprintln!("podman {}", args.join(" "));
        let out = Command::new("podman").args(&args).output().unwrap();
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Container { id, dirs }
    }

    fn dir(&self, volume: &str) -> &Path {
        self.dirs[volume].path()
    }

    /// The node's own CLI (UNRM_BIN) through the shared socket directory.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        let socket = self.dir("run").join("unrm.sock");
        Command::new(unrm_bin()).arg("--socket").arg(socket).args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "unrm {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn logs(&self) -> String {
        let out = Command::new("podman").args(["logs", &self.id]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// The newest record for `path` once its status is `status`.
    fn wait_record(&self, path: &Path, status: &str) -> Value {
        let mut last = Value::Null;
        wait_until(&format!("a {status} record for {}", path.display()), || {
            let records = self.json(&["list", "--json", "--limit", "0"]);
            let found = records.as_array().unwrap().iter().find(|r| r["path"] == path.to_str().unwrap());
            last = found.cloned().unwrap_or(Value::Null);
            last["status"] == status
        });
        last
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("---- container log ----\n{}", self.logs());
        }
        let _ = Command::new("podman").args(["rm", "--force", "--time=10", &self.id]).output();
    }
}

/// hostPID and the like, as podman flags.
fn pod_args(pod: &Value) -> Vec<String> {
    let mut args = Vec::new();
    if pod["hostPID"] == true {
        args.push("--pid=host".to_owned());
    }
    assert!(pod["hostNetwork"] != true && pod["hostIPC"] != true, "the test does not translate these");
    args
}

/// A container securityContext as podman flags. The runtime's default
/// seccomp profile is podman's own (from the same list as containerd's).
fn security_args(sc: &Value) -> Vec<String> {
    assert_eq!(sc["privileged"], false);
    let mut args = vec!["--cap-drop=all".to_owned()];
    args.extend(strings(&sc["capabilities"]["add"]).iter().map(|c| format!("--cap-add={c}")));
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".to_owned());
    }
    if sc["readOnlyRootFilesystem"] == true {
        // Kubernetes adds no tmpfs of its own to a read-only root.
        args.extend(["--read-only".to_owned(), "--read-only-tmpfs=false".to_owned()]);
    }
    match sc["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") | None => {}
        Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".to_owned()),
        Some(other) => panic!("seccomp profile {other} is not translated"),
    }
    if sc["appArmorProfile"]["type"] == "Unconfined" {
        args.push("--security-opt=apparmor=unconfined".to_owned());
    }
    if let Some(label) = sc["seLinuxOptions"]["type"].as_str() {
        args.push(format!("--security-opt=label=type:{label}"));
    }
    args
}

/// Where a volume comes from on this host: the kernel's directories as
/// they are; the daemon's own (`DirectoryOrCreate`) fresh, root's and 0755
/// as the kubelet would make them; a ConfigMap's files written out.
fn host_dir(volume: &Value, configmap: &Value, dirs: &mut HashMap<String, tempfile::TempDir>) -> PathBuf {
    let name = volume["name"].as_str().unwrap().to_owned();
    let host = &volume["hostPath"];
    if host["type"] == "Directory" {
        return PathBuf::from(host["path"].as_str().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if volume["configMap"]["name"] == configmap["metadata"]["name"] {
        for (file, text) in configmap["data"].as_object().unwrap() {
            std::fs::write(dir.path().join(file), text.as_str().unwrap()).unwrap();
        }
    } else {
        assert_eq!(host["type"], "DirectoryOrCreate", "volume {name} is not translated");
    }
    let path = dir.path().to_path_buf();
    dirs.insert(name, dir);
    path
}

#[test]
fn the_image_in_the_manifests_shape_records_a_host_deletion() {
    let image = Image::build();
    let container = Container::run(&image);
    let mut status = Value::Null;
    wait_until("the daemon in the container answers the node's CLI", || {
        let out = container.cli(&["status", "--json"]);
        status = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        out.status.success()
    });
    assert_eq!(status["probes"]["tier"], expected_tier(), "{status}");
    // The readiness probe's command, inside the container.
    let probe = Command::new("podman").args(["exec", &container.id, "unrm", "status"]).output().unwrap();
    assert!(probe.status.success(), "the readiness probe failed: {}", String::from_utf8_lossy(&probe.stderr));

    // A file held and deleted on the host, outside the container.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held-on-the-host");
    let bytes = content("deploy");
    std::fs::write(&path, &bytes).unwrap();
    let holder = Holder::fd(&path);
    rm(&path, None);
    let record = container.wait_record(&path, "held");
    // The path is the host's: the daemon reads it through the deleter's
    // mount table. It cannot check from its own root that the path leads to
    // the file (path_resolved), so per-path access facts are not recorded:
    // other users see such a record only if they owned the file
    // (deploy/README.md, known limits).
    assert_eq!(record["path_resolved"], false, "{record}");
    assert_eq!(record["holders"][0]["pid"], holder.pid(), "host pids: {record}");
    holder.exit();
    let record = container.wait_record(&path, "captured");
    // Captured into the state on the host's directory, which the kubelet
    // would have made 0755: the daemon keeps its own 0700 state/ inside.
    let state = container.dir("state").join("state");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    // Its events reached the node's /var/log/unrm, for the node's shipper.
    let events = container.dir("log").join("events.jsonl");
    wait_until("the capture's event in the node's event log", || {
        std::fs::read_to_string(&events).unwrap_or_default().lines().any(|line| {
            let event: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            event["record"]["id"] == record["id"] && event["record"]["status"] == "captured"
        })
    });
    let back = dir.path().join("restored");
    let out = container.cli(&["restore", &record["id"].to_string(), "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == bytes, "restored bytes differ");
}
