//! Where a dentry is, as text, written inside the kernel.
//!
//! A deletion event must say which directory the name was in, and by the
//! time the daemon reads the event the kernel may have forgotten. Most
//! hooks here may not call `bpf_d_path` (tracepoints and kprobes never
//! may), and the filesystem-level hooks hold only a dentry to give it
//! anyway, so the probes walk `d_parent` up themselves: the names from a dentry up to a root, leaf first, each ended
//! by a NUL, crossing mount points the way `d_path` does. The walk runs
//! under `bpf_loop` so that the verifier checks one step instead of every
//! path through `DIR_DEPTH` unrolled steps.

use unrm_abi::{DIR_DEPTH, DIR_MAX};

use crate::{
    bounded::loop_step,
    kernel::{Dentry, PathRef, VfsMount},
    maps::{DATA_LEN, NAME_SLOT},
};

/// The text area of an event buffer: room for `DATA_LEN` bytes of text and
/// a name's worth of slack past it.
pub type TextBuf = [u8; DATA_LEN + NAME_SLOT];

/// Where a directory walk ended.
pub enum Walk {
    /// Reached the task's root or the mount namespace's root.
    Complete(usize),
    /// Stopped early: too deep, out of room, or a read failed.
    Truncated(usize),
}

/// The state of a directory walk between `bpf_loop` steps.
#[repr(C)]
struct WalkState {
    dentry: Dentry,
    /// The mount `dentry` was reached through; `None` for a walk that stays
    /// within one filesystem.
    mnt: Option<VfsMount>,
    /// Where the walk stops, when it crosses mounts.
    root: Option<PathRef>,
    text: *mut TextBuf,
    base: usize,
    len: usize,
    /// 0 while walking, then `DONE_COMPLETE` or `DONE_TRUNCATED`.
    done: u64,
}

const DONE_COMPLETE: u64 = 1;
const DONE_TRUNCATED: u64 = 2;

/// Writes the names from `start` up to `root` into `text`, leaf first,
/// beginning at `text[base]`, crossing mount points: the directory a
/// relative path starts from.
#[inline(always)]
pub fn write_dir(text: &mut TextBuf, base: usize, start: PathRef, root: PathRef) -> Walk {
    walk(text, base, start.dentry, Some(start.mnt), Some(root))
}

/// Writes the names from `dentry` up to its filesystem's root, leaf first
/// (the file's own name first): a path relative to the filesystem, for
/// hooks that see a dentry but not the mount it was reached through.
#[inline(always)]
pub fn write_fs_path(text: &mut TextBuf, base: usize, dentry: Dentry) -> Walk {
    walk(text, base, dentry, None, None)
}

#[inline(always)]
fn walk(
    text: &mut TextBuf,
    base: usize,
    dentry: Dentry,
    mnt: Option<VfsMount>,
    root: Option<PathRef>,
) -> Walk {
    let mut state = WalkState { dentry, mnt, root, text, base, len: 0, done: 0 };
    walk_step::run(DIR_DEPTH, &mut state);
    match state.done {
        DONE_COMPLETE => Walk::Complete(state.len),
        _ => Walk::Truncated(state.len),
    }
}

loop_step! {
    /// One step up the tree.
    fn walk_step(_index, state: &mut WalkState) -> bool {
        state.done = climb(state);
        state.done != 0
    }
}

/// Moves `s` one name up, writing that name; 0 to go on, else how it ended.
#[inline(always)]
fn climb(s: &mut WalkState) -> u64 {
    if let Some(mnt) = s.mnt {
        if s.root == Some(PathRef { mnt, dentry: s.dentry }) {
            return DONE_COMPLETE;
        }
        if mnt.root() == Some(s.dentry) {
            return cross_mount(s, mnt);
        }
    }
    let Some(parent) = s.dentry.parent() else { return DONE_TRUNCATED };
    if parent == s.dentry {
        return DONE_COMPLETE;
    }
    let Some(name) = s.dentry.name() else { return DONE_TRUNCATED };
    if s.len > DIR_MAX - NAME_SLOT {
        return DONE_TRUNCATED;
    }
    // The mask changes nothing (base + len < DATA_LEN) but lets the
    // verifier see that the write stays inside the buffer.
    let at = (s.base + s.len) & (DATA_LEN - 1);
    // SAFETY: `at < DATA_LEN` and the buffer is `DATA_LEN + NAME_SLOT`
    // bytes, so these `NAME_SLOT` bytes are inside it; `write_dir` and
    // `write_fs_path` hold it borrowed for the whole walk.
    let slot = unsafe { &mut *((s.text as *mut u8).wrapping_add(at) as *mut [u8; NAME_SLOT]) };
    let Some(n) = name.copy_into(slot) else { return DONE_TRUNCATED };
    s.len += n;
    s.dentry = parent;
    0
}

/// At the root of `mnt`: goes on from the dentry it is mounted on, in the
/// mount below, as `d_path` does.
#[inline(always)]
fn cross_mount(s: &mut WalkState, mnt: VfsMount) -> u64 {
    let Some(mount) = mnt.mount() else { return DONE_TRUNCATED };
    let Some(parent) = mount.parent() else { return DONE_TRUNCATED };
    if parent == mount {
        return DONE_COMPLETE;
    }
    let Some(mountpoint) = mount.mountpoint() else { return DONE_TRUNCATED };
    let Some(below) = parent.vfsmount() else { return DONE_TRUNCATED };
    s.dentry = mountpoint;
    s.mnt = Some(below);
    0
}
