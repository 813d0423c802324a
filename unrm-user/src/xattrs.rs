//! Extended attributes, ACLs included (`system.posix_acl_access` is one):
//! read from a deleted file when unrm pins it, written back on restore.

use std::os::fd::AsFd;

use rustix::{
    fs::{XattrFlags, fgetxattr, flistxattr, fsetxattr},
    io::Errno,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// Bytes of attribute values kept per file, at most: what a local
/// filesystem holds in a few blocks, while a FUSE server could otherwise
/// answer with thousands of 64 KiB values and make root's daemon hold them.
const MAX_TOTAL: usize = 256 * 1024;

/// Every attribute of `fd` that can be read, up to `MAX_TOTAL` bytes of
/// values; none where the filesystem has no attributes at all.
pub fn read(fd: impl AsFd) -> Vec<Xattr> {
    let fd = fd.as_fd();
    let mut names = vec![0u8; 64 * 1024];
    let Ok(len) = flistxattr(fd, &mut names[..]) else { return Vec::new() };
    let mut value = vec![0u8; 64 * 1024];
    let mut total = 0;
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|name| !name.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let Ok(n) = fgetxattr(fd, name, &mut value[..]) else { continue };
        total += name.len() + n;
        if total > MAX_TOTAL {
            log::warn!("extended attributes past {MAX_TOTAL} bytes not kept (from {name} on)");
            break;
        }
        out.push(Xattr { name: name.to_owned(), value: value[..n].to_vec() });
    }
    out
}

/// Keeps only what an unprivileged reader of the file could read itself:
/// `trusted.*` needs CAP_SYS_ADMIN, and unrm reads as root.
pub fn keep_unprivileged(attrs: &mut Vec<Xattr>) {
    attrs.retain(|a| ["user.", "system.", "security."].iter().any(|ns| a.name.starts_with(ns)));
}

/// Keeps only what a file's owner can set itself: `user.*` and its ACLs.
pub fn keep_owners_own(attrs: &mut Vec<Xattr>) {
    attrs.retain(|a| a.name.starts_with("user.") || a.name.starts_with("system.posix_acl_"));
}

/// Writes `attrs` onto `fd`; returns the names it could not set (a user
/// may not set `security.*` or `trusted.*`; a filesystem may refuse some).
pub fn write(fd: impl AsFd, attrs: &[Xattr]) -> Vec<String> {
    let fd = fd.as_fd();
    attrs
        .iter()
        .filter(|a| match fsetxattr(fd, a.name.as_str(), &a.value, XattrFlags::empty()) {
            Ok(()) => false,
            Err(Errno::PERM | Errno::ACCESS | Errno::NOTSUP | Errno::INVAL | Errno::NOSPC) => true,
            Err(_) => true,
        })
        .map(|a| a.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_round_trip_where_supported() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::File::create(dir.path().join("a")).unwrap();
        let b = std::fs::File::create(dir.path().join("b")).unwrap();
        let attr = Xattr { name: "user.unrm.test".into(), value: b"\x00binary\xff".to_vec() };
        if !write(&a, std::slice::from_ref(&attr)).is_empty() {
            return; // this filesystem has no user attributes (e.g. some tmpfs)
        }
        let read_back = read(&a);
        assert!(read_back.contains(&attr), "{read_back:?}");
        assert!(write(&b, &read_back).is_empty());
        assert_eq!(read(&b), read_back);
    }
}
