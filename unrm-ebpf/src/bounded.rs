//! Loops the verifier checks once.
//!
//! `bpf_loop` calls a step function up to `n` times, and the verifier
//! checks that function on its own rather than every path through `n`
//! unrolled copies; the walks up the directory tree and across every
//! process would not fit otherwise. The step must return exactly 0 (go on)
//! or 1 (stop), and the verifier must be able to see that: it once lost the
//! bound on a step that returned a `u32` flag as it was (0 or 1 in fact),
//! merely because the walk's state grew a field. [`loop_step!`] writes the callback around a step that
//! returns `bool`, so it returns 0 or 1 by construction, and it keeps the
//! casts between the state and `bpf_loop`'s `void *` in this one place.

/// Defines a module `$name` holding a `bpf_loop` step over a `&mut` state
/// and `$name::run(n, &mut state)`, which runs it for index 0, 1, ... until
/// it returns `true`, at most `n` times.
macro_rules! loop_step {
    (
        $(#[$doc:meta])*
        fn $name:ident($index:pat_param, $state:ident: &mut $ty:ty) -> bool $body:block
    ) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[inline(always)]
            pub(super) fn run(n: u32, state: &mut $ty) {
                // SAFETY: `callback` is a step of the signature `bpf_loop`
                // calls, and it turns the context back into the `&mut $ty`
                // given here, which outlives the loop.
                unsafe {
                    aya_ebpf::helpers::generated::bpf_loop(
                        n,
                        callback as *mut _,
                        state as *mut $ty as *mut _,
                        0,
                    );
                }
            }

            #[inline(never)]
            extern "C" fn callback(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
                // SAFETY: `ctx` is the `&mut $ty` that `run` gave `bpf_loop`,
                // handed back unchanged; nothing else holds it meanwhile.
                let state = unsafe { &mut *(ctx as *mut $ty) };
                step(index, state) as i64
            }

            #[inline(always)]
            fn step($index: u64, $state: &mut $ty) -> bool $body
        }
    };
}
pub(crate) use loop_step;
