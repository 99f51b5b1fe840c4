//! Long-term credentials (RFC 8489 section 9.2) for TURN requests: static users and coturn's
//! TURN REST API ephemeral credentials, with nonces that expire.
//!
//! Nonces are stateless: `expiry` (Unix seconds, hex) followed by a truncated HMAC of it
//! under a key drawn at start-up, so any nonce this process issued can be checked without a
//! table, and none can be forged. Passwords and keys are never logged.

use std::collections::HashMap;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::stun::{
    Message,
    attr::{self, decode_str},
    integrity::{IntegrityKind, long_term_key, rest_password},
};

/// The credentials a server accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Static long-term users: name and password.
    pub users: HashMap<String, String>,
    /// coturn's `--static-auth-secret`: usernames `expiry[:user]`, passwords
    /// base64(HMAC-SHA1(secret, username)).
    pub rest_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// Never prints passwords or the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("rest_secret", &self.rest_secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A request whose credentials checked out.
#[derive(Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub username: String,
    pub key: Vec<u8>,
    /// The integrity attribute the client used; the response uses the same.
    pub kind: IntegrityKind,
}

/// Without the key: nothing holding a key prints it.
impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused, as the error code to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no integrity, unknown user, wrong password, expired REST credential. Answered
    /// with REALM and a fresh NONCE.
    Unauthorized,
    /// 438: the nonce expired (or is not ours). Answered with REALM and a fresh NONCE.
    StaleNonce,
    /// 400: integrity present but USERNAME, REALM or NONCE missing.
    BadRequest,
}

pub struct Authenticator {
    realm: String,
    credentials: Credentials,
    nonce_key: [u8; 32],
    nonce_lifetime: u64,
}

const NONCE_MAC_HEX: usize = 16;

impl Authenticator {
    pub fn new(
        realm: String,
        credentials: Credentials,
        nonce_lifetime_secs: u64,
        nonce_key: [u8; 32],
    ) -> Self {
        Self {
            realm,
            credentials,
            nonce_key,
            nonce_lifetime: nonce_lifetime_secs,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A nonce valid until `unix_now` + the nonce lifetime.
    pub fn nonce(&self, unix_now: u64) -> String {
        let expiry = format!("{:016x}", unix_now + self.nonce_lifetime);
        let mac = self.nonce_mac(&expiry);
        format!("{expiry}{mac}")
    }

    fn nonce_mac(&self, expiry_hex: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.nonce_key).expect("any key length");
        mac.update(expiry_hex.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..NONCE_MAC_HEX / 2]
            .iter()
            .fold(String::with_capacity(NONCE_MAC_HEX), |mut hex, b| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{b:02x}");
                hex
            })
    }

    fn nonce_is_fresh(&self, nonce: &str, unix_now: u64) -> bool {
        let (Some(expiry_hex), Some(mac)) = (nonce.get(..16), nonce.get(16..)) else {
            return false;
        };
        let genuine: bool = self
            .nonce_mac(expiry_hex)
            .as_bytes()
            .ct_eq(mac.as_bytes())
            .into();
        genuine && u64::from_str_radix(expiry_hex, 16).is_ok_and(|expiry| expiry > unix_now)
    }

    /// The password of `username`: a static user's, or the REST API's derived one while the
    /// username's expiry timestamp is in the future.
    fn password(&self, username: &str, unix_now: u64) -> Option<String> {
        if let Some(p) = self.credentials.users.get(username) {
            return Some(p.clone());
        }
        let secret = self.credentials.rest_secret.as_ref()?;
        let expiry: u64 = username.split(':').next()?.parse().ok()?;
        (expiry > unix_now).then(|| rest_password(secret.as_bytes(), username))
    }

