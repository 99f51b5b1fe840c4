//! `relay tune check`: what on this host matters for a media relay, each with its value, a
//! status and the reason. Read-only; works without root where the files are readable.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{Error, host::Host, profile::Options, profile::SOCKET_BUFFER, setting::normalize_mask};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Info,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub item: String,
    pub value: String,
    pub status: Status,
    pub reason: String,
}

fn finding(
    item: &str,
    value: impl Into<String>,
    status: Status,
    reason: impl Into<String>,
) -> Finding {
    Finding {
        item: item.to_owned(),
        value: value.into(),
        status,
        reason: reason.into(),
    }
}

/// Drivers (as ethtool names them) with native (driver-mode) XDP in mainline Linux: the
/// program runs on the DMA buffer before an skb exists. Any other driver gets generic mode.
#[rustfmt::skip]
const NATIVE_XDP: &[&str] = &[
    // Intel, Mellanox/NVIDIA, Broadcom, Netronome, QLogic, Solarflare, Aquantia.
    "i40e", "ice", "idpf", "ixgbe", "ixgbevf", "igb", "igc", "mlx4_en", "mlx5_core", "bnxt_en",
    "nfp", "qede", "sfc", "atlantic",
    // Clouds and hypervisors.
    "ena", "gve", "hv_netvsc", "virtio_net",
    // Virtual and aggregate devices.
    "veth", "tun", "bonding",
    // SoC NICs of ARM edge boxes.
    "mvneta", "mvpp2", "fec", "fsl_enetc", "fsl_dpaa2_eth", "nicvf", "rvu_nicpf", "rvu_nicvf",
    "netsec", "am65-cpsw-nuss", "lan966x-switch", "tsnep",
];

/// Every finding for `host`; NIC findings need `options.interface`.
pub fn check(host: &Host, options: &Options) -> Result<Vec<Finding>, Error> {
    let mut out = Vec::new();
    if let Some(interface) = &options.interface {
        host.require_interface(interface)?;
        nic(host, interface, &mut out)?;
    }
    sysctls(host, options, &mut out)?;
    conntrack(host, options, &mut out)?;
    governor(host, &mut out)?;
    tuned(host, &mut out)?;
    Ok(out)
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(&format!("reading {what}"), e)
}

fn nic(host: &Host, interface: &str, out: &mut Vec<Finding>) -> Result<(), Error> {
    let ethtool = host.ethtool();
    let cpus = host.online_cpus().map_err(io("the online CPUs"))?.len();
    out.push(xdp(ethtool.driver(interface).map_err(io("the driver"))?));
    out.push(channels(host, interface, cpus)?);
    out.push(rings(host, interface)?);
    irqs(host, interface, cpus, out)?;
    steering(host, interface, cpus, out)?;
    let gro = ethtool.gro(interface).map_err(io("GRO"))?;
    out.push(finding(
        "gro",
        if gro { "on" } else { "off" },
        if gro { Status::Ok } else { Status::Info },
        "coalesces TCP/TLS clients' segments (and UDP for sockets that ask); XDP runs before it",
    ));
    Ok(())
}

fn xdp(driver: Option<String>) -> Finding {
    let Some(driver) = driver else {
        return finding(
            "xdp",
            "generic (no driver information)",
            Status::Warn,
            "the interface names no driver (like lo): `relay run --interface` attaches in \
             generic mode, which runs after the skb is built",
        );
    };
    if NATIVE_XDP.contains(&driver.as_str()) {
        let mut reason = "the driver runs XDP natively: media is forwarded before the kernel \
                          allocates an skb"
            .to_owned();
        if driver == "virtio_net" {
            reason.push_str(
                "; virtio_net needs as many queue pairs as CPUs for XDP_TX without a lock, \
                 and the host's offloads (guest_tso/csum) off",
            );
        }
        finding("xdp", format!("native ({driver})"), Status::Ok, reason)
    } else {
        finding(
            "xdp",
            format!("generic ({driver})"),
            Status::Warn,
            format!(
                "{driver} is not among the drivers known to run XDP natively: `relay run \
                 --interface` attaches in generic mode, which runs after the kernel has built \
                 the skb (correct, but without the saving native mode brings)"
            ),
        )
    }
}

