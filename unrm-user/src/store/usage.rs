//! What the store costs, and whom. Each capture is charged to the owner of
//! the file it saved, so that one user's captures make room by evicting that
//! user's own first, and per-user limits can be kept.
//!
//! A capture is charged what it really takes on disk. A reflinked capture
//! (xfs, btrfs) shares its extents with whatever else references them: the
//! deleted original until unrm lets go of it, and other reflinked copies of
//! the same data. Charging each capture its full size would let anyone with
//! a few reflinked copies of one big file inflate the store's count at no
//! cost and push everyone else's captures out. So extents the filesystem
//! reports shared (FIEMAP) are charged once, to the first capture holding
//! them, and the charge moves to another holder when that one goes.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// A physical extent, as FIEMAP reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub physical: u64,
    pub length: u64,
}

/// What one capture takes on disk: bytes it alone holds, and extents the
/// filesystem says it shares with other files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub exclusive: u64,
    pub shared: Vec<Extent>,
}

impl Cost {
    /// The cost of the file open as `fd`: never less than `MIN_COST`, so
    /// that a store of empty captures (each an inode and a record) is
    /// bounded by the same shares as any other.
    pub fn of(fd: BorrowedFd) -> io::Result<Self> {
        let blocks = (rustix::fs::fstat(fd)?.st_blocks as u64 * 512).max(MIN_COST);
        let extents = match fiemap(fd) {
            Ok(extents) if extents.len() <= MAX_SHARED_EXTENTS => extents,
            // No FIEMAP (tmpfs): nothing can be shared there. Too many
            // extents to keep track of (a file cloned in pieces): charged
            // whole, which costs only whoever made it so.
            _ => return Ok(Cost { exclusive: blocks, shared: Vec::new() }),
        };
        let mut cost = Cost::default();
        for (extent, flags) in extents {
            if flags & FIEMAP_EXTENT_SHARED != 0 {
                cost.shared.push(extent);
            } else {
                cost.exclusive += extent.length;
            }
        }
        if cost.shared.is_empty() {
            cost.exclusive = cost.exclusive.max(blocks);
        }
        cost.exclusive = cost.exclusive.max(MIN_COST);
        Ok(cost)
    }
}

/// What a capture costs at least: a block and its record.
pub const MIN_COST: u64 = 8192;
/// Extents per capture the accounting follows one by one.
const MAX_SHARED_EXTENTS: usize = 256;
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
const EXTENTS_PER_CALL: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    _reserved64: [u64; 2],
    flags: u32,
    _reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    _reserved: u32,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Every extent of `fd` with its flags.
fn fiemap(fd: BorrowedFd) -> io::Result<Vec<(Extent, u32)>> {
    let mut out = Vec::new();
    let mut start = 0u64;
    while out.len() <= MAX_SHARED_EXTENTS {
        let mut map = Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: EXTENTS_PER_CALL as u32,
            _reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: FS_IOC_FIEMAP reads the header and fills at most
        // `extent_count` extents of the struct we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = &map.extents[..(map.mapped_extents as usize).min(EXTENTS_PER_CALL)];
        for e in mapped {
            out.push((Extent { physical: e.physical, length: e.length }, e.flags));
        }
        match mapped.last() {
            Some(last) if last.flags & FIEMAP_EXTENT_LAST == 0 => start = last.logical + last.length,
            _ => return Ok(out),
        }
    }
    Ok(out)
}

struct Entry {
    owner: u32,
    exclusive: u64,
    shared: Vec<Extent>,
    at: i64,
}

#[derive(Default)]
struct UserUsage {
    bytes: u64,
    /// (captured at, id), oldest first.
    captures: BTreeSet<(i64, i64)>,
}

struct Sharers {
    ids: Vec<i64>,
    /// The capture whose owner is charged for this extent.
    payer: i64,
}

/// The store's captures, what each costs and whom it is charged to.
#[derive(Default)]
pub struct Usage {
    captures: HashMap<i64, Entry>,
    users: HashMap<u32, UserUsage>,
    shared: HashMap<Extent, Sharers>,
    total: u64,
}

impl Usage {
    /// Counts capture `id` of a file owned by `owner`, captured at `at` (ns).
    pub fn add(&mut self, id: i64, owner: u32, at: i64, cost: Cost) {
        if self.captures.contains_key(&id) {
            self.remove(id);
        }
        let mut charge = cost.exclusive;
        for extent in &cost.shared {
            match self.shared.get_mut(extent) {
                Some(sharers) => sharers.ids.push(id),
                None => {
                    self.shared.insert(*extent, Sharers { ids: vec![id], payer: id });
                    charge += extent.length;
                }
            }
        }
        let user = self.users.entry(owner).or_default();
        user.bytes += charge;
        user.captures.insert((at, id));
        self.total += charge;
        self.captures.insert(id, Entry { owner, exclusive: cost.exclusive, shared: cost.shared, at });
    }