    /// Checks a request's long-term credentials (RFC 8489 section 9.2.4).
    pub fn check(&self, msg: &Message<'_>, unix_now: u64) -> Result<Authenticated, Refusal> {
        if msg.integrity_kind().is_none() {
            return Err(Refusal::Unauthorized);
        }
        let field = |typ| msg.get(typ).and_then(|v| decode_str(v).ok());
        let (Some(username), Some(_realm), Some(nonce)) = (
            field(attr::USERNAME),
            field(attr::REALM),
            field(attr::NONCE),
        ) else {
            return Err(Refusal::BadRequest);
        };
        if !self.nonce_is_fresh(nonce, unix_now) {
            return Err(Refusal::StaleNonce);
        }
        let password = self
            .password(username, unix_now)
            .ok_or(Refusal::Unauthorized)?;
        // The key uses this server's realm: a request for another realm fails integrity.
        let key = long_term_key(username, &self.realm, &password);
        let kind = msg
            .verify_integrity(&key)
            .map_err(|_| Refusal::Unauthorized)?;
        Ok(Authenticated {
            username: username.to_owned(),
            key,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageBuilder, Method};

    const NOW: u64 = 1_800_000_000;

    fn authenticator() -> Authenticator {
        let credentials = Credentials {
            users: HashMap::from([("alice".to_owned(), "wonderland".to_owned())]),
            rest_secret: Some("north".to_owned()),
        };
        Authenticator::new("lab".to_owned(), credentials, 600, [7; 32])
    }

    fn request(username: &str, password: &str, nonce: &str, kind: IntegrityKind) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, [1; 12]);
        b.add(attr::USERNAME, username.as_bytes())
            .add(attr::REALM, b"lab")
            .add(attr::NONCE, nonce.as_bytes());
        b.add_integrity(kind, &long_term_key(username, "lab", password));
        b.build()
    }

    fn check(a: &Authenticator, bytes: &[u8], now: u64) -> Result<Authenticated, Refusal> {
        a.check(&Message::decode(bytes).unwrap(), now)
    }

    #[test]
    fn static_user_with_either_integrity() {
        let a = authenticator();
        for kind in [IntegrityKind::Sha1, IntegrityKind::Sha256] {
            let ok = check(
                &a,
                &request("alice", "wonderland", &a.nonce(NOW), kind),
                NOW,
            )
            .unwrap();
            assert_eq!((ok.username.as_str(), ok.kind), ("alice", kind));
        }
        assert_eq!(
            check(
                &a,
                &request("alice", "guess", &a.nonce(NOW), IntegrityKind::Sha1),
                NOW
            ),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            check(
                &a,
                &request("mallory", "x", &a.nonce(NOW), IntegrityKind::Sha1),
                NOW
            ),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let a = authenticator();
        let nonce = a.nonce(NOW);
        let req = request("alice", "wonderland", &nonce, IntegrityKind::Sha1);
        assert!(check(&a, &req, NOW + 599).is_ok());
        assert_eq!(check(&a, &req, NOW + 600), Err(Refusal::StaleNonce));
        // A later expiry with the old MAC is not ours.
        let forged = format!("{:016x}{}", NOW + 10_000, &nonce[16..]);
        assert_eq!(
            check(
                &a,
                &request("alice", "wonderland", &forged, IntegrityKind::Sha1),
                NOW
            ),
            Err(Refusal::StaleNonce)
        );
        // Another process's key does not verify this one's nonces.
        let other = Authenticator::new("lab".to_owned(), Credentials::default(), 600, [8; 32]);
        assert!(!other.nonce_is_fresh(&nonce, NOW));
    }

    #[test]
    fn rest_credentials_until_their_expiry() {
        let a = authenticator();
        let user = format!("{}:bob", NOW + 60);
        let password = rest_password(b"north", &user);
        assert!(
            check(
                &a,
                &request(&user, &password, &a.nonce(NOW), IntegrityKind::Sha1),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            check(
                &a,
                &request(&user, &password, &a.nonce(NOW + 61), IntegrityKind::Sha1),
                NOW + 61
            ),
            Err(Refusal::Unauthorized)
        );
        // A timestamp-only username (coturn accepts it too).
        let bare = format!("{}", NOW + 60);
        assert!(
            check(
                &a,
                &request(
                    &bare,
                    &rest_password(b"north", &bare),
                    &a.nonce(NOW),
                    IntegrityKind::Sha1
                ),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            check(
                &a,
                &request(&user, "wrong", &a.nonce(NOW), IntegrityKind::Sha1),
                NOW
            ),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn missing_fields_and_missing_integrity() {
        let a = authenticator();
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, [1; 12]);
        b.add(attr::USERNAME, b"alice").add_message_integrity(b"k");
        assert_eq!(check(&a, &b.build(), NOW), Err(Refusal::BadRequest));
        let plain = MessageBuilder::new(Class::Request, Method::ALLOCATE, [1; 12]).build();
        assert_eq!(check(&a, &plain, NOW), Err(Refusal::Unauthorized));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let a = authenticator();
        let shown = format!("{:?}", a.credentials);
        assert!(
            !shown.contains("wonderland") && !shown.contains("north"),
            "{shown}"
        );
    }
}
