//! The tiers: which hooks report deletions, the ladder `auto` climbs down
//! (fentry, kprobe, tracepoint), and what each tier attaches.

use anyhow::{Result, bail};
use aya::{Btf, programs::TracePoint};

use super::{Probes, attach_raw, ensure_tracefs, program, verifier_error, vfs};

/// Which hooks tell the daemon about deletions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// The best this kernel accepts: fentry, else kprobe, else tracepoint.
    Auto,
    /// fentry/fexit on `vfs_unlink` and `vfs_rename` (every filesystem,
    /// nothing on unrelated system calls) and on `__fput` for the real final
    /// release. Needs a kernel that allows tracing programs to attach.
    Fentry,
    /// The same hooks as kprobes/kretprobes, for kernels with kprobes but
    /// no BPF trampolines (slower per call than fentry, still nothing on
    /// unrelated system calls).
    Kprobe,
    /// Syscall tracepoints on unlink/rename (every filesystem, relative
    /// paths as the caller named them) plus ext4's hooks for the inode.
    /// Costs every system call of every process the syscall-tracing slow
    /// path while attached.
    Tracepoint,
    /// ext4's own tracepoints only: nothing on unrelated system calls.
    /// Other filesystems are covered by periodic snapshots alone (no
    /// deleter, and a holder that lets go before the next one is missed).
    Fs,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Auto => "auto",
            Tier::Fentry => "fentry",
            Tier::Kprobe => "kprobe",
            Tier::Tracepoint => "tracepoint",
            Tier::Fs => "fs",
        }
    }
}

/// Tracepoint programs and where each attaches (category/name).
pub(super) type Attachments = &'static [(&'static str, &'static [&'static str])];

pub(super) const DELETION: Attachments = &[
    ("unrm_enter_unlink", &["syscalls/sys_enter_unlink"]),
    ("unrm_enter_unlinkat", &["syscalls/sys_enter_unlinkat"]),
    ("unrm_enter_rename", &["syscalls/sys_enter_rename"]),
    ("unrm_enter_renameat", &["syscalls/sys_enter_renameat"]),
    ("unrm_enter_renameat2", &["syscalls/sys_enter_renameat2"]),
    (
        "unrm_exit_deletion",
        &[
            "syscalls/sys_exit_unlink",
            "syscalls/sys_exit_unlinkat",
            "syscalls/sys_exit_rename",
            "syscalls/sys_exit_renameat",
            "syscalls/sys_exit_renameat2",
        ],
    ),
];

pub(super) const RELEASE: Attachments = &[
    ("unrm_enter_close", &["syscalls/sys_enter_close"]),
    ("unrm_enter_dup2", &["syscalls/sys_enter_dup2", "syscalls/sys_enter_dup3"]),
    ("unrm_enter_close_range", &["syscalls/sys_enter_close_range"]),
    (
        "unrm_exit_fd_release",
        &[
            "syscalls/sys_exit_close",
            "syscalls/sys_exit_close_range",
            "syscalls/sys_exit_dup2",
            "syscalls/sys_exit_dup3",
        ],
    ),
    ("unrm_exit_munmap", &["syscalls/sys_exit_munmap"]),
    ("unrm_exit_mremap", &["syscalls/sys_exit_mremap"]),
    ("unrm_exit_exec", &["syscalls/sys_exit_execve", "syscalls/sys_exit_execveat"]),
    ("unrm_process_exit", &["sched/sched_process_exit"]),
];

/// Filesystem hooks that name the inode a syscall-tier deletion removes
/// (optional: the filesystem may not be built into this kernel).
const FS_HOOKS: &[(&str, &str)] =
    &[("unrm_ext4_unlink", "ext4_unlink_enter"), ("unrm_ext4_dirty", "ext4_mark_inode_dirty")];

/// The fs tier's hooks: whole deletions, seen by the filesystem alone.
const FS_TIER_HOOKS: &[(&str, &str)] = &[
    ("unrm_fs_unlink_enter", "ext4_unlink_enter"),
    ("unrm_fs_unlink_exit", "ext4_unlink_exit"),
    ("unrm_fs_rename_victim", "ext4_mark_inode_dirty"),
];

impl Probes {
    /// Attaches the deletion hooks of `wanted`, or for `auto` of the best
    /// tier this kernel accepts, saying why each better one was refused.
    /// `vfs_args` is where the VFS functions' arguments are, when this
    /// kernel's BTF says.
    pub(super) fn attach_tier(
        &mut self,
        wanted: Tier,
        btf: &Btf,
        vfs_args: Result<unrm_abi::VfsArgs>,
    ) -> Result<()> {
        let ladder: &[(Tier, vfs::Kind)] = match wanted {
            Tier::Auto => &[(Tier::Fentry, vfs::Kind::Fentry), (Tier::Kprobe, vfs::Kind::Kprobe)],
            Tier::Fentry => &[(Tier::Fentry, vfs::Kind::Fentry)],
            Tier::Kprobe => &[(Tier::Kprobe, vfs::Kind::Kprobe)],
            Tier::Tracepoint | Tier::Fs => &[],
        };
        let mut refusals = Vec::new();
        for &(tier, kind) in ladder {
            let attached = match &vfs_args {
                Ok(_) => vfs::attach(&mut self.ebpf, btf, kind),
                Err(err) => Err(anyhow::anyhow!("{err:#}")),
            };
            match attached {
                Ok((links, fput)) => {
                    self.vfs_links = links;
                    self.fput = fput.then_some(kind);
                    self.fs_hooks.extend(fput.then_some("__fput"));
                    self.fs_hooks.extend(["vfs_unlink", "vfs_rename"]);
                    self.tier = tier;
                    self.fallback = (!refusals.is_empty()).then(|| refusals.join("; "));
                    return Ok(());
                }
                Err(err) if wanted == tier => {
                    return Err(err.context(format!(
                        "the {} tier cannot load here; try --tier tracepoint",
                        tier.name()
                    )));
                }
                Err(err) => refusals.push(format!("{} refused: {err:#}", tier.name())),
            }
        }
        if !refusals.is_empty() {
            let why = refusals.join("; ");
            log::info!("{why}; falling back to the tracepoint tier");
            self.fallback = Some(why);
            self.tier = Tier::Tracepoint;
        }
        self.attach_tracepoints()
    }

    /// The tracepoint and fs tiers: syscall tracepoints (tracepoint tier
    /// only), the release probes loaded for later, and ext4's hooks.
    fn attach_tracepoints(&mut self) -> Result<()> {
        let tier = self.tier;
        ensure_tracefs()?;
        let deletion: Attachments = if tier == Tier::Tracepoint { DELETION } else { &[] };
        for (name, _) in deletion.iter().chain(RELEASE) {
            let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
            prog.load().map_err(|err| verifier_error(name, err))?;
        }
        self.attach(deletion)?;
        let hooks = if tier == Tier::Tracepoint { FS_HOOKS } else { FS_TIER_HOOKS };
        for (name, hook) in hooks {
            match attach_raw(&mut self.ebpf, name, hook) {
                Ok(()) => self.fs_hooks.push(hook),
                Err(err) => log::info!("filesystem hook {hook} unavailable: {err:#}"),
            }
        }
        if tier == Tier::Fs && self.fs_hooks.is_empty() {
            bail!(
                "the fs tier needs ext4's tracepoints, which this kernel does not offer; use --tier tracepoint"
            );
        }
        Ok(())
    }
}
