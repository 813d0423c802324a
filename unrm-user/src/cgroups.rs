//! Which cgroup a deleter ran in, and which container that cgroup names.
//!
//! The probes send the deleting task's cgroup v2 id (a number: cheap to
//! take in the kernel, and still meaningful after the task is gone).
//! Here it becomes the cgroup's path: the id is the cgroup directory's
//! inode number in cgroupfs, so a kernfs file handle of it opens that
//! directory (`open_by_handle_at`, CAP_DAC_READ_SEARCH), and the
//! descriptor's link names it. A cgroup removed before then (a container
//! that deleted and exited at once) is looked up in the deleter's
//! `/proc/PID/cgroup` instead, while that process lives; else the record
//! has no cgroup. Paths are cached by id: ids are never reused.
//!
//! Runtimes name their containers' cgroups after the container, which is
//! how a record says which container deleted a file (`container_of`).

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// Paths kept at most; beyond, the cache starts afresh.
const CACHED: usize = 4096;
/// `FILEID_KERNFS`: a file handle naming a kernfs node by its id.
const FILEID_KERNFS: i32 = 0xfe;

/// Finds the cgroup path of a cgroup id.
pub struct Resolver {
    /// The cgroup2 mount, and where it is mounted.
    mount: Option<(OwnedFd, PathBuf)>,
    cache: HashMap<u64, String>,
}

impl Resolver {
    /// The resolver of this mount namespace's cgroup2 hierarchy (a hybrid
    /// host has it at /sys/fs/cgroup/unified).
    pub fn new() -> Self {
        // A descriptor of the mount to name handles on (not O_PATH: the
        // kernel refuses that as open_by_handle_at's mount descriptor).
        let mount = cgroup2_mount().and_then(|dir| {
            let flags =
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
            let fd = rustix::fs::open(&dir, flags, rustix::fs::Mode::empty()).ok()?;
            Some((fd, dir))
        });
        Resolver { mount, cache: HashMap::new() }
    }

    /// The path of cgroup `id` from the hierarchy's root, or of the live
    /// process `pid`'s cgroup when the id is unknown or gone.
    pub fn path_of(&mut self, id: u64, pid: u32) -> Option<String> {
        if let Some(path) = self.cache.get(&id) {
            return Some(path.clone());
        }
        let path = (id != 0).then(|| self.by_handle(id)).flatten().or_else(|| of_process(pid))?;
        if id != 0 {
            if self.cache.len() >= CACHED {
                self.cache.clear();
            }
            self.cache.insert(id, path.clone());
        }
        Some(path)
    }

    fn by_handle(&self, id: u64) -> Option<String> {
        let (mount, dir) = self.mount.as_ref()?;
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            id: u64,
        }
        let mut handle = Handle { bytes: 8, kind: FILEID_KERNFS, id };
        // SAFETY: a file_handle header followed by its 8 bytes; the kernel
        // only reads it. The descriptor it returns is ours to own.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_fd().as_raw_fd(),
                (&mut handle as *mut Handle).cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor just returned to us and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let inside = link.strip_prefix(dir).ok()?;
        Some(format!("/{}", inside.to_string_lossy()))
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

/// Where cgroup2 is mounted in this mount namespace.
fn cgroup2_mount() -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match u8::from_str_radix(rest.get(at + 1..at + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out + rest
}

/// The v2 line of a live process's `/proc/PID/cgroup`.
fn of_process(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_owned)
}

/// A container a cgroup path names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `docker`, `podman`, `containerd`, `cri-o`, `cri` (a Kubernetes
    /// container whose runtime its cgroup does not say) or `nspawn`.
    pub runtime: String,
    /// The container's id (64 hex digits), or a systemd-nspawn machine's name.
    pub id: String,
    /// Under Kubernetes, the pod's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The container `path` names, if any: the component nearest the leaf
/// that a runtime named.
pub fn container_of(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod = parts.iter().rev().find_map(|p| pod_uid(p));
    let kubernetes = parts.iter().any(|p| p.starts_with("kubepods"));
    parts.iter().enumerate().rev().find_map(|(i, part)| {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        let (runtime, id) = named(part, parent, kubernetes)?;
        Some(Container { runtime: runtime.to_owned(), id, pod: pod.clone() })
    })
}

/// The runtime and id one cgroup directory's name gives, if any.
fn named(part: &str, parent: Option<&str>, kubernetes: bool) -> Option<(&'static str, String)> {
    let scope = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in
        [("docker-", "docker"), ("libpod-", "podman"), ("cri-containerd-", "containerd"), ("crio-", "cri-o")]
    {
        if let Some(id) = scope.strip_prefix(prefix).filter(|id| is_id(id)) {
            return Some((runtime, id.to_owned()));
        }
    }
    if is_id(part) {
        // The cgroupfs drivers: /docker/<id>, /kubepods/…/pod<uid>/<id>.
        return match parent {
            Some("docker") => Some(("docker", part.to_owned())),
            Some(p) if kubernetes && pod_uid(p).is_some() => Some(("cri", part.to_owned())),
            _ => None,
        };
    }
    if let Some(name) = part.strip_prefix("systemd-nspawn@").and_then(|n| n.strip_suffix(".service")) {
        return Some(("nspawn", systemd_unescape(name)));
    }
    let machine = part.strip_prefix("machine-").and_then(|n| n.strip_suffix(".scope"));
    machine.filter(|_| parent == Some("machine.slice")).map(|name| ("nspawn", systemd_unescape(name)))
}

/// 64 hex digits: a container id as docker, podman, containerd and cri-o
/// make them (conmon's own cgroups, `libpod-conmon-<id>`, are not one).
fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod's UID from `pod<uid>` (cgroupfs driver) or
/// `kubepods-<class>-pod<uid with _ for ->.slice` (systemd driver).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let (before, uid) = name.rsplit_once("pod")?;
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = uid.replace('_', "-");
    let shape = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    shape.then_some(uid)
}

