//! `relay run` settings: coturn-like flags, the same keys in a TOML file (`--config`), flags
//! winning over the file. [`Settings::resolve`] checks everything before the relay starts and
//! names the field and what is wrong.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    dataplane::XdpModeChoice,
    http::{ApiConfig, Token},
    room,
    turn::{
        self,
        auth::Credentials,
        policy::{IpRange, PeerPolicy},
        tenant::Tenant,
    },
};
use relay_common::police::Limit;

/// The UDP datapath's I/O backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoBackend {
    /// io_uring, falling back to recvmmsg/sendmmsg where io_uring is unavailable.
    #[default]
    Auto,
    /// io_uring only (multishot recvmsg, provided buffer ring, batched sends).
    Uring,
    /// recvmmsg/sendmmsg over epoll.
    Mmsg,
}

/// Every setting, as a flag and as a TOML key of the same name.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of these settings (flags win over it).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP and TCP port for STUN/TURN [default: 3478].
    #[arg(long, value_name = "PORT")]
    pub listening_port: Option<u16>,
    /// TLS port [default: 5349].
    #[arg(long, value_name = "PORT")]
    pub tls_listening_port: Option<u16>,
    /// A second TLS port, for networks that pass only 443.
    #[arg(long, value_name = "PORT")]
    pub alt_tls_listening_port: Option<u16>,
    /// Address to listen on (repeatable) [default: every address of the host but link-local].
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub listening_ip: Vec<IpAddr>,
    /// Address relayed sockets bind to, one per family [default: the first listening IP of
    /// each family].
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub relay_ip: Vec<IpAddr>,
    /// Public address to advertise: `PUBLIC` or `PUBLIC/PRIVATE` (the relay IP it maps to).
    #[arg(long, value_name = "IP[/IP]")]
    #[serde(default)]
    pub external_ip: Vec<String>,
    /// Lowest relayed port [default: 49152].
    #[arg(long, value_name = "PORT")]
    pub min_port: Option<u16>,
    /// Highest relayed port [default: 65535].
    #[arg(long, value_name = "PORT")]
    pub max_port: Option<u16>,
    /// Lowest port of room endpoints whose port the API does not give [default: 40000].
    #[arg(long, value_name = "PORT")]
    pub media_min_port: Option<u16>,
    /// Highest port of room endpoints [default: 44999].
    #[arg(long, value_name = "PORT")]
    pub media_max_port: Option<u16>,
    /// Realm of the long-term credentials [default: relay].
    #[arg(long)]
    pub realm: Option<String>,
    /// A static user, `NAME:PASSWORD` (repeatable). On the command line every user of the
    /// host can read it (`ps`): prefer `--user-file`.
    #[arg(long, value_name = "NAME:PASSWORD")]
    #[serde(default)]
    pub user: Vec<Secret>,
    /// File of static users, one `NAME:PASSWORD` per line (`#` comments); readable by its
    /// owner only.
    #[arg(long, value_name = "FILE")]
    pub user_file: Option<PathBuf>,
    /// Accept TURN REST API credentials (`--static-auth-secret`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub use_auth_secret: Option<bool>,
    /// Shared secret of the TURN REST API (prefer `--static-auth-secret-file`).
    #[arg(long, value_name = "SECRET")]
    pub static_auth_secret: Option<Secret>,
    /// File holding the shared secret of the TURN REST API; readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub static_auth_secret_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM); readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub pkey: Option<PathBuf>,
    /// Peer range to allow even when denied by default: `IP`, `IP-IP` or `IP/LEN` (repeatable).
    #[arg(long, value_name = "RANGE")]
    #[serde(default)]
    pub allowed_peer_ip: Vec<String>,
    /// Peer range to refuse (repeatable).
    #[arg(long, value_name = "RANGE")]
    #[serde(default)]
    pub denied_peer_ip: Vec<String>,
    /// Bits per second each allocation may relay (both directions counted).
    #[arg(long, value_name = "BPS")]
    pub max_bps: Option<u64>,
    /// Allocations per user.
    #[arg(long, value_name = "N")]
    pub user_quota: Option<usize>,
    /// Allocations in all.
    #[arg(long, value_name = "N")]
    pub total_quota: Option<usize>,
    /// Live permissions (peer IPs) one allocation may hold [default: 128].
    #[arg(long, value_name = "N")]
    pub max_permissions: Option<usize>,
    /// Live channels one allocation may hold [default: 64].
    #[arg(long, value_name = "N")]
    pub max_channels: Option<usize>,
    /// Answers to requests without credentials over UDP (Binding, 401) per second to one
    /// source /24 or /64, in bursts of 5 s worth; the rest are withheld, so the relay is
    /// useless as an amplifier. 0: no limit [default: 100].
    #[arg(long, value_name = "PER_SECOND")]
    pub unauthenticated_rate: Option<u32>,
    /// Longest allocation lifetime a client may ask for, in seconds [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub max_allocate_lifetime: Option<u64>,
    /// Do not listen on TCP.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_tcp: Option<bool>,
    /// Do not listen on TLS.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_tls: Option<bool>,
    /// UDP datapath backend.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub io: Option<IoBackend>,
    /// Network interface to attach the XDP program to (repeatable: flows may enter by one
    /// and leave by another; none: no XDP). In TOML a name or a list.
    #[arg(long, short = 'i', value_name = "IF")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub interface: Vec<String>,
    /// XDP attach mode: auto tries native (driver) mode and falls back to generic (skb).
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpModeChoice>,
    /// Serve in userspace only, even with an interface configured.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_xdp: Option<bool>,
    /// Name of this relay's data plane and state, for several relays on one host
    /// [default: default]. Pins live under /sys/fs/bpf/relay/<instance>.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Directory of the allocation state a restarted relay takes up again
    /// [default: /var/lib/relay].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// On SIGINT/SIGTERM, remove the XDP program and its maps too (by default they stay and
    /// keep forwarding, so a restart or upgrade interrupts no media).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub detach_on_exit: Option<bool>,
    /// Address of the HTTP control API (rooms), e.g. 127.0.0.1:8080 [default: none, no
    /// API]. Plain HTTP: prefer a loopback address.
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// File holding the control API's bearer token (required with api-listen); readable by
    /// its owner only.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Address of a listener for `/metrics`, `/healthz` and `/readyz` alone (no token,
    /// no API), e.g. 0.0.0.0:9090 for Prometheus and Kubernetes probes [default: none;
    /// the control API's listener serves them too].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Rego policy file deciding TURN allocations, permissions and channels, and room
    /// joins, publishes and subscriptions (repeatable; package `relay`, rules `allow` and
    /// `reason`). Reloaded on SIGHUP and when a file changes.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub policy: Vec<PathBuf>,
    /// JSON document the policy sees as `data` (reloaded with it).
    #[arg(long, value_name = "FILE")]
    pub policy_data: Option<PathBuf>,
    /// Longest one policy decision may take, in milliseconds; beyond, it denies
    /// [default: 20].
    #[arg(long, value_name = "MS")]
    pub policy_timeout_ms: Option<u64>,
    /// File every policy decision is appended to, as a JSON line [default: none].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub audit_log_max_bytes: Option<u64>,
    /// Rotated audit logs kept besides the live one [default: 5].
    #[arg(long, value_name = "N")]
    pub audit_log_keep: Option<u32>,
    /// Tenants and their shared limits: in the TOML file only, as `[[tenant]]` tables.
    #[arg(skip)]
    #[serde(default)]
    pub tenant: Vec<TenantSettings>,
}