fn channels(host: &Host, interface: &str, cpus: usize) -> Result<Finding, Error> {
    let found = host.ethtool().channels(interface).map_err(io("channels"))?;
    let Some(c) = found else {
        return Ok(finding(
            "channels",
            "n/a",
            Status::Info,
            "the driver does not report queues",
        ));
    };
    let (now, max) = if c.combined_max > 0 {
        (c.combined, c.combined_max)
    } else {
        (c.rx, c.rx_max)
    };
    let value = format!(
        "{now} of {max} (rx {} tx {} combined {})",
        c.rx, c.tx, c.combined
    );
    let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    Ok(if now >= cpus {
        finding("channels", value, Status::Ok, "a queue per CPU")
    } else if max > now {
        finding(
            "channels",
            value,
            Status::Warn,
            format!("{cpus} CPUs but {now} queues in use and {max} available: `plan` raises it"),
        )
    } else {
        finding(
            "channels",
            value,
            Status::Info,
            format!(
                "fewer queues than the {cpus} CPUs and no more available: RPS spreads the work"
            ),
        )
    })
}

fn rings(host: &Host, interface: &str) -> Result<Finding, Error> {
    let found = host.ethtool().rings(interface).map_err(io("ring sizes"))?;
    let Some(r) = found else {
        return Ok(finding(
            "rings",
            "n/a",
            Status::Info,
            "the driver has no rings to size (veth, tun)",
        ));
    };
    let value = format!("rx {}/{} tx {}/{}", r.rx, r.rx_max, r.tx, r.tx_max);
    Ok(if r.rx < r.rx_max || r.tx < r.tx_max {
        finding(
            "rings",
            value,
            Status::Warn,
            "below the NIC's maximum: a burst while a core is busy is dropped in the NIC (rx_missed/rx_no_buffer)",
        )
    } else {
        finding("rings", value, Status::Ok, "at the NIC's maximum")
    })
}

/// RPS and XPS: which CPUs process each rx queue's packets, and send on each tx queue.
fn steering(
    host: &Host,
    interface: &str,
    cpus: usize,
    out: &mut Vec<Finding>,
) -> Result<(), Error> {
    let queues = host
        .list(&format!("sys/class/net/{interface}/queues"))
        .map_err(io("queues"))?;
    let rx: Vec<&String> = queues.iter().filter(|q| q.starts_with("rx-")).collect();
    let tx: Vec<&String> = queues.iter().filter(|q| q.starts_with("tx-")).collect();
    let mut rps = Vec::new();
    for q in &rx {
        let mask = host
            .read(&format!("sys/class/net/{interface}/queues/{q}/rps_cpus"))
            .map_err(io("rps_cpus"))?
            .unwrap_or_default();
        rps.push(format!("{q}={}", normalize_mask(&mask)));
    }
    let rps_off = rps.iter().all(|r| r.ends_with("=0"));
    out.push(if rx.len() < cpus && rps_off {
        finding("rps", rps.join(" "), Status::Warn, format!("{} rx queue(s) for {cpus} CPUs and RPS off: one CPU takes all of a queue's packets up the stack", rx.len()))
    } else {
        finding("rps", rps.join(" "), Status::Ok, if rps_off { "off: a queue per CPU spreads the work already" } else { "on: packets of a queue are spread over the mask's CPUs" })
    });
    let mut xps = Vec::new();
    for q in &tx {
        let mask = host
            .read(&format!("sys/class/net/{interface}/queues/{q}/xps_cpus"))
            .map_err(io("xps_cpus"))?;
        xps.push(format!(
            "{q}={}",
            mask.as_deref().map_or("n/a".into(), normalize_mask)
        ));
    }
    out.push(finding(
        "xps",
        xps.join(" "),
        Status::Info,
        "which CPUs send on which tx queue; drivers with a queue per CPU set it themselves",
    ));

    Ok(())
}

