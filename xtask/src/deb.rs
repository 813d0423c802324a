//! `cargo xtask deb`: the Debian package, by cargo-deb from the metadata in
//! unrm-user/Cargo.toml. What the package carries besides the binary is
//! generated here from the binary itself, so it cannot drift from it: the
//! man pages (from the clap definitions and the policy's key table), the
//! shell completions, and /etc/unrm.toml with every key commented out.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{build::run, toolchain, vm::Guest};

/// Pinned, as bpf-linker is: a newer cargo-deb may read the metadata
/// differently.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds the package from the binary at `bin` into target/debian; `args`
/// go to cargo-deb (e.g. `--deb-version 0.1.0-2`). Returns its path.
pub fn build(root: &Path, bin: &Path, args: &[String]) -> Result<PathBuf> {
    build_into(root, bin, args, &root.join("target/debian"))
}

/// The package test: `cargo xtask vm-test` boots the VM with systemd as
/// PID 1, installs a package, upgrades it to a second one with a higher
/// version, removes and purges it (tests/package/in-guest.sh has the steps).
pub fn test_in_vm(root: &Path, bin: &Path, guest: &Guest) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let dir = root.join("target/vm/debs");
    let mut files = Vec::new();
    for revision in ["1", "2"] {
        let args = ["--deb-version".to_owned(), format!("{version}-{revision}")];
        files.push(build_into(root, bin, &args, &dir.join(revision))?);
    }
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let script = format!("export DEB1={} DEB2={}; . /root/vm/in-guest.sh", name(&files[0]), name(&files[1]));
    files.push(root.join("tests/package/in-guest.sh"));
    let code = guest.run_under_systemd(&script, &files)?;
    if code != 0 {
        bail!("the package test failed inside the VM (exit {code})");
    }
    Ok(())
}

fn build_into(root: &Path, bin: &Path, args: &[String], out_dir: &Path) -> Result<PathBuf> {
    let cargo_deb = ensure_cargo_deb()?;
    toolchain::ensure_commands(&[("dpkg-deb", "dpkg"), ("gzip", "gzip")])?;
    generate_assets(root, bin)?;
    let _ = std::fs::remove_dir_all(out_dir);
    let mut cmd = Command::new(&cargo_deb);
    cmd.current_dir(root)
        .args(["deb", "--package", "unrm-user", "--no-build", "--output"])
        .arg(out_dir)
        .args(args);
    run(&mut cmd)?;
    let deb = std::fs::read_dir(out_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo-deb wrote no package")?;
    Ok(deb)
}

fn ensure_cargo_deb() -> Result<PathBuf> {
    let path = toolchain::cargo_bin().join("cargo-deb");
    let installed = toolchain::output(Command::new(&path).arg("--version"));
    if installed.is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        return Ok(path);
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "--locked",
        "--force",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
    ]))
    .context("cargo install cargo-deb failed; it needs crates.io")?;
    Ok(path)
}

/// target/release/deb-assets: what the package metadata names.
fn generate_assets(root: &Path, bin: &Path) -> Result<()> {
    let assets = root.join("target/release/deb-assets");
    let _ = std::fs::remove_dir_all(&assets);
    let man = assets.join("man");
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions)?;
    run(Command::new(bin).args(["generate", "man"]).arg(&man))?;
    for page in std::fs::read_dir(&man)?.flatten() {
        // -n: no name or time in the header, so rebuilding gives the same bytes.
        run(Command::new("gzip").args(["-9", "-n"]).arg(page.path()))?;
    }
    for (shell, name) in [("bash", "unrm"), ("zsh", "_unrm"), ("fish", "unrm.fish")] {
        std::fs::write(completions.join(name), generated(bin, &["completions", shell])?)?;
    }
    std::fs::write(assets.join("unrm.toml"), generated(bin, &["config"])?)?;
    Ok(())
}

fn generated(bin: &Path, what: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin).arg("generate").args(what).output()?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!("unrm generate {} failed: {}", what.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}
