//! One host setting `relay tune` may change: its name, how to read and write it, and when two
//! of its values are the same. Values are strings as `sysctl` and `ethtool` print them.

use std::{fmt, fmt::Write as _, io};

use serde::{Deserialize, Serialize};

use crate::{ethtool::Channels, host::Host};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Rx,
    Tx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Rx,
    Tx,
    Combined,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Setting {
    /// A sysctl by its dotted name.
    Sysctl { key: String },
    /// Receive Packet Steering: which CPUs process an rx queue's packets (hex mask).
    Rps { interface: String, queue: u32 },
    /// Generic receive offload, `on` / `off`.
    Gro { interface: String },
    /// Descriptors in the NIC's rx or tx ring.
    Ring {
        interface: String,
        direction: Direction,
    },
    /// Queues of one kind.
    Channels {
        interface: String,
        channel: ChannelKind,
    },
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sysctl { key } => f.write_str(key),
            Self::Rps { interface, queue } => write!(f, "{interface} rx-{queue} rps_cpus"),
            Self::Gro { interface } => write!(f, "{interface} gro"),
            Self::Ring {
                interface,
                direction: Direction::Rx,
            } => write!(f, "{interface} ring rx"),
            Self::Ring {
                interface,
                direction: Direction::Tx,
            } => write!(f, "{interface} ring tx"),
            Self::Channels { interface, channel } => {
                let kind = match channel {
                    ChannelKind::Rx => "rx",
                    ChannelKind::Tx => "tx",
                    ChannelKind::Combined => "combined",
                };
                write!(f, "{interface} channels {kind}")
            }
        }
    }
}

impl Setting {
    pub fn sysctl(key: &str) -> Self {
        Self::Sysctl {
            key: key.to_owned(),
        }
    }

    pub fn interface(&self) -> Option<&str> {
        match self {
            Self::Sysctl { .. } => None,
            Self::Rps { interface, .. }
            | Self::Gro { interface }
            | Self::Ring { interface, .. }
            | Self::Channels { interface, .. } => Some(interface),
        }
    }

    /// Whether changing it takes the link down for a moment (the driver re-creates its
    /// queues). Nothing `relay tune` changes needs a reboot.
    pub fn resets_link(&self) -> bool {
        matches!(self, Self::Ring { .. } | Self::Channels { .. })
    }

    fn rps_path(interface: &str, queue: u32) -> String {
        format!("sys/class/net/{interface}/queues/rx-{queue}/rps_cpus")
    }

    /// The current value; `None` if this host has no such setting.
    pub fn read(&self, host: &Host) -> io::Result<Option<String>> {
        match self {
            Self::Sysctl { key } => host.sysctl(key),
            Self::Rps { interface, queue } => host.read(&Self::rps_path(interface, *queue)),
            Self::Gro { interface } => Ok(Some(on_off(host.ethtool().gro(interface)?))),
            Self::Ring {
                interface,
                direction,
            } => Ok(host.ethtool().rings(interface)?.map(|r| match direction {
                Direction::Rx => r.rx.to_string(),
                Direction::Tx => r.tx.to_string(),
            })),
            Self::Channels { interface, channel } => Ok(host
                .ethtool()
                .channels(interface)?
                .map(|c| channel_count(&c, *channel).to_string())),
        }
    }

    pub fn write(&self, host: &Host, value: &str) -> io::Result<()> {
        match self {
            Self::Sysctl { key } => host.set_sysctl(key, value),
            Self::Rps { interface, queue } => host.write(&Self::rps_path(interface, *queue), value),
            Self::Gro { interface } => host.ethtool().set_gro(interface, parse_on_off(value)?),
            Self::Ring {
                interface,
                direction,
            } => {
                let mut rings = host
                    .ethtool()
                    .rings(interface)?
                    .ok_or_else(|| unsupported(self))?;
                match direction {
                    Direction::Rx => rings.rx = parse_count(value)?,
                    Direction::Tx => rings.tx = parse_count(value)?,
                }
                host.ethtool().set_rings(interface, rings)
            }
            Self::Channels { interface, channel } => {
                let mut channels = host
                    .ethtool()
                    .channels(interface)?
                    .ok_or_else(|| unsupported(self))?;
                let count = parse_count(value)?;
                match channel {
                    ChannelKind::Rx => channels.rx = count,
                    ChannelKind::Tx => channels.tx = count,
                    ChannelKind::Combined => channels.combined = count,
                }
                host.ethtool().set_channels(interface, channels)
            }
        }
    }

    /// Whether `a` and `b` are the same value of this setting, as the kernel prints them in
    /// more than one way (tabs in a sysctl's list, a CPU mask's width and commas).
    pub fn same(&self, a: &str, b: &str) -> bool {
        match self {
            Self::Rps { .. } => normalize_mask(a) == normalize_mask(b),
            _ => a.split_whitespace().eq(b.split_whitespace()),
        }
    }
}

pub(crate) fn channel_count(channels: &Channels, kind: ChannelKind) -> u32 {
    match kind {
        ChannelKind::Rx => channels.rx,
        ChannelKind::Tx => channels.tx,
        ChannelKind::Combined => channels.combined,
    }
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

fn parse_on_off(value: &str) -> io::Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{value:?}: expected on or off"),
        )),
    }
}

fn parse_count(value: &str) -> io::Result<u32> {
    value.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{value:?}: expected a count"),
        )
    })
}

fn unsupported(setting: &Setting) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{setting}: the driver has no such setting"),
    )
}

/// A CPU mask as the kernel prints it (`00000000,00000003`) → `3`.
pub fn normalize_mask(mask: &str) -> String {
    let digits: String = mask
        .trim()
        .chars()
        .filter(|c| *c != ',')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The mask of `cpus`, in 32-bit groups separated by commas as the kernel writes it.
pub fn cpu_mask(cpus: &[u32]) -> String {
    let groups = cpus.iter().map(|&c| c / 32 + 1).max().unwrap_or(1) as usize;
    let mut words = vec![0u32; groups];
    for &cpu in cpus {
        words[(cpu / 32) as usize] |= 1 << (cpu % 32);
    }
    let mut text = format!("{:x}", words[groups - 1]);
    for word in words[..groups - 1].iter().rev() {
        let _ = write!(text, ",{word:08x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_compare_by_value() {
        let rps = Setting::Rps {
            interface: "eth0".into(),
            queue: 0,
        };
        assert!(rps.same("00000000,0000000f", "f"));
        assert!(rps.same("0", "00"));
        assert!(!rps.same("3", "1"));
        assert_eq!(cpu_mask(&[0, 1]), "3");
        assert_eq!(cpu_mask(&[0, 33]), "2,00000001");
        assert_eq!(cpu_mask(&[]), "0");
    }

    #[test]
    fn lists_compare_by_words() {
        let range = Setting::sysctl("net.ipv4.ip_local_port_range");
        assert!(range.same("32768\t60999", "32768 60999"));
        assert!(!range.same("32768 60999", "32768 61000"));
    }
}