/// A `[[tenant]]` table: who belongs to the tenant, and the limits they share.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TenantSettings {
    pub name: String,
    /// Static users (`user = ["NAME:PASSWORD"]`) of the tenant, by name.
    #[serde(default)]
    pub users: Vec<String>,
    /// Patterns (`*` matches anything) on the user part of REST usernames `EXPIRY:USER`.
    #[serde(default)]
    pub rest_users: Vec<String>,
    /// Packets per second the tenant's allocations may relay, both directions together.
    pub packets_per_second: Option<u64>,
    /// Bits per second of relayed data (without IP, UDP or ChannelData headers).
    pub bits_per_second: Option<u64>,
    /// Burst above the rates, as milliseconds of traffic at the rate [default: 250].
    pub burst_ms: Option<u64>,
}

/// Most tenants a relay takes: the kernel's policer array is shared with the allocations'
/// `--max-bps` limits.
pub const MAX_TENANTS: usize = 1024;

/// `interface = "eth0"` or `interface = ["eth0", "eth1"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// A setting that is wrong, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        problem: problem.into(),
    }
}

/// Everything `relay run` needs, checked.
pub struct RunConfig {
    pub turn: turn::Config,
    pub rooms: room::Config,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    pub io: IoBackend,
    /// The interfaces to attach XDP to; none with `--no-xdp`.
    pub interface: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub instance: String,
    /// The state file: `<state-dir>/<instance>.json`.
    pub state_file: PathBuf,
    pub detach_on_exit: bool,
    /// The control API, when `api-listen` is set ([`crate::http::start`] serves it).
    pub api: Option<ApiConfig>,
    /// A listener of its own for metrics and health probes.
    pub metrics_listen: Option<SocketAddr>,
    /// The policy, loaded, when `policy` is set (the TURN server and the rooms decide
    /// with it; `crate::policy::watch` reloads it).
    pub policy: Option<crate::policy::Shared>,
}

