//! The rate limits' policers as the daemon holds them: with XDP, its mapping of the
//! program's `POLICERS` array (so kernel and userspace spend one budget); without, a table
//! of its own. Slot 0 is never configured and means "no limit"; tenants take slots
//! 1..=tenants, allocations with `--max-bps` the rest.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use relay_common::police::{Limit, MAX_POLICERS, Policer};

/// Slots in the table: the kernel array's.
pub const SLOTS: u32 = MAX_POLICERS;

enum Table {
    Own(Box<[Policer]>),
    /// `len` policers of the kernel's array, mapped shared.
    Mapped {
        base: NonNull<Policer>,
        len: usize,
    },
}

// SAFETY: the mapped table is plain memory of atomics, shared on purpose; nothing in it is
// tied to a thread.
unsafe impl Send for Table {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for Table {}

impl Drop for Table {
    fn drop(&mut self) {
        if let Self::Mapped { base, len } = self {
            // SAFETY: unmaps exactly what `Policers::mapped` mapped; no reference outlives
            // the table.
            unsafe { libc::munmap(base.as_ptr().cast(), mapping_len(*len)) };
        }
    }
}

fn mapping_len(slots: usize) -> usize {
    // SAFETY: a plain libc call.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    (slots * size_of::<Policer>()).div_ceil(page) * page
}

/// The policers and the userspace data path's drops per slot (the kernel counts its own in
/// `POLICED`).
pub struct Policers {
    table: Table,
    dropped: Box<[AtomicU64]>,
    /// Packets each tenant slot admitted in userspace: what the userspace data path
    /// forwarded within the tenant's budget.
    passed: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Policers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policers").finish_non_exhaustive()
    }
}

impl Policers {
    /// A table of the daemon's own, for a relay without XDP.
    pub fn own() -> Self {
        Self::with(Table::Own((0..SLOTS).map(|_| Policer::default()).collect()))
    }

