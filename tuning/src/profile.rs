//! The profiles: which value each setting should have on a host of that kind, and why.
//! Values that depend on the host (ring maxima, CPUs) are worked out from what it reports.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    ethtool::Channels,
    host::Host,
    setting::{ChannelKind, Direction, Setting, cpu_mask},
};

/// The receive and send buffer Relay asks for on each media socket (`SO_RCVBUF`,
/// `SO_SNDBUF`); the kernel caps what a socket gets at `rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    /// A 4-core, 8 GB edge box that runs Relay and little else.
    #[serde(rename = "edge-4c8g")]
    Edge4c8g,
    /// A K3s node: Relay shares the CPUs with pods, and the CNI owns the NIC's settings.
    #[serde(rename = "k3s-node")]
    K3sNode,
    /// The edge profile plus busy polling: lower, steadier latency for media through
    /// userspace, paid for in CPU.
    #[serde(rename = "latency")]
    Latency,
}

impl Profile {
    pub const ALL: [Self; 3] = [Self::Edge4c8g, Self::K3sNode, Self::Latency];

    pub fn name(self) -> &'static str {
        match self {
            Self::Edge4c8g => "edge-4c8g",
            Self::K3sNode => "k3s-node",
            Self::Latency => "latency",
        }
    }

    /// Whether the profile changes the NIC (rings, channels, GRO, RPS).
    fn tunes_nic(self) -> bool {
        !matches!(self, Self::K3sNode)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown profile {s:?}: expected edge-4c8g, k3s-node or latency")
            })
    }
}

/// A port range, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1-65535)"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        Ok(Self { first, last })
    }
}

/// What the profiles need to know about the relay and the host they tune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// The NIC media arrives on; without one, only sysctls are tuned.
    pub interface: Option<String>,
    /// The room endpoints' ports (`relay run --media-min-port/--media-max-port`).
    pub media_ports: Ports,
    /// The relayed ports (`relay run --min-port/--max-port`).
    pub relay_ports: Ports,
    /// The STUN/TURN listening port.
    pub listening_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            interface: None,
            media_ports: Ports {
                first: 40000,
                last: 44999,
            },
            relay_ports: Ports {
                first: 49152,
                last: 65535,
            },
            listening_port: 3478,
        }
    }
}

impl Options {
    /// `ip_local_reserved_ports` as the kernel prints it: the relay's ranges, sorted.
    pub fn reserved_ports(&self) -> String {
        let mut ranges = [self.media_ports, self.relay_ports];
        ranges.sort_by_key(|r| r.first);
        let text: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        text.join(",")
    }
}

/// A value a profile wants, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub setting: Setting,
    pub value: String,
    pub reason: String,
}

