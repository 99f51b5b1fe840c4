//! The files that make the settings survive a reboot, the system's way: sysctls in
//! `sysctl.d`, NIC rings, channels and GRO in a systemd `.link` file (applied by udev when the
//! NIC appears), RPS masks in a udev rule (a sysfs attribute per queue, which any udev writes).

use std::{fmt::Write as _, path::PathBuf};

use crate::{
    Error,
    host::Host,
    journal::Held,
    setting::{ChannelKind, Direction, Setting},
};

/// A file to write under `/etc`, and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub content: String,
}

const HEADER: &str = "# Written by `relay tune apply --profile";
const FOOTER: &str = "# `relay tune revert` removes this file and puts the values back.\n";

/// The files that persist `held` (the profile's values) on `host`.
pub fn files(host: &Host, profile: &str, held: &[Held]) -> Result<Vec<File>, Error> {
    let header = format!("{HEADER} {profile}`.\n{FOOTER}");
    let mut out = Vec::new();

    let mut sysctl = header.clone();
    for h in held {
        if let Setting::Sysctl { key } = &h.setting {
            let _ = writeln!(sysctl, "{key} = {}", h.value);
        }
    }
    if sysctl != header {
        out.push(File {
            path: host.etc().join("sysctl.d/90-relay-tune.conf"),
            content: sysctl,
        });
    }

    let mut interfaces: Vec<&str> = held.iter().filter_map(|h| h.setting.interface()).collect();
    interfaces.sort_unstable();
    interfaces.dedup();
    let mut rules = header.clone();
    for interface in interfaces {
        let mac = host
            .read(&format!("sys/class/net/{interface}/address"))
            .map_err(|e| Error::io(&format!("reading {interface}'s address"), e))?
            .unwrap_or_default();
        let mine = held
            .iter()
            .filter(|h| h.setting.interface() == Some(interface));
        let mut link = String::new();
        let mut rps = String::new();
        for h in mine {
            match &h.setting {
                Setting::Ring { direction, .. } => {
                    let key = match direction {
                        Direction::Rx => "RxBufferSize",
                        Direction::Tx => "TxBufferSize",
                    };
                    let _ = writeln!(link, "{key}={}", h.value);
                }
                Setting::Channels { channel, .. } => {
                    let key = match channel {
                        ChannelKind::Rx => "RxChannels",
                        ChannelKind::Tx => "TxChannels",
                        ChannelKind::Combined => "CombinedChannels",
                    };
                    let _ = writeln!(link, "{key}={}", h.value);
                }
                Setting::Gro { .. } => {
                    let on = h.value == "on";
                    let _ = writeln!(link, "GenericReceiveOffload={on}");
                }
                Setting::Rps { queue, .. } => {
                    let _ = write!(rps, ", ATTR{{queues/rx-{queue}/rps_cpus}}=\"{}\"", h.value);
                }
                Setting::Sysctl { .. } => {}
            }
        }
        if !link.is_empty() {
            // The first .link file that matches a NIC is the only one udev applies, so this
            // one also carries the naming and MAC policy of systemd's own 99-default.link.
            out.push(File {
                path: host
                    .etc()
                    .join(format!("systemd/network/90-relay-tune-{interface}.link")),
                content: format!(
                    "{header}\n[Match]\nMACAddress={mac}\n\n[Link]\nNamePolicy=keep kernel \
                     database onboard slot path\nAlternativeNamesPolicy=database onboard slot \
                     path\nMACAddressPolicy=persistent\n{link}"
                ),
            });
        }
        if !rps.is_empty() {
            let _ = writeln!(
                rules,
                "ACTION==\"add\", SUBSYSTEM==\"net\", ATTR{{address}}==\"{mac}\"{rps}"
            );
        }
    }
    if rules != header {
        out.push(File {
            path: host.etc().join("udev/rules.d/90-relay-tune.rules"),
            content: rules,
        });
    }
    Ok(out)
}
