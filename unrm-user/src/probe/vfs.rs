//! Attaching the VFS tiers: the same hooks on `vfs_unlink`, `vfs_rename`
//! and `__fput`, as fentry/fexit where the kernel lets tracing programs
//! attach (trampolines: cheapest), else as kprobes/kretprobes.

use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe, fentry::FEntryLink, fexit::FExitLink, kprobe::KProbeLink},
};

use super::{program, verifier_error};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fentry,
    Kprobe,
}

/// An attached hook, kept only so that dropping it detaches it.
#[allow(dead_code)]
pub enum Link {
    Entry(FEntryLink),
    Exit(FExitLink),
    Probe(KProbeLink),
}

/// (fentry/fexit program, kprobe/kretprobe program, kernel function, entry?)
const HOOKS: &[(&str, &str, &str, bool)] = &[
    ("unrm_vfs_unlink", "unrm_kp_unlink", "vfs_unlink", true),
    ("unrm_vfs_unlink_exit", "unrm_kp_unlink_exit", "vfs_unlink", false),
    ("unrm_vfs_rename", "unrm_kp_rename", "vfs_rename", true),
    ("unrm_vfs_rename_exit", "unrm_kp_rename_exit", "vfs_rename", false),
];

/// Where the kernel offers kprobes to perf_event_open(2), which aya uses.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// The final-release hook, as (fentry, kprobe) programs on `__fput`.
const FPUT: (&str, &str) = ("unrm_fput", "unrm_kp_fput");

/// Loads and attaches the deletion hooks, all or nothing, and the release
/// hook if the kernel allows it (without it, releases are seen by pidfds
/// and snapshots). Returns the links and whether `__fput` is hooked.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf, kind: Kind) -> Result<(Vec<Link>, bool)> {
    if kind == Kind::Kprobe && !std::path::Path::new(KPROBE_PMU).exists() {
        bail!("this kernel has no kprobes ({KPROBE_PMU} is missing)");
    }
    let mut links = Vec::new();
    for (fentry, kprobe, function, entry) in HOOKS {
        let name = if kind == Kind::Fentry { fentry } else { kprobe };
        // Dropping the links taken so far detaches them.
        links.push(
            one(ebpf, btf, kind, name, function, *entry).with_context(|| format!("{name} on {function}"))?,
        );
    }
    let name = if kind == Kind::Fentry { FPUT.0 } else { FPUT.1 };
    let fput = match one(ebpf, btf, kind, name, "__fput", true) {
        Ok(link) => {
            links.push(link);
            true
        }
        Err(err) => {
            log::info!("no final-release hook (__fput): {err:#}");
            false
        }
    };
    Ok((links, fput))
}

fn one(ebpf: &mut Ebpf, btf: &Btf, kind: Kind, name: &str, function: &str, entry: bool) -> Result<Link> {
    Ok(match (kind, entry) {
        (Kind::Fentry, true) => {
            let prog: &mut FEntry = program(ebpf, name)?;
            prog.load(function, btf).map_err(|err| verifier_error(name, err))?;
            let id = prog.attach()?;
            Link::Entry(prog.take_link(id)?)
        }
        (Kind::Fentry, false) => {
            let prog: &mut FExit = program(ebpf, name)?;
            prog.load(function, btf).map_err(|err| verifier_error(name, err))?;
            let id = prog.attach()?;
            Link::Exit(prog.take_link(id)?)
        }
        (Kind::Kprobe, _) => {
            let prog: &mut KProbe = program(ebpf, name)?;
            prog.load().map_err(|err| verifier_error(name, err))?;
            let id = prog.attach(function, 0)?;
            Link::Probe(prog.take_link(id)?)
        }
    })
}
