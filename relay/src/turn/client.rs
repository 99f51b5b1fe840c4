//! A blocking TURN client over UDP (RFC 8656 section 7, 9, 11): Allocate with long-term
//! credentials, CreatePermission, ChannelBind, Refresh. Lab tests and the load generator use
//! it to set up channels, then send ChannelData on its socket themselves.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use crate::stun::{
    Class, Message, MessageBuilder, Method,
    attr::{self, decode_error_code, decode_str, decode_xor_address},
    integrity::long_term_key,
};

/// RFC 8489 section 6.2.1: retransmit after 500 ms, doubling; 7 tries. A lab is not the
/// Internet: start at 100 ms and give up after 5 tries (3.1 s).
const FIRST_RTO: Duration = Duration::from_millis(100);
const TRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("{method}: no response after {TRIES} tries")]
    Timeout { method: Method },
    #[error("{method}: error {code} {reason}")]
    Refused {
        method: Method,
        code: u16,
        reason: String,
    },
    #[error("{method}: malformed response: {problem}")]
    Malformed {
        method: Method,
        problem: &'static str,
    },
}

/// An allocation held by this client.
pub struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    key: Vec<u8>,
    realm: String,
    nonce: String,
    relayed: SocketAddr,
    next_tid: u64,
}

impl Client {
    /// Allocates a UDP relayed address on `server` from `socket` (bound by the caller),
    /// answering the 401 challenge with `username` and `password`.
    pub fn allocate(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        let mut c = Self {
            socket,
            server,
            username: username.to_owned(),
            key: Vec::new(),
            realm: String::new(),
            nonce: String::new(),
            relayed: server,
            next_tid: u64::from(rand::random::<u32>()) << 32,
        };
        // The first Allocate is unauthenticated on purpose: its 401 carries REALM and NONCE.
        let challenge = c.transact(Method::ALLOCATE, false, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        match challenge {
            Err(ClientError::Refused { code: 401, .. }) => {}
            Err(e) => return Err(e),
            Ok(_) => {
                return Err(ClientError::Malformed {
                    method: Method::ALLOCATE,
                    problem: "allocated without credentials",
                });
            }
        }
        c.key = long_term_key(username, &c.realm, password);
        let response = c.call(Method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })?;
        let msg = Message::decode(&response).map_err(|_| malformed(Method::ALLOCATE, "decode"))?;
        c.relayed = msg
            .get(attr::XOR_RELAYED_ADDRESS)
            .and_then(|v| decode_xor_address(v, &msg.transaction_id()).ok())
            .ok_or_else(|| malformed(Method::ALLOCATE, "no XOR-RELAYED-ADDRESS"))?;
        Ok(c)
    }

    pub const fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    pub const fn server(&self) -> SocketAddr {
        self.server
    }

    /// The socket the allocation lives on: send ChannelData to [`Client::server`] on it.
    pub const fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<(), ClientError> {
        self.call(Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    /// Binds `channel` (0x4000-0x7FFF) to `peer`, which also installs its permission.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), ClientError> {
        self.call(Method::CHANNEL_BIND, |b| {
            let [hi, lo] = channel.to_be_bytes();
            b.add(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0]);
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    /// Refreshes the allocation for `lifetime` seconds (0 deletes it).
    pub fn refresh(&mut self, lifetime: u32) -> Result<(), ClientError> {
        self.call(Method::REFRESH, |b| {
            b.add_u32(attr::LIFETIME, lifetime);
        })
        .map(drop)
    }

    /// An authenticated request, retried once with the new nonce on 438 Stale Nonce (RFC
    /// 8489 section 9.2.5).
    fn call(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Vec<u8>, ClientError> {
        match self.transact(method, true, &attrs) {
            Err(ClientError::Refused { code: 438, .. }) => self.transact(method, true, &attrs),
            other => other,
        }
    }

    /// Sends a request until its response arrives; a success response comes back as bytes,
    /// an error response as `Refused` (after taking REALM and NONCE from it).
    fn transact(
        &mut self,
        method: Method,
        authenticated: bool,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Vec<u8>, ClientError> {
        self.next_tid += 1;
        let mut tid = [0; 12];
        tid[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        attrs(&mut b);
        if authenticated {
            b.add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, self.realm.as_bytes())
                .add(attr::NONCE, self.nonce.as_bytes())
                .add_message_integrity(&self.key);
        }
        let request = b.build();
        let mut buf = [0; 2048];
        let mut rto = FIRST_RTO;
        for _ in 0..TRIES {
            self.socket.send_to(&request, self.server)?;
            self.socket.set_read_timeout(Some(rto))?;
            loop {
                let (n, from) = match self.socket.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                // Anything else on the socket (ChannelData, stray responses) is not ours.
                let Ok(msg) = Message::decode(&buf[..n]) else {
                    continue;
                };
                if from != self.server || msg.transaction_id() != tid {
                    continue;
                }
                return self.answer(method, &msg);
            }
            rto *= 2;
        }
        Err(ClientError::Timeout { method })
    }

    fn answer(&mut self, method: Method, msg: &Message<'_>) -> Result<Vec<u8>, ClientError> {
        match msg.class() {
            Class::Success => Ok(msg.bytes().to_vec()),
            Class::Error => {
                let str_of = |typ| msg.get(typ).and_then(|v| decode_str(v).ok());
                if let Some(realm) = str_of(attr::REALM) {
                    realm.clone_into(&mut self.realm);
                }
                if let Some(nonce) = str_of(attr::NONCE) {
                    nonce.clone_into(&mut self.nonce);
                }
                let (code, reason) = msg
                    .get(attr::ERROR_CODE)
                    .and_then(|v| decode_error_code(v).ok())
                    .ok_or_else(|| malformed(method, "error response without ERROR-CODE"))?;
                Err(ClientError::Refused {
                    method,
                    code,
                    reason: reason.to_owned(),
                })
            }
            _ => Err(malformed(method, "neither success nor error")),
        }
    }
}

const fn malformed(method: Method, problem: &'static str) -> ClientError {
    ClientError::Malformed { method, problem }
}
