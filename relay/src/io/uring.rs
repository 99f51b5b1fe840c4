//! The io_uring backend: one multishot recvmsg per socket drawing from a provided buffer
//! ring (no syscall per datagram, no buffer per socket), sends batched as SendMsg entries
//! submitted once per loop, and a multishot poll on the eventfd for control commands.
//!
//! Completion user data: the top two bits say what it is, then a 30-bit generation and a
//! 32-bit socket id for receives (a completion from a socket that was removed and whose id
//! was reused is recognised by its old generation and ignored), or a send slot.

use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicU16, Ordering},
        mpsc::Receiver,
    },
};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage};

use super::{
    datapath::{Command, Datapath, Io, SocketId, Stats},
    msghdr,
    wake::Wake,
};

const RING_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Provided buffers: a power of two.
const BUFFERS: u16 = 2048;
const BUF_SIZE: usize = 2048;
const BUFFER_GROUP: u16 = 0;
const SEND_SLOTS: usize = 4096;

const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1 << 62;
const KIND_WAKE: u64 = 2 << 62;
const KIND_CANCEL: u64 = 3 << 62;
const KIND_MASK: u64 = 3 << 62;

/// The provided buffer ring: entries shared with the kernel, and the buffers they name.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: Layout,
    buffers: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> std::io::Result<Self> {
        let layout = Layout::from_size_align(
            usize::from(BUFFERS) * size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        #[expect(clippy::cast_ptr_alignment, reason = "the layout is aligned to a page")]
        let entries = unsafe { alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(std::io::Error::other("out of memory for the buffer ring"));
        }
        let mut ring = Self {
            entries,
            layout,
            buffers: vec![0; usize::from(BUFFERS) * BUF_SIZE],
            tail: 0,
        };
        for bid in 0..BUFFERS {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Hands buffer `bid` (back) to the kernel; visible after [`BufRing::publish`].
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        let addr = self.buffers[usize::from(bid) * BUF_SIZE..].as_mut_ptr() as u64;
        // SAFETY: `index` < BUFFERS, inside the allocation.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in the first entry of the ring, which the kernel reads; it
        // is a u16 aligned to 2 and written with release ordering as the kernel expects.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer(&self, bid: u16) -> &[u8] {
        &self.buffers[usize::from(bid) * BUF_SIZE..(usize::from(bid) + 1) * BUF_SIZE]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.entries.cast(), self.layout) };
    }
}

/// One in-flight send: everything the kernel reads until the completion arrives.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    to: SockAddr,
    data: Vec<u8>,
}

/// What the data path calls: sockets and the sends of this loop.
struct UringIo {
    sockets: HashMap<SocketId, (UdpSocket, u32)>,
    generation: u32,
    /// Sockets removed this loop, closed after the sends already queued for them are
    /// submitted (their fd must not be reused by then).
    closing: Vec<UdpSocket>,
    to_submit: Vec<squeue::Entry>,
    /// Fixed at start-up: a boxed slice never moves its elements, so the kernel's pointers
    /// into a slot stay valid until the slot's completion.
    slots: Box<[SendSlot]>,
    free_slots: Vec<usize>,
    recv_hdr: Box<libc::msghdr>,
    send_errors: u64,
    truncated: u64,
}

impl UringIo {
    fn arm_recv(&mut self, id: SocketId) {
        let Some((socket, generation)) = self.sockets.get(&id) else {
            return;
        };
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(socket.as_raw_fd()),
            &raw const *self.recv_hdr,
            BUFFER_GROUP,
        )
        .build()
        .user_data(KIND_RECV | (u64::from(*generation) << 32) | id as u64);
        self.to_submit.push(entry);
    }
}

impl Io for UringIo {
    fn add(&mut self, id: SocketId, socket: UdpSocket) {
        self.generation = (self.generation + 1) & 0x3FFF_FFFF;
        self.sockets.insert(id, (socket, self.generation));
        self.arm_recv(id);
    }

    fn remove(&mut self, id: SocketId) {
        if let Some((socket, generation)) = self.sockets.remove(&id) {
            let target = KIND_RECV | (u64::from(generation) << 32) | id as u64;
            self.to_submit.push(
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(KIND_CANCEL),
            );
            self.closing.push(socket);
        }
    }

    fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]) {
        let Some((socket, _)) = self.sockets.get(&id) else {
            return;
        };
        let Some(index) = self.free_slots.pop() else {
            self.send_errors += 1;
            return;
        };
        let slot = &mut self.slots[index];
        slot.to = SockAddr::from(to);
        slot.data.clear();
        slot.data.extend_from_slice(data);
        slot.iov = libc::iovec {
            iov_base: slot.data.as_mut_ptr().cast(),
            iov_len: slot.data.len(),
        };
        // The pointers point into the slot, which stays put until its completion frees it.
        slot.hdr = msghdr(
            slot.to.as_ptr().cast_mut().cast(),
            slot.to.len(),
            &raw mut slot.iov,
        );
        let entry = opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), &raw const slot.hdr)
            .build()
            .user_data(KIND_SEND | index as u64);
        self.to_submit.push(entry);
    }
}

// SAFETY: the raw pointers inside (buffer ring entries, send slot headers) point into heap
// memory the struct owns, which stays put when the struct moves; the struct is built on the
// control thread and then used by the data path thread alone.
unsafe impl Send for Uring {}

impl Io for Uring {
    fn add(&mut self, id: SocketId, socket: UdpSocket) {
        self.io.add(id, socket);
    }

    fn remove(&mut self, id: SocketId) {
        self.io.remove(id);
    }

    fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]) {
        self.io.send(id, to, data);
    }
}

pub(crate) struct Uring {
    ring: IoUring,
    bufs: BufRing,
    io: UringIo,
}