/// The NIC's interrupts (its PCI device's MSI vectors) and the CPUs each may run on.
fn irqs(host: &Host, interface: &str, cpus: usize, out: &mut Vec<Finding>) -> Result<(), Error> {
    let mut vectors = Vec::new();
    for dir in ["device/msi_irqs", "device/../msi_irqs"] {
        vectors = host
            .list(&format!("sys/class/net/{interface}/{dir}"))
            .map_err(io("the NIC's interrupts"))?;
        if !vectors.is_empty() {
            break;
        }
    }
    let irqbalance = irqbalance_running(host)?;
    if vectors.is_empty() {
        out.push(finding(
            "irq-affinity",
            "n/a",
            Status::Info,
            "no MSI interrupts (a virtual device, or a legacy IRQ)",
        ));
    } else {
        let mut value = String::new();
        let mut cpus_used = Vec::new();
        for irq in &vectors {
            // Where the IRQ does run; older kernels only say where it may.
            let effective = host
                .read(&format!("proc/irq/{irq}/effective_affinity_list"))
                .map_err(io("IRQ affinity"))?;
            let list = match effective {
                Some(list) => list,
                None => host
                    .read(&format!("proc/irq/{irq}/smp_affinity_list"))
                    .map_err(io("IRQ affinity"))?
                    .unwrap_or_else(|| "?".into()),
            };
            let _ = write!(
                value,
                "{}{irq}:{list}",
                if value.is_empty() { "" } else { " " }
            );
            cpus_used.push(list);
        }
        cpus_used.sort();
        cpus_used.dedup();
        out.push(if vectors.len() > 1 && cpus_used.len() == 1 && cpus > 1 && !irqbalance {
            finding("irq-affinity", value, Status::Warn, "all of the NIC's interrupts on the same CPUs and no irqbalance: one core takes every queue's interrupts")
        } else {
            finding("irq-affinity", value, Status::Info, "IRQ:effective CPUs of each of the NIC's vectors")
        });
    }
    out.push(if irqbalance {
        finding("irqbalance", "running", Status::Info, "moves queue interrupts between CPUs every 10 s: fine on an edge box; for the latency profile pin them and ban those CPUs (IRQBALANCE_BANNED_CPULIST)")
    } else {
        finding("irqbalance", "not running", Status::Info, "interrupts stay where the driver put them (usually spread one queue per CPU)")
    });
    Ok(())
}

fn irqbalance_running(host: &Host) -> Result<bool, Error> {
    for pid in host.list("proc").map_err(io("processes"))? {
        if pid.bytes().all(|b| b.is_ascii_digit())
            && host
                .read(&format!("proc/{pid}/comm"))
                .ok()
                .flatten()
                .as_deref()
                == Some("irqbalance")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn sysctls(host: &Host, options: &Options, out: &mut Vec<Finding>) -> Result<(), Error> {
    let read = |key: &str| host.sysctl(key).map_err(io(key));
    let absent =
        "not visible here: a host-wide setting, check it from the host's network namespace";
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        out.push(match read(key)?.map(|v| (v.parse::<u64>().unwrap_or(0), v)) {
            None => finding(key, "n/a", Status::Info, absent),
            Some((n, v)) if n >= SOCKET_BUFFER => finding(key, v, Status::Ok, "at least the 4 MiB Relay asks per media socket"),
            Some((_, v)) => finding(key, v, Status::Warn, "below the 4 MiB Relay asks per media socket: the kernel caps the socket's buffer here, bursts overflow it"),
        });
    }
    let drops = softnet_drops(host)?;
    out.push(match read("net.core.netdev_max_backlog")? {
        None => finding("net.core.netdev_max_backlog", "n/a", Status::Info, absent),
        Some(v) if drops > 0 => finding(
            "net.core.netdev_max_backlog",
            v,
            Status::Warn,
            format!(
                "{drops} packets dropped at a full backlog since boot (softnet_stat): raise it"
            ),
        ),
        Some(v) => finding(
            "net.core.netdev_max_backlog",
            v,
            Status::Ok,
            "no packet dropped at a full backlog since boot (softnet_stat)",
        ),
    });
    out.push(match read("net.core.netdev_budget")? {
        None => finding("net.core.netdev_budget", "n/a", Status::Info, absent),
        Some(v) => finding(
            "net.core.netdev_budget",
            v,
            Status::Info,
            "packets per softirq round; the edge profile raises it to 600",
        ),
    });
    for key in ["net.core.busy_read", "net.core.busy_poll"] {
        out.push(match read(key)? {
            None => finding(key, "n/a", Status::Info, absent),
            Some(v) if v == "0" => finding(key, v, Status::Info, "busy polling off: sockets sleep until an interrupt (the latency profile spins 50 µs instead)"),
            Some(v) => finding(key, v, Status::Info, "busy polling on: lower latency, more CPU"),
        });
    }
    let reserved = read("net.ipv4.ip_local_reserved_ports")?.unwrap_or_default();
    let range = read("net.ipv4.ip_local_port_range")?.unwrap_or_default();
    let ephemeral: Vec<u32> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let overlaps = |p: crate::profile::Ports| {
        ephemeral.len() == 2
            && u32::from(p.first) <= ephemeral[1]
            && u32::from(p.last) >= ephemeral[0]
    };
    let unreserved: Vec<String> = [options.media_ports, options.relay_ports]
        .into_iter()
        .filter(|p| overlaps(*p) && !reserved.split(',').any(|r| r == p.to_string()))
        .map(|p| p.to_string())
        .collect();
    out.push(if unreserved.is_empty() {
        finding("net.ipv4.ip_local_reserved_ports", reserved, Status::Ok, "Relay's port ranges are reserved or outside the ephemeral range")
    } else {
        finding("net.ipv4.ip_local_reserved_ports", if reserved.is_empty() { "(none)".to_owned() } else { reserved }, Status::Warn, format!("{} overlap the ephemeral range {}: an outgoing connection can take a port a room endpoint or allocation needs", unreserved.join(" and "), range.split_whitespace().collect::<Vec<_>>().join("-")))
    });
    Ok(())
}

/// Packets dropped because a CPU's backlog was full: column 2 of softnet_stat, per CPU, hex.
fn softnet_drops(host: &Host) -> Result<u64, Error> {
    let stat = host
        .read("proc/net/softnet_stat")
        .map_err(io("softnet_stat"))?
        .unwrap_or_default();
    Ok(stat
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u64::from_str_radix(d, 16).ok())
        .sum())
}