impl Settings {
    /// Loads `--config` if given and lets the flags override it.
    pub fn load(self) -> Result<Self, ConfigError> {
        if self.static_auth_secret.is_some() || !self.user.is_empty() {
            log::warn!(
                "a password or secret on the command line is visible to every user of this host \
                 (ps, /proc): prefer --user-file and --static-auth-secret-file"
            );
        }
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        let file: Self =
            toml::from_str(&text).map_err(|e| bad("config", format!("{}: {e}", path.display())))?;
        if file.static_auth_secret.is_some() || !file.user.is_empty() {
            if let Err(problem) = owner_only(&path) {
                log::warn!("config: {problem}: it holds passwords or a secret");
            }
        }
        Ok(self.over(file))
    }

    /// `self` (the flags) wherever set, else `file`.
    fn over(self, file: Self) -> Self {
        fn vec<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
            if flag.is_empty() { file } else { flag }
        }
        Self {
            config: self.config,
            listening_port: self.listening_port.or(file.listening_port),
            tls_listening_port: self.tls_listening_port.or(file.tls_listening_port),
            alt_tls_listening_port: self.alt_tls_listening_port.or(file.alt_tls_listening_port),
            listening_ip: vec(self.listening_ip, file.listening_ip),
            relay_ip: vec(self.relay_ip, file.relay_ip),
            external_ip: vec(self.external_ip, file.external_ip),
            min_port: self.min_port.or(file.min_port),
            max_port: self.max_port.or(file.max_port),
            media_min_port: self.media_min_port.or(file.media_min_port),
            media_max_port: self.media_max_port.or(file.media_max_port),
            realm: self.realm.or(file.realm),
            user: vec(self.user, file.user),
            user_file: self.user_file.or(file.user_file),
            use_auth_secret: self.use_auth_secret.or(file.use_auth_secret),
            static_auth_secret: self.static_auth_secret.or(file.static_auth_secret),
            static_auth_secret_file: self
                .static_auth_secret_file
                .or(file.static_auth_secret_file),
            cert: self.cert.or(file.cert),
            pkey: self.pkey.or(file.pkey),
            allowed_peer_ip: vec(self.allowed_peer_ip, file.allowed_peer_ip),
            denied_peer_ip: vec(self.denied_peer_ip, file.denied_peer_ip),
            max_bps: self.max_bps.or(file.max_bps),
            user_quota: self.user_quota.or(file.user_quota),
            total_quota: self.total_quota.or(file.total_quota),
            max_permissions: self.max_permissions.or(file.max_permissions),
            max_channels: self.max_channels.or(file.max_channels),
            unauthenticated_rate: self.unauthenticated_rate.or(file.unauthenticated_rate),
            max_allocate_lifetime: self.max_allocate_lifetime.or(file.max_allocate_lifetime),
            no_tcp: self.no_tcp.or(file.no_tcp),
            no_tls: self.no_tls.or(file.no_tls),
            io: self.io.or(file.io),
            interface: vec(self.interface, file.interface),
            xdp_mode: self.xdp_mode.or(file.xdp_mode),
            no_xdp: self.no_xdp.or(file.no_xdp),
            instance: self.instance.or(file.instance),
            state_dir: self.state_dir.or(file.state_dir),
            detach_on_exit: self.detach_on_exit.or(file.detach_on_exit),
            api_listen: self.api_listen.or(file.api_listen),
            api_token_file: self.api_token_file.or(file.api_token_file),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            tenant: vec(self.tenant, file.tenant),
            policy: vec(self.policy, file.policy),
            policy_data: self.policy_data.or(file.policy_data),
            policy_timeout_ms: self.policy_timeout_ms.or(file.policy_timeout_ms),
            audit_log: self.audit_log.or(file.audit_log),
            audit_log_max_bytes: self.audit_log_max_bytes.or(file.audit_log_max_bytes),
            audit_log_keep: self.audit_log_keep.or(file.audit_log_keep),
        }
    }

    /// Checks every setting and builds the run configuration. `local_ips` are the host's
    /// addresses (the default listening IPs).
    #[expect(clippy::too_many_lines, reason = "one check per setting")]
    pub fn resolve(self, local_ips: &[IpAddr]) -> Result<RunConfig, ConfigError> {
        let port = self.listening_port.unwrap_or(3478);
        let tls_port = self.tls_listening_port.unwrap_or(5349);
        if port == 0 {
            return Err(bad("listening-port", "must not be 0"));
        }
        let listening: Vec<IpAddr> = if self.listening_ip.is_empty() {
            local_ips
                .iter()
                .copied()
                .filter(|ip| !is_link_local(*ip))
                .collect()
        } else {
            self.listening_ip.clone()
        };
        if listening.is_empty() {
            return Err(bad("listening-ip", "no address to listen on"));
        }
        let relay_ips = if self.relay_ip.is_empty() {
            let v4 = listening
                .iter()
                .find(|ip| ip.is_ipv4() && !ip.is_loopback());
            let v6 = listening
                .iter()
                .find(|ip| ip.is_ipv6() && !ip.is_loopback());
            v4.into_iter().chain(v6).copied().collect::<Vec<_>>()
        } else {
            self.relay_ip.clone()
        };
        if relay_ips.is_empty() {
            return Err(bad("relay-ip", "no address to relay from: give --relay-ip"));
        }
        if relay_ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
            || relay_ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
        {
            return Err(bad("relay-ip", "at most one address per family"));
        }
        let mut external_ips = HashMap::new();
        for e in &self.external_ip {
            let (public, private) = e.split_once('/').unwrap_or((e, ""));
            let public: IpAddr = public
                .parse()
                .map_err(|_| bad("external-ip", format!("{e:?}: not an IP address")))?;
            let private = if private.is_empty() {
                *relay_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == public.is_ipv4())
                    .ok_or_else(|| bad("external-ip", format!("{e}: no relay IP of its family")))?
            } else {
                private.parse().map_err(|_| {
                    bad(
                        "external-ip",
                        format!("{e:?}: the private part is not an IP address"),
                    )
                })?
            };
            external_ips.insert(private, public);
        }
        let min_port = self.min_port.unwrap_or(49152);
        let max_port = self.max_port.unwrap_or(65535);
        if min_port == 0 || min_port > max_port {
            return Err(bad(
                "min-port",
                format!("{min_port} must be between 1 and max-port ({max_port})"),
            ));
        }

        let mut user_lines: Vec<String> = self.user.iter().map(|u| u.0.clone()).collect();
        if let Some(path) = &self.user_file {
            let text = read_secret("user-file", path)?;
            user_lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let static_auth_secret = match (&self.static_auth_secret, &self.static_auth_secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "static-auth-secret-file",
                    "give the secret or its file, not both",
                ));
            }
            (Some(secret), None) => Some(secret.0.clone()),
            (None, Some(path)) => Some(
                read_secret("static-auth-secret-file", path)?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let mut users = HashMap::new();
        for u in &user_lines {
            let (name, password) = u
                .split_once(':')
                .ok_or_else(|| bad("user", format!("{:?}: expected NAME:PASSWORD", redact(u))))?;
            if name.is_empty() || password.is_empty() {
                return Err(bad(
                    "user",
                    format!("{:?}: empty name or password", redact(u)),
                ));
            }
            users.insert(name.to_owned(), password.to_owned());
        }
        let rest_secret = match (self.use_auth_secret.unwrap_or(false), static_auth_secret) {
            (true, Some(s)) if !s.is_empty() => Some(s),
            (true, _) => return Err(bad("static-auth-secret", "required with use-auth-secret")),
            (false, Some(_)) => {
                return Err(bad(
                    "use-auth-secret",
                    "static-auth-secret is set but use-auth-secret is not",
                ));
            }
            (false, None) => None,
        };
        if users.is_empty() && rest_secret.is_none() {
            return Err(bad(
                "user",
                "no credentials: give --user NAME:PASSWORD or --use-auth-secret --static-auth-secret SECRET (an open relay is refused)",
            ));
        }
        let ranges = |field, list: &[String]| -> Result<Vec<IpRange>, ConfigError> {
            list.iter()
                .map(|r| r.parse().map_err(|e| bad(field, format!("{r:?}: {e}"))))
                .collect()
        };
        let allowed = ranges("allowed-peer-ip", &self.allowed_peer_ip)?;
        let denied = ranges("denied-peer-ip", &self.denied_peer_ip)?;

        let udp: Vec<SocketAddr> = listening
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let tcp = if self.no_tcp.unwrap_or(false) {
            Vec::new()
        } else {
            udp.clone()
        };
        let mut tls_ports = vec![tls_port];
        tls_ports.extend(self.alt_tls_listening_port);
        let tls_config = match (self.no_tls.unwrap_or(false), &self.cert, &self.pkey) {
            (true, _, _) | (false, None, None) => None,
            (false, Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            (false, None, Some(_)) => return Err(bad("cert", "pkey is set but cert is not")),
            (false, Some(_), None) => return Err(bad("pkey", "cert is set but pkey is not")),
        };
        let tls = if tls_config.is_some() {
            listening
                .iter()
                .flat_map(|ip| tls_ports.iter().map(|p| SocketAddr::new(*ip, *p)))
                .collect()
        } else {
            Vec::new()
        };
        // The host's own addresses: refused as peers except where they relay (policy.rs).
        let mut own: Vec<IpAddr> = local_ips.to_vec();
        own.extend(&listening);
        own.extend(&relay_ips);
        own.extend(external_ips.values());

        let tenants = tenants(&self.tenant, &users, rest_secret.is_some())?;
        let instance = self
            .instance
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        check_instance(&instance)?;
        let max_lifetime = Duration::from_secs(self.max_allocate_lifetime.unwrap_or(3600));
        if max_lifetime < Duration::from_secs(600) {
            return Err(bad(
                "max-allocate-lifetime",
                "must be at least the default lifetime, 600 s",
            ));
        }
        let media_min_port = self.media_min_port.unwrap_or(40000);
        let media_max_port = self.media_max_port.unwrap_or(44999);
        if media_min_port == 0 || media_min_port >= media_max_port {
            return Err(bad(
                "media-min-port",
                format!("{media_min_port} must be between 1 and media-max-port ({media_max_port})"),
            ));
        }
        if media_min_port <= max_port && min_port <= media_max_port {
            return Err(bad(
                "media-min-port",
                format!(
                    "the media ports {media_min_port}-{media_max_port} overlap the relayed ports \
                     {min_port}-{max_port}"
                ),
            ));
        }
        let rooms = room::Config {
            ip: relay_ips
                .iter()
                .copied()
                .find(IpAddr::is_ipv4)
                .or_else(|| relay_ips.first().copied())
                .ok_or_else(|| bad("relay-ip", "no address for room endpoints"))?,
            min_port: media_min_port,
            max_port: media_max_port,
            keyframe_interval: Duration::from_secs(1),
            tenants: tenants.iter().map(|t| t.name.clone()).collect(),
            max_rooms: 1000,
            policy: None,
        };
        let api = match (self.api_listen, &self.api_token_file) {
            (Some(listen), Some(path)) => Some(ApiConfig {
                listen,
                token: read_token("api-token-file", path)?,
            }),
            (Some(_), None) => return Err(bad("api-token-file", "required with api-listen")),
            (None, Some(_)) => {
                return Err(bad(
                    "api-listen",
                    "api-token-file is set but api-listen is not",
                ));
            }
            (None, None) => None,
        };
        let policy = self.start_policy()?;
        Ok(RunConfig {
            rooms: room::Config {
                policy: policy.clone(),
                ..rooms
            },
            turn: turn::Config {
                realm: self.realm.unwrap_or_else(|| "relay".to_owned()),
                software: concat!("Relay ", env!("CARGO_PKG_VERSION")).to_owned(),
                credentials: Credentials { users, rest_secret },
                relay_ips,
                external_ips,
                min_port,
                max_port,
                default_lifetime: Duration::from_secs(600),
                max_lifetime,
                nonce_lifetime: Duration::from_secs(600),
                peer_policy: PeerPolicy::new(allowed, denied, own),
                max_bps: self.max_bps,
                user_quota: self.user_quota,
                total_quota: self.total_quota,
                max_permissions: self.max_permissions.unwrap_or(128),
                max_channels: self.max_channels.unwrap_or(64),
                unauthenticated_rate: self.unauthenticated_rate.unwrap_or(100),
                tenants,
                policy: policy.clone(),
            },
            udp,
            tcp,
            tls,
            tls_config,
            io: self.io.unwrap_or_default(),
            interface: if self.no_xdp.unwrap_or(false) {
                Vec::new()
            } else {
                self.interface
            },
            xdp_mode: self.xdp_mode.unwrap_or_default(),
            state_file: state_file(self.state_dir.as_deref(), &instance),
            instance,
            detach_on_exit: self.detach_on_exit.unwrap_or(false),
            api,
            metrics_listen: self.metrics_listen,
            policy,
        })
    }

    /// Loads the policy and opens its audit log: a policy that does not load stops the
    /// relay from starting (it would otherwise serve without the rules it was given).
    fn start_policy(&self) -> Result<Option<crate::policy::Shared>, ConfigError> {
        if self.policy.is_empty() {
            for (set, field) in [
                (self.policy_data.is_some(), "policy-data"),
                (self.audit_log.is_some(), "audit-log"),
            ] {
                if set {
                    return Err(bad(
                        field,
                        "records or feeds policy decisions: give --policy",
                    ));
                }
            }
            return Ok(None);
        }
        let config = crate::policy::PolicyConfig {
            sources: crate::policy::Sources {
                rego: self.policy.clone(),
                data: self.policy_data.clone(),
            },
            audit: self
                .audit_log
                .clone()
                .map(|file| crate::policy::AuditConfig {
                    file,
                    max_bytes: self.audit_log_max_bytes.unwrap_or(64 << 20),
                    keep: self.audit_log_keep.unwrap_or(5),
                }),
            timeout: Duration::from_millis(self.policy_timeout_ms.unwrap_or(20).max(1)),
        };
        crate::policy::Policy::start(config)
            .map(|p| Some(p.shared()))
            .map_err(|e| bad("policy", e.to_string()))
    }
}

