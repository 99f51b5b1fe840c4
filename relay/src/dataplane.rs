//! The kernel data plane: loads Relay's XDP program, attaches it to an interface, installs
//! flows and reads its counters. Loaded with [`Dataplane::load`] it is private to this
//! process and detached when dropped; loaded with [`Dataplane::load_pinned`] its maps,
//! program and link are pinned under [`Pins`], so that it outlives the daemon (hitless
//! restarts and upgrades) until [`Pins::remove`]. [`Bounce`], the benchmark's ceiling, is
//! the same object's other program.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLinkId,
    },
};
use relay_common::{
    Counters, Verdict,
    flow::{ActionKind, FAMILY_IPV4, FAMILY_IPV6, FlowAction, FlowKey, FlowStats},
    permission::{Permission, PermissionKey, RelayedKey},
    room::{RoomDestination, RoomRoute, RouteKey, RouteStats},
};

/// The XDP object built by `build.rs` from `relay-ebpf`.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-xdp"));

/// Name of the XDP entry point in `relay-ebpf/src/main.rs`.
const PROGRAM: &str = "relay_xdp";
/// Name of the TC ingress program (room fan-out) in `relay-ebpf/src/main.rs`.
const FANOUT_PROGRAM: &str = "relay_fanout";
/// Name of the benchmark's ceiling program in `relay-ebpf/src/main.rs` ([`Bounce`]).
const BOUNCE_PROGRAM: &str = "relay_bounce";
/// Names of the maps in `relay-ebpf/src/maps.rs`.
const VERDICTS_MAP: &str = "VERDICTS";
const FLOWS_MAP: &str = "FLOWS";
const FLOW_STATS_MAP: &str = "FLOW_STATS";
const POLICERS_MAP: &str = "POLICERS";
const POLICED_MAP: &str = "POLICED";
const DEVICES_MAP: &str = "DEVICES";
const RELAYED_MAP: &str = "RELAYED";
const PERMISSIONS_MAP: &str = "PERMISSIONS";
const ROOM_ROUTES_MAP: &str = "ROOM_ROUTES";
const ROOM_DESTINATIONS_MAP: &str = "ROOM_DESTINATIONS";
const ROUTE_STATS_MAP: &str = "ROUTE_STATS";
/// The maps that outlive the daemon (the per-CPU scratch maps need not).
const PINNED_MAPS: [&str; 11] = [
    VERDICTS_MAP,
    FLOWS_MAP,
    FLOW_STATS_MAP,
    POLICERS_MAP,
    POLICED_MAP,
    DEVICES_MAP,
    RELAYED_MAP,
    PERMISSIONS_MAP,
    ROOM_ROUTES_MAP,
    ROOM_DESTINATIONS_MAP,
    ROUTE_STATS_MAP,
];
/// Version of the maps' layout (the keys and values in relay-common). A daemon adopts only
/// maps of its own layout: after an upgrade that changes it, the new program starts on new
/// maps (and the daemon installs its flows there again). A field that takes over padding
/// that was always zero, where zero means what the old layout did (`RoomRoute`'s
/// `endpoint_policer`: none), keeps the layout: old maps stay valid both ways.
const LAYOUT: u32 = 4;

/// Where an instance's data plane is pinned: `/sys/fs/bpf/relay/<instance>`, holding
/// `maps-v<LAYOUT>/<MAP>`, the programs `relay_xdp` and `relay_fanout`, and per attached
/// interface its XDP link `link-<interface>` and its TC ingress link `tc-<interface>`.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(instance: &str) -> Self {
        Self {
            dir: Path::new(crate::preflight::BPFFS)
                .join("relay")
                .join(instance),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the data plane's counter maps are still pinned: gone, someone ran `relay
    /// down` or removed the pins (or bpffs) under a running relay, and a restart would not
    /// find its flows.
    pub fn intact(&self) -> bool {
        [VERDICTS_MAP, POLICED_MAP]
            .iter()
            .all(|m| self.maps().join(m).exists())
    }

    fn maps(&self) -> PathBuf {
        self.dir.join(format!("maps-v{LAYOUT}"))
    }

    fn link(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("link-{interface}"))
    }

    fn tc_link(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("tc-{interface}"))
    }

    fn program(&self) -> PathBuf {
        self.dir.join(PROGRAM)
    }

    fn fanout_program(&self) -> PathBuf {
        self.dir.join(FANOUT_PROGRAM)
    }

    /// The interfaces a pinned link attaches the program to.
    pub fn interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("link-").map(str::to_owned)
            })
            .collect();
        out.sort();
        out
    }

    /// Removes every pin of the instance: unpinning a link detaches the program from its
    /// interface (nothing else holds it once the daemon is gone). Returns whether there was
    /// anything.
    pub fn remove(&self) -> std::io::Result<bool> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How [`Dataplane::attach_pinned`] found the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Attached anew, in this mode, and the link pinned.
    New(AttachedMode),
    /// An earlier run's pinned link: its program was replaced by this one atomically.
    Adopted,
}

/// How the operator asked for the program to be attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic (skb) mode if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only: works on any interface, slower.
    Generic,
}

