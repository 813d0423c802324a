//! Who may see what. The daemon runs as root and keeps other people's
//! deleted files; a caller sees root's view only if it is root.
//!
//! Anyone else sees a record only if it owned the file, or, where the
//! policy allows readers (`visible_to = "readers"`), if it could have
//! opened the file for reading by its path when it was deleted: the file's
//! mode and POSIX ACL, and search permission on every directory of the
//! path, judged for that caller as the kernel would judge it. What that
//! takes is recorded when unrm pins the file; whatever is unknown means the
//! owner (and root) only. A file still held must pass the same test as it
//! is now, too: a `chmod 600` after the deletion hides it again.

use std::{collections::HashSet, os::fd::AsFd};

use serde::{Deserialize, Serialize};

/// A client of the socket, as the kernel vouches for it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub groups: HashSet<u32>,
}

/// `SO_PEERGROUPS` (asm-generic; Linux 4.13+): the peer's supplementary
/// groups as they were when it connected.
const SO_PEERGROUPS: libc::c_int = 59;

impl Caller {
    /// The peer of a connected Unix socket: its uid and groups as the kernel
    /// recorded them at connect(2), so a process that exits and whose pid
    /// is reused cannot lend another process its groups.
    pub fn of_peer(socket: impl AsFd, uid: u32, gid: u32) -> Self {
        let mut groups = HashSet::from([gid]);
        groups.extend(peer_groups(socket));
        Caller { uid, groups }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.groups.contains(&gid)
    }
}

fn peer_groups(socket: impl AsFd) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_fd().as_raw_fd();
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let ret = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        let needed = len as usize / 4;
        if ret == 0 {
            groups.truncate(needed);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Vec::new();
        }
        groups.resize(needed, 0);
    }
}

/// Who, besides root, may see a deleted file's record and content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Its owner only.
    #[default]
    Owner,
    /// Also whoever could have read it by its path when it was deleted.
    Readers,
}

/// Read permission, in the `rwx` bits of a mode or an ACL entry.
pub const READ: u32 = 4;
/// Search permission on a directory.
pub const SEARCH: u32 = 1;

/// One POSIX ACL entry (`acl(5)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// The `e_tag` values of `<linux/posix_acl.h>`.
mod tag {
    pub const USER_OBJ: u16 = 0x01;
    pub const USER: u16 = 0x02;
    pub const GROUP_OBJ: u16 = 0x04;
    pub const GROUP: u16 = 0x08;
    pub const MASK: u16 = 0x10;
    pub const OTHER: u16 = 0x20;
}

/// The name under which Linux keeps a file's access ACL.
pub const ACL_XATTR: &str = "system.posix_acl_access";

/// Parses a `system.posix_acl_access` value (version 2, then 8-byte
/// entries, little-endian). None if malformed.
pub fn parse_acl(bytes: &[u8]) -> Option<Vec<AclEntry>> {
    let (header, entries) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(header.try_into().ok()?) != 2 || entries.len() % 8 != 0 {
        return None;
    }
    let entries: Vec<AclEntry> = entries
        .chunks_exact(8)
        .map(|e| AclEntry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect();
    // A valid ACL has its owner, owning group and other entries.
    let has = |t| entries.iter().any(|e| e.tag == t);
    (has(tag::USER_OBJ) && has(tag::GROUP_OBJ) && has(tag::OTHER)).then_some(entries)
}

/// What decides who may open a file or search a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perms {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Its access ACL; None when it has none (the mode decides alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<AclEntry>>,
}

