//! The program's maps. Keys and values are defined in `relay-common`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use relay_common::{Counters, Verdict};

/// Packets and bytes per verdict, per CPU; the daemon sums the CPUs.
#[map]
static VERDICTS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Adds one frame of `bytes` bytes to `verdict`'s counters on this CPU.
#[inline(always)]
pub(crate) fn count(verdict: Verdict, bytes: u64) {
    if let Some(counters) = VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: the pointer comes from a successful map lookup and per-CPU values are only
        // written by this CPU while the program runs, so the access is exclusive.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}
