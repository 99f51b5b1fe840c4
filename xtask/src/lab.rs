//! The network-namespace lab: hosts that exchange real packets through real veths.
//!
//! ```text
//!   client-a ─┐
//!   client-b ─┤        namespace <prefix>-sw: bridge br0, one port per host
//!   relay    ─┼─ br0   every host: eth0, one L2 segment, 10.77.0.0/24 and fd77::/64
//!   relay2   ─┤
//!   peer     ─┘
//! ```
//!
//! Each host is a namespace `<prefix>-<host>` whose `eth0` is one end of a veth pair; the
//! other end is the port named `<host>` on the bridge. Addresses, MACs and neighbour entries
//! are fixed (see [`Host`]), so no ARP or DAD delays the first packet of a test. Transmit
//! checksum offload is off on every `eth0`: otherwise locally sent UDP carries only a partial
//! checksum that a packet rewritten in XDP would turn into a wrong one.
//!
//! [`Lab`] is a guard: dropping it (also while a test unwinds from a panic) removes every
//! namespace it made, and with them every veth and the bridge.

use std::{
    fmt,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

use crate::command::run;

/// The prefix `cargo xtask lab` and the demo use. Tests pick their own, so they can run in
/// parallel with each other and with a lab that is up.
pub const DEFAULT_PREFIX: &str = "relay-lab";

/// The hosts of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    ClientA,
    ClientB,
    Relay,
    /// A second relay, for cascading tests.
    Relay2,
    /// The far end of a TURN allocation (the "peer" of RFC 8656).
    Peer,
}

impl Host {
    pub const ALL: [Self; 5] = [
        Self::ClientA,
        Self::ClientB,
        Self::Relay,
        Self::Relay2,
        Self::Peer,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::ClientA => "client-a",
            Self::ClientB => "client-b",
            Self::Relay => "relay",
            Self::Relay2 => "relay2",
            Self::Peer => "peer",
        }
    }

    /// Last byte of every address and MAC of the host.
    const fn number(self) -> u8 {
        match self {
            Self::Relay => 1,
            Self::Relay2 => 2,
            Self::ClientA => 11,
            Self::ClientB => 12,
            Self::Peer => 21,
        }
    }

    /// `10.77.0.N`.
    pub const fn ipv4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, self.number())
    }

    /// `fd77::N`, N written with the same digits as in the IPv4 address (`fd77::11` for
    /// `10.77.0.11`).
    pub const fn ipv6(self) -> Ipv6Addr {
        let n = self.number() as u16;
        Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, (n / 10) * 16 + n % 10)
    }

    /// `02:52:4c:00:00:N` (locally administered; "RL"), N in hex as in [`Host::ipv6`].
    pub const fn mac(self) -> [u8; 6] {
        let n = self.number();
        [0x02, 0x52, 0x4c, 0x00, 0x00, (n / 10) * 16 + n % 10]
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The host interface name in every host namespace.
pub const HOST_IF: &str = "eth0";
const BRIDGE: &str = "br0";

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A running lab. Dropping it tears the lab down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
}