/// The mode the kernel actually gave us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native (driver)",
            Self::Generic => "generic (skb)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this relay binary was built with AYA_BUILD_SKIP=1 and carries no XDP program: \
         rebuild without it after `cargo xtask setup`"
    )]
    NotBuilt,
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] EbpfError),
    #[error(
        "the kernel refused the XDP program ({0}): Relay needs a kernel with BPF and XDP \
         (CONFIG_BPF_SYSCALL, CONFIG_BPF_JIT; Linux 5.15 or newer)"
    )]
    Verify(#[source] ProgramError),
    #[error("no interface named {0:?}: check `ip link` (in the right network namespace)")]
    UnknownInterface(String),
    #[error(
        "could not attach XDP to {interface} in {mode} mode: {source}{hint}",
        hint = if *.mode == "native (driver)" { "; try --xdp-mode generic or auto" } else { "" }
    )]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "could not attach the room fan-out program to {interface}'s TC ingress: {source} \
         (Relay needs tcx links: Linux 6.6 or newer)"
    )]
    AttachTc {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("a map operation failed: {0}")]
    Map(#[from] MapError),
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] ProgramError),
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("cannot map the policers into memory: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("the object has no {0}: relay and relay-ebpf are out of step")]
    Missing(&'static str),
    #[error("the object has no program named {0}: relay and relay-ebpf are out of step")]
    MissingProgram(&'static str),
    #[error("the object has no map {0}: relay and relay-ebpf are out of step")]
    MissingMap(&'static str),
}

/// The loaded XDP program and its maps. Dropping it detaches the program.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Whether the TC fan-out program is attached on every interface XDP is (set by
    /// [`Dataplane::attach_fanout`] and [`Dataplane::attach_fanout_pinned`]).
    fanout: Option<bool>,
}

/// Counters per verdict, summed over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounters(pub [Counters; Verdict::COUNT as usize]);

impl VerdictCounters {
    pub fn get(&self, verdict: Verdict) -> Counters {
        self.0[verdict.index() as usize]
    }

    pub fn total(&self) -> Counters {
        self.0.iter().fold(Counters::default(), |a, c| a.add(*c))
    }
}

impl fmt::Display for VerdictCounters {
    /// The table the daemon prints on exit and the demo shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<11} {:>6} {:>12} {:>14}",
            "verdict", "action", "packets", "bytes"
        )?;
        for v in Verdict::ALL {
            let c = self.get(v);
            let action = match v {
                Verdict::Forwarded => "tx",
                Verdict::FanOut => "tc",
                _ if v.passes() => "pass",
                _ => "drop",
            };
            writeln!(
                f,
                "{:<11} {action:>6} {:>12} {:>14}",
                v.name(),
                c.packets,
                c.bytes
            )?;
        }
        Ok(())
    }
}

/// What one `BPF_PROG_TEST_RUN` of the program returned.
#[derive(Debug)]
pub struct TestRunOutput {
    /// The XDP action (`XDP_PASS` = 2, `XDP_DROP` = 1, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    pub duration: Duration,
}

