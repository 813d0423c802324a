//! Who may see what. The daemon runs as root and keeps other people's
//! deleted files; a caller identified by `SO_PEERCRED` sees root's view only
//! if it is root, and otherwise only files it owned or could read when they
//! were deleted (judged by the file's mode, owner and group; the
//! directories on the way are not considered).

use std::collections::HashSet;

/// A client of the socket, as the kernel vouches for it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub groups: HashSet<u32>,
}

impl Caller {
    /// From the peer's credentials; supplementary groups from /proc.
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        let mut groups = HashSet::from([gid]);
        if let Some(status) = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        {
            let line = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
            groups.extend(line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
        Caller { uid, groups }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this caller may see and restore a file with this owner and
    /// mode. Unknown owner or mode: root only.
    pub fn may_read(&self, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> bool {
        if self.is_root() {
            return true;
        }
        let (Some(uid), Some(gid), Some(mode)) = (uid, gid, mode) else { return false };
        if uid == self.uid {
            return true;
        }
        if self.groups.contains(&gid) {
            return mode & 0o040 != 0;
        }
        mode & 0o004 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, groups: &[u32]) -> Caller {
        Caller { uid, groups: groups.iter().copied().collect() }
    }

    #[test]
    fn owners_groups_and_others() {
        let alice = user(1000, &[1000, 27]);
        assert!(alice.may_read(Some(1000), Some(1000), Some(0o100600)), "her own file");
        assert!(!alice.may_read(Some(1001), Some(1001), Some(0o100600)), "someone else's private file");
        assert!(alice.may_read(Some(1001), Some(27), Some(0o100640)), "group-readable, in the group");
        assert!(!alice.may_read(Some(1001), Some(28), Some(0o100640)), "group-readable, not in the group");
        assert!(alice.may_read(Some(1001), Some(28), Some(0o100644)), "world-readable");
        // A group member is judged by the group bits, not the other bits,
        // as the kernel does.
        assert!(!alice.may_read(Some(1001), Some(27), Some(0o100604)));
        assert!(!alice.may_read(None, None, None), "unknown owner: root only");
        assert!(user(0, &[0]).may_read(None, None, None));
    }
}
