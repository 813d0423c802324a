//! `cargo xtask vm-test`: the integration tests inside Debian bookworm's
//! stock kernel, under qemu, where fentry/fexit load (these machines refuse
//! them). The host's root is shared read-only over 9p with a tmpfs overlay
//! on top, so the binaries built here run unchanged in the guest; results
//! come back through a virtio-serial port. Everything is fetched and cached
//! under target/vm.
//!
//! TCG only here (the machine's /dev/kvm is a nested hypervisor that
//! aborts or crawls); where real KVM exists, set UNRM_VM_KVM=1.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{build::run, toolchain};

/// Modules the guest needs that Debian builds as modules (crc32c is ext4's
/// soft dependency: the kernel would ask for it from a root filesystem that
/// has no modules for this kernel); xfs and fuse for the tests that mount
/// them.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
    "loop",
    "crc32c_generic",
    "ext4",
    "xfs",
    "fuse",
];

/// The guest's /init: mount the host's root read-only under a tmpfs
/// overlay, chroot into it, give the tests fresh tmpfs on /tmp, /run and
/// /var/tmp (a plain filesystem, not the overlay) while keeping the
/// workspace visible even if it lives under one of them, run the script the
/// kernel command line names (a file on the shared root: the command line
/// itself holds only 2 KiB), write its output and exit status to the `out` port, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in MODULES; do modprobe $m; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host
mount -t tmpfs tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /merged
out=/dev/null
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = out ] && out=/dev/$(basename $p); done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
script=$(arg unrm_script); keep=$(arg unrm_keep)
if [ "$(arg unrm_init)" = systemd ]; then
  # systemd as PID 1 on the same root: the script and the packages it
  # installs are copied in (the workspace may be hidden by a tmpfs there),
  # and a target of our own starts only what the test needs.
  vm=/merged/root/vm; mkdir -p $vm
  cp /host$script $vm/script.sh
  for f in $(arg unrm_files | tr , ' '); do cp /host$f $vm/; done
  units=/merged/etc/systemd/system
  mkdir -p $units
  printf '[Unit]\nRequires=basic.target unrm-vm-test.service\nAfter=basic.target\nAllowIsolate=yes\n' > $units/unrm-vm.target
  # An orderly poweroff: a forced one can beat the last write to the port.
  printf '[Unit]\nAfter=basic.target\n[Service]\nType=oneshot\nTimeoutStartSec=infinity\nWorkingDirectory=/root/vm\nExecStart=/bin/sh -c "/bin/sh /root/vm/script.sh > %s 2>&1; echo unrm-vm-exit=$$? > %s; systemctl --no-block poweroff"\n' $out $out > $units/unrm-vm-test.service
  # The shared root is a container's: systemd would take /.dockerenv to
  # mean it runs in one and ignore the kernel command line, and the image's
  # policy-rc.d forbids packages to start services. The guest is a machine.
  rm -f /merged/.dockerenv /merged/usr/sbin/policy-rc.d
  ln -sf /dev/null $units/serial-getty@ttyS0.service
  umount /proc /sys
  exec switch_root /merged /lib/systemd/systemd --unit=unrm-vm.target
fi
chroot /merged /bin/sh -c "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; mkdir -p /.keep; mount --bind $keep /.keep; for d in /tmp /run /var/tmp; do mount -t tmpfs tmpfs \$d; done; mkdir -p $keep; mount --bind /.keep $keep; mount -t tracefs tracefs /sys/kernel/tracing; mount -t bpf bpf /sys/fs/bpf; . $script" > $out 2>&1
echo "unrm-vm-exit=$?" > $out
poweroff -f
"#;

pub struct Guest {
    /// target/vm: the kernel, the initramfs, the run's script and output.
    dir: PathBuf,
    /// The workspace, which must stay visible in the guest.
    workspace: PathBuf,
}

impl Guest {
    /// Fetches, unpacks and prepares the stock kernel and an initramfs.
    pub fn prepare(root: &Path) -> Result<Self> {
        toolchain::ensure_commands(&[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("busybox", "busybox-static"),
            ("cpio", "cpio"),
            ("depmod", "kmod"),
            ("xz", "xz-utils"),
        ])?;
        let dir = root.join("target/vm");
        std::fs::create_dir_all(&dir)?;
        let guest = Guest { dir, workspace: root.to_path_buf() };
        if !guest.dir.join("vmlinux").exists() {
            guest.fetch_kernel()?;
        }
        let init = std::fs::read_to_string(guest.dir.join("initrd/init")).unwrap_or_default();
        if init != guest.init() || !guest.dir.join("initrd.gz").exists() {
            guest.build_initramfs()?;
        }
        Ok(guest)
    }