impl Dataplane {
    /// Loads the program and its maps into the kernel (verifier included); attaches nothing.
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = load_program(PROGRAM)?;
        classifier(&mut ebpf)?
            .load()
            .map_err(DataplaneError::Verify)?;
        Ok(Self { ebpf, fanout: None })
    }

    /// Loads the program with its maps pinned under `pins`: the maps an earlier run pinned
    /// there (same layout) are adopted with their flows, counters and budgets; missing ones
    /// are created and pinned. The program is pinned too. Returns whether maps were adopted.
    /// bpffs must be mounted ([`crate::preflight::check`] sees to it).
    pub fn load_pinned(pins: &Pins) -> Result<(Self, bool), DataplaneError> {
        if XDP_OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let maps = pins.maps();
        std::fs::create_dir_all(&maps).map_err(pinning(&maps))?;
        let adopted = maps.join(FLOWS_MAP).exists();
        let mut loader = EbpfLoader::new();
        for name in PINNED_MAPS {
            loader.map_pin_path(name, maps.join(name));
        }
        let mut ebpf = loader.load(XDP_OBJECT)?;
        let program = xdp(&mut ebpf, PROGRAM)?;
        verify(program)?;
        let path = pins.program();
        // The previous run's program stays alive while its link holds it.
        let _ = std::fs::remove_file(&path);
        program.pin(&path).map_err(pinning(&path))?;
        let fanout = classifier(&mut ebpf)?;
        fanout.load().map_err(DataplaneError::Verify)?;
        let path = pins.fanout_program();
        let _ = std::fs::remove_file(&path);
        fanout.pin(&path).map_err(pinning(&path))?;
        Ok((Self { ebpf, fanout: None }, adopted))
    }

    /// Attaches to `interface` through a pinned link: an earlier run's link there gets this
    /// program in place of its own, atomically (no packet meets no program); otherwise the
    /// program is attached as [`Dataplane::attach`] does and the link pinned. Either way the
    /// attachment outlives this process, until [`Pins::remove`].
    pub fn attach_pinned(
        &mut self,
        pins: &Pins,
        interface: &str,
        choice: XdpModeChoice,
    ) -> Result<Attachment, DataplaneError> {
        let path = pins.link(interface);
        let program = xdp(&mut self.ebpf, PROGRAM)?;
        if let Ok(pinned) = PinnedLink::from_pin(&path) {
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                .map_err(pinning(&path))?;
            let id = program.attach_to_link(link).map_err(pinning(&path))?;
            // The pin holds the link from now on; the program must not detach it on drop.
            drop(program.take_link(id).map_err(pinning(&path))?);
            log::info!("XDP on {interface}: the pinned link now runs this program");
            return Ok(Attachment::Adopted);
        }
        let program = xdp(&mut self.ebpf, PROGRAM)?;
        let (mode, id) = attach(program, interface, choice)?;
        let link = program.take_link(id).map_err(pinning(&path))?;
        FdLink::try_from(link)
            .map_err(pinning(&path))?
            .pin(&path)
            .map_err(pinning(&path))?;
        Ok(Attachment::New(mode))
    }

    /// Attaches the room fan-out program to `interface`'s TC ingress (a tcx link, Linux 6.6
    /// and later) through a pinned link, as [`Dataplane::attach_pinned`] does for XDP: an
    /// earlier run's link gets this program atomically, or a new link is pinned. Returns
    /// whether the link was adopted.
    pub fn attach_fanout_pinned(
        &mut self,
        pins: &Pins,
        interface: &str,
    ) -> Result<bool, DataplaneError> {
        let result = self.attach_fanout_pinned_inner(pins, interface);
        self.fanout = Some(self.fanout.unwrap_or(true) && result.is_ok());
        result
    }

    /// Whether room routes with several destinations can be left to the kernel: the TC
    /// fan-out program is attached wherever XDP is. When it is not, the daemon keeps such
    /// routes in userspace (XDP would pass their packets up, policed once already).
    pub fn fans_out(&self) -> bool {
        self.fanout == Some(true)
    }

    fn attach_fanout_pinned_inner(
        &mut self,
        pins: &Pins,
        interface: &str,
    ) -> Result<bool, DataplaneError> {
        let path = pins.tc_link(interface);
        let program = classifier(&mut self.ebpf)?;
        if let Ok(pinned) = PinnedLink::from_pin(&path) {
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(pinning(&path))?;
            let id = program.attach_to_link(link).map_err(pinning(&path))?;
            drop(program.take_link(id).map_err(pinning(&path))?);
            log::info!("TC on {interface}: the pinned link now runs this program");
            return Ok(true);
        }
        let id = attach_fanout(program, interface)?;
        let link = program.take_link(id).map_err(pinning(&path))?;
        FdLink::try_from(link)
            .map_err(pinning(&path))?
            .pin(&path)
            .map_err(pinning(&path))?;
        log::info!("TC ingress program attached to {interface}");
        Ok(false)
    }

    /// Attaches the room fan-out program to `interface`'s TC ingress, until the data plane
    /// is dropped.
    pub fn attach_fanout(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let result = attach_fanout(classifier(&mut self.ebpf)?, interface).map(|_| ());
        self.fanout = Some(self.fanout.unwrap_or(true) && result.is_ok());
        result
    }

    /// Attaches to `interface`, until the data plane is dropped. In `Auto` mode a refusal of
    /// native mode is logged and generic mode is tried.
    pub fn attach(
        &mut self,
        interface: &str,
        choice: XdpModeChoice,
    ) -> Result<AttachedMode, DataplaneError> {
        attach(xdp(&mut self.ebpf, PROGRAM)?, interface, choice).map(|(mode, _)| mode)
    }

    /// Per-verdict counters summed over every CPU.
    pub fn verdict_counters(&self) -> Result<VerdictCounters, DataplaneError> {
        let mut out = VerdictCounters::default();
        for v in Verdict::ALL {
            out.0[v.index() as usize] = self.summed(VERDICTS_MAP, v.index())?;
        }
        Ok(out)
    }

    /// Installs (or replaces) a flow of the fast path.
    pub fn insert_flow(
        &mut self,
        key: &FlowKey,
        action: &FlowAction,
    ) -> Result<(), DataplaneError> {
        self.insert(FLOWS_MAP, key, action)
    }

    /// Removes a flow; removing one that is not there is not an error.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        self.remove::<_, FlowAction>(FLOWS_MAP, key)
    }

    /// Has the program check the permissions of datagrams to `relayed`.
    pub fn insert_relayed(&mut self, relayed: SocketAddr) -> Result<(), DataplaneError> {
        self.insert(RELAYED_MAP, &relayed_key(relayed), &0_u32)
    }

    /// Stops checking `relayed`: its datagrams go to the stack, where the daemon checks them.
    pub fn remove_relayed(&mut self, relayed: SocketAddr) -> Result<(), DataplaneError> {
        self.remove::<_, u32>(RELAYED_MAP, &relayed_key(relayed))
    }

    /// Lets `peer` send to `relayed` until `expires_ns` (CLOCK_MONOTONIC); `own`: `peer` is
    /// the relay host's own address, where only relayed addresses pass (port-exact).
    pub fn insert_permission(
        &mut self,
        relayed: SocketAddr,
        peer: IpAddr,
        expires_ns: u64,
        own: bool,
    ) -> Result<(), DataplaneError> {
        let permission = Permission {
            expires_ns,
            own: u8::from(own),
            pad: [0; 7],
        };
        self.insert(PERMISSIONS_MAP, &permission_key(relayed, peer), &permission)
    }

    pub fn remove_permission(
        &mut self,
        relayed: SocketAddr,
        peer: IpAddr,
    ) -> Result<(), DataplaneError> {
        self.remove::<_, Permission>(PERMISSIONS_MAP, &permission_key(relayed, peer))
    }

    /// Every relayed address and permission installed, for reconciling adopted maps with
    /// the daemon's state.
    pub fn relayed_and_permission_keys(
        &self,
    ) -> Result<(Vec<RelayedKey>, Vec<PermissionKey>), DataplaneError> {
        Ok((
            self.keys::<_, u32>(RELAYED_MAP)?,
            self.keys::<_, Permission>(PERMISSIONS_MAP)?,
        ))
    }

    /// Removes an adopted relayed address or permission by its key.
    pub fn remove_relayed_key(&mut self, key: &RelayedKey) -> Result<(), DataplaneError> {
        self.remove::<_, u32>(RELAYED_MAP, key)
    }

    pub fn remove_permission_key(&mut self, key: &PermissionKey) -> Result<(), DataplaneError> {
        self.remove::<_, Permission>(PERMISSIONS_MAP, key)
    }

    /// Writes destination `index` of `ROOM_DESTINATIONS` (see
    /// `relay_common::room::destination_index`); a route's destinations are written before
    /// its key is inserted.
    pub fn set_room_destination(
        &mut self,
        index: u32,
        destination: &RoomDestination,
    ) -> Result<(), DataplaneError> {
        let map = self.map_mut(ROOM_DESTINATIONS_MAP)?;
        aya::maps::Array::<_, RoomDestination>::try_from(map)?.set(index, destination, 0)?;
        Ok(())
    }

    /// Installs (or replaces) a room route.
    pub fn insert_room_route(
        &mut self,
        key: &RouteKey,
        route: &RoomRoute,
    ) -> Result<(), DataplaneError> {
        self.insert(ROOM_ROUTES_MAP, key, route)
    }

    /// Removes a room route; removing one that is not there is not an error.
    pub fn remove_room_route(&mut self, key: &RouteKey) -> Result<(), DataplaneError> {
        self.remove::<_, RoomRoute>(ROOM_ROUTES_MAP, key)
    }

    /// Every room route installed, for reconciling adopted maps with the daemon's state.
    pub fn room_route_keys(&self) -> Result<Vec<RouteKey>, DataplaneError> {
        self.keys::<_, RoomRoute>(ROOM_ROUTES_MAP)
    }

    /// The slots of every room route installed: an adopted data plane's are in use until
    /// the daemon has reconciled them.
    pub fn room_route_slots(&self) -> Result<Vec<u32>, DataplaneError> {
        Ok(
            BpfHashMap::<_, RouteKey, RoomRoute>::try_from(self.map(ROOM_ROUTES_MAP)?)?
                .iter()
                .map(|entry| entry.map(|(_, route)| route.slot))
                .collect::<Result<_, _>>()?,
        )
    }

    /// The counters of route slot `slot`, summed over CPUs (`last_seen_ns`: the latest).
    pub fn route_stats(&self, slot: u32) -> Result<RouteStats, DataplaneError> {
        let array = PerCpuArray::<_, RouteStats>::try_from(self.map(ROUTE_STATS_MAP)?)?;
        sum(&array, slot, RouteStats::add)
    }

    /// Zeroes the counters of route slot `slot` (on every CPU), for a route taking it over.
    pub fn reset_route_stats(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let mut array = PerCpuArray::<_, RouteStats>::try_from(self.map_mut(ROUTE_STATS_MAP)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
        let zeros = PerCpuValues::try_from(vec![RouteStats::default(); cpus])
            .map_err(DataplaneError::Io)?;
        array.set(slot, zeros, 0)?;
        Ok(())
    }

    /// What the verifier reported for the XDP and the TC program: the instructions it
    /// processed (`verified_insns`) and the programs' sizes in instructions, for the tests'
    /// and the README's complexity figures.
    pub fn verifier_figures(&mut self) -> Result<[(u32, u32); 2], DataplaneError> {
        let figures = |info: aya::programs::ProgramInfo| {
            (
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0) / 8,
            )
        };
        let xdp = figures(
            xdp(&mut self.ebpf, PROGRAM)?
                .info()
                .map_err(DataplaneError::Verify)?,
        );
        let tc = figures(
            classifier(&mut self.ebpf)?
                .info()
                .map_err(DataplaneError::Verify)?,
        );
        Ok([xdp, tc])
    }

    /// Runs the TC program once over `frame` with `BPF_PROG_TEST_RUN` (which gives it no XDP
    /// metadata, so no fan-out mark). Returns the TC action.
    pub fn test_run_fanout(&mut self, frame: &[u8]) -> Result<u32, DataplaneError> {
        let program = classifier(&mut self.ebpf)?;
        let mut data_out = vec![0_u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ..TestRunOptions::default()
            })
            .map_err(DataplaneError::TestRun)?;
        Ok(result.return_value)
    }

    fn insert<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
        value: &V,
    ) -> Result<(), DataplaneError> {
        BpfHashMap::<_, K, V>::try_from(self.map_mut(name)?)?.insert(key, value, 0)?;
        Ok(())
    }

    /// Removing a key that is not there is not an error.
    fn remove<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
    ) -> Result<(), DataplaneError> {
        match BpfHashMap::<_, K, V>::try_from(self.map_mut(name)?)?.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn keys<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<K>, DataplaneError> {
        Ok(BpfHashMap::<_, K, V>::try_from(self.map(name)?)?
            .keys()
            .collect::<Result<_, _>>()?)
    }

    /// Lets flows leave by interface `interface` (its ifindex in `DEVICES`), where the program
    /// must be attached too: the fast path redirects there when the next hop is behind it.
    pub fn add_device(&mut self, interface: &str) -> Result<u32, DataplaneError> {
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(|_| DataplaneError::UnknownInterface(interface.to_owned()))?;
        let map = self.map_mut(DEVICES_MAP)?;
        aya::maps::DevMapHash::try_from(map)?
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::Io(std::io::Error::other(e)))?;
        Ok(ifindex)
    }

    /// Every flow key installed, for reconciling an adopted table with the daemon's state.
    pub fn flow_keys(&self) -> Result<Vec<FlowKey>, DataplaneError> {
        self.keys::<_, FlowAction>(FLOWS_MAP)
    }

    /// Zeroes the counters at `index` (on every CPU), for a flow taking the slot over.
    pub fn reset_flow_stats(&mut self, index: u32) -> Result<(), DataplaneError> {
        let map = self.map_mut(FLOW_STATS_MAP)?;
        let mut array = PerCpuArray::<_, FlowStats>::try_from(map)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
        let zeros =
            PerCpuValues::try_from(vec![FlowStats::default(); cpus]).map_err(DataplaneError::Io)?;
        array.set(index, zeros, 0)?;
        Ok(())
    }

    /// The counters of the flow at `index`, summed over CPUs (`last_seen_ns`: the latest).
    pub fn flow_stats(&self, index: u32) -> Result<FlowStats, DataplaneError> {
        let array = PerCpuArray::<_, FlowStats>::try_from(self.map(FLOW_STATS_MAP)?)?;
        sum(&array, index, FlowStats::add)
    }

    /// The program's policers, mapped into this process: the userspace data path spends the
    /// same budgets as the kernel.
    pub fn policers(&self) -> Result<crate::policers::Policers, DataplaneError> {
        use std::os::fd::AsFd as _;
        let map = self.map(POLICERS_MAP)?;
        let aya::maps::Map::Array(data) = map else {
            return Err(DataplaneError::Missing("POLICERS array"));
        };
        crate::policers::Policers::mapped(data.fd().as_fd()).map_err(DataplaneError::Mmap)
    }

    /// Packets (and their frame bytes) policer `slot` dropped in the kernel, over all CPUs.
    pub fn policed(&self, slot: u32) -> Result<Counters, DataplaneError> {
        self.summed(POLICED_MAP, slot)
    }

    /// Entry `index` of the per-CPU counter array `name`, summed over CPUs.
    fn summed(&self, name: &'static str, index: u32) -> Result<Counters, DataplaneError> {
        let array = PerCpuArray::<_, Counters>::try_from(self.map(name)?)?;
        sum(&array, index, Counters::add)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    /// Runs the program once over `frame` with `BPF_PROG_TEST_RUN`, as the packet tests do.
    /// The kernel refuses frames shorter than an Ethernet header (`EINVAL`): XDP never sees
    /// them.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestRunOutput, DataplaneError> {
        self.test_run_on(frame, 0)
    }

    /// As [`Dataplane::test_run`], as if the frame had arrived on interface `ingress_ifindex`
    /// of the calling thread's network namespace (0: none), so that route and neighbour
    /// lookups of the fast path resolve there.
    pub fn test_run_on(
        &mut self,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        test_run(xdp(&mut self.ebpf, PROGRAM)?, frame, ingress_ifindex)
    }
}

