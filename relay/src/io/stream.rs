//! TURN over TCP and TLS (RFC 8656 section 7.3 framing): STUN messages and padded
//! ChannelData records, cut from the byte stream by their length fields.
//!
//! A stream client holds a socket, a task and a read buffer for as long as its connection
//! lasts, so what it may hold is bounded: records by size, connections by count (per source
//! and in all), and time by three deadlines ([`StreamLimits`]). What is refused or closed
//! for each reason is counted ([`Streams`]'s `Display`).

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc::Sender,
    time::Instant,
};

use super::datapath::Event;
use crate::{
    stun::{Kind, channel_data, classify, message},
    turn::{ClientTuple, Transport},
};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting for a slow stream client before new ones are dropped.
const WRITE_QUEUE: usize = 1024;

/// The largest record (STUN message or ChannelData, padding included) a stream client may
/// send. The length fields allow 64 KiB, and a client could announce that much and stall
/// while the relay buffers it. Nothing legitimate comes near 8 KiB: TURN requests are a few
/// hundred bytes, and ChannelData or a Send indication carries one datagram for the peer,
/// which WebRTC keeps under 1,200 bytes and the UDP data path's own buffers cap at 2,048.
const MAX_RECORD: usize = 8 * 1024;
/// How long a new connection (past its TLS handshake) has to send its first whole record:
/// a client opens a stream to use it at once (Allocate, or a Binding).
const FIRST_RECORD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a record may take to arrive once its first byte has: a TURN client writes a
/// record at once, so one that trickles is holding the buffer.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may go without sending a whole record. A client that still uses
/// its allocation sends one at least every 300 s (permissions last 300 s and must be
/// refreshed, RFC 8656 section 9), WebRTC every few seconds (consent checks, RFC 7675); 600 s
/// is also the allocation lifetime and coturn's nonce lifetime.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections from one source at a time. Schools and hospitals put whole buildings behind
/// one NAT address (or one IPv6 /64): each browser in a call holds one or two (TURN over TCP
/// and over TLS) per peer connection, so 64 would refuse a couple of classrooms; 1,000 serves
/// some 500 browsers and still leaves one source a tenth of [`MAX_CONNECTIONS`].
const MAX_PER_SOURCE: usize = 1_000;
/// Connections at a time over every stream listener: each holds a socket, two tasks and up
/// to [`MAX_RECORD`] plus a read's worth of buffer.
const MAX_CONNECTIONS: usize = 10_000;
/// Refusals are logged on the first and then on every this-many-th, so that a flood of
/// connections cannot flood the log.
const LOG_EVERY: u64 = 1_000;

/// What a stream client may hold. `Default` gives the production values; tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamLimits {
    pub(crate) max_record: usize,
    pub(crate) first_record: Duration,
    pub(crate) record: Duration,
    pub(crate) idle: Duration,
    pub(crate) per_source: usize,
    pub(crate) total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_record: MAX_RECORD,
            first_record: FIRST_RECORD_TIMEOUT,
            record: RECORD_TIMEOUT,
            idle: IDLE_TIMEOUT,
            per_source: MAX_PER_SOURCE,
            total: MAX_CONNECTIONS,
        }
    }
}

/// Why a connection was refused or closed by the relay; each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    OverSourceCap,
    OverTotalCap,
    HandshakeTimeout,
    NoFirstRecord,
    RecordTooLarge,
    RecordUnfinished,
    Idle,
    LostFraming,
}

impl Reason {
    /// How many there are (`LostFraming` is the last): each is counted in its own slot.
    const COUNT: usize = Self::LostFraming as usize + 1;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OverSourceCap => "over the per-source connection cap",
            Self::OverTotalCap => "over the total connection cap",
            Self::HandshakeTimeout => "TLS handshake not done in time",
            Self::NoFirstRecord => "no whole record in time after opening",
            Self::RecordTooLarge => "record over the size cap",
            Self::RecordUnfinished => "record not finished in time",
            Self::Idle => "idle",
            Self::LostFraming => "not STUN or ChannelData",
        })
    }
}

