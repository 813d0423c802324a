//! Loading and attaching the probes.
//!
//! The probe object is built by `cargo xtask build` and embedded in the
//! binary. Loading fills in the kernel's struct offsets (from BTF) and the
//! daemon's own pid; attaching is split so that the release probes, which sit
//! on hot system calls, are attached only while some pinned inode still has
//! holders to watch (docs/design.md: pay only while there is something to watch).

pub mod btf;
mod tier;
mod vfs;

pub use tier::Tier;
use tier::{Attachments, RELEASE};

use std::{io::Read, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Iter, RawTracePoint, TracePoint, trace_point::TracePointLinkId},
};
use unrm_abi::{InodeKey, stat};

/// The probe object, or an empty slice when this binary was built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("UNRM_EBPF_OBJECT"));

const ITERATORS: &[(&str, &str)] = &[("unrm_iter_files", "task_file"), ("unrm_iter_vmas", "task_vma")];

pub struct LoadOptions {
    pub tier: Tier,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Whether to load the deletion and release probes (the daemon) or only
    /// the iterators (`unrm scan`).
    pub hooks: bool,
    /// Entries in the watch tables (inodes and processes), when not the
    /// object's own sizes.
    pub watch_entries: Option<u32>,
    /// Where the kernel's BTF is, when not in `/sys/kernel/btf/vmlinux`.
    pub btf: Option<std::path::PathBuf>,
}