/// The benchmark's ceiling (`cargo xtask bench`), not used by the relay itself: the XDP
/// object's other program, `relay_bounce`, which sends every clean UDP datagram straight back
/// out of the interface it came in on (`XDP_TX`) with its MACs, IP addresses and UDP ports
/// swapped, and passes everything else. It touches no map: what it forwards is the most this
/// machine can forward on a path, for the relay's figures to be read against. Dropping it
/// detaches it. On a veth, what it sends back is delivered only if the peer runs an XDP
/// program too (see the README's facts about this kernel).
///
/// It is loaded from the same object as [`Dataplane`], in an instance of its own: aya loads
/// only the program asked for, so either loads without the other (the object's maps are
/// created for each instance, and this one leaves them alone).
pub struct Bounce {
    ebpf: Ebpf,
}

impl Bounce {
    /// Loads the program into the kernel (verifier included); attaches nothing.
    pub fn load() -> Result<Self, DataplaneError> {
        Ok(Self {
            ebpf: load_program(BOUNCE_PROGRAM)?,
        })
    }

    /// Attaches to `interface`, until dropped, choosing the mode as [`Dataplane::attach`] does.
    pub fn attach(
        &mut self,
        interface: &str,
        choice: XdpModeChoice,
    ) -> Result<AttachedMode, DataplaneError> {
        attach(xdp(&mut self.ebpf, BOUNCE_PROGRAM)?, interface, choice).map(|(mode, _)| mode)
    }