impl Perms {
    /// Whether `caller` (not root) has all of `want` here, as the kernel
    /// decides it (`generic_permission`, `posix_acl_permission`).
    pub fn allow(&self, caller: &Caller, want: u32) -> bool {
        // The kernel consults an ACL only while the group bits (its mask)
        // grant something; with them clear, the mode alone decides.
        let acl = self.acl.as_ref().filter(|_| self.mode & 0o070 != 0);
        let Some(acl) = acl else {
            let bits = if caller.uid == self.uid {
                self.mode >> 6
            } else if caller.in_group(self.gid) {
                self.mode >> 3
            } else {
                self.mode
            };
            return bits & want == want;
        };
        let want = want as u16;
        let masked = |perm: u16| {
            let mask = acl.iter().find(|e| e.tag == tag::MASK).map_or(0o7, |e| e.perm);
            perm & mask & want == want
        };
        let mut in_a_group = false;
        for e in acl {
            match e.tag {
                tag::USER_OBJ if caller.uid == self.uid => return e.perm & want == want,
                tag::USER if caller.uid == e.id => return masked(e.perm),
                tag::GROUP_OBJ | tag::GROUP => {
                    let gid = if e.tag == tag::GROUP_OBJ { self.gid } else { e.id };
                    if caller.in_group(gid) {
                        in_a_group = true;
                        if e.perm & want == want {
                            return masked(e.perm);
                        }
                    }
                }
                tag::OTHER => return !in_a_group && e.perm & want == want,
                _ => {}
            }
        }
        false
    }
}

/// The directory a file was deleted from, as the probes saw it then: a
/// directory at the same path is that one only if these still match (one
/// removed and made again, by anyone, has another inode or owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Parent {
    /// From the probes' layout; None when they could not tell.
    pub fn of(dir: &unrm_abi::DirFacts) -> Option<Self> {
        (dir.ino != 0).then_some(Parent { ino: dir.ino, uid: dir.uid, gid: dir.gid, mode: dir.mode })
    }

    /// Whether a directory with this inode and owner is this one.
    pub fn is(&self, ino: u64, uid: u32, gid: u32) -> bool {
        (self.ino, self.uid, self.gid) == (ino, uid, gid)
    }
}

/// What the access check needs about a file beyond its owner, group and
/// mode, learned when it was pinned: its ACL and the directories above it,
/// from `/` down to its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<AclEntry>>,
    pub dirs: Vec<Perms>,
}

/// A file as the access check sees it at one moment.
pub struct Seen<'a> {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// None: not known (not learned yet, or could not be).
    pub facts: Option<&'a PathFacts>,
}

