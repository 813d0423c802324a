//! unrm's probes: they see a name removed while something may still hold
//! the file, tell the daemon fast enough for it to pin the file, and list
//! what is held when the daemon asks.
//!
//! The probes, one module per way of seeing:
//!
//! - [`deletion`]: the tracepoint tier. Syscall tracepoints say who removed
//!   which name (unlink, unlinkat, rename over a file) and from which
//!   directory; ext4's tracepoints inside the same call say which inode.
//! - [`fshooks`]: the fs tier. ext4's tracepoints alone, which cost nothing
//!   to unrelated system calls; the path comes relative to the filesystem.
//! - [`vfshooks`]: the fentry and kprobe tiers. The VFS's own
//!   `vfs_unlink`/`vfs_rename`, for every filesystem, and `__fput`, the
//!   final release of any open file.
//! - [`release`]: a process the daemon watches may have let go of a watched
//!   inode (close, dup2 over it, munmap, exec...). Everyone else pays a map
//!   miss.
//! - [`iter`]: iterators that list every deleted-but-held regular file (fds,
//!   mappings, executables); the daemon's source of truth.
//!
//! The daemon loads one deletion tier (the one configured, or the best this
//! kernel accepts). What the probes share, imported only from here down:
//!
//! - [`event`]: a deletion event as every tier makes and sends it.
//! - [`dirwalk`]: a dentry's path written out by walking up the tree.
//! - [`kernel`]: typed accessors for the kernel structures read, with the
//!   field offsets the daemon takes from the running kernel's BTF; the only
//!   module that follows a kernel pointer.
//! - [`syscall`]: the syscall tracepoints' record layout.
//! - [`bounded`]: `bpf_loop`, so that long walks pass the verifier.
//! - [`maps`]: the maps and the globals the daemon fills in before load.
//!
//! The layouts that cross to userspace are defined once in `unrm-abi`.
#![no_std]
#![no_main]

mod bounded;
mod deletion;
mod dirwalk;
mod event;
mod fshooks;
mod iter;
mod kernel;
mod maps;
mod release;
mod syscall;
mod vfshooks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any loop it cannot bound, so a panic path must be
    // one the optimiser proves unreachable; nothing here should panic.
    unsafe { core::hint::unreachable_unchecked() }
}