    /// Runs the program once over `frame` with `BPF_PROG_TEST_RUN`, as
    /// [`Dataplane::test_run`] does.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestRunOutput, DataplaneError> {
        test_run(xdp(&mut self.ebpf, BOUNCE_PROGRAM)?, frame, 0)
    }
}

/// A kernel setting the relay changed: its key below `/proc/sys`
/// (`net/ipv4/conf/eth0/forwarding`), what it was and what the relay set. `relay run`
/// records these so that `relay down` can put them back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SysctlChange {
    pub key: String,
    pub before: String,
    pub after: String,
}

impl SysctlChange {
    fn path(&self) -> PathBuf {
        Path::new("/proc/sys").join(&self.key)
    }
}

impl fmt::Display for SysctlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.before, self.after)
    }
}

/// Turns forwarding on for `interface` (IPv4 and IPv6, that interface only), as the fast
/// path's next-hop lookup (`bpf_fib_lookup`, a router's helper) refuses to resolve on an
/// interface that does not forward. Where the interface took IPv6 router advertisements
/// (accept_ra 1, which forwarding would silence) it keeps taking them (accept_ra 2). Returns
/// what it changed, for the log and for [`restore_forwarding`]. Works in the calling
/// thread's network namespace.
pub fn enable_forwarding(interface: &str) -> std::io::Result<Vec<SysctlChange>> {
    let mut changed = Vec::new();
    let mut set = |key: String, from: &str, to: &str| -> std::io::Result<()> {
        let change = SysctlChange {
            key,
            before: from.to_owned(),
            after: to.to_owned(),
        };
        let path = change.path();
        if std::fs::read_to_string(&path)?.trim() == from {
            std::fs::write(&path, to).map_err(|e| sysctl_refused(&change, &e))?;
            changed.push(change);
        }
        Ok(())
    };
    set(format!("net/ipv6/conf/{interface}/accept_ra"), "1", "2")?;
    set(format!("net/ipv4/conf/{interface}/forwarding"), "0", "1")?;
    set(format!("net/ipv6/conf/{interface}/forwarding"), "0", "1")?;
    Ok(changed)
}

/// The setting and the value it was refused, and where `/proc/sys` is read-only (a
/// container that is not privileged, as the Helm chart's DaemonSet), how to set it on the host.
fn sysctl_refused(change: &SysctlChange, e: &std::io::Error) -> std::io::Error {
    let (key, value) = (&change.key, &change.after);
    let message = if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        format!(
            "{key} = {value}: {e}; /proc/sys is read-only here (a container): set it on the \
             host, `sysctl -w {key}={value}` (and in /etc/sysctl.d to keep it)"
        )
    } else {
        format!("{key} = {value}: {e}")
    };
    std::io::Error::new(e.kind(), message)
}

/// Puts back what [`enable_forwarding`] changed, last change first. A setting that no longer
/// holds what the relay set was changed by someone else since, and is left as it is; an
/// interface that is gone has nothing to restore. Returns a line per change saying which,
/// for the operator. Works in the calling thread's network namespace.
pub fn restore_forwarding(changes: &[SysctlChange]) -> Vec<String> {
    changes.iter().rev().map(restore_sysctl).collect()
}

