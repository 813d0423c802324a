//! What unrm keeps, and how much: the policy from the config file (TOML),
//! validated as a whole before it replaces the running one.
//!
//! unrm must never fill a disk someone is trying to free (docs/design.md:
//! the deleter may have wanted the space back), so every capture is bounded three ways: per file, for the whole store, and
//! by a floor of free space the store's filesystem never drops below.
//! Retention, path globs, owner filters and the scratch-file setting decide
//! what is worth keeping at all.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::{access::Visibility, events::sink::Sink};

mod events;
pub mod keys;

pub use events::sink_named;

pub const DEFAULT_CONFIG: &str = "/etc/unrm.toml";

/// The config file as written. Every key is optional; an unknown key is an
/// error that names it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    max_file_size: Option<SizeValue>,
    max_store_size: Option<SizeValue>,
    min_free: Option<String>,
    keep_for: Option<String>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    uids: Option<Vec<u32>>,
    scratch_files: Option<Scratch>,
    visible_to: Option<Visibility>,
    store_reserve: Option<String>,
    max_index_size: Option<SizeValue>,
    per_user: Option<PerUserFile>,
    btf: Option<PathBuf>,
    events: Option<events::EventsFile>,
    metrics_textfile: Option<PathBuf>,
    metrics_listen: Option<String>,
    protect: Option<Vec<PathBuf>>,
    protect_max_files: Option<u64>,
    protect_max_tree_files: Option<u64>,
    versions: Option<u64>,
    min_interval: Option<String>,
}

/// `[per_user]`: what each user other than root may take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerUserFile {
    pins: Option<SizeValue>,
    store: Option<SizeValue>,
    records_per_minute: Option<u64>,
    protected_files: Option<SizeValue>,
}

/// `1G`, `512M` or a plain number of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// What to do with the open-then-unlink idiom: a file whose only holder
/// ever was the process that deleted it (a scratch file, by intent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scratch {
    /// Record it; keep it restorable while held; do not copy it after.
    #[default]
    Ignore,
    /// Treat it like any other deleted file.
    Capture,
}

/// A share of something: a percentage of it, or an absolute amount.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Share {
    Percent(f64),
    Amount(u64),
}

impl Share {
    /// The share of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        match self {
            Share::Percent(p) => (whole as f64 * p / 100.0) as u64,
            Share::Amount(n) => n,
        }
    }
}

/// Limits for each user other than root, so that no one user can take
/// every pin, fill the store, or flood the index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerUser {
    /// Pins held for one owner's files at once, of the daemon's pin budget.
    pub pins: Share,
    /// Captures of one owner's files, of `max_store_size`.
    pub store: Share,
    /// Records of deletions nobody held, per deleting user per minute.
    pub records_per_minute: u64,
    /// Files the trees one user protects may hold, of `protect.max_files`.
    pub protected_files: Share,
}

impl Default for PerUser {
    fn default() -> Self {
        PerUser {
            pins: Share::Percent(25.0),
            store: Share::Percent(25.0),
            records_per_minute: 60_000,
            protected_files: Share::Percent(25.0),
        }
    }
}

/// A part of the store's filesystem: a percentage of its size, or bytes
/// (the free space it keeps, the store's reserve).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Floor {
    Percent(f64),
    Bytes(u64),
}

impl Floor {
    /// The floor in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Floor::Percent(p) => (total as f64 * p / 100.0) as u64,
            Floor::Bytes(b) => b,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub max_file_size: u64,
    pub max_store_size: u64,
    pub min_free: Floor,
    pub keep_for: Duration,
    include: Option<GlobSet>,
    exclude: GlobSet,
    uids: Option<HashSet<u32>>,
    pub scratch: Scratch,
    /// Who besides root and the owner may see a deleted file.
    pub visible_to: Visibility,
    /// Captures up to this much of the store's filesystem are kept even
    /// when something else fills it below `min_free`.
    pub store_reserve: Floor,
    /// The index's size: past it, records without content are forgotten,
    /// oldest first, of whoever deleted the most.
    pub max_index_size: u64,
    pub per_user: PerUser,
    /// The kernel's BTF, when not in /sys/kernel/btf/vmlinux (read at
    /// start only: the probes are loaded once).
    pub btf: Option<PathBuf>,
    /// Where events go for log shippers (read at start only).
    pub events: Sink,
    /// node_exporter's textfile directory, to write `unrm.prom` in; and
    /// the loopback address to serve `/metrics` on (both read at start only).
    pub metrics_textfile: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Protected trees and their bounds.
    pub protect: Protect,
    /// Where it came from, for messages; None for the defaults.
    pub source: Option<PathBuf>,
}

