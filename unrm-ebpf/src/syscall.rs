//! The records of the `syscalls/sys_enter_*` and `syscalls/sys_exit_*`
//! tracepoints, a stable layout: the common header (8 bytes), the syscall
//! number (8), then one `u64` per argument, or the return value.

use aya_ebpf::programs::TracePointContext;

/// Argument `n` (from 0) of a `sys_enter_*` tracepoint; 0 if unreadable.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a read of the tracepoint's own record, in bounds for the
    // argument positions the probes use.
    unsafe { ctx.read_at::<u64>(16 + 8 * n).unwrap_or(0) }
}

/// The return value of a `sys_exit_*` tracepoint; 0 if unreadable.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: a read of the tracepoint's own record.
    unsafe { ctx.read_at::<i64>(16).unwrap_or(0) }
}