fn target(setting: Setting, value: impl fmt::Display, reason: &str) -> Target {
    Target {
        setting,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

/// What `profile` wants on `host`, in the order it is applied (sysctls first, the NIC last:
/// a NIC that refuses a value then has the least to roll back behind it).
pub fn targets(host: &Host, profile: Profile, options: &Options) -> Result<Vec<Target>, Error> {
    let mut targets = vec![
        target(
            Setting::sysctl("net.core.rmem_max"),
            SOCKET_BUFFER,
            "Relay asks 4 MiB of receive buffer per media socket; the kernel caps it here, \
             and a smaller buffer overflows on a burst of video frames (RcvbufErrors)",
        ),
        target(
            Setting::sysctl("net.core.wmem_max"),
            SOCKET_BUFFER,
            "Relay asks 4 MiB of send buffer per media socket (one publisher fanned out to \
             many subscribers in userspace); the kernel caps it here",
        ),
        target(
            Setting::sysctl("net.core.netdev_max_backlog"),
            5000,
            "the per-CPU queue behind RPS, generic XDP and veth: beyond it packets are \
             dropped (softnet_stat); 1000 is a few frames of a few cameras",
        ),
        target(
            Setting::sysctl("net.ipv4.ip_local_reserved_ports"),
            options.reserved_ports(),
            "the relayed and media port ranges overlap the ephemeral range: reserved, no \
             outgoing connection takes a port a room endpoint or an allocation needs",
        ),
    ];
    if profile != Profile::K3sNode {
        targets.push(target(
            Setting::sysctl("net.core.netdev_budget"),
            600,
            "packets one softirq round may take before yielding to ksoftirqd: bursts of \
             media on a few cores are drained in one round, not deferred",
        ));
    }
    if profile == Profile::Latency {
        for key in ["net.core.busy_read", "net.core.busy_poll"] {
            targets.push(target(
                Setting::sysctl(key),
                50,
                "sockets spin up to 50 µs on the NIC queue instead of sleeping until an \
                 interrupt: lower, steadier latency through userspace, paid in CPU",
            ));
        }
    }
    if let (Some(interface), true) = (&options.interface, profile.tunes_nic()) {
        host.require_interface(interface)?;
        nic_targets(host, interface, &mut targets)?;
    }
    Ok(targets)
}

fn nic_targets(host: &Host, interface: &str, targets: &mut Vec<Target>) -> Result<(), Error> {
    let io = |what: &str, e| Error::io(&format!("{interface}: reading {what}"), e);
    let cpus = host.online_cpus().map_err(|e| io("the online CPUs", e))?;
    let ncpus = u32::try_from(cpus.len()).unwrap_or(u32::MAX).max(1);
    let ethtool = host.ethtool();
    if let Some(rings) = ethtool.rings(interface).map_err(|e| io("ring sizes", e))? {
        let reason = "the largest ring the NIC has: a burst waits in it instead of being \
                      dropped while a core is busy (XDP drains it at line rate)";
        for (direction, max) in [(Direction::Rx, rings.rx_max), (Direction::Tx, rings.tx_max)] {
            if max > 0 {
                let setting = Setting::Ring {
                    interface: interface.to_owned(),
                    direction,
                };
                targets.push(target(setting, max, reason));
            }
        }
    }
    let channels = ethtool.channels(interface).map_err(|e| io("channels", e))?;
    let queues = if let Some(channels) = channels {
        channel_targets(interface, &channels, ncpus, targets)
    } else {
        None
    };
    targets.push(target(
        Setting::Gro {
            interface: interface.to_owned(),
        },
        "on",
        "TCP/TLS clients' segments and UDP to sockets that ask for it are coalesced: \
         fewer trips up the stack; XDP runs before GRO and is not affected",
    ));
    // One queue per CPU spreads the work by RSS already; with fewer, RPS spreads it. The
    // queues after the channel change, or those there are if the channels cannot change.
    let rx_queues = if let Some(queues) = queues {
        queues
    } else {
        let listed = host
            .list(&format!("sys/class/net/{interface}/queues"))
            .map_err(|e| io("its queues", e))?;
        let rx = listed.iter().filter(|q| q.starts_with("rx-")).count();
        u32::try_from(rx).unwrap_or(u32::MAX)
    };
    if rx_queues < ncpus {
        for queue in 0..rx_queues {
            targets.push(target(
                Setting::Rps {
                    interface: interface.to_owned(),
                    queue,
                },
                cpu_mask(&cpus),
                "fewer receive queues than CPUs: RPS spreads what userspace receives over \
                 every CPU instead of the one that takes the queue's interrupt",
            ));
        }
    }
    Ok(())
}

/// Asks for one queue per CPU (up to what the NIC has) and returns how many rx queues that
/// leaves; `None` if the driver's channels cannot be changed.
fn channel_targets(
    interface: &str,
    channels: &Channels,
    ncpus: u32,
    targets: &mut Vec<Target>,
) -> Option<u32> {
    let reason = "a queue per CPU (as far as the NIC has them): each CPU takes its own \
                  queue's packets and interrupts, XDP_TX has a queue per CPU";
    let kinds: &[ChannelKind] = if channels.combined_max > 0 {
        &[ChannelKind::Combined]
    } else if channels.rx_max > 0 && channels.tx_max > 0 {
        &[ChannelKind::Rx, ChannelKind::Tx]
    } else {
        return None;
    };
    for &channel in kinds {
        let max = match channel {
            ChannelKind::Rx => channels.rx_max,
            ChannelKind::Tx => channels.tx_max,
            ChannelKind::Combined => channels.combined_max,
        };
        let setting = Setting::Channels {
            interface: interface.to_owned(),
            channel,
        };
        targets.push(target(setting, ncpus.min(max), reason));
    }
    Some(match kinds {
        [ChannelKind::Combined] => ncpus.min(channels.combined_max),
        _ => ncpus.min(channels.rx_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(
            "40000-44999".parse::<Ports>(),
            Ok(Ports {
                first: 40000,
                last: 44999
            })
        );
        assert!("5-4".parse::<Ports>().is_err());
        assert!("0-4".parse::<Ports>().is_err());
        assert!("4".parse::<Ports>().is_err());
        assert_eq!(
            Options::default().reserved_ports(),
            "40000-44999,49152-65535"
        );
    }

    #[test]
    fn profiles_by_name() {
        for profile in Profile::ALL {
            assert_eq!(profile.name().parse::<Profile>(), Ok(profile));
        }
        assert!("edge".parse::<Profile>().is_err());
    }
}