/// Protected trees (README, Protected trees): which, how many files, and
/// how many versions of each path.
#[derive(Clone, Debug, PartialEq)]
pub struct Protect {
    /// The config file's trees (absolute).
    pub trees: Vec<PathBuf>,
    pub max_files: u64,
    pub max_tree_files: u64,
    pub versions: u64,
    pub min_interval: Duration,
}

impl Default for Protect {
    fn default() -> Self {
        Protect {
            trees: Vec::new(),
            max_files: 500_000,
            max_tree_files: 200_000,
            versions: 10,
            min_interval: Duration::from_secs(60),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_file_size: 1 << 30,
            max_store_size: 10 << 30,
            min_free: Floor::Percent(10.0),
            keep_for: Duration::from_secs(30 * 24 * 3600),
            include: None,
            exclude: GlobSet::empty(),
            uids: None,
            scratch: Scratch::Ignore,
            visible_to: Visibility::Owner,
            store_reserve: Floor::Percent(1.0),
            max_index_size: 1 << 30,
            per_user: PerUser::default(),
            btf: None,
            events: events::sink(None).expect("the default events section is valid"),
            metrics_textfile: None,
            metrics_listen: None,
            protect: Protect::default(),
            source: None,
        }
    }
}

impl Policy {
    /// Reads and validates `path`. The default path may be missing (then
    /// the defaults apply); a path given explicitly must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Policy::default());
            }
            Err(err) => return Err(err).with_context(|| format!("config {}", path.display())),
        };
        Self::parse(&text)
            .map(|mut policy| {
                policy.source = Some(path.to_path_buf());
                policy
            })
            .map_err(|err| anyhow::anyhow!("config {}: {}", path.display(), one_line(&format!("{err:#}"))))
    }

    fn parse(text: &str) -> Result<Self> {
        let file: ConfigFile = toml::from_str(text)?;
        let mut policy = Policy { protect: protect(&file)?, ..Policy::default() };
        if let Some(size) = file.max_file_size {
            policy.max_file_size = size_of_value(size).context("max_file_size")?;
        }
        if let Some(size) = file.max_store_size {
            policy.max_store_size = size_of_value(size).context("max_store_size")?;
        }
        if let Some(floor) = file.min_free {
            policy.min_free = parse_floor(&floor).context("min_free")?;
        }
        if let Some(age) = file.keep_for {
            policy.keep_for = humantime::parse_duration(&age)
                .map_err(|e| anyhow::anyhow!("{age:?}: {e}"))
                .context("keep_for")?;
        }
        // An empty list is no filter (not "nothing passes").
        if let Some(globs) = file.include.filter(|g| !g.is_empty()) {
            policy.include = Some(glob_set(&globs).context("include")?);
        }
        if let Some(globs) = file.exclude {
            policy.exclude = glob_set(&globs).context("exclude")?;
        }
        policy.uids = file.uids.filter(|u| !u.is_empty()).map(|uids| uids.into_iter().collect());
        policy.scratch = file.scratch_files.unwrap_or_default();
        policy.visible_to = file.visible_to.unwrap_or_default();
        if let Some(reserve) = file.store_reserve {
            policy.store_reserve = parse_floor(&reserve).context("store_reserve")?;
        }
        if let Some(size) = file.max_index_size {
            policy.max_index_size = size_of_value(size).context("max_index_size")?;
        }
        if let Some(per_user) = file.per_user {
            if let Some(pins) = per_user.pins {
                policy.per_user.pins = share(pins).context("per_user.pins")?;
            }
            if let Some(store) = per_user.store {
                policy.per_user.store = share(store).context("per_user.store")?;
            }
            if let Some(rate) = per_user.records_per_minute {
                policy.per_user.records_per_minute = rate;
            }
            if let Some(files) = per_user.protected_files {
                policy.per_user.protected_files = share(files).context("per_user.protected_files")?;
            }
        }
        policy.btf = file.btf;
        policy.events = events::sink(file.events).context("events")?;
        // An empty value is off, the default.
        policy.metrics_textfile = file.metrics_textfile.filter(|p| !p.as_os_str().is_empty());
        if let Some(addr) = file.metrics_listen.filter(|a| !a.is_empty()) {
            let parsed = addr.parse().map_err(|_| anyhow::anyhow!("{addr:?} is not an address and port"));
            policy.metrics_listen = Some(parsed.context("metrics_listen")?);
        }
        Ok(policy)
    }

    /// Whether a deleted file at `path` owned by `uid` is worth keeping at
    /// all. An unknown owner passes the owner filter.
    pub fn wants(&self, path: &Path, uid: Option<u32>) -> bool {
        if self.include.as_ref().is_some_and(|set| !set.is_match(path)) {
            return false;
        }
        if self.exclude.is_match(path) {
            return false;
        }
        match (&self.uids, uid) {
            (Some(uids), Some(uid)) => uids.contains(&uid),
            _ => true,
        }
    }
}

