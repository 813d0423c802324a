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

/// Loads and attaches the deletion hooks, all or nothing, and loads the
/// release hook if the kernel allows it (without it, releases are seen by
/// pidfds and snapshots). Returns the links and whether `__fput` can be
/// hooked: it is attached only while something is watched (`attach_fput`),
/// since every close on the machine would run it.
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
    // Attached once to learn that it can be, then let go until needed.
    let fput = match load(ebpf, btf, kind, name, "__fput", true).and_then(|()| attach_fput(ebpf, kind)) {
        Ok(_link) => true,
        Err(err) => {
            log::info!("no final-release hook (__fput): {err:#}");
            false
        }
    };
    Ok((links, fput))
}

/// Attaches the final-release hook `attach` loaded.
pub fn attach_fput(ebpf: &mut Ebpf, kind: Kind) -> Result<Link> {
    let name = if kind == Kind::Fentry { FPUT.0 } else { FPUT.1 };
    attach_loaded(ebpf, kind, name, "__fput", true)
}

fn one(ebpf: &mut Ebpf, btf: &Btf, kind: Kind, name: &str, function: &str, entry: bool) -> Result<Link> {
    load(ebpf, btf, kind, name, function, entry)?;
    attach_loaded(ebpf, kind, name, function, entry)
}

fn load(ebpf: &mut Ebpf, btf: &Btf, kind: Kind, name: &str, function: &str, entry: bool) -> Result<()> {
    match (kind, entry) {
        (Kind::Fentry, true) => program::<FEntry>(ebpf, name)?.load(function, btf),
        (Kind::Fentry, false) => program::<FExit>(ebpf, name)?.load(function, btf),
        (Kind::Kprobe, _) => program::<KProbe>(ebpf, name)?.load(),
    }
    .map_err(|err| verifier_error(name, err))
}

fn attach_loaded(ebpf: &mut Ebpf, kind: Kind, name: &str, function: &str, entry: bool) -> Result<Link> {
    Ok(match (kind, entry) {
        (Kind::Fentry, true) => {
            let prog: &mut FEntry = program(ebpf, name)?;
            let id = prog.attach()?;
            Link::Entry(prog.take_link(id)?)
        }
        (Kind::Fentry, false) => {
            let prog: &mut FExit = program(ebpf, name)?;
            let id = prog.attach()?;
            Link::Exit(prog.take_link(id)?)
        }
        (Kind::Kprobe, _) => {
            let prog: &mut KProbe = program(ebpf, name)?;
            let id = prog.attach(function, 0)?;
            Link::Probe(prog.take_link(id)?)
        }
    })
}