/// Puts `change.before` back where the setting still holds `change.after`; says what it did.
fn restore_sysctl(change: &SysctlChange) -> String {
    let path = change.path();
    let undo = SysctlChange {
        key: change.key.clone(),
        before: change.after.clone(),
        after: change.before.clone(),
    };
    match std::fs::read_to_string(&path) {
        Ok(now) if now.trim() != change.after => format!(
            "left {} at {} (the relay had set {}: changed by someone else since)",
            change.key,
            now.trim(),
            change.after
        ),
        Ok(_) => match std::fs::write(&path, &change.before) {
            Ok(()) => format!("restored {undo}"),
            Err(e) => format!("could not restore {undo}: {e}"),
        },
        Err(e) => format!("nothing to restore for {} ({e})", change.key),
    }
}

/// The counter arrays of a data plane read from its pins, with no daemon needed: a metrics
/// scrape, or a view of the kernel while the daemon is down or restarting.
pub struct PinnedCounters {
    verdicts: PerCpuArray<aya::maps::MapData, Counters>,
    policed: PerCpuArray<aya::maps::MapData, Counters>,
}

/// Map `name` pinned at `pins`; `None` when nothing is pinned there.
fn open_pinned(pins: &Pins, name: &str) -> Result<Option<aya::maps::MapData>, DataplaneError> {
    let path = pins.maps().join(name);
    if !path.exists() {
        return Ok(None);
    }
    aya::maps::MapData::from_pin(&path)
        .map(Some)
        .map_err(pinning(&path))
}

/// Map `name` pinned at `pins`, which must be there (its sibling `VERDICTS` was).
fn open_sibling(pins: &Pins, name: &'static str) -> Result<aya::maps::MapData, DataplaneError> {
    open_pinned(pins, name)?.ok_or(DataplaneError::MissingMap(name))
}

impl PinnedCounters {
    /// The arrays pinned at `pins`; `None` when nothing is pinned there.
    pub fn open(pins: &Pins) -> Result<Option<Self>, DataplaneError> {
        let Some(verdicts) = open_pinned(pins, VERDICTS_MAP)? else {
            return Ok(None);
        };
        let policed = open_sibling(pins, POLICED_MAP)?;
        Ok(Some(Self {
            verdicts: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(verdicts))?,
            policed: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(policed))?,
        }))
    }

    /// Every verdict's packets and bytes, summed over CPUs.
    pub fn verdicts(&self) -> Result<VerdictCounters, DataplaneError> {
        let mut out = VerdictCounters::default();
        for v in Verdict::ALL {
            out.0[v.index() as usize] = sum(&self.verdicts, v.index(), Counters::add)?;
        }
        Ok(out)
    }

    /// What policer `slot` refused in the kernel.
    pub fn policed(&self, slot: u32) -> Result<Counters, DataplaneError> {
        sum(&self.policed, slot, Counters::add)
    }
}

/// Every table of a data plane read from its pins, for `relay top`: the counters, the
/// channels' flows and the room routes with their counters, and the policers' limits.
pub struct PinnedTables {
    pub counters: PinnedCounters,
    flows: BpfHashMap<aya::maps::MapData, FlowKey, FlowAction>,
    flow_stats: PerCpuArray<aya::maps::MapData, FlowStats>,
    routes: BpfHashMap<aya::maps::MapData, RouteKey, RoomRoute>,
    route_stats: PerCpuArray<aya::maps::MapData, RouteStats>,
    policers: crate::policers::Policers,
}

impl PinnedTables {
    /// The tables pinned at `pins`; `None` when nothing is pinned there.
    pub fn open(pins: &Pins) -> Result<Option<Self>, DataplaneError> {
        use std::os::fd::AsFd as _;
        let Some(counters) = PinnedCounters::open(pins)? else {
            return Ok(None);
        };
        let policers = open_sibling(pins, POLICERS_MAP)?;
        let policers = crate::policers::Policers::mapped_read_only(policers.fd().as_fd())
            .map_err(DataplaneError::Mmap)?;
        Ok(Some(Self {
            counters,
            flows: BpfHashMap::try_from(aya::maps::Map::HashMap(open_sibling(pins, FLOWS_MAP)?))?,
            flow_stats: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open_sibling(
                pins,
                FLOW_STATS_MAP,
            )?))?,
            routes: BpfHashMap::try_from(aya::maps::Map::HashMap(open_sibling(
                pins,
                ROOM_ROUTES_MAP,
            )?))?,
            route_stats: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open_sibling(
                pins,
                ROUTE_STATS_MAP,
            )?))?,
            policers,
        }))
    }

    /// Every flow installed, with its counters.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowAction, FlowStats)>, DataplaneError> {
        with_stats(
            &self.flows,
            &self.flow_stats,
            |a| a.stats_index,
            FlowStats::add,
        )
    }

    /// Every room route installed, with its counters.
    pub fn routes(&self) -> Result<Vec<(RouteKey, RoomRoute, RouteStats)>, DataplaneError> {
        with_stats(&self.routes, &self.route_stats, |r| r.slot, RouteStats::add)
    }

    /// The limit policer `slot` enforces (`None`: slot 0, no limit).
    pub fn limit(&self, slot: u32) -> Option<relay_common::police::Limit> {
        self.policers.limit(slot)
    }
}

