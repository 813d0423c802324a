//! Who runs first. The ring buffer reader races holders about to let go, so
//! it must run the moment it wakes; the engine and the file workers keep
//! books and copy files, work that should yield to the machine's own.

/// For the ring buffer reader: the highest priority (nice -20), and the shortest
/// slice the scheduler allows, which (EEVDF, Linux 6.12+) lets a waking task
/// preempt one with a longer slice instead of waiting for it to run to
/// parity. Its work per wake-up is small and bounded, so others lose little.
pub fn urgent() {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: -20,
        priority: 0,
        runtime: 100_000,
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(2) on the calling thread with a valid attr.
    let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if ret != 0 {
        log::debug!("could not shorten the reader's slice: {}", std::io::Error::last_os_error());
        nice(-20);
    }
}

/// Every pin is a descriptor: allow as many as the hard limit permits, and
/// grow the descriptor table once, now. Growing it later, in a process
/// with threads, waits for an RCU grace period (milliseconds in a VM) while
/// the reader is racing a holder: seen as pin latency spikes at fds 256,
/// 512 and 768.
pub fn room_for_pins() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(1 << 20);
    if let Err(err) =
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(hard), maximum: limit.maximum })
    {
        log::warn!("could not raise the descriptor limit to {hard}: {err}; pins are limited");
    }
    let top = hard.min(1 << 16).saturating_sub(1) as i32;
    let Ok(null) = std::fs::File::open("/dev/null") else { return };
    // SAFETY: duplicating our own descriptor onto the lowest free number at
    // or above `top`, then closing that very duplicate (never one in use).
    unsafe {
        let dup = libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&null), libc::F_DUPFD_CLOEXEC, top);
        if dup >= 0 {
            libc::close(dup);
        }
    }
}

/// For bookkeeping and copying: behind whatever else wants the CPU.
pub fn background() {
    nice(10);
}

fn nice(value: i32) {
    // SAFETY: setpriority on the calling thread's own id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, value) } != 0 {
        log::debug!("could not set nice {value}: {}", std::io::Error::last_os_error());
    }
}
