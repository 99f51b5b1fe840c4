//! The recvmmsg/sendmmsg backend: epoll over every socket and an eventfd that the control
//! task writes when it has queued commands. Receives up to `BATCH` datagrams per system call
//! and sends each socket's queue with one sendmmsg.

// Syscall glue: counts and lengths move between the kernel's C types and Rust's, and are
// checked non-negative before any conversion that could lose a sign.
#![expect(
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "syscall glue, results checked first"
)]

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::mpsc::Receiver,
};

use socket2::{SockAddr, SockAddrStorage};

use super::{
    datapath::{Command, Datapath, Io, SocketId, Stats},
    msghdr,
};
use crate::io::wake::Wake;

const BATCH: usize = 64;
const BUF: usize = 2048;

/// Receive buffers and the headers that point into them, built once per data path thread
/// and reused by every recvmmsg. The vectors never grow after `new`, so the pointers
/// between them stay valid.
struct RecvBatch {
    bufs: Vec<[u8; BUF]>,
    names: Vec<SockAddrStorage>,
    /// Not read: the headers point at them.
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Self {
        let mut bufs = vec![[0_u8; BUF]; BATCH];
        let mut names: Vec<SockAddrStorage> =
            (0..BATCH).map(|_| SockAddrStorage::zeroed()).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: BUF,
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| libc::mmsghdr {
                msg_hdr: msghdr(std::ptr::from_mut(name).cast(), name.size_of(), iov),
                msg_len: 0,
            })
            .collect();
        Self {
            bufs,
            names,
            _iovs: iovs,
            msgs,
        }
    }
}

struct Queued {
    to: SockAddr,
    data: Vec<u8>,
}

pub(crate) struct Mmsg {
    epoll: RawFd,
    sockets: HashMap<SocketId, UdpSocket>,
    /// Sends queued per socket during a batch.
    queue: HashMap<SocketId, Vec<Queued>>,
    send_errors: u64,
    /// Datagrams larger than a receive buffer, dropped.
    truncated: u64,
}

impl Mmsg {
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            epoll,
            sockets: HashMap::new(),
            queue: HashMap::new(),
            send_errors: 0,
            truncated: 0,
        })
    }

    fn watch(&self, fd: RawFd, token: u64) {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event; a failure only means the socket is not watched.
        let rc = unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        if rc < 0 {
            log::error!("epoll_ctl ADD: {}", std::io::Error::last_os_error());
        }
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
            send_errors: self.send_errors,
            truncated: self.truncated,
            ..dp.stats
        }
    }

    fn serve_loop(&mut self, dp: &mut Datapath, commands: &Receiver<Command>, wake: &Wake) {
        const WAKE_TOKEN: u64 = u64::MAX;
        self.watch(wake.fd(), WAKE_TOKEN);
        let mut batch = RecvBatch::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: `events` has room for its length.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("epoll_wait: {e}");
                return;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    wake.clear();
                    while let Ok(c) = commands.try_recv() {
                        if !dp.on_command(self, c) {
                            return;
                        }
                    }
                } else {
                    self.drain_socket(dp, token as SocketId, &mut batch);
                }
            }
            self.flush();
            dp.publish(self.send_errors, self.truncated);
        }
    }

    /// Receives from `id` until it would block, a batch per system call.
    fn drain_socket(&mut self, dp: &mut Datapath, id: SocketId, batch: &mut RecvBatch) {
        let Some(fd) = self.sockets.get(&id).map(AsRawFd::as_raw_fd) else {
            return;
        };
        loop {
            // The kernel shortens each name length to the address it wrote: reset them.
            for (m, name) in batch.msgs.iter_mut().zip(&batch.names) {
                m.msg_hdr.msg_namelen = name.size_of();
                m.msg_hdr.msg_flags = 0;
                m.msg_len = 0;
            }
            // SAFETY: every mmsghdr points at live buffers of the stated sizes (RecvBatch).
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    batch.msgs.as_mut_ptr(),
                    batch.msgs.len() as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                return; // EAGAIN (drained) or an error reported on the next read.
            }
            for i in 0..n as usize {
                let m = &batch.msgs[i];
                // Its first BUF bytes are not the datagram: dropped, as the io_uring
                // backend does, not handed on as if they were all of it.
                if truncated(m) {
                    self.truncated += 1;
                    continue;
                }
                // SAFETY: the storage is plain old data, copied out as the kernel left it.
                let name = unsafe { std::ptr::read(&raw const batch.names[i]) };
                // SAFETY: the kernel filled the storage with `msg_namelen` bytes of address.
                let from = unsafe { SockAddr::new(name, m.msg_hdr.msg_namelen) };
                let Some(from) = from.as_socket() else {
                    continue;
                };
                dp.on_datagram(self, id, from, &batch.bufs[i][..m.msg_len as usize]);
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }

    /// Sends every queued datagram, one sendmmsg per socket and batch.
    fn flush(&mut self) {
        for (id, queued) in &mut self.queue {
            let Some(sock) = self.sockets.get(id) else {
                queued.clear();
                continue;
            };
            for chunk in queued.chunks(BATCH) {
                let mut iovs: Vec<libc::iovec> = chunk
                    .iter()
                    .map(|q| libc::iovec {
                        iov_base: q.data.as_ptr().cast_mut().cast(),
                        iov_len: q.data.len(),
                    })
                    .collect();
                let mut msgs: Vec<libc::mmsghdr> = chunk
                    .iter()
                    .zip(iovs.iter_mut())
                    .map(|(q, iov)| libc::mmsghdr {
                        msg_hdr: msghdr(q.to.as_ptr().cast_mut().cast(), q.to.len(), iov),
                        msg_len: 0,
                    })
                    .collect();
                let mut sent = 0;
                while sent < msgs.len() {
                    // SAFETY: `msgs[sent..]` point at live buffers.
                    let n = unsafe {
                        libc::sendmmsg(
                            sock.as_raw_fd(),
                            msgs[sent..].as_mut_ptr(),
                            (msgs.len() - sent) as u32,
                            0,
                        )
                    };
                    if n <= 0 {
                        // A full socket buffer or an ICMP error: UDP may lose it; count it.
                        self.send_errors += (msgs.len() - sent) as u64;
                        break;
                    }
                    sent += n as usize;
                }
            }
            queued.clear();
        }
    }
}

