//! Where filesystems are mounted. A filesystem hook sees a dentry, not the
//! mount it was reached through, so the probe reports a path from the
//! filesystem's root; this turns it into the path a user would type.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

struct Mount {
    dev: u64,
    /// The directory of the filesystem this mount shows (`/` unless a bind).
    root: PathBuf,
    point: PathBuf,
}

#[derive(Default)]
pub struct Mounts {
    mounts: Vec<Mount>,
}

impl Mounts {
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo").map(|text| Self::parse(&text)).unwrap_or_default()
    }

    fn parse(text: &str) -> Self {
        let mounts = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let (major, minor) = fields.get(2)?.split_once(':')?;
                Some(Mount {
                    dev: libc::makedev(major.parse().ok()?, minor.parse().ok()?),
                    root: unescape(fields.get(3)?),
                    point: unescape(fields.get(4)?),
                })
            })
            .collect();
        Mounts { mounts }
    }

    /// The absolute path of `fs_path` (relative to the root of filesystem
    /// `dev`): through the mount that shows the most of it, and of those
    /// the one nearest `/`.
    pub fn resolve(&self, dev: u64, fs_path: &Path) -> Option<PathBuf> {
        let best = self
            .mounts
            .iter()
            .filter(|m| m.dev == dev && fs_path.starts_with(&m.root))
            .max_by_key(|m| (m.root.as_os_str().len(), std::cmp::Reverse(m.point.as_os_str().len())))?;
        Some(best.point.join(fs_path.strip_prefix(&best.root).ok()?))
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:0 /srv/data /data rw - ext4 /dev/vda rw
31 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
32 22 254:0 / /chroot/root rw - ext4 /dev/vda rw";

    #[test]
    fn resolves_through_the_most_specific_mount() {
        let m = Mounts::parse(INFO);
        let vda = libc::makedev(254, 0);
        assert_eq!(m.resolve(vda, Path::new("/home/a/f")).unwrap(), Path::new("/home/a/f"));
        assert_eq!(m.resolve(vda, Path::new("/srv/data/x")).unwrap(), Path::new("/data/x"));
        let tmp = libc::makedev(0, 40);
        assert_eq!(m.resolve(tmp, Path::new("/f")).unwrap(), Path::new("/mnt/with space/f"));
        assert!(m.resolve(libc::makedev(8, 1), Path::new("/f")).is_none());
    }
}