/// Every entry of `map` with its counters, entry `index(value)` of `stats` (summed over
/// CPUs with `add`). An entry removed while the map is read is left out.
fn with_stats<K: aya::Pod, V: aya::Pod, S: aya::Pod + Default>(
    map: &BpfHashMap<aya::maps::MapData, K, V>,
    stats: &PerCpuArray<aya::maps::MapData, S>,
    index: fn(&V) -> u32,
    add: fn(S, S) -> S,
) -> Result<Vec<(K, V, S)>, DataplaneError> {
    let mut out = Vec::new();
    for entry in map {
        let (key, value) = match entry {
            Ok(entry) => entry,
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push((key, value, sum(stats, index(&value), add)?));
    }
    Ok(out)
}

/// Entry `index` of a per-CPU array, summed over CPUs with `add`.
fn sum<T: std::borrow::Borrow<aya::maps::MapData>, V: aya::Pod + Default>(
    array: &PerCpuArray<T, V>,
    index: u32,
    add: fn(V, V) -> V,
) -> Result<V, DataplaneError> {
    Ok(array
        .get(&index, 0)?
        .iter()
        .fold(V::default(), |a, c| add(a, *c)))
}

/// Maps any error of pinning, adopting or attaching through `path` to `DataplaneError::Pin`.
fn pinning<E>(path: &Path) -> impl Fn(E) -> DataplaneError + '_
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| DataplaneError::Pin {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

/// Loads the embedded object with its maps, and its program `name` into the kernel.
fn load_program(name: &'static str) -> Result<Ebpf, DataplaneError> {
    if XDP_OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    let mut ebpf = Ebpf::load(XDP_OBJECT)?;
    verify(xdp(&mut ebpf, name)?)?;
    Ok(ebpf)
}

/// Loads `program` into the kernel. The verifier gives up with EAGAIN when a signal is
/// pending for the loading thread (a child exiting, say): that is no verdict on the
/// program, so the load is tried again, as libbpf does, a few times.
fn verify(program: &mut Xdp) -> Result<(), DataplaneError> {
    let mut tries = 0;
    loop {
        match program.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            result => return result.map_err(DataplaneError::Verify),
        }
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(FANOUT_PROGRAM)
        .ok_or(DataplaneError::MissingProgram(FANOUT_PROGRAM))?
        .try_into()
        .map_err(|_| DataplaneError::MissingProgram(FANOUT_PROGRAM))
}

/// Attaches the fan-out program to `interface`'s TC ingress: a tcx link (no qdisc needed).
fn attach_fanout(
    program: &mut SchedClassifier,
    interface: &str,
) -> Result<aya::programs::tc::SchedClassifierLinkId, DataplaneError> {
    program
        .attach(interface, TcAttachType::Ingress)
        .map_err(|source| match source {
            ProgramError::UnknownInterface { .. } => {
                DataplaneError::UnknownInterface(interface.to_owned())
            }
            source => DataplaneError::AttachTc {
                interface: interface.to_owned(),
                source,
            },
        })
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|_| DataplaneError::MissingProgram(name))
}

/// Attaches `program` to `interface` in the mode `choice` asks for. In `Auto` mode a refusal
/// of native mode is logged and generic mode is tried.
fn attach(
    program: &mut Xdp,
    interface: &str,
    choice: XdpModeChoice,
) -> Result<(AttachedMode, XdpLinkId), DataplaneError> {
    let attach = |program: &mut Xdp, mode: AttachedMode| {
        let flags = match mode {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Generic => XdpMode::Skb,
        };
        program
            .attach(interface, flags)
            .map(|id| (mode, id))
            .map_err(|source| match source {
                ProgramError::UnknownInterface { .. } => {
                    DataplaneError::UnknownInterface(interface.to_owned())
                }
                source => DataplaneError::Attach {
                    interface: interface.to_owned(),
                    mode: match mode {
                        AttachedMode::Native => "native (driver)",
                        AttachedMode::Generic => "generic (skb)",
                    },
                    source,
                },
            })
    };
    let (mode, id) = match choice {
        XdpModeChoice::Native => attach(program, AttachedMode::Native)?,
        XdpModeChoice::Generic => attach(program, AttachedMode::Generic)?,
        XdpModeChoice::Auto => match attach(program, AttachedMode::Native) {
            Ok(attached) => attached,
            Err(e @ DataplaneError::UnknownInterface(_)) => return Err(e),
            Err(native) => {
                log::warn!("{native}; falling back to generic (skb) mode");
                attach(program, AttachedMode::Generic)?
            }
        },
    };
    log::info!("XDP attached to {interface} in {mode} mode");
    Ok((mode, id))
}

/// One `BPF_PROG_TEST_RUN` of `program` over `frame`, as if it had arrived on interface
/// `ingress_ifindex` (0: none).
fn test_run(
    program: &mut Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
) -> Result<TestRunOutput, DataplaneError> {
    // `struct xdp_md` (UAPI): data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
    // SAFETY: six u32 viewed as their 24 bytes.
    let ctx_bytes =
        unsafe { std::slice::from_raw_parts(ctx.as_ptr().cast::<u8>(), size_of_val(&ctx)) };
    // Room for a frame the program grows (a ChannelData header added).
    let mut data_out = vec![0_u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: (ingress_ifindex != 0).then_some(ctx_bytes),
            ..TestRunOptions::default()
        })
        .map_err(DataplaneError::TestRun)?;
    data_out.truncate(result.data_size_out as usize);
    Ok(TestRunOutput {
        action: result.return_value,
        frame: data_out,
        duration: result.duration,
    })
}

/// A channel as the fast path carries it: the flow, its counter slots `[to peer, to client]`
/// and the policer slots `[allocation, tenant]` of its relayed address (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChannel {
    pub flow: crate::turn::ChannelFlow,
    pub stats: [u32; 2],
    pub policers: [u32; 2],
}