/// Whether the datagram `m` received was cut to fit its buffer: the kernel sets MSG_TRUNC
/// (and `msg_len` is the full length only when MSG_TRUNC was asked for; both are checked).
fn truncated(m: &libc::mmsghdr) -> bool {
    m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || m.msg_len as usize > BUF
}

impl Io for Mmsg {
    fn add(&mut self, id: SocketId, socket: UdpSocket) {
        if let Err(e) = socket.set_nonblocking(true) {
            log::error!("set_nonblocking: {e}");
        }
        self.watch(socket.as_raw_fd(), id as u64);
        self.sockets.insert(id, socket);
    }

    fn remove(&mut self, id: SocketId) {
        // Closing the socket removes it from the epoll set.
        self.sockets.remove(&id);
        self.queue.remove(&id);
    }

    fn send(&mut self, id: SocketId, to: SocketAddr, data: &[u8]) {
        self.queue.entry(id).or_default().push(Queued {
            to: SockAddr::from(to),
            data: data.to_vec(),
        });
    }
}

impl Drop for Mmsg {
    fn drop(&mut self) {
        // SAFETY: the epoll fd is ours and closed once.
        unsafe { libc::close(self.epoll) };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{io::datapath::Event, policers::Policers};

    /// A datagram larger than a receive buffer is dropped and counted, as the io_uring
    /// backend does: its first `BUF` bytes would otherwise go up as if they were all of it.
    #[test]
    fn a_datagram_larger_than_the_buffer_is_dropped_and_counted() {
        let (events_tx, mut events) = tokio::sync::mpsc::channel(16);
        let mut dp = Datapath::new(events_tx, Arc::new(Policers::own()));
        let mut mmsg = Mmsg::new().unwrap();
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        dp.add_listener(&mut mmsg, listener).unwrap();
        let (commands_tx, commands) = std::sync::mpsc::channel();
        let wake = Arc::new(Wake::new().unwrap());
        let thread_wake = Arc::clone(&wake);
        let data_path = std::thread::spawn(move || mmsg.run(dp, &commands, &thread_wake));

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&[0xAA; BUF + 100], to).unwrap();
        client.send_to(&[0x55; 100], to).unwrap();
        // Datagrams of one socket are handled in order: the small one comes up after the
        // large one was dealt with.
        let Some(Event::Client { data, .. }) = events.blocking_recv() else {
            panic!("nothing handed up");
        };
        assert_eq!(
            (data.len(), data[0]),
            (100, 0x55),
            "the first datagram handed up"
        );
        commands_tx.send(Command::Stop).unwrap();
        wake.wake();
        let stats = data_path.join().unwrap();
        assert_eq!((stats.truncated, stats.up), (1, 1), "{stats}");
    }
}
