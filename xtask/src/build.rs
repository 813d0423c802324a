//! The build and test steps, in the order the data path needs them: the
//! probe object first, then the binary that embeds it, then the tests that
//! run that binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::toolchain::{self, Route};

const BPF_TARGET: &str = "bpfel-unknown-none";

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the probes, then the release binary; returns the binary's path.
pub fn all(root: &Path) -> Result<PathBuf> {
    let object = ebpf(root)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["build", "--release", "--package", "unrm-user", "--bin", "unrm"])
        .env("UNRM_EBPF_OBJECT", &object);
    run(&mut cmd)?;
    Ok(root.join("target/release/unrm"))
}

fn ebpf(root: &Path) -> Result<PathBuf> {
    let tools = toolchain::ensure()?;
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    match tools.route {
        Route::Nightly => {
            cmd.args(["+nightly", "build", "-Z", "build-std=core"]);
        }
        Route::Debian => {
            // Only this invocation sees Debian's compiler; the userspace
            // build keeps rustup's.
            cmd.arg("build").env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
        }
    }
    cmd.args(["--package", "unrm-ebpf", "--target", BPF_TARGET, "--profile", "bpf"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tools.bpf_linker)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env_remove("RUSTFLAGS");
    run(&mut cmd)?;
    Ok(target_dir.join(BPF_TARGET).join("bpf/unrm-ebpf"))
}

/// Builds and runs the benchmark driver, which writes target/bench/latest.json.
pub fn bench(root: &Path, bin: &Path, args: &[String]) -> Result<()> {
    // What the benchmarks compare against or mount.
    toolchain::ensure_commands(&[
        ("lsof", "lsof"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("cp", "coreutils"),
    ])?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["build", "--release", "--package", "unrm-tests", "--bins"]);
    run(&mut cmd)?;
    let mut cmd = Command::new(root.join("target/release/bench"));
    cmd.current_dir(root).env("UNRM_BIN", bin).args(args);
    run(&mut cmd)
}

/// The hot-path rows again inside the stock-kernel VM, where the VFS tiers
/// load (emulated: ratios only, each measured side by side in the guest),
/// added to the host's report.
pub fn bench_in_vm(root: &Path, bin: &Path, args: &[String], guest: &crate::vm::Guest) -> Result<()> {
    const MARK: &str = "@@unrm-bench-json@@";
    let quick = if args.iter().any(|a| a == "--quick") { " --quick" } else { "" };
    let script = format!(
        "mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm; cd {root}; export UNRM_BIN={bin}; \
         target/release/bench --emulated{quick} --only hot --out /tmp/vm.json && echo {MARK} && cat /tmp/vm.json",
        root = root.display(),
        bin = bin.display()
    );
    eprintln!("bench: vm (booting the stock kernel under qemu)");
    let (code, out) = guest.run_quietly(&script)?;
    let Some((table, json)) = out.split_once(MARK) else {
        bail!("the benchmark in the VM failed (exit {code}):\n{out}");
    };
    print!(
        "{}",
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| measure"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let vm: serde_json::Value = serde_json::from_str(json.trim()).context("the VM's report")?;
    let out_path = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| root.join("target/bench/latest.json"), |p| root.join(p));
    // The host's report, if this run made one (else the VM's rows alone).
    let mut report: serde_json::Value = match std::fs::read(&out_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => serde_json::json!({ "rows": [] }),
    };
    let rows = report["rows"].as_array_mut().context("the host's report has no rows")?;
    rows.extend(vm["rows"].as_array().cloned().unwrap_or_default());
    report["vm_machine"] = vm["machine"].clone();
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("bench: VM rows added to {}", out_path.display());
    Ok(())
}

/// Builds the test binaries without running them; their paths (the unit
/// tests of unrm-user, then the integration tests).
pub fn test_binaries(root: &Path, bin: &Path) -> Result<Vec<PathBuf>> {
    let object = root.join("target/ebpf").join(BPF_TARGET).join("bpf/unrm-ebpf");
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json",
            "-p",
            "unrm-user",
            "-p",
            "unrm-tests",
        ])
        .env("UNRM_EBPF_OBJECT", &object)
        .env("UNRM_BIN", bin)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the tests")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        let kind = message["target"]["kind"][0].as_str().unwrap_or("");
        if let (true, Some(exe)) = (is_test, message["executable"].as_str()) {
            // The unit tests of the helper binaries hold none.
            if kind != "bin" || message["target"]["name"] == "unrm" {
                binaries.push(PathBuf::from(exe));
            }
        }
    }
    Ok(binaries)
}

/// Unit tests of every crate, then the integration tests against `bin`.
pub fn test(root: &Path, bin: &Path, args: &[String]) -> Result<()> {
    // The integration tests make their own ext4 and xfs images and mounts,
    // a FUSE filesystem (bindfs) to play one that stops answering, and run
    // the programs a fleet feeds unrm's events and metrics to.
    toolchain::ensure_commands(&[
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("mount", "mount"),
        ("losetup", "mount"),
        ("bindfs", "bindfs"),
        ("unshare", "util-linux"),
        ("man", "man-db"),
        // The fleet tests: a log shipper pair, node_exporter and promtool,
        // real containers (runc: crun refuses hybrid cgroup hosts).
        ("rsyslogd", "rsyslog"),
        ("prometheus-node-exporter", "prometheus-node-exporter"),
        ("promtool", "prometheus"),
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ])?;
    // The metrics test checks OpenMetrics with the reference parser.
    toolchain::ensure_python_module("prometheus_client", "python3-prometheus-client")?;
    let object = root.join("target/ebpf").join(BPF_TARGET).join("bpf/unrm-ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--release"])
        .env("UNRM_EBPF_OBJECT", &object)
        .env("UNRM_BIN", bin)
        .arg("--")
        // The integration tests each run the one daemon a machine may have.
        .arg("--test-threads=1")
        .args(args);
    run(&mut cmd)
}
