//! Finding one process that holds an inode through a descriptor, in the
//! kernel, right after the deletion that made it precious.
//!
//! The daemon could find holders itself with an iterator snapshot, but a
//! snapshot walks every task and costs ~100 µs or more before the first pin.
//! Here the walk runs once per *held* deletion only (the dentry count says
//! which), after the call has dropped its locks, reading each process's
//! open-descriptor bitmap so that empty slots cost nothing. It stops at the
//! first descriptor on the inode; holders through mappings only are left to
//! the daemon's snapshot.
//!
//! The walk follows `init_task.tasks` (every thread-group leader) under the
//! RCU read lock that BTF tracepoint and tracepoint programs run in; every
//! read is a `bpf_probe_read_kernel`, so a task exiting under our feet is
//! harmless.

use crate::{
    bounded::loop_step,
    kernel::{Dentry, FdArray, Inode, OpenFds, Task},
};

/// Processes walked at most, descriptor words per process at most.
const MAX_PROCESSES: u32 = 1 << 16;
const MAX_FD_WORDS: u32 = 1 << 14;
/// Steps up `real_parent` to reach `init_task` from any task.
const MAX_ANCESTRY: u32 = 1 << 12;

pub struct Holder {
    pub tgid: u32,
    pub fd: u32,
    pub uid: u32,
}

/// The search across processes.
#[repr(C)]
struct Search {
    inode: Inode,
    first: Task,
    task: Task,
    tgid: u32,
    fd: u32,
    uid: u32,
    found: u32,
}

/// The search through one process's descriptor bitmap, a word at a time.
#[repr(C)]
struct Words<'a> {
    search: &'a mut Search,
    open_fds: OpenFds,
    fds: FdArray,
}

/// The search through one word of that bitmap, a bit at a time.
#[repr(C)]
struct Bits<'a> {
    search: &'a mut Search,
    fds: FdArray,
    word: u64,
    base: u32,
}

/// A process with a descriptor open on `inode`, if any.
#[inline(always)]
pub fn find(inode: Inode) -> Option<Holder> {
    let init = init_task(Task::current()?)?;
    let mut search = Search { inode, first: init, task: init, tgid: 0, fd: 0, uid: 0, found: 0 };
    next_process::run(MAX_PROCESSES, &mut search);
    (search.found != 0).then_some(Holder { tgid: search.tgid, fd: search.fd, uid: search.uid })
}

/// References on a rename victim's dentry, counted like an unlink's: one
/// for the caller's own lookup, more if anything else holds the file. The
/// filesystem hook passes only the inode, so the dentry is its alias; the
/// rename itself holds one reference more than an unlink does.
#[inline(always)]
pub fn rename_victim_refs(alias: Dentry) -> Option<u32> {
    alias.refs().map(|refs| refs.saturating_sub(1))
}

/// Up `real_parent` from `task`: `init_task` is its own parent.
#[inline(always)]
fn init_task(task: Task) -> Option<Task> {
    let mut up = Ancestry { task, done: 0 };
    parent_step::run(MAX_ANCESTRY, &mut up);
    (up.done == 1).then_some(up.task)
}

#[repr(C)]
struct Ancestry {
    task: Task,
    /// 1 once `task` is init_task, 2 if a read failed.
    done: u64,
}

loop_step! {
    fn parent_step(_index, up: &mut Ancestry) -> bool {
        match up.task.real_parent() {
            Some(parent) if parent == up.task => up.done = 1,
            Some(parent) => up.task = parent,
            None => up.done = 2,
        }
        up.done != 0
    }
}

loop_step! {
    /// On to the next process, and through its descriptors.
    fn next_process(_index, search: &mut Search) -> bool {
        let Some(next) = search.task.next_process() else { return true };
        if next == search.first {
            return true;
        }
        search.task = next;
        search_process(search);
        search.found != 0
    }
}

/// Looks through `search.task`'s descriptors for the inode.
#[inline(always)]
fn search_process(search: &mut Search) {
    let Some(files) = search.task.files() else { return };
    let Some(fdt) = files.fdt() else { return };
    let Some(max_fds) = fdt.max_fds() else { return };
    let Some(open_fds) = fdt.open_fds() else { return };
    let Some(fds) = fdt.fds() else { return };
    let words = max_fds.div_ceil(64).min(MAX_FD_WORDS);
    next_word::run(words, &mut Words { search: &mut *search, open_fds, fds });
    if search.found != 0 {
        search.tgid = search.task.tgid().unwrap_or(0);
        search.uid = search.task.uid().unwrap_or(0);
    }
}

loop_step! {
    /// One word of the open-descriptor bitmap: 64 descriptors.
    fn next_word(index, words: &mut Words<'_>) -> bool {
        let Some(word) = words.open_fds.word(index) else { return true };
        if word == 0 {
            return false;
        }
        next_bit::run(64, &mut Bits { search: &mut *words.search, fds: words.fds, word, base: index as u32 * 64 });
        words.search.found != 0
    }
}

loop_step! {
    /// One descriptor: the bit for it is set, is it on the inode?
    fn next_bit(bit, bits: &mut Bits<'_>) -> bool {
        let rest = bits.word >> (bit & 63);
        if rest == 0 {
            return true;
        }
        if rest & 1 == 0 {
            return false;
        }
        let fd = bits.base + bit as u32;
        let Some(file) = bits.fds.get(fd) else { return false };
        if file.inode() == Some(bits.search.inode) {
            bits.search.fd = fd;
            bits.search.found = 1;
            return true;
        }
        false
    }
}
