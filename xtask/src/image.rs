//! `cargo xtask image`: the daemon as a container image, for running unrm as
//! a Kubernetes DaemonSet (deploy/unrm-daemonset.yaml, deploy/README.md).
//!
//! The image is the release binary and what the dynamic loader needs to run
//! it, nothing else: no shell, no package manager, no base image to pull
//! (no registry is needed, or reachable on the development machines). The
//! root filesystem is assembled here from the binary itself (`ldd` names
//! its libraries), then deploy/Containerfile copies it into an empty image.
//!
//! This file has no dependency on the rest of xtask: the deploy test
//! (tests/tests/deploy.rs) includes it to build the image the same way
//! from the binary under test, without running cargo inside a test.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The image's name; tagged with the crate's version and `latest`.
pub const REPOSITORY: &str = "localhost/unrm";

/// Directories the image has empty, as mount points and for tools that
/// expect them. The runtime would make most of them, but on a read-only
/// root it can only do so before the root is made read-only: having them
/// in the image keeps the layout the manifest mounts onto visible here.
const MOUNT_POINTS: &[&str] = &[
    // Mounted by the runtime: procfs (the host's processes under hostPID),
    // sysfs (BTF and tracefs are mounted below it), /dev.
    "proc",
    "sys",
    "dev",
    // The state directory, the socket directory the node's `unrm` reaches,
    // the events file the node's log shipper reads (all host paths).
    "var/lib/unrm",
    "run/unrm",
    "var/log/unrm",
    // The policy file, from the manifest's ConfigMap.
    "etc/unrm",
];

/// Assembles the image's root filesystem from `bin` into `rootfs`
/// (replacing what is there).
pub fn assemble_rootfs(bin: &Path, rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    let mut dirs = std::fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    for dir in MOUNT_POINTS.iter().chain(&["usr/bin"]) {
        dirs.create(rootfs.join(dir))?;
    }
    // /tmp, sticky and open to all as everywhere: empty, and read-only
    // under readOnlyRootFilesystem (the daemon writes no temporary files;
    // its copies are made inside its state directory).
    let tmp = rootfs.join("tmp");
    dirs.create(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    // The binary; ENTRYPOINT and the probes' `unrm status` run it.
    copy_file(bin, &rootfs.join("usr/bin/unrm"), 0o755)?;
    // Its shared libraries and the dynamic loader, at the paths the binary
    // was linked to find them (the loader's path is in the binary itself).
    for lib in shared_libraries(bin)? {
        let inside = rootfs.join(lib.strip_prefix("/").expect("ldd names absolute paths"));
        dirs.create(inside.parent().expect("a library is in a directory"))?;
        copy_file(&lib, &inside, 0o755)?;
    }
    // No /etc/passwd or /etc/group: the daemon and `unrm status` look no
    // user up, and the engines exec the probes as uid 0 without one
    // (tests/tests/deploy.rs runs `podman exec ID unrm status`).
    Ok(())
}

/// What `ldd` says `bin` loads: each library's resolved path and the
/// loader's; none for a static binary. The vDSO is the kernel's, not a file.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd (from libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || out.stderr.is_empty() {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("=> not found") {
            bail!("ldd {}: {} is not on this machine", bin.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the
        // loader alone: `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line.split_once("=>").map_or(line, |(_, to)| to).split_whitespace().next();
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The version `bin --version` reports (`unrm 0.1.0`: `0.1.0`).
pub fn version_of(bin: &Path) -> Result<String> {
    let out =
        Command::new(bin).arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().strip_prefix("unrm ") {
        Some(version) if out.status.success() && !version.is_empty() => Ok(version.to_owned()),
        _ => bail!("{} --version did not say `unrm VERSION`: {}", bin.display(), text.trim()),
    }
}

/// Copies `from` (following symbolic links: the image has the file itself)
/// to `to` with `mode`.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The container engine that builds the image: podman, else docker.
pub fn engine() -> Result<&'static str> {
    let works = |name: &str| Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    ["podman", "docker"]
        .into_iter()
        .find(|name| works(name))
        .context("neither podman nor docker is installed (apt-get install podman)")
}

/// Builds the image from `containerfile` with `context` (holding `rootfs/`)
/// as the build context, tagged `tags`; `extra` goes to the engine's build.
pub fn build(
    engine: &str,
    containerfile: &Path,
    context: &Path,
    tags: &[String],
    extra: &[String],
) -> Result<()> {
    let mut cmd = Command::new(engine);
    cmd.arg("build").arg("--file").arg(containerfile);
    for tag in tags {
        cmd.arg("--tag").arg(tag);
    }
    cmd.args(extra).arg(context);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
