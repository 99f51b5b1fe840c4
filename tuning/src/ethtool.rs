//! The NIC settings that live behind ethtool: driver, ring sizes, channels (queues) and GRO.
//! [`Ethtool`] is the seam; [`Ioctl`] talks to the kernel with the `SIOCETHTOOL` ioctl (the
//! legacy interface every driver still answers, so no netlink stack is needed).

use std::{ffi::c_void, io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

use serde::{Deserialize, Serialize};

/// Ring sizes: descriptors per queue the NIC may fill before the host drains it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rings {
    pub rx: u32,
    pub tx: u32,
    pub rx_max: u32,
    pub tx_max: u32,
}

/// Channels: the NIC's queues (each with its interrupt), either separate rx and tx queues or
/// combined pairs, depending on the driver. A maximum of 0 means the driver has no such kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channels {
    pub rx: u32,
    pub tx: u32,
    pub combined: u32,
    pub rx_max: u32,
    pub tx_max: u32,
    pub combined_max: u32,
}

/// What `relay tune` reads and changes through ethtool. `Ok(None)`: the driver has no such
/// setting (veth has no rings), which is not an error.
pub trait Ethtool {
    /// The driver's name; `None` if it does not say (`lo`).
    fn driver(&self, interface: &str) -> io::Result<Option<String>>;
    fn rings(&self, interface: &str) -> io::Result<Option<Rings>>;
    fn set_rings(&self, interface: &str, rings: Rings) -> io::Result<()>;
    fn channels(&self, interface: &str) -> io::Result<Option<Channels>>;
    fn set_channels(&self, interface: &str, channels: Channels) -> io::Result<()>;
    fn gro(&self, interface: &str) -> io::Result<bool>;
    fn set_gro(&self, interface: &str, on: bool) -> io::Result<()>;
}

// From <linux/ethtool.h> and <linux/sockios.h>.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GRINGPARAM: u32 = 0x10;
const ETHTOOL_SRINGPARAM: u32 = 0x11;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;

#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
#[derive(Default)]
struct RingParam {
    cmd: u32,
    rx_max_pending: u32,
    rx_mini_max_pending: u32,
    rx_jumbo_max_pending: u32,
    tx_max_pending: u32,
    rx_pending: u32,
    rx_mini_pending: u32,
    rx_jumbo_pending: u32,
    tx_pending: u32,
}

#[repr(C)]
#[derive(Default)]
struct ChannelParam {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

#[repr(C)]
#[derive(Default)]
struct Value {
    cmd: u32,
    data: u32,
}

/// ethtool through `SIOCETHTOOL` on a datagram socket of the caller's network namespace.
#[derive(Debug, Default)]
pub struct Ioctl;

impl Ioctl {
    /// Runs one ethtool command; `T` is the `#[repr(C)]` struct the command reads and fills.
    fn call<T>(interface: &str, data: &mut T) -> io::Result<()> {
        let name = interface.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{interface:?} is not an interface name"),
            ));
        }
        // SAFETY: socket() has no memory preconditions; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in request.ifr_name.iter_mut().zip(name) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        request.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast::<c_void>().cast();
        // SAFETY: request names the interface (NUL-terminated: zeroed beyond the name) and
        // points at `data`, a live `#[repr(C)]` struct of the layout the command expects,
        // which outlives the call.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut request) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `false` for `EOPNOTSUPP`: the driver has no such setting.
fn supported(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Ethtool for Ioctl {
    fn driver(&self, interface: &str) -> io::Result<Option<String>> {
        let mut info = DrvInfo {
            cmd: ETHTOOL_GDRVINFO,
            driver: [0; 32],
            version: [0; 32],
            fw_version: [0; 32],
            bus_info: [0; 32],
            erom_version: [0; 32],
            reserved2: [0; 12],
            n_priv_flags: 0,
            n_stats: 0,
            testinfo_len: 0,
            eedump_len: 0,
            regdump_len: 0,
        };
        if !supported(Self::call(interface, &mut info))? {
            return Ok(None);
        }
        let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
        Ok(Some(
            String::from_utf8_lossy(&info.driver[..end]).into_owned(),
        ))
    }

    fn rings(&self, interface: &str) -> io::Result<Option<Rings>> {
        let mut param = RingParam {
            cmd: ETHTOOL_GRINGPARAM,
            ..RingParam::default()
        };
        if !supported(Self::call(interface, &mut param))? {
            return Ok(None);
        }
        Ok(Some(Rings {
            rx: param.rx_pending,
            tx: param.tx_pending,
            rx_max: param.rx_max_pending,
            tx_max: param.tx_max_pending,
        }))
    }

    fn set_rings(&self, interface: &str, rings: Rings) -> io::Result<()> {
        // Read first so the sizes this command does not change (mini, jumbo) stay.
        let mut param = RingParam {
            cmd: ETHTOOL_GRINGPARAM,
            ..RingParam::default()
        };
        Self::call(interface, &mut param)?;
        param.cmd = ETHTOOL_SRINGPARAM;
        param.rx_pending = rings.rx;
        param.tx_pending = rings.tx;
        Self::call(interface, &mut param)
    }

    fn channels(&self, interface: &str) -> io::Result<Option<Channels>> {
        let mut param = ChannelParam {
            cmd: ETHTOOL_GCHANNELS,
            ..ChannelParam::default()
        };
        if !supported(Self::call(interface, &mut param))? {
            return Ok(None);
        }
        Ok(Some(Channels {
            rx: param.rx_count,
            tx: param.tx_count,
            combined: param.combined_count,
            rx_max: param.max_rx,
            tx_max: param.max_tx,
            combined_max: param.max_combined,
        }))
    }

    fn set_channels(&self, interface: &str, channels: Channels) -> io::Result<()> {
        let mut param = ChannelParam {
            cmd: ETHTOOL_GCHANNELS,
            ..ChannelParam::default()
        };
        Self::call(interface, &mut param)?;
        param.cmd = ETHTOOL_SCHANNELS;
        param.rx_count = channels.rx;
        param.tx_count = channels.tx;
        param.combined_count = channels.combined;
        Self::call(interface, &mut param)
    }

    fn gro(&self, interface: &str) -> io::Result<bool> {
        let mut value = Value {
            cmd: ETHTOOL_GGRO,
            data: 0,
        };
        Self::call(interface, &mut value)?;
        Ok(value.data != 0)
    }

    fn set_gro(&self, interface: &str, on: bool) -> io::Result<()> {
        let mut value = Value {
            cmd: ETHTOOL_SGRO,
            data: u32::from(on),
        };
        Self::call(interface, &mut value)
    }
}