/// Where `relay run --instance NAME --state-dir DIR` keeps its allocation state (and what
/// `relay down` removes).
/// Where a relay keeps what it must find again after a restart (`--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/relay";

pub fn state_file(state_dir: Option<&Path>, instance: &str) -> PathBuf {
    state_dir
        .unwrap_or(Path::new(DEFAULT_STATE_DIR))
        .join(format!("{instance}.json"))
}

/// An instance names a bpffs directory and a file: letters, digits, `-`, `_`, `.`.
pub fn check_instance(instance: &str) -> Result<(), ConfigError> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && !instance.starts_with('.')
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "instance",
            format!(
                "{instance:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        ))
    }
}

/// Checks the `[[tenant]]` tables against each other and the credentials.
fn tenants(
    list: &[TenantSettings],
    users: &HashMap<String, String>,
    rest: bool,
) -> Result<Vec<Tenant>, ConfigError> {
    if list.len() > MAX_TENANTS {
        return Err(bad("tenant", format!("at most {MAX_TENANTS} tenants")));
    }
    let mut out: Vec<Tenant> = Vec::new();
    for t in list {
        let named = |problem: String| bad("tenant", format!("{:?}: {problem}", t.name));
        if t.name.is_empty() {
            return Err(bad("tenant", "a tenant without a name"));
        }
        if out.iter().any(|o| o.name == t.name) {
            return Err(named("named twice".to_owned()));
        }
        for u in &t.users {
            if !users.contains_key(u) {
                return Err(named(format!("user {u:?} is not a configured user")));
            }
            if let Some(o) = out.iter().find(|o| o.users.contains(u)) {
                return Err(named(format!(
                    "user {u:?} is in tenant {:?} already",
                    o.name
                )));
            }
        }
        if !t.rest_users.is_empty() && !rest {
            return Err(named("rest-users needs use-auth-secret".to_owned()));
        }
        if t.users.is_empty() && t.rest_users.is_empty() {
            return Err(named(
                "no users and no rest-users: nobody belongs to it".to_owned(),
            ));
        }
        let (pps, bps) = (
            t.packets_per_second.unwrap_or(0),
            t.bits_per_second.unwrap_or(0),
        );
        if pps == 0 && bps == 0 {
            return Err(named(
                "give packets-per-second or bits-per-second (or both), above 0".to_owned(),
            ));
        }
        let burst_ms = t.burst_ms.unwrap_or(250);
        if burst_ms > 60_000 {
            return Err(named("burst-ms above 60000".to_owned()));
        }
        out.push(Tenant {
            name: t.name.clone(),
            users: t.users.clone(),
            rest_users: t.rest_users.clone(),
            limit: Limit {
                packets_per_sec: pps,
                bits_per_sec: bps,
                burst_ns: burst_ms * 1_000_000,
            },
        });
    }
    Ok(out)
}