    /// Maps the kernel's `POLICERS` array (created `BPF_F_MMAPABLE`), `SLOTS` entries.
    pub fn mapped(map: BorrowedFd<'_>) -> std::io::Result<Self> {
        Self::map(map, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// The kernel's `POLICERS` array mapped for reading only, to show the limits (`relay
    /// top`): [`Policers::configure`] and [`Policers::admit`] must not be called on it.
    pub fn mapped_read_only(map: BorrowedFd<'_>) -> std::io::Result<Self> {
        Self::map(map, libc::PROT_READ)
    }

    fn map(map: BorrowedFd<'_>, prot: libc::c_int) -> std::io::Result<Self> {
        let len = SLOTS as usize;
        // SAFETY: maps a BPF array's values shared, as the kernel allows for mmapable
        // arrays; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len(len),
                prot,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self::with(Table::Mapped { base, len }))
    }

    fn with(table: Table) -> Self {
        Self {
            table,
            dropped: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            passed: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn get(&self, slot: u32) -> Option<&Policer> {
        if slot == 0 {
            return None;
        }
        match &self.table {
            Table::Own(t) => t.get(slot as usize),
            Table::Mapped { base, len } => ((slot as usize) < *len).then(|| {
                // SAFETY: within the mapping, which lives as long as `self`; a Policer is
                // atomics only, valid for any bytes (the kernel zero-fills the array).
                unsafe { &*base.as_ptr().add(slot as usize) }
            }),
        }
    }

    /// Sets slot `slot`'s limit (and a full burst).
    pub fn configure(&self, slot: u32, limit: Limit) {
        if let Some(p) = self.get(slot) {
            p.configure(limit);
        }
    }

    /// Whether a packet of `bytes` relayed bytes fits the allocation's and the tenant's
    /// budgets (slots, 0: none) now; as the XDP program's `maps::police`: a packet refused
    /// by either spends neither and counts against the one that refused it.
    pub fn admit(&self, [allocation, tenant]: [u32; 2], now_ns: u64, bytes: u64) -> bool {
        let allocation = self.get(allocation).map(|p| (allocation, p));
        if let Some((slot, p)) = allocation {
            if !p.admit(now_ns, bytes) {
                self.dropped[slot as usize].fetch_add(1, Relaxed);
                return false;
            }
        }
        if let Some(p) = self.get(tenant) {
            if !p.admit(now_ns, bytes) {
                if let Some((_, a)) = allocation {
                    a.refund(bytes);
                }
                self.dropped[tenant as usize].fetch_add(1, Relaxed);
                return false;
            }
            self.passed[tenant as usize].fetch_add(1, Relaxed);
        }
        true
    }

    /// Whether a packet of `bytes` fits every budget of a room route, all or none spent:
    /// what the endpoint's policer gave is given back when the room's or the tenant's
    /// refuses (as the XDP program's room path does).
    pub fn admit_route(&self, route: RoutePolicers, now_ns: u64, bytes: u64) -> bool {
        if !self.admit([route.endpoint, 0], now_ns, bytes) {
            return false;
        }
        if !self.admit([route.room, route.tenant], now_ns, bytes) {
            if let Some(p) = self.get(route.endpoint) {
                p.refund(bytes);
            }
            return false;
        }
        true
    }

    /// The limit slot `slot` holds; `None` for slot 0 (none) and beyond the table.
    pub fn limit(&self, slot: u32) -> Option<Limit> {
        self.get(slot).map(Policer::limit)
    }

    /// Packets tenant slot `slot` admitted in userspace.
    pub fn passed(&self, slot: u32) -> u64 {
        self.passed
            .get(slot as usize)
            .map_or(0, |p| p.load(Relaxed))
    }

    /// Packets of slot `slot` the userspace data path dropped over the limit.
    pub fn dropped(&self, slot: u32) -> u64 {
        self.dropped
            .get(slot as usize)
            .map_or(0, |d| d.load(Relaxed))
    }
}

/// The policer slots a room route spends (0: none): its publishing endpoint's
/// `max_bitrate_bps`, its room's, its room's tenant's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicers {
    pub endpoint: u32,
    pub room: u32,
    pub tenant: u32,
}

impl RoutePolicers {
    /// Whether the route spends any budget at all.
    pub const fn any(self) -> bool {
        self.endpoint != 0 || self.room != 0 || self.tenant != 0
    }
}

/// Which slot is whose: tenants fixed at 1..=tenants, allocations from a free list.
pub struct Slots {
    tenants: u32,
    free: Vec<u32>,
}

impl Slots {
    pub fn new(tenants: usize) -> Self {
        let tenants = u32::try_from(tenants).unwrap_or(u32::MAX).min(SLOTS - 1);
        Self {
            tenants,
            free: (tenants + 1..SLOTS).rev().collect(),
        }
    }

    /// The slot of tenant `index` (in `turn::Config::tenants`).
    pub fn tenant(&self, index: usize) -> u32 {
        u32::try_from(index + 1)
            .ok()
            .filter(|s| *s <= self.tenants)
            .unwrap_or(0)
    }

    /// A slot for an allocation's own limit; `None` when all are taken.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Slots in use: the tenants' and those taken (slot 0 means "none").
    pub fn used(&self) -> u32 {
        SLOTS - 1 - u32::try_from(self.free.len()).unwrap_or(u32::MAX)
    }

    pub fn give_back(&mut self, slot: u32) {
        if slot > self.tenants && slot < SLOTS {
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_packet_over_the_tenant_limit_spends_nothing_of_the_allocation() {
        let p = Policers::own();
        let mut slots = Slots::new(1);
        let tenant = slots.tenant(0);
        let allocation = slots.take().unwrap();
        assert_eq!((tenant, allocation), (1, 2));
        // Room for one packet in the tenant's burst, two in the allocation's.
        p.configure(
            tenant,
            Limit {
                packets_per_sec: 1000,
                bits_per_sec: 0,
                burst_ns: MS,
            },
        );
        p.configure(
            allocation,
            Limit {
                packets_per_sec: 1000,
                bits_per_sec: 0,
                burst_ns: 2 * MS,
            },
        );
        assert!(p.admit([allocation, tenant], 10 * MS, 100));
        // The tenant refuses the second packet at the same instant; the allocation, whose
        // burst would take one more, must still have it.
        assert!(!p.admit([allocation, tenant], 10 * MS, 100));
        assert_eq!((p.dropped(tenant), p.dropped(allocation)), (1, 0));
        assert!(p.admit([allocation, 0], 10 * MS, 100));
        assert!(!p.admit([allocation, 0], 10 * MS, 100));
        assert_eq!(p.dropped(allocation), 1);
        assert!(p.admit([0, 0], 10 * MS, 100), "slot 0 limits nothing");
    }

    /// A room route spends its endpoint's, room's and tenant's budgets all or none.
    #[test]
    fn a_room_route_spends_its_three_budgets_all_or_none() {
        let p = Policers::own();
        let packets = |n: u64| Limit {
            packets_per_sec: 1000,
            bits_per_sec: 0,
            burst_ns: n * MS,
        };
        let route = RoutePolicers {
            endpoint: 3,
            room: 4,
            tenant: 1,
        };
        p.configure(route.endpoint, packets(2));
        p.configure(route.room, packets(3));
        p.configure(route.tenant, packets(1));
        let t = 10 * MS;
        assert!(p.admit_route(route, t, 100));
        // The tenant refuses: the endpoint and the room get their share back.
        assert!(!p.admit_route(route, t, 100));
        assert_eq!(p.dropped(route.tenant), 1);
        assert!(p.admit([route.endpoint, route.room], t, 100));
        // The endpoint refuses (its 2 spent): the room and the tenant spend nothing.
        p.configure(route.tenant, packets(5));
        assert!(!p.admit_route(route, t, 100));
        assert_eq!(p.dropped(route.endpoint), 1);
        assert!(p.admit([route.room, route.tenant], t, 100));
        assert!(!RoutePolicers::default().any());
        assert!(p.admit_route(RoutePolicers::default(), t, 100));
    }

    #[test]
    fn slots_keep_tenants_apart_from_allocations() {
        let mut slots = Slots::new(2);
        assert_eq!(
            (slots.tenant(0), slots.tenant(1), slots.tenant(2)),
            (1, 2, 0)
        );
        let a = slots.take().unwrap();
        assert_eq!(a, 3);
        slots.give_back(1);
        slots.give_back(a);
        assert_eq!(slots.take(), Some(a), "a tenant's slot is never handed out");
    }
}
