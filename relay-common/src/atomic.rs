#![expect(
    clippy::inline_always,
    reason = "inlined into the XDP program in the kernel"
)]
//! Compare-and-swap and subtract on a u64 that the kernel's CPUs and the daemon share.
//!
//! On the host these are `AtomicU64`'s methods. Rust's BPF target offers only atomic loads
//! and stores (it predates BPF_CMPXCHG and BPF_FETCH, in Linux 5.12 with the v3 instruction
//! set), so the eBPF build calls the intrinsics those methods are made of; LLVM emits the
//! BPF atomic instructions for them.

use core::sync::atomic::AtomicU64;

/// Reads the value. LLVM's BPF backend selects no instruction for an atomic load (before the
/// v4 load-acquire) but an aligned 8-byte load is one instruction, and so atomic anyway.
#[inline(always)]
pub(crate) fn load(a: &AtomicU64) -> u64 {
    #[cfg(not(target_arch = "bpf"))]
    {
        a.load(core::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: `a` is a live, aligned AtomicU64; a volatile read is not elided or split.
        unsafe { core::ptr::read_volatile(a.as_ptr()) }
    }
}

/// Stores `new` if the value is `old`; returns the value seen and whether it stored.
#[inline(always)]
pub(crate) fn compare_exchange(a: &AtomicU64, old: u64, new: u64) -> Result<u64, u64> {
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::Ordering::Relaxed;
        a.compare_exchange(old, new, Relaxed, Relaxed)
    }
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};
        // SAFETY: `a` is a live, aligned AtomicU64, which may be accessed atomically.
        let (seen, stored) =
            unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(a.as_ptr(), old, new) };
        if stored { Ok(seen) } else { Err(seen) }
    }
}

/// Subtracts `v`, wrapping.
#[inline(always)]
pub(crate) fn fetch_sub(a: &AtomicU64, v: u64) {
    #[cfg(not(target_arch = "bpf"))]
    {
        a.fetch_sub(v, core::sync::atomic::Ordering::Relaxed);
    }
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xsub};
        // SAFETY: as above.
        unsafe { atomic_xsub::<u64, u64, { Relaxed }>(a.as_ptr(), v) };
    }
}