fn conntrack(host: &Host, options: &Options, out: &mut Vec<Finding>) -> Result<(), Error> {
    let count = host
        .sysctl("net.netfilter.nf_conntrack_count")
        .map_err(io("conntrack"))?;
    let ports = format!(
        "{}, {}, {}",
        options.listening_port, options.media_ports, options.relay_ports
    );
    out.push(match count {
        None => finding("conntrack", "not loaded", Status::Ok, "no connection tracking: userspace media costs no conntrack entries"),
        Some(n) => finding(
            "conntrack",
            format!("loaded ({n} entries)"),
            Status::Warn,
            format!(
                "XDP-forwarded media never reaches conntrack, but what goes through userspace \
                 does (first packets, TURN over TCP/TLS, rooms without a kernel route): each flow \
                 costs an entry and lookups, and a full table drops new calls. Exempt the media \
                 ports unless a rule needs their state: `nft add table inet relay_notrack; nft \
                 add chain inet relay_notrack pre '{{ type filter hook prerouting priority raw; }}'; \
                 nft add rule inet relay_notrack pre udp dport {{ {ports} }} notrack; nft add chain \
                 inet relay_notrack out '{{ type filter hook output priority raw; }}'; nft add rule \
                 inet relay_notrack out udp sport {{ {ports} }} notrack`"
            ),
        ),
    });
    Ok(())
}

fn governor(host: &Host, out: &mut Vec<Finding>) -> Result<(), Error> {
    let mut governors = Vec::new();
    for cpu in host.list("sys/devices/system/cpu").map_err(io("CPUs"))? {
        if !cpu
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let path = format!("sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor");
        governors.extend(host.read(&path).map_err(io("the CPU governor"))?);
    }
    governors.sort();
    governors.dedup();
    out.push(match governors.as_slice() {
        [] => finding("cpu-governor", "n/a", Status::Info, "no cpufreq here (a VM, or a CPU at a fixed clock)"),
        [g] if g == "performance" => finding("cpu-governor", g.clone(), Status::Ok, "the clock stays up: a burst is not served at idle speed"),
        gs => finding("cpu-governor", gs.join(","), Status::Warn, "the clock is raised only after load arrives, so a frame's packets wait on an idle-speed core: `cpupower frequency-set -g performance` for the latency profile"),
    });
    Ok(())
}

fn tuned(host: &Host, out: &mut Vec<Finding>) -> Result<(), Error> {
    let file = host.etc().join("tuned/active_profile");
    let active = match std::fs::read_to_string(&file) {
        Ok(p) => Some(p.trim().to_owned()).filter(|p| !p.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&format!("reading {}", file.display()), e)),
    };
    out.push(match active {
        None => finding("tuned", "no active profile", Status::Ok, "nothing else re-applies sysctls or the governor over relay tune's"),
        Some(p) => finding("tuned", p, Status::Warn, "tuned sets sysctls, the governor and IRQs too and re-applies them when it starts, undoing or fighting relay tune: `tuned-adm off`, or carry Relay's values in a tuned profile instead"),
    });
    Ok(())
}