    fn fetch_kernel(&self) -> Result<()> {
        let depends = toolchain::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
            .context("apt-cache depends linux-image-amd64 failed")?;
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .context("apt-cache names no kernel package for linux-image-amd64")?
            .to_owned();
        eprintln!("xtask: fetching {package}");
        // apt's download user cannot write into root's target directory.
        let download = || {
            Command::new("apt-get")
                .args(["-o", "APT::Sandbox::User=root", "download"])
                .arg(&package)
                .current_dir(&self.dir)
                .status()
        };
        if !download()?.success() {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            if !download()?.success() {
                bail!("apt-get download {package} failed");
            }
        }
        let deb = std::fs::read_dir(&self.dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package)))
            .context("the downloaded kernel package is missing")?;
        let unpacked = self.dir.join("root");
        let _ = std::fs::remove_dir_all(&unpacked);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let version = self.kernel_version()?;
        run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&version))?;
        // Decompressing vmlinuz under TCG costs seconds per boot: do it once.
        let image = std::fs::read(unpacked.join(format!("boot/vmlinuz-{version}")))?;
        let at = image.windows(6).position(|w| w == b"\xfd7zXZ\x00").context("vmlinuz holds no xz stream")?;
        let xz = self.dir.join("vmlinuz.xz");
        std::fs::write(&xz, &image[at..])?;
        let elf = Command::new("xz").args(["-dc", "--single-stream"]).arg(&xz).output()?;
        if elf.stdout.len() < 1 << 20 {
            bail!("could not decompress the kernel image");
        }
        std::fs::write(self.dir.join("vmlinux"), elf.stdout)?;
        Ok(())
    }

    fn kernel_version(&self) -> Result<String> {
        let modules = self.dir.join("root/lib/modules");
        let entry =
            std::fs::read_dir(&modules)?.flatten().next().context("the kernel package has no modules")?;
        Ok(entry.file_name().to_string_lossy().into_owned())
    }

    fn init(&self) -> String {
        INIT.replace("MODULES", &MODULES.join(" "))
    }

    /// busybox, the modules with their dependencies, and /init.
    fn build_initramfs(&self) -> Result<()> {
        let version = self.kernel_version()?;
        let modules = self.dir.join("root/lib/modules").join(&version);
        let tree = self.dir.join("initrd");
        let _ = std::fs::remove_dir_all(&tree);
        for d in ["bin", "proc", "sys", "dev", "host", "upper", "merged"] {
            std::fs::create_dir_all(tree.join(d))?;
        }
        std::fs::copy("/bin/busybox", tree.join("bin/busybox"))?;
        let deps: Vec<(String, Vec<String>)> = std::fs::read_to_string(modules.join("modules.dep"))?
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m.to_owned(), d.split_whitespace().map(str::to_owned).collect()))
            .collect();
        let mut needed: Vec<String> = Vec::new();
        fn add(module: &str, deps: &[(String, Vec<String>)], needed: &mut Vec<String>) {
            let Some((_, ds)) = deps.iter().find(|(m, _)| m == module) else { return };
            for d in ds {
                add(d, deps, needed);
            }
            if !needed.iter().any(|n| n == module) {
                needed.push(module.to_owned());
            }
        }
        for name in MODULES {
            let path = deps
                .iter()
                .map(|(m, _)| m)
                .find(|m| {
                    Path::new(m)
                        .file_name()
                        .is_some_and(|f| f.to_string_lossy().split('.').next() == Some(name))
                })
                .with_context(|| format!("module {name} is not in the kernel package"))?;
            add(&path.clone(), &deps, &mut needed);
        }
        let target = tree.join("lib/modules").join(&version);
        let mut dep_file = String::new();
        for module in &needed {
            let to = target.join(module);
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(modules.join(module), &to)?;
            let ds = &deps.iter().find(|(m, _)| m == module).unwrap().1;
            writeln!(dep_file, "{module}: {}", ds.join(" "))?;
        }
        std::fs::write(target.join("modules.dep"), dep_file)?;
        std::fs::write(tree.join("init"), self.init())?;
        run(Command::new("chmod").arg("+x").arg(tree.join("init")))?;
        let cpio = Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
            .current_dir(&tree)
            .status()?;
        if !cpio.success() {
            bail!("building the initramfs failed");
        }
        Ok(())
    }

    /// Boots, runs `command` as root in the guest, prints its output, and
    /// returns its exit status.
    pub fn run(&self, command: &str) -> Result<i32> {
        let (code, body) = self.run_quietly(command)?;
        print!("{body}");
        Ok(code)
    }

    /// The same, returning the output instead of printing it.
    pub fn run_quietly(&self, command: &str) -> Result<(i32, String)> {
        self.boot(command, Init::Chroot)
    }

    /// Boots with systemd as PID 1 (the host's systemd, on the same
    /// shared root), copies `files` into the guest's /root/vm, runs
    /// `command` there as root from a unit once basic.target is reached,
    /// prints its output and returns its exit status.
    pub fn run_under_systemd(&self, command: &str, files: &[PathBuf]) -> Result<i32> {
        let (code, body) = self.boot(command, Init::Systemd(files))?;
        print!("{body}");
        Ok(code)
    }

    fn boot(&self, command: &str, init: Init) -> Result<(i32, String)> {
        let out = self.dir.join("out.txt");
        let _ = std::fs::remove_file(&out);
        let script = self.dir.join("script.sh");
        std::fs::write(&script, command)?;
        let kvm = std::env::var_os("UNRM_VM_KVM").is_some();
        let mut qemu = Command::new("qemu-system-x86_64");
        if kvm {
            qemu.args(["-enable-kvm", "-cpu", "host"]);
        } else {
            qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
        }
        qemu.args(["-M", "pc", "-m", "3G", "-smp", "2", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(self.dir.join("vmlinux"))
            .arg("-initrd")
            .arg(self.dir.join("initrd.gz"))
            .arg("-append")
            // loglevel=5, not `quiet`: boot chatter (info) stays out of the
            // console log, warnings and their stack traces go in, and a soft
            // lockup shows every CPU's (seen twice in the emulated guest,
            // cause not yet found).
            .arg(format!(
                "console=ttyS0 panic=-1 loglevel=5 softlockup_all_cpu_backtrace=1 cryptomgr.notests \
                 unrm_script={} unrm_keep={}{}",
                script.display(),
                self.workspace.display(),
                init.cmdline()
            ))
            .args(["-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap"])
            .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot", "-device", "virtio-serial"])
            .arg("-chardev")
            .arg(format!("file,id=out,path={}", out.display()))
            .args(["-device", "virtserialport,chardev=out,name=out"])
            .stdout(std::fs::File::create(self.dir.join("console.log"))?)
            .stderr(std::process::Stdio::null());
        let status = wait_for(qemu.spawn().context("running qemu-system-x86_64")?)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let (body, code) = match text.rsplit_once("unrm-vm-exit=") {
            Some((body, code)) => (body, code.trim().parse().unwrap_or(1)),
            None => {
                bail!(
                    "the guest gave no exit status (qemu {status}); see {}\n{text}",
                    self.dir.join("console.log").display()
                )
            }
        };
        Ok((code, body.to_owned()))
    }
}

/// What runs the command in the guest.
enum Init<'a> {
    /// busybox, chrooted into the shared root.
    Chroot,
    /// systemd as PID 1, with these files copied in.
    Systemd(&'a [PathBuf]),
}

impl Init<'_> {
    fn cmdline(&self) -> String {
        match self {
            Init::Chroot => String::new(),
            Init::Systemd(files) => {
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                // fstab=no: the host's fstab means nothing here. (The
                // serial getty, which would wait forever for a device no
                // udev announces, is masked by /init.)
                format!(
                    " unrm_init=systemd unrm_files={} fstab=no systemd.show_status=false",
                    files.join(",")
                )
            }
        }
    }
}

/// Waits for the guest, killing it after `UNRM_VM_TIMEOUT` seconds (default
/// 45 minutes): a guest that hangs must not hang CI with it.
fn wait_for(mut qemu: std::process::Child) -> Result<std::process::ExitStatus> {
    let limit = std::env::var("UNRM_VM_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(45 * 60);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit);
    loop {
        if let Some(status) = qemu.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!("the guest ran for more than {limit} s and was killed (UNRM_VM_TIMEOUT)");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
