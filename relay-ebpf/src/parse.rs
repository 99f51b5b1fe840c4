//! The shared parser (`relay_common::parse`) reading straight from XDP packet memory.

use aya_ebpf::programs::XdpContext;
use relay_common::parse::Frame;

/// An XDP frame as the shared parser sees it.
pub(crate) struct XdpFrame<'a>(pub(crate) &'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn has(&self, len: usize) -> bool {
        // Compared as scalars, not as `data + len <= data_end`: `len` comes from a
        // byte-swapped header field, and before Linux 6.3 (Debian 12 runs 6.1) the verifier
        // knows no bounds of a byte swap's result, and refuses adding an unbounded scalar
        // to a packet pointer.
        len <= self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data() + offset;
        if start + N > self.0.data_end() {
            return None;
        }
        // SAFETY: `[start, start + N)` lies inside the packet (checked just above);
        // `read_unaligned` makes no alignment assumption.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }
}

impl XdpFrame<'_> {
    /// Writes `bytes` at `offset`, or `None` when the frame is shorter.
    #[inline(always)]
    pub(crate) fn write<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> Option<()> {
        let start = self.0.data() + offset;
        if start + N > self.0.data_end() {
            return None;
        }
        // SAFETY: `[start, start + N)` lies inside the packet (checked just above).
        unsafe { core::ptr::write_unaligned(start as *mut [u8; N], *bytes) };
        Some(())
    }
}