    /// Stops counting capture `id`; returns the bytes this frees on disk.
    pub fn remove(&mut self, id: i64) -> u64 {
        let Some(entry) = self.captures.remove(&id) else { return 0 };
        let mut freed = entry.exclusive;
        self.charge(entry.owner, -(entry.exclusive as i128));
        for extent in &entry.shared {
            let Some(sharers) = self.shared.get_mut(extent) else { continue };
            sharers.ids.retain(|&other| other != id);
            if sharers.payer != id {
                continue;
            }
            let next = sharers.ids.first().copied();
            if let Some(next) = next {
                sharers.payer = next;
            }
            self.charge(entry.owner, -(extent.length as i128));
            match next {
                Some(next) => {
                    let owner = self.captures[&next].owner;
                    self.charge(owner, extent.length as i128);
                }
                None => {
                    self.shared.remove(extent);
                    freed += extent.length;
                }
            }
        }
        if let Some(user) = self.users.get_mut(&entry.owner) {
            user.captures.remove(&(entry.at, id));
            if user.captures.is_empty() && user.bytes == 0 {
                self.users.remove(&entry.owner);
            }
        }
        freed
    }

    fn charge(&mut self, owner: u32, bytes: i128) {
        let user = self.users.entry(owner).or_default();
        user.bytes = (user.bytes as i128 + bytes).max(0) as u64;
        self.total = (self.total as i128 + bytes).max(0) as u64;
    }

    /// Captures counted.
    pub fn captures(&self) -> usize {
        self.captures.len()
    }

    /// Bytes charged to every capture together: what the store takes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes charged to `owner`'s captures.
    pub fn of(&self, owner: u32) -> u64 {
        self.users.get(&owner).map_or(0, |u| u.bytes)
    }

    /// `owner`'s oldest capture.
    pub fn oldest_of(&self, owner: u32) -> Option<i64> {
        self.users.get(&owner)?.captures.first().map(|&(_, id)| id)
    }

    /// The user charged the most who has captures, with what they are
    /// charged, if more than `than`.
    pub fn biggest_above(&self, than: u64) -> Option<u32> {
        self.users
            .iter()
            .filter(|(_, u)| u.bytes > than && !u.captures.is_empty())
            .max_by_key(|(uid, u)| (u.bytes, std::cmp::Reverse(**uid)))
            .map(|(uid, _)| *uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(extents: &[(u64, u64)]) -> Cost {
        Cost {
            exclusive: 0,
            shared: extents.iter().map(|&(physical, length)| Extent { physical, length }).collect(),
        }
    }

    #[test]
    fn shared_extents_are_charged_once_and_the_charge_moves() {
        let mut u = Usage::default();
        u.add(1, 1000, 10, Cost { exclusive: 100, shared: Vec::new() });
        // Two reflinked copies of the same 1000 bytes, by two users.
        u.add(2, 1001, 20, shared(&[(5000, 1000)]));
        u.add(3, 1002, 30, shared(&[(5000, 1000)]));
        assert_eq!(u.total(), 1100);
        assert_eq!((u.of(1001), u.of(1002)), (1000, 0));
        // Evicting the payer frees nothing; its charge moves on.
        assert_eq!(u.remove(2), 0);
        assert_eq!((u.of(1001), u.of(1002), u.total()), (0, 1000, 1100));
        assert_eq!(u.remove(3), 1000);
        assert_eq!(u.total(), 100);
        assert_eq!(u.remove(1), 100);
        assert_eq!(u.total(), 0);
        assert!(u.captures.is_empty() && u.shared.is_empty());
    }

    #[test]
    fn oldest_and_biggest() {
        let mut u = Usage::default();
        u.add(1, 7, 30, Cost { exclusive: 10, shared: Vec::new() });
        u.add(2, 7, 20, Cost { exclusive: 10, shared: Vec::new() });
        u.add(3, 8, 10, Cost { exclusive: 50, shared: Vec::new() });
        assert_eq!(u.oldest_of(7), Some(2));
        assert_eq!(u.biggest_above(20), Some(8));
        assert_eq!(u.biggest_above(50), None);
    }

    #[test]
    fn a_real_file_costs_its_blocks() {
        use std::{io::Write, os::fd::AsFd};
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("f")).unwrap();
        f.write_all(&[1u8; 100_000]).unwrap();
        f.sync_all().unwrap();
        let cost = Cost::of(f.as_fd()).unwrap();
        assert!(cost.exclusive >= 100_000, "{cost:?}");
        assert!(cost.shared.is_empty());
    }
}