impl Caller {
    /// Whether this caller may see a file it was (or is) the owner of, or,
    /// with `Visibility::Readers`, could open by its path.
    pub fn may_see(&self, seen: &Seen, visibility: Visibility) -> bool {
        if self.is_root() {
            return true;
        }
        let Some(uid) = seen.uid else { return false };
        if uid == self.uid {
            return true;
        }
        if visibility == Visibility::Owner {
            return false;
        }
        let (Some(gid), Some(mode), Some(facts)) = (seen.gid, seen.mode, seen.facts) else { return false };
        let file = Perms { uid, gid, mode, acl: facts.acl.clone() };
        file.allow(self, READ) && facts.dirs.iter().all(|dir| dir.allow(self, SEARCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, groups: &[u32]) -> Caller {
        Caller { uid, groups: groups.iter().copied().collect() }
    }

    fn perms(uid: u32, gid: u32, mode: u32) -> Perms {
        Perms { uid, gid, mode, acl: None }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<AclEntry> {
        entries.iter().map(|&(tag, perm, id)| AclEntry { tag, perm, id }).collect()
    }

    #[test]
    fn modes_as_the_kernel_reads_them() {
        let alice = user(1000, &[1000, 27]);
        assert!(perms(1000, 1000, 0o600).allow(&alice, READ), "her own file");
        assert!(!perms(1001, 1001, 0o600).allow(&alice, READ), "someone else's private file");
        assert!(perms(1001, 27, 0o640).allow(&alice, READ), "group-readable, in the group");
        assert!(!perms(1001, 28, 0o640).allow(&alice, READ), "group-readable, not in the group");
        assert!(perms(1001, 28, 0o644).allow(&alice, READ), "world-readable");
        // A group member is judged by the group bits, not the other bits.
        assert!(!perms(1001, 27, 0o604).allow(&alice, READ));
        // An owner is judged by the owner bits alone.
        assert!(!perms(1000, 1000, 0o044).allow(&alice, READ));
        assert!(perms(0, 0, 0o711).allow(&alice, SEARCH));
        assert!(!perms(0, 0, 0o700).allow(&alice, SEARCH));
    }

    #[test]
    fn acls_grant_deny_and_mask() {
        let bob = user(1001, &[1001]);
        let carol = user(1002, &[1002, 50]);
        // 0644 with user:bob:---: bob is denied, carol reads as other.
        let mut f = perms(1000, 1000, 0o644);
        f.acl = Some(acl(&[(1, 6, 0), (2, 0, 1001), (4, 4, 0), (0x10, 4, 0), (0x20, 4, 0)]));
        assert!(!f.allow(&bob, READ));
        assert!(f.allow(&carol, READ));
        // 0640 (the mask r--) with user:bob:r--: granted, unless the mask
        // takes it away.
        f.mode = 0o640;
        f.acl = Some(acl(&[(1, 6, 0), (2, 4, 1001), (4, 0, 0), (0x10, 4, 0), (0x20, 0, 0)]));
        assert!(f.allow(&bob, READ));
        assert!(!f.allow(&carol, READ));
        f.acl = Some(acl(&[(1, 6, 0), (2, 4, 1001), (4, 0, 0), (0x10, 0, 0), (0x20, 0, 0)]));
        f.mode = 0o610;
        assert!(!f.allow(&bob, READ), "masked");
        // With the group bits (the mask) clear, the kernel skips the ACL.
        f.mode = 0o604;
        assert!(f.allow(&bob, READ), "other bits, ACL not consulted");
        // A matching group that grants nothing denies, even if other would.
        f.mode = 0o644;
        f.acl = Some(acl(&[(1, 6, 0), (4, 0, 0), (8, 0, 50), (0x10, 4, 0), (0x20, 4, 0)]));
        assert!(!f.allow(&carol, READ));
        assert!(f.allow(&bob, READ));
    }

    #[test]
    fn acl_xattrs_parse_and_garbage_does_not() {
        let mut bytes = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 6u16, u32::MAX), (2, 4, 1001), (4, 4, u32::MAX), (0x20, 0, u32::MAX)] {
            bytes.extend(tag.to_le_bytes());
            bytes.extend(perm.to_le_bytes());
            bytes.extend(id.to_le_bytes());
        }
        let parsed = parse_acl(&bytes).unwrap();
        assert_eq!(parsed[1], AclEntry { tag: 2, perm: 4, id: 1001 });
        assert!(parse_acl(&bytes[..bytes.len() - 1]).is_none());
        assert!(parse_acl(&[1, 0, 0, 0]).is_none());
        assert!(parse_acl(&bytes[..12]).is_none(), "no group or other entry");
    }

    #[test]
    fn owners_always_readers_only_where_every_directory_lets_them() {
        let alice = user(1000, &[1000]);
        let bob = user(1001, &[1001]);
        let open_dirs = PathFacts { acl: None, dirs: vec![perms(0, 0, 0o755), perms(1000, 1000, 0o755)] };
        let private = PathFacts { acl: None, dirs: vec![perms(0, 0, 0o755), perms(1000, 1000, 0o700)] };
        let seen = |facts| Seen { uid: Some(1000), gid: Some(1000), mode: Some(0o100644), facts };
        assert!(alice.may_see(&seen(Some(&private)), Visibility::Owner));
        assert!(alice.may_see(&seen(None), Visibility::Readers), "owners need no facts");
        assert!(!bob.may_see(&seen(Some(&open_dirs)), Visibility::Owner));
        assert!(bob.may_see(&seen(Some(&open_dirs)), Visibility::Readers));
        assert!(!bob.may_see(&seen(Some(&private)), Visibility::Readers), "a 0700 directory on the way");
        assert!(!bob.may_see(&seen(None), Visibility::Readers), "unknown: owner only");
        let unknown = Seen { uid: None, gid: None, mode: None, facts: Some(&open_dirs) };
        assert!(!alice.may_see(&unknown, Visibility::Readers));
        assert!(user(0, &[0]).may_see(&unknown, Visibility::Owner));
    }
}
