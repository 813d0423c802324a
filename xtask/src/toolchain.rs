//! Making sure this machine can build Rust eBPF, and saying exactly what is
//! missing when it cannot.
//!
//! Two routes to a `core` for `bpfel-unknown-none`:
//! - a rustup nightly with `rust-src` (`-Z build-std=core`), typical of a
//!   developer laptop with internet access;
//! - Debian's `rustc-web` with prebuilt BPF `core`/`alloc`
//!   (`libstd-rust-web-dev-bpf`), which needs no download from rustup.
//!
//! Whichever is present is used; if neither, the Debian one is installed.
//! `bpf-linker` must link against the same LLVM major as that compiler.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// How to compile the probe crate.
pub enum Route {
    /// `cargo +nightly build -Z build-std=core`.
    Nightly,
    /// `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo build`.
    Debian,
}

pub struct Toolchain {
    pub route: Route,
    pub bpf_linker: PathBuf,
}

pub fn ensure() -> Result<Toolchain> {
    let route = if nightly_has_rust_src() {
        Route::Nightly
    } else {
        ensure_debian_rustc()?;
        Route::Debian
    };
    let llvm = llvm_major(&route)?;
    let bpf_linker = ensure_bpf_linker(llvm)?;
    Ok(Toolchain { route, bpf_linker })
}

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_has_rust_src() -> bool {
    output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")))
}

fn debian_rustc_ready() -> bool {
    let core = std::fs::read_dir(DEBIAN_BPF_CORE)
        .map(|dir| dir.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        .unwrap_or(false);
    core && Path::new(DEBIAN_RUSTC).exists()
}

fn ensure_debian_rustc() -> Result<()> {
    if debian_rustc_ready() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian's rustc-web with prebuilt BPF core (no rustup nightly with rust-src here)"
    );
    apt_install(&["rustc-web", "libstd-rust-web-dev-bpf"])?;
    if !debian_rustc_ready() {
        bail!(
            "rustc-web installed but {DEBIAN_BPF_CORE} has no libcore; is libstd-rust-web-dev-bpf available for this release?"
        );
    }
    Ok(())
}

/// The LLVM major version of the compiler that builds the probes.
fn llvm_major(route: &Route) -> Result<u32> {
    let mut cmd = match route {
        Route::Nightly => {
            let mut c = Command::new("rustc");
            c.args(["+nightly", "-vV"]);
            c
        }
        Route::Debian => {
            let mut c = Command::new(DEBIAN_RUSTC);
            c.arg("-vV");
            c
        }
    };
    let info = output(&mut cmd).context("running rustc -vV")?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    version.split('.').next().unwrap().parse().context("parsing the LLVM version")
}

pub fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

/// The LLVM major a bpf-linker binary is linked against, from its
/// dynamic dependencies (`libLLVM.so.22.1`).
fn linker_llvm_major(linker: &Path) -> Option<u32> {
    llvm_major_from_ldd(&output(Command::new("ldd").arg(linker))?)
}

/// `libLLVM.so.22.1 => ...` (Debian) or `libLLVM-21.so => ...` (upstream).
fn llvm_major_from_ldd(deps: &str) -> Option<u32> {
    let lib = deps.lines().find_map(|l| l.trim().strip_prefix("libLLVM"))?;
    let version = lib.trim_start_matches(['-', '.', 's', 'o']).split(['.', ' ']).next()?;
    version.parse().ok()
}

fn ensure_bpf_linker(llvm: u32) -> Result<PathBuf> {
    let linker = cargo_bin().join("bpf-linker");
    let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    let have = version.split_whitespace().nth(1).unwrap_or("");
    if have == BPF_LINKER_VERSION && linker_llvm_major(&linker) == Some(llvm) {
        return Ok(linker);
    }
    if !(21..=23).contains(&llvm) {
        bail!("bpf-linker {BPF_LINKER_VERSION} supports LLVM 21-23, but the BPF compiler uses LLVM {llvm}");
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (found: {})",
        if version.is_empty() { "none".into() } else { version.trim().to_string() }
    );
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{llvm}"));
    if !prefix.join("bin/llvm-config").exists() {
        apt_install(&[&format!("llvm-{llvm}-dev")])?;
    }
    let status = Command::new("cargo")
        .args(["install", "--locked", "--force", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm}")])
        // Without it, the build script finds the first llvm-config on PATH.
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed; it needs llvm-{llvm}-dev and crates.io");
    }
    Ok(linker)
}

/// Installs the package of every command missing from PATH.
pub fn ensure_commands(commands: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> =
        commands.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, package)| *package).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs the Debian package of a Python module Debian's python3 cannot
/// import (the tests run /usr/bin/python3, whatever python3 is on PATH).
pub fn ensure_python_module(module: &str, package: &str) -> Result<()> {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found { Ok(()) } else { apt_install(&["python3", package]) }
}

fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin".into(), "/usr/sbin".into()])
        .any(|dir| dir.join(cmd).is_file())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("{} needed but this is not a Debian-like system; install them by hand", packages.join(" "));
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        let status = cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if !status.success() {
            bail!("apt-get {} failed", args.join(" "));
        }
        Ok(())
    };
    // Package lists may be missing or stale on a fresh machine.
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    let _quiet = NoServiceStarts::new();
    apt(&args).with_context(|| format!("installing {}", packages.join(" ")))
}

/// While it lives, packages' maintainer scripts may not start their
/// services (rsyslog, node_exporter): the tests start their own instances,
/// on their own ports and files. Debian's `policy-rc.d` convention; one that
/// is already there (Docker images have one) is left alone.
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    const POLICY: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(Self::POLICY);
        if path.exists() || !is_root() {
            return NoServiceStarts(None);
        }
        let written = std::fs::write(
            path,
            "#!/bin/sh\n# written by cargo xtask while it installs packages\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)));
        NoServiceStarts(written.is_ok().then_some(path))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|id| id.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::llvm_major_from_ldd;

    #[test]
    fn reads_the_llvm_major_from_ldd() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x7f)\n";
        assert_eq!(llvm_major_from_ldd(debian), Some(22));
        assert_eq!(llvm_major_from_ldd("\tlibLLVM-21.so => /usr/lib/libLLVM-21.so (0x7f)"), Some(21));
        assert_eq!(llvm_major_from_ldd("\tlibc.so.6 => /lib/libc.so.6"), None);
    }
}
