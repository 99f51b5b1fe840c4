//! TURN over TCP and TLS (RFC 8656 section 7.3 framing): STUN messages and padded
//! ChannelData records, cut from the byte stream by their length fields.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc::Sender,
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

/// Accepts connections on `listener` for as long as the runtime lives.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    events: Sender<Event>,
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
        let Ok(server) = tcp.local_addr() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let events = events.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, tuple(Transport::Tcp, client, server), events).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            connection(tls, tuple(Transport::Tls, client, server), events).await;
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake with {client} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {client} timed out"),
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
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if events
        .send(Event::StreamOpen { tuple, writer: tx })
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 4096];
    'read: loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match next_record(&buf) {
                Record::Incomplete => break,
                Record::Garbage => {
                    // The stream has lost its framing: nothing after this can be trusted.
                    log::debug!("{tuple}: not STUN or ChannelData, closing");
                    break 'read;
                }
                Record::Complete(len) => {
                    let data: Vec<u8> = buf.drain(..len).collect();
                    if events.send(Event::Client { tuple, data }).await.is_err() {
                        break 'read;
                    }
                }
            }
        }
    }
    write.abort();
    let _ = events.send(Event::StreamClosed { tuple }).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Record {
    Incomplete,
    Garbage,
    Complete(usize),
}

/// The length of the record at the head of `buf`, padding included.
fn next_record(buf: &[u8]) -> Record {
    let Some(first) = buf.first() else {
        return Record::Incomplete;
    };
    let len = match classify(*first) {
        Kind::Stun => message::framed_len(buf),
        Kind::ChannelData => channel_data::framed_len(buf),
        Kind::Other => return Record::Garbage,
    };
    match len {
        Some(len) if buf.len() >= len => Record::Complete(len),
        _ => Record::Incomplete,
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(next_record(&stream), Record::Complete(20));
        assert_eq!(next_record(&stream[20..]), Record::Complete(12));
        assert_eq!(next_record(&stream[20..30]), Record::Incomplete);
        assert_eq!(next_record(&stream[..3]), Record::Incomplete);
        assert_eq!(next_record(b"\x80\x00\x00\x00"), Record::Garbage);
    }
}