/// systemd's `\x2d`-style escapes in unit names.
fn systemd_unescape(name: &str) -> String {
    let mut out = Vec::new();
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x'))
            .then(|| name.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";
    const UID: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

    fn c(runtime: &str, id: &str, pod: Option<&str>) -> Option<Container> {
        Some(Container { runtime: runtime.into(), id: id.into(), pod: pod.map(str::to_owned) })
    }

    #[test]
    fn runtimes_name_their_containers() {
        let uid_ = UID.replace('-', "_");
        let cases: Vec<(String, Option<Container>)> = vec![
            (format!("/docker/{ID}"), c("docker", ID, None)),
            (format!("/system.slice/docker-{ID}.scope"), c("docker", ID, None)),
            (format!("/libpod_parent/libpod-{ID}"), c("podman", ID, None)),
            (format!("/machine.slice/libpod-{ID}.scope/container"), c("podman", ID, None)),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                c("podman", ID, None),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            (format!("/system.slice/crio-conmon-{ID}.scope"), None),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                c("containerd", ID, Some(UID)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                c("cri-o", ID, Some(UID)),
            ),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), c("cri", ID, Some(UID))),
            (format!("/kubepods/pod{UID}/{ID}"), c("cri", ID, Some(UID))),
            ("/machine.slice/systemd-nspawn@web\\x2d1.service/payload".into(), c("nspawn", "web-1", None)),
            ("/machine.slice/machine-db.scope".into(), c("nspawn", "db", None)),
            ("/user.slice/user-1000.slice/session-3.scope".into(), None),
            ("/system.slice/cron.service".into(), None),
            ("/".into(), None),
            (format!("/{ID}"), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_of(&path), want, "{path}");
        }
    }

    #[test]
    fn the_resolver_agrees_with_proc_and_names_a_cgroup_by_its_id() {
        let mut resolver = Resolver::new();
        // None on a kernel with no cgroup v2 line (nothing mounted it).
        let own = of_process(std::process::id());
        assert_eq!(resolver.path_of(0, std::process::id()), own);
        assert_eq!(resolver.path_of(0, u32::MAX), None);
        // By its id alone (no live process to ask), as the probes give it:
        // where there is a cgroup2 mount to name it on, and as root.
        use std::os::unix::fs::MetadataExt;
        if let (Some(own), Some((_, mount))) = (&own, resolver.mount.as_ref())
            && rustix::process::geteuid().is_root()
        {
            let id = std::fs::metadata(mount.join(own.trim_start_matches('/'))).unwrap().ino();
            assert_eq!(resolver.path_of(id, u32::MAX).as_deref(), Some(own.as_str()));
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