pub struct Probes {
    tier: Tier,
    /// Why a better tier than `tier` was not used, when `auto` fell back.
    fallback: Option<String>,
    ebpf: Ebpf,
    release_links: Vec<(&'static str, TracePointLinkId)>,
    /// The VFS tiers' links, owned here so that they live as long as the
    /// probes.
    vfs_links: Vec<vfs::Link>,
    /// The VFS tiers' final-release hook, when the kernel allows it, and
    /// its link while attached (only while something is watched).
    fput: Option<vfs::Kind>,
    fput_link: Option<vfs::Link>,
    fs_hooks: Vec<&'static str>,
}

impl Probes {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this unrm binary was built without its eBPF object; build it with `cargo xtask build`");
        }
        raise_memlock();
        let started = std::time::Instant::now();
        let kernel_btf = btf::KernelBtf::load(opts.btf.as_deref())?;
        let offsets = kernel_btf.probe_offsets()?;
        // Missing in a kernel whose VFS changed shape: the fentry tier then
        // refuses to load, saying so.
        let vfs_args = kernel_btf.vfs_args();
        let vfs_globals = vfs_args.as_ref().copied().unwrap_or_default();
        let btf = kernel_btf.for_aya()?;
        drop(kernel_btf);
        let self_tgid = std::process::id();
        // Only the fs tier's rename hook uses it, and kallsyms is ~10 MB.
        let ext4_rename = if opts.hooks && opts.tier == Tier::Fs { ext4_rename_range() } else { [0, 0] };
        if opts.hooks && opts.tier == Tier::Fs && ext4_rename == [0, 0] {
            // E.g. under systemd's ProtectKernelTunables=, or without CAP_SYSLOG.
            log::warn!(
                "/proc/kallsyms shows no address for ext4_rename: the fs tier will not see renames over held files"
            );
        }
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("EXT4_RENAME", &ext4_rename, true)
            .override_global("VFS_ARGS", &vfs_globals, true)
            .map_max_entries("EVENTS", opts.ring_bytes);
        if let Some(entries) = opts.watch_entries {
            loader.map_max_entries("WATCHED_TGIDS", entries).map_max_entries("WATCHED_INODES", entries);
        }
        if !opts.hooks {
            // The iterators use none of the hooks' tables: keep them tiny.
            for map in ["WATCHED_TGIDS", "WATCHED_INODES", "INFLIGHT", "RELEASES", "FS_CALLS", "FS_RENAMED"] {
                loader.map_max_entries(map, 1);
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;

        for (name, iter_type) in ITERATORS {
            let prog: &mut Iter = program(&mut ebpf, name)?;
            prog.load(iter_type, &btf).map_err(|err| verifier_error(name, err))?;
        }
        log::debug!("object and iterators loaded in {:?}", started.elapsed());
        let mut probes = Self {
            tier: opts.tier,
            fallback: None,
            ebpf,
            release_links: Vec::new(),
            vfs_links: Vec::new(),
            fput: None,
            fput_link: None,
            fs_hooks: Vec::new(),
        };
        if !opts.hooks {
            return Ok(probes);
        }
        probes.attach_tier(opts.tier, &btf, vfs_args)?;
        Ok(probes)
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The filesystem hooks that attached.
    pub fn fs_hooks(&self) -> &[&'static str] {
        &self.fs_hooks
    }

    pub(super) fn attach(&mut self, table: Attachments) -> Result<Vec<(&'static str, TracePointLinkId)>> {
        let mut links = Vec::new();
        for (name, points) in table {
            let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
            for point in *points {
                let (category, event) = point.split_once('/').expect("category/name");
                if !tracepoint_exists(category, event) {
                    // e.g. unlink(2) and rename(2) do not exist on arm64.
                    log::debug!("tracepoint {point} does not exist here; skipped");
                    continue;
                }
                let id =
                    prog.attach(category, event).with_context(|| format!("attaching {name} to {point}"))?;
                links.push((*name, id));
            }
        }
        Ok(links)
    }

    pub fn release_attached(&self) -> bool {
        !self.release_links.is_empty() || self.fput_link.is_some()
    }

    /// Attaches the release probes: the syscall tracepoints in the
    /// tracepoint tier, `__fput` in the VFS tiers (none in the fs tier, nor
    /// where the kernel refused `__fput`). Returns whether it attached any.
    pub fn attach_release(&mut self) -> Result<bool> {
        match (self.tier, self.fput) {
            (Tier::Tracepoint, _) if self.release_links.is_empty() => {
                self.release_links = self.attach(RELEASE)?;
                log::debug!("release probes attached");
                Ok(true)
            }
            (Tier::Fentry | Tier::Kprobe, Some(kind)) if self.fput_link.is_none() => {
                self.fput_link = Some(vfs::attach_fput(&mut self.ebpf, kind)?);
                log::debug!("final-release hook attached");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Detaching waits for RCU grace periods (tens of ms per link), so the
    /// links are dropped on a thread of their own.
    pub fn detach_release(&mut self) -> Result<()> {
        if !self.release_attached() {
            return Ok(());
        }
        let mut links = Vec::new();
        for (name, id) in self.release_links.drain(..) {
            let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
            links.push(prog.take_link(id)?);
        }
        let fput = self.fput_link.take();
        std::thread::Builder::new().name("unrm-detach".into()).spawn(move || {
            drop((links, fput));
            log::debug!("release probes detached");
        })?;
        Ok(())
    }

    /// Runs one iterator to completion and returns what it wrote.
    pub fn run_iterator(&mut self, name: &str) -> Result<Vec<u8>> {
        let prog: &mut Iter = program(&mut self.ebpf, name)?;
        let id = prog.attach()?;
        let mut file = prog.take_link(id)?.into_file()?;
        let mut out = Vec::with_capacity(64 * 1024);
        file.read_to_end(&mut out).with_context(|| format!("reading iterator {name}"))?;
        Ok(out)
    }

    pub fn iterator_names() -> impl Iterator<Item = &'static str> {
        ITERATORS.iter().map(|(name, _)| *name)
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_watch_maps(&mut self) -> Result<WatchMaps> {
        let tgids = self.ebpf.take_map("WATCHED_TGIDS").context("WATCHED_TGIDS missing")?;
        let inodes = self.ebpf.take_map("WATCHED_INODES").context("WATCHED_INODES missing")?;
        Ok(WatchMaps { tgids: HashMap::try_from(tgids)?, inodes: HashMap::try_from(inodes)? })
    }

    pub fn take_stats(&mut self) -> Result<ProbeStats> {
        let map = self.ebpf.take_map("STATS").context("STATS map missing")?;
        Ok(ProbeStats { map: PerCpuArray::try_from(map)? })
    }

    /// aya-log's reader for the probes' log lines, if any probe logs.
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }
}

/// The kernel-side filters of the release probes.
pub struct WatchMaps {
    pub tgids: HashMap<MapData, u32, u32>,
    pub inodes: HashMap<MapData, InodeKey, u32>,
}

/// Counters of what the probes had to drop.
pub struct ProbeStats {
    map: PerCpuArray<MapData, u64>,
}

impl ProbeStats {
    fn sum(&self, index: u32) -> u64 {
        self.map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
    pub fn lost_events(&self) -> u64 {
        self.sum(stat::LOST_EVENTS)
    }
    pub fn lost_inflight(&self) -> u64 {
        self.sum(stat::LOST_INFLIGHT)
    }
    pub fn failed_calls(&self) -> u64 {
        self.sum(stat::FAILED_CALLS)
    }
    pub fn failed_reads(&self) -> u64 {
        self.sum(stat::FAILED_READS)
    }
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// The verifier's log can run to megabytes: keep its end, where it says
/// why, for the one-line error; the whole of it goes to the debug log.
pub(super) fn verifier_error(name: &str, err: aya::programs::ProgramError) -> anyhow::Error {
    let text = err.to_string();
    log::debug!("loading {name}: {text}");
    const KEEP: usize = 600;
    let tail = match text.char_indices().rev().nth(KEEP) {
        Some((at, _)) => format!("…{}", &text[at..]),
        None => text,
    };
    anyhow::anyhow!("the kernel refused probe {name}: {tail}")
}

/// Raw rather than BTF tracepoints: the kernel finds a raw tracepoint in a
/// module too, where ext4 lives on most distribution kernels, and aya does
/// not read module BTF. The probes read the arguments' fields through
/// offsets either way.
fn attach_raw(ebpf: &mut Ebpf, name: &str, hook: &str) -> Result<()> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|err| verifier_error(name, err))?;
    prog.attach(hook).with_context(|| format!("attaching {name} to the raw tracepoint {hook}"))?;
    Ok(())
}

/// Where `ext4_rename`'s code lies, from /proc/kallsyms: `[start, end)`,
/// end being the next symbol. Zeros (the fs tier then sees no renames)
/// where the symbol or its address is hidden.
fn ext4_rename_range() -> [u64; 2] {
    let Ok(symbols) = std::fs::read_to_string("/proc/kallsyms") else { return [0, 0] };
    let mut addresses: Vec<(u64, bool)> = symbols
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let name = fields.nth(1)?;
            Some((address, name == "ext4_rename"))
        })
        .filter(|(address, _)| *address != 0)
        .collect();
    addresses.sort_unstable();
    let Some(at) = addresses.iter().position(|(_, is)| *is) else { return [0, 0] };
    let start = addresses[at].0;
    let end = addresses[at..].iter().map(|(a, _)| *a).find(|a| *a > start).unwrap_or(start);
    [start, end]
}

const TRACEFS: &str = "/sys/kernel/tracing";

fn tracepoint_exists(category: &str, event: &str) -> bool {
    Path::new(TRACEFS).join("events").join(category).join(event).exists()
}

/// Classic tracepoints are found through tracefs, which a fresh machine may
/// not have mounted.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    rustix::mount::mount("tracefs", TRACEFS, "tracefs", rustix::mount::MountFlags::empty(), None)
        .with_context(|| format!("mounting tracefs on {TRACEFS}"))?;
    Ok(())
}

/// Loading probes and reading other processes' files take root.
pub fn require_root(what: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("{what} must run as root (it loads eBPF programs and reads other processes' files)");
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let unlimited = rustix::process::Rlimit { current: None, maximum: None };
    if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) {
        log::debug!("could not raise RLIMIT_MEMLOCK: {err}");
    }
}