/// What every stream listener shares: the limits, the connections open per source and in
/// all, and the count of each [`Reason`]. One for all listeners, so the caps hold across
/// TCP and TLS and every listening address.
#[derive(Debug)]
pub(crate) struct Streams {
    limits: StreamLimits,
    open: Mutex<Open>,
    reasons: [AtomicU64; Reason::COUNT],
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl Streams {
    pub(crate) fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
            reasons: Default::default(),
        })
    }

    /// A place for a connection from `client`, or `None` (counted, logged now and then)
    /// when a cap is reached.
    fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let source = source_of(client);
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let from_source = open.by_source.get(&source).copied().unwrap_or(0);
            if open.total >= self.limits.total {
                Some(Reason::OverTotalCap)
            } else if from_source >= self.limits.per_source {
                Some(Reason::OverSourceCap)
            } else {
                open.total += 1;
                *open.by_source.entry(source).or_default() += 1;
                None
            }
        };
        let Some(reason) = refused else {
            return Some(Slot {
                streams: Arc::clone(self),
                source,
            });
        };
        let n = self.count(reason);
        if n == 1 || n.is_multiple_of(LOG_EVERY) {
            log::warn!(
                "TCP/TLS connection from {client} refused: {reason} ({n} so far; logged on the \
                 first and every {LOG_EVERY}th)"
            );
        }
        None
    }

    /// Counts one more `reason` and returns how many there have been.
    fn count(&self, reason: Reason) -> u64 {
        self.reasons[reason as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    fn counted(&self, reason: Reason) -> u64 {
        self.reasons[reason as usize].load(Ordering::Relaxed)
    }
}

/// For the log when the relay stops: what was refused and closed, by reason.
impl fmt::Display for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.limits;
        write!(
            f,
            "refused: {} over the per-source cap ({}), {} over the total cap ({}); closed: {} \
             TLS handshakes over {HANDSHAKE_TIMEOUT:?}, {} without a record {:?} after opening, \
             {} records over {} bytes, {} records unfinished after {:?}, {} idle for {:?}, {} \
             not STUN or ChannelData",
            self.counted(Reason::OverSourceCap),
            l.per_source,
            self.counted(Reason::OverTotalCap),
            l.total,
            self.counted(Reason::HandshakeTimeout),
            self.counted(Reason::NoFirstRecord),
            l.first_record,
            self.counted(Reason::RecordTooLarge),
            l.max_record,
            self.counted(Reason::RecordUnfinished),
            l.record,
            self.counted(Reason::Idle),
            l.idle,
            self.counted(Reason::LostFraming),
        )
    }
}

/// Who a connection is counted against: an IPv4 address, or an IPv6 address's /64 (one host
/// may hold a whole /64, so a cap per IPv6 address would cap nothing).
fn source_of(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A connection's place under the caps, given back when dropped: however its task ends
/// (closed, failed, panicked, or dropped with the runtime).
#[derive(Debug)]
struct Slot {
    streams: Arc<Streams>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Accepts connections on `listener` for as long as the runtime lives. `streams` is shared
/// by every listener.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    events: Sender<Event>,
    streams: Arc<Streams>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        // Over a cap, `tcp` is dropped here: closed at once.
        let Some(slot) = streams.admit(client.ip()) else {
            continue;
        };
        let Ok(server) = tcp.local_addr() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let events = events.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, tuple(Transport::Tcp, client, server), events, slot).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let tuple = tuple(Transport::Tls, client, server);
                            connection(tls, tuple, events, slot).await;
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake with {client} failed: {e}"),
                        Err(_) => {
                            slot.streams.count(Reason::HandshakeTimeout);
                            log::debug!("TLS handshake with {client} timed out");
                        }
                    }
                }
            }
        });
    }
}