fn protect(file: &ConfigFile) -> Result<Protect> {
    let mut p = Protect::default();
    for tree in file.protect.iter().flatten() {
        if !tree.is_absolute() {
            bail!("protect: {} is not an absolute path", tree.display());
        }
        p.trees.push(tree.clone());
    }
    p.max_files = file.protect_max_files.unwrap_or(p.max_files);
    p.max_tree_files = file.protect_max_tree_files.unwrap_or(p.max_tree_files);
    p.versions = file.versions.unwrap_or(p.versions);
    if p.versions == 0 {
        bail!("versions: at least 1 (the newest version is always kept)");
    }
    if let Some(interval) = &file.min_interval {
        p.min_interval = humantime::parse_duration(interval)
            .map_err(|e| anyhow::anyhow!("{interval:?}: {e}"))
            .context("min_interval")?;
    }
    Ok(p)
}

fn one_line(text: &str) -> String {
    text.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn size_of_value(value: SizeValue) -> Result<u64> {
    match value {
        SizeValue::Bytes(b) => Ok(b),
        SizeValue::Text(text) => parse_size(&text).map_err(anyhow::Error::msg),
    }
}

fn glob_set(globs: &[String]) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        set.add(Glob::new(glob).with_context(|| format!("bad glob {glob:?}"))?);
    }
    Ok(set.build()?)
}

/// `25%`, or an amount (a plain number, or a size such as `2G`).
fn share(value: SizeValue) -> Result<Share> {
    if let SizeValue::Text(text) = &value
        && let Some(percent) = text.trim().strip_suffix('%')
    {
        let p: f64 = percent.trim().parse().with_context(|| format!("{text:?} is not a percentage"))?;
        if !(0.0..=100.0).contains(&p) {
            bail!("{text:?}: a percentage from 0 to 100");
        }
        return Ok(Share::Percent(p));
    }
    size_of_value(value).map(Share::Amount)
}

/// `10%` or a size.
fn parse_floor(text: &str) -> Result<Floor> {
    if let Some(percent) = text.trim().strip_suffix('%') {
        let p: f64 = percent.trim().parse().with_context(|| format!("{text:?} is not a percentage"))?;
        if !(0.0..100.0).contains(&p) {
            bail!("{text:?}: a percentage from 0 to 100");
        }
        return Ok(Floor::Percent(p));
    }
    parse_size(text).map(Floor::Bytes).map_err(anyhow::Error::msg)
}

