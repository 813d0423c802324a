//! `cargo xtask build|run|test|vm-test|deb|image|bench`: the only commands a newcomer needs.
//!
//! `build` first makes sure this machine can build Rust eBPF (installing
//! what is missing, checking versions of what is there), then builds the
//! probe object and the `unrm` binary that embeds it.

mod build;
mod deb;
mod image;
mod toolchain;
mod vm;

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or check the eBPF toolchain, build the probes and target/release/unrm.
    Build,
    /// Build, then run `unrm daemon ARGS` in the foreground (as root).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run every test: unit tests and the integration tests (as root).
    Test {
        /// Passed to the test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the tests inside Debian bookworm's stock kernel under qemu, where
    /// the fentry tier loads, then the Debian package under systemd there
    /// (as root; fetches and caches what it needs).
    VmTest {
        /// Only one part: `tests` (the suite) or `package` (the package
        /// under systemd).
        #[arg(long, value_parser = ["tests", "package"])]
        only: Option<String>,
        /// Passed to each test binary (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then the Debian package (target/debian/unrm_*.deb) with the
    /// service, the config, man pages and completions. Arguments after `--`
    /// go to cargo-deb (e.g. `-- --deb-version 0.1.0-2`).
    Deb {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then the container image localhost/unrm:VERSION (and :latest)
    /// from deploy/Containerfile, with podman (or docker): the daemon for
    /// deploy/unrm-daemonset.yaml. Arguments after `--` go to `podman build`.
    Image {
        /// The binary to put in the image, instead of building
        /// target/release/unrm.
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Tag the image this instead (`NAME:TAG`).
        #[arg(long, value_name = "NAME:TAG")]
        tag: Option<String>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks against the anchors (not part of the tests; as root).
    /// Writes target/bench/latest.json. Pass `-- --quick` for a smaller run,
    /// `-- --only hot,held,pin,capture,storm,memory,scan,snapshot,vm` for
    /// some of it (`vm`: the hot paths in the stock-kernel VM, emulated).
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    match cli.command {
        Task::Build => {
            build::all(&root)?;
        }
        Task::Run { args } => {
            let bin = build::all(&root)?;
            require_root("cargo xtask run")?;
            let err = Command::new(&bin).arg("daemon").args(args).exec();
            bail!("running {}: {err}", bin.display());
        }
        Task::Test { args } => {
            let bin = build::all(&root)?;
            require_root("cargo xtask test")?;
            build::test(&root, &bin, &args)?;
        }
        Task::VmTest { only, args } => {
            let bin = build::all(&root)?;
            require_root("cargo xtask vm-test")?;
            let guest = vm::Guest::prepare(&root)?;
            if only.as_deref() != Some("package") {
                vm_suite(&root, &bin, &guest, &args)?;
            }
            if only.as_deref() != Some("tests") {
                deb::test_in_vm(&root, &bin, &guest)?;
            }
        }
        Task::Deb { args } => {
            let bin = build::all(&root)?;
            deb::build(&root, &bin, &args)?;
        }
        Task::Image { bin, tag, args } => {
            let bin = match bin {
                Some(bin) => bin,
                None => build::all(&root)?,
            };
            let tags = match tag {
                Some(tag) => vec![tag],
                None => {
                    // The version of the binary inside, whatever built it.
                    let version = image::version_of(&bin)?;
                    [version.as_str(), "latest"].map(|t| format!("{}:{t}", image::REPOSITORY)).into()
                }
            };
            let context = root.join("target/image");
            image::assemble_rootfs(&bin, &context.join("rootfs"))?;
            image::build(image::engine()?, &root.join("deploy/Containerfile"), &context, &tags, &args)?;
            eprintln!("xtask: built {}", tags.join(", "));
        }
        Task::Bench { args } => {
            let bin = build::all(&root)?;
            require_root("cargo xtask bench")?;
            if bench_wants(&args, |s| s != "vm") {
                build::bench(&root, &bin, &args)?;
            }
            if bench_wants(&args, |s| s == "vm") {
                let guest = vm::Guest::prepare(&root)?;
                build::bench_in_vm(&root, &bin, &args, &guest)?;
            }
        }
    }
    Ok(())
}

/// Tests the VM does not run: they prove unrm together with other programs
/// (podman, rsyslog, node_exporter), whose working does not depend on the
/// kernel or the probe tier; the rest of the suite proves the tier there.
/// The VM's busybox init also starts none of what they lean on (a cgroup
/// manager for containers, a loopback network).
const HOST_ONLY: &[&str] = &["containers::", "deploy::", "metrics::", "events::rsyslog"];

/// The integration tests inside the VM (busybox init, chrooted into the
/// shared root), each binary with `args`.
fn vm_suite(root: &std::path::Path, bin: &std::path::Path, guest: &vm::Guest, args: &[String]) -> Result<()> {
    let tests = build::test_binaries(root, bin)?;
    let mut args = args.to_vec();
    for skip in HOST_ONLY {
        args.extend(["--skip".to_owned(), (*skip).to_owned()]);
    }
    let mut script = format!(
        "cd {root}; export UNRM_BIN={bin} UNRM_EXPECT_TIER=fentry RUST_BACKTRACE=1; status=0; ",
        root = root.display(),
        bin = bin.display()
    );
    for test in &tests {
        script += &format!(
            "echo '== {name}'; {test} --test-threads=1 {args} || status=1; ",
            name = test.file_name().unwrap().to_string_lossy(),
            test = test.display(),
            args = args.join(" ")
        );
    }
    script += "exit $status";
    let code = guest.run(&script)?;
    if code != 0 {
        bail!("tests failed inside the VM (exit {code})");
    }
    Ok(())
}

/// Whether the bench's `--only` (if any) names a section `which` accepts
/// (`vm` is the VM's part, the rest the host's).
fn bench_wants(args: &[String], which: impl Fn(&str) -> bool) -> bool {
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    only.is_none_or(|list| list.split(',').any(which))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn require_root(what: &str) -> Result<()> {
    if !toolchain::is_root() {
        bail!("{what} loads eBPF programs and must run as root (try: sudo -E env PATH=\"$PATH\" {what})");
    }
    Ok(())
}