const fn tuple(transport: Transport, client: SocketAddr, server: SocketAddr) -> ClientTuple {
    ClientTuple {
        transport,
        client,
        server,
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    tuple: ClientTuple,
    events: Sender<Event>,
    slot: Slot,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if events
        .send(Event::StreamOpen { tuple, writer: tx })
        .await
        .is_err()
    {
        return;
    }
    let (reader, mut writer) = tokio::io::split(stream);
    let write = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let streams = Arc::clone(&slot.streams);
    if let Err(reason) = read_records(reader, tuple, &events, &streams.limits).await {
        streams.count(reason);
        log::debug!("{tuple}: {reason}, closing");
    }
    write.abort();
    // The place is free before the control task hears of the close.
    drop(slot);
    let _ = events.send(Event::StreamClosed { tuple }).await;
}

/// Cuts records from `reader` and hands them to the control task until the client closes
/// or the control task is gone (`Ok`), or the client breaks a limit (`Err`, the reason).
async fn read_records<R: AsyncRead + Unpin>(
    mut reader: R,
    tuple: ClientTuple,
    events: &Sender<Event>,
    limits: &StreamLimits,
) -> Result<(), Reason> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 4096];
    let mut progress = Progress::new(Instant::now());
    loop {
        let (deadline, late) = progress.deadline(limits);
        let n = match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Err(_) => return Err(late),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            Ok(Ok(n)) => n,
        };
        let now = Instant::now();
        // At most `max_record` waits in `buf` (see `TooLarge`), plus one read.
        buf.extend_from_slice(&chunk[..n]);
        let mut completed = false;
        loop {
            match next_record(&buf, limits.max_record) {
                Record::Incomplete => break,
                // The stream has lost its framing: nothing after this can be trusted.
                Record::Garbage => return Err(Reason::LostFraming),
                Record::TooLarge => return Err(Reason::RecordTooLarge),
                Record::Complete(len) => {
                    completed = true;
                    let data: Vec<u8> = buf.drain(..len).collect();
                    if events.send(Event::Client { tuple, data }).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        progress.read(now, completed, !buf.is_empty());
    }
}

/// When a connection last made progress, for its deadlines.
#[derive(Debug)]
struct Progress {
    opened: Instant,
    last_record: Option<Instant>,
    /// When the first byte of the unfinished record at the head of the buffer came.
    partial_since: Option<Instant>,
}

impl Progress {
    const fn new(opened: Instant) -> Self {
        Self {
            opened,
            last_record: None,
            partial_since: None,
        }
    }

    /// Takes note of a read at `now` that `completed` records or not and left part of one
    /// behind (`partial`) or not. A part left behind a completed record came in this read.
    fn read(&mut self, now: Instant, completed: bool, partial: bool) {
        if completed {
            self.last_record = Some(now);
        }
        self.partial_since = match (partial, completed) {
            (false, _) => None,
            (true, true) => Some(now),
            (true, false) => self.partial_since.or(Some(now)),
        };
    }

    /// The next read must come by the instant returned, or the connection is closed for
    /// the reason returned: the first record, then each next one, is due within a time of
    /// the opening or the last record, and a record once begun must be finished.
    fn deadline(&self, limits: &StreamLimits) -> (Instant, Reason) {
        let quiet = match self.last_record {
            None => (self.opened + limits.first_record, Reason::NoFirstRecord),
            Some(last) => (last + limits.idle, Reason::Idle),
        };
        match self.partial_since {
            Some(since) if since + limits.record < quiet.0 => {
                (since + limits.record, Reason::RecordUnfinished)
            }
            _ => quiet,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Record {
    Incomplete,
    Garbage,
    /// Its length field says more than `max_record`: refused before it is buffered.
    TooLarge,
    Complete(usize),
}

/// The length of the record at the head of `buf`, from its length field, padding included
/// (RFC 8656 section 7.3 framing: over a stream, ChannelData is padded to 4 bytes).
fn next_record(buf: &[u8], max_record: usize) -> Record {
    let Some(first) = buf.first() else {
        return Record::Incomplete;
    };
    let len = match classify(*first) {
        Kind::Stun => message::framed_len(buf),
        Kind::ChannelData => channel_data::framed_len(buf),
        Kind::Other => return Record::Garbage,
    };
    match len {
        Some(len) if len > max_record => Record::TooLarge,
        Some(len) if buf.len() >= len => Record::Complete(len),
        _ => Record::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;
    use crate::stun::{ChannelData, Class, MessageBuilder, Method};

    #[test]
    fn records_are_cut_by_their_lengths_with_channel_padding() {
        let stun = MessageBuilder::new(Class::Request, Method::BINDING, [1; 12]).build();
        let cd = ChannelData {
            channel: 0x4000,
            data: b"abcde",
        }
        .encode(true);
        let mut stream = stun.clone();
        stream.extend_from_slice(&cd);
        assert_eq!(next_record(&stream, MAX_RECORD), Record::Complete(20));
        assert_eq!(next_record(&stream[20..], MAX_RECORD), Record::Complete(12));
        assert_eq!(next_record(&stream[20..30], MAX_RECORD), Record::Incomplete);
        assert_eq!(next_record(&stream[..3], MAX_RECORD), Record::Incomplete);
        assert_eq!(
            next_record(b"\x80\x00\x00\x00", MAX_RECORD),
            Record::Garbage
        );
    }

    #[test]
    fn a_record_announced_over_the_cap_is_refused_from_its_header() {
        // STUN announcing 65,532 bytes: refused from the length field alone.
        assert_eq!(
            next_record(&[0x00, 0x01, 0xFF, 0xFC], MAX_RECORD),
            Record::TooLarge
        );
        // ChannelData: its padded length is what is buffered.
        let at_cap = channel_data(MAX_RECORD - 4);
        assert_eq!(
            next_record(&at_cap, MAX_RECORD),
            Record::Complete(MAX_RECORD)
        );
        assert_eq!(
            next_record(&channel_data(MAX_RECORD - 3)[..4], MAX_RECORD),
            Record::TooLarge
        );
    }

    /// How long a test waits for what should happen at once (or after a short limit):
    /// without the limit under test, it fails after this instead of hanging.
    const WAIT: Duration = Duration::from_secs(5);

    fn channel_data(len: usize) -> Vec<u8> {
        ChannelData {
            channel: 0x4000,
            data: &vec![7; len],
        }
        .encode(true)
    }

    fn binding() -> Vec<u8> {
        MessageBuilder::new(Class::Request, Method::BINDING, [1; 12]).build()
    }

    /// A stream listener on loopback with `limits`, and what it tells the control task.
    struct Listener {
        addr: SocketAddr,
        streams: Arc<Streams>,
        events: tokio::sync::mpsc::Receiver<Event>,
        /// Kept, as the control task keeps them: a connection whose writer is dropped ends
        /// its write half.
        writers: Vec<Sender<Vec<u8>>>,
    }

    impl Listener {
        async fn start(limits: StreamLimits) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let streams = Streams::new(limits);
            let (tx, events) = tokio::sync::mpsc::channel(64);
            tokio::spawn(serve(listener, None, tx, Arc::clone(&streams)));
            Self {
                addr,
                streams,
                events,
                writers: Vec::new(),
            }
        }

        /// A connection from `source` (any 127.0.0.0/8 address is loopback's).
        async fn connect_from(&self, source: [u8; 4]) -> TcpStream {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((source, 0))).unwrap();
            socket.connect(self.addr).await.unwrap()
        }

        /// A connection from `source` once the relay has taken it up.
        async fn open_from(&mut self, source: [u8; 4]) -> TcpStream {
            let stream = self.connect_from(source).await;
            let me = stream.local_addr().unwrap();
            self.wait_for(|e| matches!(e, Event::StreamOpen { tuple, .. } if tuple.client == me))
                .await;
            stream
        }

        async fn wait_for(&mut self, wanted: impl Fn(&Event) -> bool) -> Event {
            loop {
                let event = tokio::time::timeout(WAIT, self.events.recv())
                    .await
                    .expect("the event never came")
                    .expect("the listener is gone");
                if let Event::StreamOpen { writer, .. } = &event {
                    self.writers.push(writer.clone());
                }
                if wanted(&event) {
                    return event;
                }
            }
        }

        fn counted(&self, reason: Reason) -> u64 {
            self.streams.counted(reason)
        }
    }

    /// Whether the relay closes `stream` within [`WAIT`]: EOF, or a reset when it closed
    /// with bytes unread.
    async fn closed_by_relay(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 1024];
        let eof = async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        };
        tokio::time::timeout(WAIT, eof).await.is_ok()
    }

    fn limits(change: impl FnOnce(&mut StreamLimits)) -> StreamLimits {
        let mut limits = StreamLimits::default();
        change(&mut limits);
        limits
    }

    #[tokio::test]
    async fn a_record_announced_over_the_cap_closes_the_connection_unbuffered() {
        let mut listener = Listener::start(StreamLimits::default()).await;
        let mut client = listener.open_from([127, 0, 0, 1]).await;
        // A record of exactly the cap goes through.
        client
            .write_all(&channel_data(MAX_RECORD - 4))
            .await
            .unwrap();
        let Event::Client { data, .. } = listener
            .wait_for(|e| matches!(e, Event::Client { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(data.len(), MAX_RECORD);
        // A STUN header announcing 64 KiB, and the client stalls.
        let mut header = binding();
        header[2..4].copy_from_slice(&0xFFFC_u16.to_be_bytes());
        client.write_all(&header).await.unwrap();
        assert!(closed_by_relay(&mut client).await);
        assert_eq!(listener.counted(Reason::RecordTooLarge), 1);
        let event = listener
            .wait_for(|e| !matches!(e, Event::StreamOpen { .. }))
            .await;
        assert!(matches!(event, Event::StreamClosed { .. }), "{event:?}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_record_is_closed() {
        let first_record = Duration::from_millis(200);
        let mut listener = Listener::start(limits(|l| l.first_record = first_record)).await;
        let opened = Instant::now();
        let mut client = listener.open_from([127, 0, 0, 1]).await;
        // Part of a record does not count.
        client.write_all(&binding()[..10]).await.unwrap();
        assert!(closed_by_relay(&mut client).await);
        assert!(opened.elapsed() >= first_record);
        assert_eq!(listener.counted(Reason::NoFirstRecord), 1);
    }

    #[tokio::test]
    async fn a_record_left_unfinished_closes_the_connection() {
        let mut listener = Listener::start(limits(|l| l.record = Duration::from_millis(200))).await;
        let mut client = listener.open_from([127, 0, 0, 1]).await;
        let mut records = binding();
        records.extend_from_slice(&binding()[..10]);
        client.write_all(&records).await.unwrap();
        assert!(closed_by_relay(&mut client).await);
        assert_eq!(listener.counted(Reason::RecordUnfinished), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_since_its_last_record_is_closed() {
        let idle = Duration::from_secs(1);
        let mut listener = Listener::start(limits(|l| l.idle = idle)).await;
        let mut client = listener.open_from([127, 0, 0, 1]).await;
        // Records 300 ms apart keep it open past `idle` after opening: the time counts from
        // the last record. (Spaced by time: that nothing happens cannot be awaited.)
        let opened = Instant::now();
        for _ in 0..4 {
            client.write_all(&binding()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(opened.elapsed() > idle);
        let mut byte = [0];
        assert!(
            matches!(client.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "closed while records were coming"
        );
        assert!(closed_by_relay(&mut client).await);
        assert_eq!(listener.counted(Reason::Idle), 1);
    }

    #[tokio::test]
    async fn connections_over_the_per_source_cap_are_closed_at_once() {
        let mut listener = Listener::start(limits(|l| l.per_source = 2)).await;
        let first = listener.open_from([127, 0, 0, 1]).await;
        let _second = listener.open_from([127, 0, 0, 1]).await;
        // Another source is counted apart.
        let _other = listener.open_from([127, 0, 0, 2]).await;
        let mut third = listener.connect_from([127, 0, 0, 1]).await;
        assert!(closed_by_relay(&mut third).await);
        assert_eq!(listener.counted(Reason::OverSourceCap), 1);
        // A connection that ends gives its place back.
        let gone = first.local_addr().unwrap();
        drop(first);
        listener
            .wait_for(|e| matches!(e, Event::StreamClosed { tuple } if tuple.client == gone))
            .await;
        let _again = listener.open_from([127, 0, 0, 1]).await;
    }

    #[tokio::test]
    async fn connections_over_the_total_cap_are_closed_at_once() {
        let mut listener = Listener::start(limits(|l| l.total = 2)).await;
        let _a = listener.open_from([127, 0, 0, 1]).await;
        let _b = listener.open_from([127, 0, 0, 2]).await;
        let mut c = listener.connect_from([127, 0, 0, 3]).await;
        assert!(closed_by_relay(&mut c).await);
        assert_eq!(listener.counted(Reason::OverTotalCap), 1);
    }

    #[tokio::test]
    async fn a_place_is_given_back_however_its_task_ends() {
        let streams = Streams::new(limits(|l| l.per_source = 1));
        let ip = IpAddr::from([192, 0, 2, 1]);
        let slot = streams.admit(ip).unwrap();
        assert!(streams.admit(ip).is_none());
        let task = tokio::spawn(async move {
            let _slot = slot;
            panic!("a connection task that panics");
        });
        assert!(task.await.is_err());
        let _slot = streams
            .admit(ip)
            .expect("the panicked task's place is free");
        assert_eq!(streams.counted(Reason::OverSourceCap), 1);
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let streams = Streams::new(limits(|l| l.per_source = 1));
        let _a = streams.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(streams.admit("2001:db8::2".parse().unwrap()).is_none());
        let _b = streams.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let _c = streams.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(streams.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }
}
