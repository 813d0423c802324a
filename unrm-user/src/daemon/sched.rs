//! Who runs first. The ring buffer reader races holders about to let go, so
//! it must run the moment it wakes; the engine and the capture thread keep
//! books and copy files, work that should yield to the machine's own.

/// For the ring buffer reader: the highest nice value, and the shortest
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