/// `NAME:PASSWORD` with the password hidden, for error messages.
fn redact(user: &str) -> String {
    match user.split_once(':') {
        Some((name, _)) => format!("{name}:***"),
        None => user.to_owned(),
    }
}

const fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// A secret held in a file: refused unless only its owner may read it (a key or password
/// that others can read is no longer a secret).
fn read_secret(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    owner_only(path).map_err(|problem| bad(field, problem))?;
    std::fs::read_to_string(path)
        .map_err(|e| bad(field, format!("cannot read {}: {e}", path.display())))
}

/// The control API's bearer token from the file at `path` (owner-only, trimmed, not
/// empty); `field` names the setting in errors.
pub fn read_token(field: &'static str, path: &Path) -> Result<Token, ConfigError> {
    Token::new(&read_secret(field, path)?)
        .ok_or_else(|| bad(field, format!("{} is empty", path.display())))
}

/// `Err` with the problem when `path` is readable (or writable) by its group or others.
fn owner_only(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to its group or others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// A password or secret given as a setting: kept out of every `Debug` print.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| bad("cert", format!("cannot read {}: {e}", cert.display())))?;
    let key_pem = read_secret("pkey", key)?.into_bytes();
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(bad(
            "cert",
            format!("{}: no PEM certificate in it", cert.display()),
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| bad("pkey", format!("{}: {e}", key.display())))?
        .ok_or_else(|| {
            bad(
                "pkey",
                format!("{}: no PEM private key in it", key.display()),
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "pkey",
                format!("does not match the certificate or is unusable: {e}"),
            )
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(toml_text)
    }

    const LOCAL: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 1))];

    #[test]
    fn defaults_follow_coturn() {
        let run = settings("user = [\"alice:secret\"]")
            .unwrap()
            .resolve(LOCAL)
            .unwrap();
        assert_eq!(run.udp, [SocketAddr::from(([10, 77, 0, 1], 3478))]);
        assert_eq!(run.tcp, run.udp);
        assert!(run.tls.is_empty(), "no TLS without a certificate");
        assert_eq!((run.turn.min_port, run.turn.max_port), (49152, 65535));
        assert_eq!(run.turn.relay_ips, LOCAL);
        assert_eq!(run.turn.realm, "relay");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = settings("listening-port = 4000\nrealm = \"file\"\nuser = [\"a:b\"]").unwrap();
        let flags = Settings {
            realm: Some("flag".into()),
            ..Settings::default()
        };
        let run = flags.over(file).resolve(LOCAL).unwrap();
        assert_eq!(run.turn.realm, "flag");
        assert_eq!(run.udp[0].port(), 4000);
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("user = [\"alice\"]", "user"),
            ("", "user"),
            (
                "user = [\"a:b\"]\nmin-port = 6000\nmax-port = 5000",
                "min-port",
            ),
            (
                "user = [\"a:b\"]\nuse-auth-secret = true",
                "static-auth-secret",
            ),
            (
                "user = [\"a:b\"]\nallowed-peer-ip = [\"10.0.0.0/40\"]",
                "allowed-peer-ip",
            ),
            (
                "user = [\"a:b\"]\ncert = \"/nonexistent/cert.pem\"\npkey = \"/nonexistent/key.pem\"",
                "cert",
            ),
            ("user = [\"a:b\"]\ncert = \"/nonexistent/cert.pem\"", "pkey"),
            (
                "user = [\"a:b\"]\nexternal-ip = [\"not-an-ip\"]",
                "external-ip",
            ),
            (
                "user = [\"a:b\"]\nmax-allocate-lifetime = 60",
                "max-allocate-lifetime",
            ),
        ];
        for (text, field) in cases {
            let err = settings(text)
                .unwrap()
                .resolve(LOCAL)
                .err()
                .unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert_eq!(err.field, *field, "{text:?}: {err}");
        }
        let err = settings("lisening-port = 1").unwrap_err().to_string();
        assert!(err.contains("lisening-port"), "{err}");
    }

    #[test]
    fn error_messages_never_show_passwords() {
        let err = settings("user = [\"alice:\"]")
            .unwrap()
            .resolve(LOCAL)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("alice:***"), "{err}");
    }

    /// A file with `mode` in a directory of this test process and `scope` (the test removes
    /// it; tests run in parallel).
    fn secret_file(scope: &str, name: &str, text: &str, mode: u32) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("relay-config-{}-{scope}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    /// Secrets from files readable by their owner only; the same files open to others are
    /// refused, with the fix named.
    #[test]
    fn secrets_come_from_owner_only_files() {
        let (dir, users) = secret_file(
            "secrets",
            "users",
            "# ward carts\nalice:wonderland\n\nbob:builder\n",
            0o600,
        );
        let (_, secret) = secret_file("secrets", "secret", "north\n", 0o600);
        let s = Settings {
            user_file: Some(users.clone()),
            use_auth_secret: Some(true),
            static_auth_secret_file: Some(secret.clone()),
            ..Settings::default()
        };
        let run = s.resolve(LOCAL).unwrap();
        assert_eq!(run.turn.credentials.users.len(), 2);
        assert_eq!(run.turn.credentials.rest_secret.as_deref(), Some("north"));
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let s = Settings {
            user_file: Some(users),
            use_auth_secret: Some(true),
            static_auth_secret_file: Some(secret),
            ..Settings::default()
        };
        let err = s.resolve(LOCAL).err().unwrap().to_string();
        assert!(
            err.starts_with("static-auth-secret-file: ") && err.contains("chmod 600"),
            "{err}"
        );
        let (_, key) = secret_file("secrets", "key.pem", "-----BEGIN PRIVATE KEY-----\n", 0o640);
        let (_, cert) = secret_file("secrets", "cert.pem", "", 0o644);
        let s = Settings {
            user: vec!["a:b".parse().unwrap()],
            cert: Some(cert),
            pkey: Some(key),
            ..Settings::default()
        };
        let err = s.resolve(LOCAL).err().unwrap().to_string();
        assert!(
            err.starts_with("pkey: ") && err.contains("mode 640"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The API needs both its address and an owner-only, non-empty token file.
    #[test]
    fn api_needs_a_token_from_an_owner_only_file() {
        let (dir, token) = secret_file("api", "api-token", "  t0ken\n", 0o600);
        let (_, empty) = secret_file("api", "api-empty", "\n", 0o600);
        let (_, open) = secret_file("api", "api-open", "t0ken", 0o644);
        let with = |listen: Option<&str>, file: Option<&PathBuf>| Settings {
            user: vec!["a:b".parse().unwrap()],
            api_listen: listen.map(|l| l.parse().unwrap()),
            api_token_file: file.cloned(),
            ..Settings::default()
        };
        assert!(with(None, None).resolve(LOCAL).unwrap().api.is_none());
        let api = with(Some("127.0.0.1:8080"), Some(&token))
            .resolve(LOCAL)
            .unwrap()
            .api
            .unwrap();
        assert_eq!(api.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(api.token.matches(b"t0ken"));
        for (listen, file, field, why) in [
            (Some("127.0.0.1:8080"), None, "api-token-file", "required"),
            (None, Some(&token), "api-listen", "not"),
            (
                Some("127.0.0.1:8080"),
                Some(&empty),
                "api-token-file",
                "empty",
            ),
            (
                Some("127.0.0.1:8080"),
                Some(&open),
                "api-token-file",
                "chmod 600",
            ),
        ] {
            let err = with(listen, file).resolve(LOCAL).err().unwrap();
            assert_eq!(err.field, field);
            assert!(err.problem.contains(why), "{err}");
        }
        let file = settings("user = [\"a:b\"]\napi-listen = \"[::1]:9000\"").unwrap();
        assert_eq!(file.api_listen, Some("[::1]:9000".parse().unwrap()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Nothing that holds a password or secret prints it.
    #[test]
    fn debug_prints_no_secret() {
        let s = settings("user = [\"alice:wonderland\"]\nstatic-auth-secret = \"north-secret\"")
            .unwrap();
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("wonderland") && !printed.contains("north-secret"),
            "{printed}"
        );
    }

    #[test]
    fn external_ip_maps_to_the_relay_ip() {
        let run = settings("user = [\"a:b\"]\nexternal-ip = [\"203.0.113.5\"]")
            .unwrap()
            .resolve(LOCAL)
            .unwrap();
        assert_eq!(
            run.turn.external_ips.get(&LOCAL[0]),
            Some(&"203.0.113.5".parse().unwrap())
        );
    }

    #[test]
    fn tenants_resolve_with_their_limits_and_bad_ones_are_named() {
        let base =
            "user = [\"alice:a\", \"bob:b\"]\nuse-auth-secret = true\nstatic-auth-secret = \"s\"\n";
        let run = settings(&format!(
            "{base}[[tenant]]\nname = \"north\"\nusers = [\"alice\"]\nrest-users = [\"ward-*\"]\n\
             packets-per-second = 2000\nbits-per-second = 8000000\nburst-ms = 100\n"
        ))
        .unwrap()
        .resolve(LOCAL)
        .unwrap();
        let [north] = run.turn.tenants.as_slice() else {
            panic!("{:?}", run.turn.tenants)
        };
        assert_eq!(
            north.limit,
            Limit {
                packets_per_sec: 2000,
                bits_per_sec: 8_000_000,
                burst_ns: 100_000_000
            }
        );
        for (tenant, why) in [
            (
                "name = \"x\"\nusers = [\"carol\"]\npackets-per-second = 1",
                "not a configured user",
            ),
            (
                "name = \"x\"\nusers = [\"alice\"]",
                "packets-per-second or bits-per-second",
            ),
            ("name = \"x\"\npackets-per-second = 1", "nobody belongs"),
            (
                "name = \"\"\nusers = [\"alice\"]\npackets-per-second = 1",
                "without a name",
            ),
            (
                "name = \"x\"\nusers = [\"alice\"]\npackets-per-second = 1\nburst-ms = 999999",
                "burst-ms",
            ),
            (
                "name = \"x\"\nusers = [\"alice\"]\npackets-per-second = 1\n[[tenant]]\nname = \"y\"\nusers = [\"alice\"]\npackets-per-second = 1",
                "in tenant \"x\" already",
            ),
            (
                "name = \"x\"\nusers = [\"alice\"]\npackets-per-second = 1\n[[tenant]]\nname = \"x\"\nusers = [\"bob\"]\npackets-per-second = 1",
                "named twice",
            ),
        ] {
            let err = settings(&format!("{base}[[tenant]]\n{tenant}"))
                .unwrap()
                .resolve(LOCAL)
                .err()
                .unwrap_or_else(|| panic!("{tenant:?} was accepted"));
            assert_eq!(err.field, "tenant");
            assert!(err.to_string().contains(why), "{tenant:?}: {err}");
        }
        let err = settings("user = [\"a:b\"]\n[[tenant]]\nname = \"x\"\nrest-users = [\"*\"]\npackets-per-second = 1")
            .unwrap()
            .resolve(LOCAL)
            .err()
            .unwrap();
        assert!(err.to_string().contains("use-auth-secret"), "{err}");
    }

    #[test]
    fn interfaces_as_a_name_or_a_list_and_no_xdp_clears_them() {
        let one = settings("user = [\"a:b\"]\ninterface = \"eth0\"")
            .unwrap()
            .resolve(LOCAL)
            .unwrap();
        assert_eq!(one.interface, ["eth0"]);
        let two = settings("user = [\"a:b\"]\ninterface = [\"eth0\", \"eth1\"]")
            .unwrap()
            .resolve(LOCAL)
            .unwrap();
        assert_eq!(two.interface, ["eth0", "eth1"]);
        let none = settings("user = [\"a:b\"]\ninterface = \"eth0\"\nno-xdp = true")
            .unwrap()
            .resolve(LOCAL)
            .unwrap();
        assert!(none.interface.is_empty());
        assert_eq!(none.state_file, Path::new("/var/lib/relay/default.json"));
        let err = settings("user = [\"a:b\"]\ninstance = \"../etc\"")
            .unwrap()
            .resolve(LOCAL)
            .err()
            .unwrap();
        assert_eq!(err.field, "instance");
    }
}