impl KernelChannel {
    /// The kernel entries of the channel: client -> peer (strip the ChannelData header, send
    /// from the relayed address) and peer -> client (add it, send from the listener), until
    /// `expires_ns` (CLOCK_MONOTONIC; the program passes packets up after it). `None` when
    /// the fast path cannot carry the flow: stream clients, or a client and peer of different
    /// families (the kernel does not translate).
    pub fn entries(&self, expires_ns: u64) -> Option<[(FlowKey, FlowAction); 2]> {
        let flow = &self.flow;
        if flow.client.transport != crate::turn::Transport::Udp
            || flow.client.client.is_ipv4() != flow.peer.is_ipv4()
        {
            return None;
        }
        let [to_peer, to_client] = self.stats;
        Some([
            (
                flow_key(flow.client.client, flow.client.server, flow.channel),
                self.action(
                    ActionKind::StripChannel,
                    flow.relayed,
                    flow.peer,
                    to_peer,
                    expires_ns,
                ),
            ),
            (
                flow_key(flow.peer, flow.relayed, 0),
                self.action(
                    ActionKind::AddChannel,
                    flow.client.server,
                    flow.client.client,
                    to_client,
                    expires_ns,
                ),
            ),
        ])
    }

    /// The client -> peer entry when the peer is `other`'s relayed address and `other`'s
    /// peer is this channel's relayed address (relay/relay): this client's ChannelData goes
    /// straight to `other`'s client on `other`'s channel, from the listener `other`'s client
    /// talks to, spending and counting on both allocations.
    pub fn hairpin(&self, other: &Self, expires_ns: u64) -> Option<(FlowKey, FlowAction)> {
        let [(key, _), _] = self.entries(expires_ns)?;
        let [_, (_, mut action)] = other.entries(expires_ns)?;
        // The other channel's peer -> client action, made to carry this client's ChannelData.
        action.kind = ActionKind::Hairpin as u8;
        action.channel = other.flow.channel;
        action.stats_index = self.stats[0];
        [action.allocation_policer, action.tenant_policer] = self.policers;
        action.hairpin_stats_index = other.stats[1];
        [
            action.hairpin_allocation_policer,
            action.hairpin_tenant_policer,
        ] = other.policers;
        Some((key, action))
    }

    fn action(
        &self,
        kind: ActionKind,
        src: SocketAddr,
        dst: SocketAddr,
        stats_index: u32,
        expires_ns: u64,
    ) -> FlowAction {
        FlowAction {
            src: octets(src.ip()),
            dst: octets(dst.ip()),
            src_port: src.port().to_be_bytes(),
            dst_port: dst.port().to_be_bytes(),
            channel: self.flow.channel,
            kind: kind as u8,
            family: family(dst.ip()),
            stats_index,
            tenant_policer: self.policers[1],
            allocation_policer: self.policers[0],
            hairpin_stats_index: 0,
            expires_ns,
            hairpin_tenant_policer: 0,
            hairpin_allocation_policer: 0,
        }
    }
}

fn flow_key(src: SocketAddr, dst: SocketAddr, channel: u16) -> FlowKey {
    FlowKey {
        src: octets(src.ip()),
        dst: octets(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        channel,
        family: family(dst.ip()),
        pad: 0,
    }
}

/// The key of packets from `from.remote` to the endpoint `from.local` with `ssrc` (RTP
/// SSRC or RTCP sender SSRC, per `kind`).
pub(crate) fn route_key(from: crate::room::Source, ssrc: u32, kind: u8) -> RouteKey {
    RouteKey {
        local: octets(from.local.ip()),
        remote: octets(from.remote.ip()),
        local_port: from.local.port().to_be_bytes(),
        remote_port: from.remote.port().to_be_bytes(),
        ssrc: ssrc.to_be_bytes(),
        family: family(from.local.ip()),
        kind,
        pad: [0; 2],
    }
}

pub(crate) fn room_destination(d: &crate::room::Destination) -> RoomDestination {
    RoomDestination {
        src: octets(d.local.ip()),
        dst: octets(d.remote.ip()),
        src_port: d.local.port().to_be_bytes(),
        dst_port: d.remote.port().to_be_bytes(),
    }
}

pub(crate) fn relayed_key(relayed: SocketAddr) -> RelayedKey {
    RelayedKey {
        addr: octets(relayed.ip()),
        port: relayed.port().to_be_bytes(),
        family: family(relayed.ip()),
        pad: 0,
    }
}

pub(crate) fn permission_key(relayed: SocketAddr, peer: IpAddr) -> PermissionKey {
    PermissionKey {
        relayed: relayed_key(relayed),
        peer: octets(peer),
    }
}

/// The maps' address layout: network byte order, IPv4 in the first 4 bytes.
fn octets(ip: IpAddr) -> [u8; 16] {
    let mut o = [0; 16];
    match ip {
        IpAddr::V4(v4) => o[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => o = v6.octets(),
    }
    o
}

/// An address and port of the maps' layout (`family`, [`octets`], port in network byte
/// order), read back.
pub fn socket_addr(family: u8, addr: [u8; 16], port: [u8; 2]) -> SocketAddr {
    let ip = if family == FAMILY_IPV6 {
        IpAddr::from(addr)
    } else {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    };
    SocketAddr::new(ip, u16::from_be_bytes(port))
}

const fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_IPV4,
        IpAddr::V6(_) => FAMILY_IPV6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_proc_sys_says_what_to_set_on_the_host() {
        let change = SysctlChange {
            key: "net/ipv6/conf/eth0/accept_ra".to_owned(),
            before: "1".to_owned(),
            after: "2".to_owned(),
        };
        let read_only = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let e = sysctl_refused(&change, &read_only);
        assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
        let message = e.to_string();
        assert!(
            message.starts_with("net/ipv6/conf/eth0/accept_ra = 2: "),
            "{message}"
        );
        assert!(
            message.ends_with(
                "/proc/sys is read-only here (a container): set it on the host, `sysctl -w \
                 net/ipv6/conf/eth0/accept_ra=2` (and in /etc/sysctl.d to keep it)"
            ),
            "{message}"
        );
        let denied = sysctl_refused(&change, &std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!denied.to_string().contains("read-only"), "{denied}");
    }
}
