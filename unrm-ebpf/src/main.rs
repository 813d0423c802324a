//! unrm's probes. Three jobs, one module each:
//!
//! - [`deletion`]: a name was removed (unlink, unlinkat, rename over a file):
//!   who, which path, and where a filesystem hook shows it, which inode and
//!   whether anything else held it.
//! - [`release`]: a process the daemon watches may have let go of a watched
//!   inode (close, dup2 over it, munmap, exec...). Everyone else pays a map miss.
//! - [`iter`]: iterators that list every deleted-but-held regular file (fds,
//!   mappings, executables); the daemon's source of truth.
//!
//! Kernel struct offsets come from the running kernel's BTF ([`kernel`]); the
//! layouts that cross to userspace are defined once in `unrm-abi`.
#![no_std]
#![no_main]

mod deletion;
mod fshooks;
mod holder;
mod iter;
mod kernel;
mod maps;
mod release;
mod vfshooks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any loop it cannot bound, so a panic path must be
    // one the optimiser proves unreachable; nothing here should panic.
    unsafe { core::hint::unreachable_unchecked() }
}