impl Lab {
    /// Builds a fresh lab under `prefix`, first removing anything left under that prefix by a
    /// run that was killed before it could clean up.
    pub fn up(prefix: &str) -> anyhow::Result<Self> {
        check_root()?;
        down(prefix)?;
        let lab = Self {
            prefix: prefix.to_owned(),
        };
        // If building fails half-way, `lab` drops and removes what was made.
        lab.build()
            .with_context(|| format!("building the lab {prefix}"))?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of `host`, as `ip netns` names it.
    pub fn netns(&self, host: Host) -> String {
        netns_name(&self.prefix, host.name())
    }

    /// A command that will run inside `host`'s namespace.
    pub fn command(&self, host: Host, program: &str) -> Command {
        self.command_in(host.name(), program)
    }

    /// A command that will run inside any namespace of the lab, by its short name (a
    /// host's, or `sw`, the switch's).
    pub fn command_in(&self, name: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns_name(&self.prefix, name), program]);
        cmd
    }

    /// Runs `f` on a thread that has entered `host`'s network namespace. Sockets it opens
    /// belong to that namespace and may be returned and used from any thread.
    pub fn in_netns<T: Send>(&self, host: Host, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        self.in_netns_named(host.name(), f)
    }

    /// As [`Lab::in_netns`], for any namespace of the lab by its short name (a host's, or
    /// `sw`, the switch's).
    pub fn in_netns_named<T: Send>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", netns_name(&self.prefix, name));
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&ns, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {path}"))?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
        })
    }

    /// Writes `frames` as they are onto `from`'s `eth0` with an `AF_PACKET` socket: frames the
    /// stack would never build (truncated, malformed), for tests of what the relay does with
    /// them.
    pub fn send_frames(&self, from: Host, frames: &[Vec<u8>]) -> anyhow::Result<()> {
        self.in_netns(from, || send_frames(frames))?
    }

    /// Waits until something binds UDP `port` in `host`'s namespace, for programs such as
    /// turnutils_peer that say nothing when they are ready: at most 30 s, as a loaded
    /// 2-core machine starting dozens of GStreamer pipelines can take that long.
    pub fn wait_udp_bound(&self, host: Host, port: u16) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let out = self
                .command(host, "ss")
                .args(["-Hlun", &format!("sport = :{port}")])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("nothing bound UDP port {port} in {host}")
    }

    /// Loads an nftables ruleset (`nft -f -`) into `host`'s namespace: what a test puts
    /// between a host and the lab (a home router's NAT), or counters of what a host sends
    /// and receives, seen by its own kernel rather than by the program under test. It goes
    /// with the namespace.
    pub fn nft(&self, host: Host, ruleset: &str) -> anyhow::Result<()> {
        let mut child = self
            .command(host, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("nft (cargo xtask setup installs nftables)")?;
        std::io::Write::write_all(
            &mut child.stdin.take().context("no stdin")?,
            ruleset.as_bytes(),
        )?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f in {host}: {}\n{ruleset}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The packets counted so far by the named counter `counter` of the nftables table
    /// `ip table` in `host`'s namespace (see [`Lab::nft`]).
    pub fn nft_packets(&self, host: Host, table: &str, counter: &str) -> anyhow::Result<u64> {
        let out = self
            .command(host, "nft")
            .args(["-j", "list", "counter", "ip", table, counter])
            .output()
            .context("nft (cargo xtask setup installs nftables)")?;
        if !out.status.success() {
            bail!(
                "nft list counter ip {table} {counter} in {host}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|item| item["counter"]["packets"].as_u64())
            .with_context(|| format!("no counter {counter} in {json}"))
    }

    fn build(&self) -> anyhow::Result<()> {
        let sw = netns_name(&self.prefix, "sw");
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        // A switch, not a router: no IPv6 addresses or router solicitations on its ports.
        sysctl(&sw, "net.ipv6.conf.all.disable_ipv6", "1")?;
        // Nor a firewall: where br_netfilter is loaded, bridged IP would be validated and
        // filtered, and the malformed frames tests inject would never reach the relay.
        if Path::new("/proc/sys/net/bridge").exists() {
            for family in ["iptables", "ip6tables", "arptables"] {
                sysctl(&sw, &format!("net.bridge.bridge-nf-call-{family}"), "0")?;
            }
        }
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        for host in Host::ALL {
            let ns = self.netns(host);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Create the pair inside the two namespaces directly, so that its names never
            // collide with anything in the root namespace.
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                HOST_IF,
                "address",
                &mac_string(host.mac()),
                "type",
                "veth",
                "peer",
                "name",
                host.name(),
                "netns",
                &sw,
            ])?;
            ip(&[
                "-n",
                &sw,
                "link",
                "set",
                host.name(),
                "master",
                BRIDGE,
                "up",
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.ipv4()),
                "dev",
                HOST_IF,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", host.ipv6()),
                "dev",
                HOST_IF,
                "nodad",
            ])?;
            ip(&["-n", &ns, "link", "set", HOST_IF, "up"])?;
            run(Command::new("ip")
                .args(["netns", "exec", &ns, "ethtool", "-K", HOST_IF, "tx", "off"]))
            .context(
                "turning off tx checksum offload (is ethtool installed? `cargo xtask setup`)",
            )?;
            for other in Host::ALL.into_iter().filter(|o| *o != host) {
                let mac = mac_string(other.mac());
                for addr in [other.ipv4().to_string(), other.ipv6().to_string()] {
                    ip(&[
                        "-n",
                        &ns,
                        "neigh",
                        "replace",
                        &addr,
                        "lladdr",
                        &mac,
                        "dev",
                        HOST_IF,
                        "nud",
                        "permanent",
                    ])?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = down(&self.prefix) {
            // Drop cannot fail; say what is left so that `cargo xtask lab down` can be run.
            eprintln!("lab {}: cleanup failed: {e:#}", self.prefix);
        }
    }
}

/// Namespaces of the lab under `prefix` and whether each exists.
pub fn status(prefix: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let existing = list_netns()?;
    Ok(std::iter::once("sw")
        .chain(Host::ALL.iter().map(|h| h.name()))
        .map(|n| {
            let ns = netns_name(prefix, n);
            let up = existing.contains(&ns);
            (ns, up)
        })
        .collect())
}

/// Removes every namespace of the lab under `prefix`; deleting a namespace deletes its veths
/// and bridge. Succeeds when there is nothing to remove.
pub fn down(prefix: &str) -> anyhow::Result<()> {
    check_root()?;
    for (ns, exists) in status(prefix)? {
        if exists {
            ip(&["netns", "delete", &ns])?;
        }
    }
    Ok(())
}

fn netns_name(prefix: &str, host: &str) -> String {
    format!("{prefix}-{host}")
}

fn list_netns() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn check_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab creates network namespaces and needs root: run it with sudo");
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))
}

/// A send-only `AF_PACKET` socket (protocol 0: no frame is ever queued to it) on
/// `interface` of the calling thread's network namespace, and the address that sends
/// frames out of that interface as they are, with `protocol` (network order is applied
/// here; 0 lets the kernel read the EtherType from each frame).
pub fn packet_socket(
    interface: &str,
    protocol: u16,
) -> std::io::Result<(std::os::fd::OwnedFd, libc::sockaddr_ll)> {
    // SAFETY: plain socket(2) call; the result is checked, and `OwnedFd` closes it.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let ifname = std::ffi::CString::new(interface).map_err(std::io::Error::other)?;
    // SAFETY: `ifname` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex.cast_signed();
    Ok((fd, addr))
}

fn send_frames(frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let (fd, addr) = packet_socket(HOST_IF, 0).context("AF_PACKET socket")?;
    for frame in frames {
        // SAFETY: `frame` and `addr` outlive the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            bail!(
                "sending a {}-byte frame: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A child process (a relay, a peer) killed and reaped when dropped, so that a failing test
/// or demo leaves nothing running in a namespace about to be deleted.
#[derive(Debug)]
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