/// `123`, `4K`, `1.5G`, `2GiB`: binary multiples.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 512M, 2G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    Ok((number * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("8mb").unwrap(), 8 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5Q").is_err());
    }

    #[test]
    fn a_full_config_parses() {
        let p = Policy::parse(
            r#"
            max_file_size = "64M"
            max_store_size = 1073741824
            min_free = "5%"
            keep_for = "7days"
            include = ["/home/**"]
            exclude = ["**/*.o", "/home/*/.cache/**"]
            uids = [1000, 1001]
            scratch_files = "capture"
            visible_to = "readers"
            store_reserve = "2G"
            max_index_size = "256M"
            metrics_textfile = "/var/lib/prometheus/node-exporter"
            metrics_listen = "[::1]:9465"

            [per_user]
            pins = 100
            store = "10%"
            records_per_minute = 600
            "#,
        )
        .unwrap();
        assert_eq!((p.max_file_size, p.max_store_size), (64 << 20, 1 << 30));
        assert_eq!(p.min_free, Floor::Percent(5.0));
        assert_eq!(p.keep_for, Duration::from_secs(7 * 86400));
        assert_eq!(p.scratch, Scratch::Capture);
        assert_eq!(p.visible_to, Visibility::Readers);
        assert_eq!(p.store_reserve, Floor::Bytes(2 << 30));
        assert_eq!(p.max_index_size, 256 << 20);
        assert_eq!(p.metrics_textfile.as_deref(), Some(Path::new("/var/lib/prometheus/node-exporter")));
        assert_eq!(p.metrics_listen, Some("[::1]:9465".parse().unwrap()));
        assert_eq!(
            p.per_user,
            PerUser {
                pins: Share::Amount(100),
                store: Share::Percent(10.0),
                records_per_minute: 600,
                protected_files: Share::Percent(25.0),
            }
        );
        assert_eq!(Share::Percent(25.0).of(1000), 250);
        let defaults = Policy::default();
        assert_eq!(defaults.visible_to, Visibility::Owner);
        assert_eq!(defaults.per_user.pins.of(400), 100);
        assert!(p.wants(Path::new("/home/a/notes.txt"), Some(1000)));
        assert!(!p.wants(Path::new("/home/a/main.o"), Some(1000)), "excluded");
        assert!(!p.wants(Path::new("/home/a/.cache/x"), Some(1000)), "excluded");
        assert!(!p.wants(Path::new("/srv/data"), Some(1000)), "not included");
        assert!(!p.wants(Path::new("/home/a/notes.txt"), Some(0)), "not an included owner");
        assert!(p.wants(Path::new("/home/a/notes.txt"), None), "unknown owner passes");
        assert_eq!(Floor::Percent(10.0).bytes(1000), 100);
        assert_eq!(Floor::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = |text: &str| format!("{:#}", Policy::parse(text).unwrap_err());
        assert!(err("max_file_sise = \"1G\"").contains("max_file_sise"));
        assert!(err("max_file_size = \"huge\"").contains("max_file_size"));
        assert!(err("min_free = \"150%\"").contains("min_free"));
        assert!(err("keep_for = \"soon\"").contains("keep_for"));
        assert!(err("exclude = [\"[oops\"]").contains("exclude"));
        assert!(
            err("scratch_files = \"maybe\"").contains("scratch_files")
                || err("scratch_files = \"maybe\"").contains("maybe")
        );
        assert!(err("uids = \"me\"").contains("uids") || err("uids = \"me\"").contains("sequence"));
        assert!(err("visible_to = \"everyone\"").contains("everyone"));
        assert!(err("[per_user]\npins = \"150%\"").contains("per_user.pins"));
        assert!(err("[per_user]\nbytes = 1").contains("bytes"));
        assert!(err("metrics_listen = \"localhost\"").contains("metrics_listen"));
    }

    #[test]
    fn defaults_when_the_default_file_is_missing_but_not_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("unrm.toml");
        assert!(Policy::load(&missing, false).unwrap().source.is_none());
        assert!(Policy::load(&missing, true).is_err());
        std::fs::write(&missing, "bogus = 1\n").unwrap();
        let err = format!("{:#}", Policy::load(&missing, false).unwrap_err());
        assert!(err.contains("bogus") && !err.contains('\n'), "{err}");
    }
}