impl Uring {
    /// Sets up the ring and the buffer ring; fails where io_uring is unavailable (old
    /// kernels, seccomp profiles that block it) so the caller can fall back.
    pub(crate) fn new() -> std::io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::RecvMsgMulti::CODE, "recvmsg"),
            (opcode::SendMsg::CODE, "sendmsg"),
            (opcode::PollAdd::CODE, "poll"),
        ] {
            if !probe.is_supported(code) {
                return Err(std::io::Error::other(format!("io_uring lacks {name}")));
            }
        }
        let bufs = BufRing::new()?;
        // SAFETY: the ring memory stays allocated (in `bufs`) for as long as `ring` lives:
        // both are fields of `Uring`, and `ring` is dropped first.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        };
        // SAFETY: all-zero msghdr is valid; the kernel only reads the lengths of a
        // multishot recvmsg's template.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        let slots = (0..SEND_SLOTS)
            .map(|_| {
                SendSlot {
                    // SAFETY: all-zero msghdr is valid.
                    hdr: unsafe { std::mem::zeroed() },
                    iov: libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    },
                    to: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                    data: Vec::with_capacity(BUF_SIZE),
                }
            })
            .collect();
        Ok(Self {
            ring,
            bufs,
            io: UringIo {
                sockets: HashMap::new(),
                generation: 0,
                closing: Vec::new(),
                to_submit: Vec::new(),
                slots,
                free_slots: (0..SEND_SLOTS).rev().collect(),
                recv_hdr,
                send_errors: 0,
                truncated: 0,
            },
        })
    }

    fn arm_wake(&mut self, wake: &Wake) {
        let entry = opcode::PollAdd::new(types::Fd(wake.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(KIND_WAKE);
        self.io.to_submit.push(entry);
    }

    /// Pushes the queued entries, submitting whenever the submission queue fills.
    fn submit_queued(&mut self) -> std::io::Result<()> {
        for entry in self.io.to_submit.drain(..) {
            // SAFETY: every entry points at memory that outlives its completion: the boxed
            // receive template, the boxed send slots, and sockets kept open until submitted.
            while unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.ring.submit()?;
            }
        }
        self.ring.submit()?;
        self.io.closing.clear();
        Ok(())
    }

    /// Runs until a `Stop` command; returns the data path's counts.
    pub(crate) fn run(
        mut self,
        mut dp: Datapath,
        commands: &Receiver<Command>,
        wake: &Wake,
    ) -> Stats {
        self.serve_loop(&mut dp, commands, wake);
        Stats {
            send_errors: self.io.send_errors,
            truncated: self.io.truncated,
            ..dp.stats
        }
    }

    fn serve_loop(&mut self, dp: &mut Datapath, commands: &Receiver<Command>, wake: &Wake) {
        self.arm_wake(wake);
        if let Err(e) = self.submit_queued() {
            log::error!("io_uring submit: {e}");
            return;
        }
        let mut completions = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("io_uring wait: {e}");
                    return;
                }
            }
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, result, flags) in &completions {
                match user_data & KIND_MASK {
                    KIND_RECV => self.on_recv(dp, user_data, result, flags),
                    KIND_SEND => {
                        self.io.free_slots.push((user_data & !KIND_MASK) as usize);
                        if result < 0 {
                            self.io.send_errors += 1;
                        }
                    }
                    KIND_WAKE => {
                        wake.clear();
                        while let Ok(c) = commands.try_recv() {
                            if !dp.on_command(&mut self.io, c) {
                                return;
                            }
                        }
                        if !cqueue::more(flags) {
                            self.arm_wake(wake);
                        }
                    }
                    _ => {} // cancellations
                }
            }
            self.bufs.publish();
            dp.publish(self.io.send_errors, self.io.truncated);
            if let Err(e) = self.submit_queued() {
                log::error!("io_uring submit: {e}");
                return;
            }
        }
    }

    fn on_recv(&mut self, dp: &mut Datapath, user_data: u64, result: i32, flags: u32) {
        let id = (user_data & 0xFFFF_FFFF) as SocketId;
        let generation = ((user_data >> 32) & 0x3FFF_FFFF) as u32;
        let current = self
            .io
            .sockets
            .get(&id)
            .is_some_and(|(_, g)| *g == generation);
        let bid = cqueue::buffer_select(flags);
        if result >= 0 && current {
            if let Some(bid) = bid {
                let buf = self.bufs.buffer(bid);
                match types::RecvMsgOut::parse(
                    &buf[..result.unsigned_abs() as usize],
                    &self.io.recv_hdr,
                ) {
                    Ok(out) if !out.is_payload_truncated() => {
                        if let Some(from) = sockaddr(out.name_data()) {
                            dp.on_datagram(&mut self.io, id, from, out.payload_data());
                        }
                    }
                    _ => self.io.truncated += 1,
                }
            }
        } else if result < 0 && result != -libc::ECANCELED && result != -libc::ENOBUFS {
            log::debug!(
                "recvmsg on socket {id}: {}",
                std::io::Error::from_raw_os_error(-result)
            );
        }
        if let Some(bid) = bid {
            self.bufs.push(bid);
        }
        // A multishot that ended (buffers ran out, or an error) is re-armed while its socket
        // is current.
        if !cqueue::more(flags) && current {
            self.io.arm_recv(id);
        }
    }
}

/// The source address in a multishot recvmsg's name field.
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let mut storage = SockAddrStorage::zeroed();
    let len = name.len().min(storage.size_of() as usize);
    // SAFETY: copies `len` bytes into the storage, which is at least that large.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&raw mut storage).cast::<u8>(), len) };
    // SAFETY: the storage holds a sockaddr of `len` bytes as the kernel wrote it.
    unsafe { SockAddr::new(storage, len as u32) }.as_socket()
}
