//! Loading the eBPF object and attaching its programs to interfaces.
//!
//! Two lifetimes:
//! - [`Dataplane::load`]: everything lives as long as the value (tests, the demo's first
//!   steps); dropping it detaches.
//! - [`Dataplane::open`]: maps and TCX links are pinned under the host's pin directory
//!   (`/sys/fs/bpf/netfast/<host>/`) and outlive the command; the next command reopens them,
//!   after checking that every pinned map still has the layout this binary expects.
//!
//! Programs are loaded (verified) only when something is attached, so read-only commands
//! (conntrack, stats) cost a few map opens.

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use netfast_common::{
    Hook,
    config::{DpConfig, NetInfo},
    maps::{self as names, DEFAULT_CT_MAX_FLOWS},
};

use crate::{
    EBPF_OBJECT,
    error::{Error, Result},
    host::Host,
    maps,
    stats::{self, Stats},
    upgrade,
};

mod publications;
mod sockets;

pub(crate) use sockets::SOCK_PROGRAMS;

/// What an interface is to a netfast network; it decides which programs it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// The Linux bridge the containers' veths are enslaved to.
    Bridge,
    /// The interface towards the outside.
    Uplink,
}

impl InterfaceRole {
    /// The hooks this role gets: (ingress, egress).
    pub const fn hooks(self) -> [Hook; 2] {
        match self {
            InterfaceRole::Bridge => [Hook::BridgeIngress, Hook::BridgeEgress],
            InterfaceRole::Uplink => [Hook::UplinkIngress, Hook::UplinkEgress],
        }
    }
}

pub(crate) const fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
        Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
    }
}

/// Host-wide settings fixed when the dataplane is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Flows the conntrack table holds (it has two entries per flow).
    pub ct_max_flows: u32,
    /// Timeouts, port range, filtering (these can change later with [`Dataplane::configure`]).
    pub config: DpConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ct_max_flows: DEFAULT_CT_MAX_FLOWS,
            config: DpConfig::default(),
        }
    }
}

/// The map sizes `ct_max_flows` gives.
pub(crate) fn sized(loader: &mut EbpfLoader<'_>, ct_max_flows: u32) {
    loader
        .map_max_entries(names::CONNTRACK, ct_max_flows.saturating_mul(2))
        .map_max_entries(
            names::CT_INBOUND,
            names::inbound_flows(ct_max_flows).saturating_mul(2),
        )
        .map_max_entries(names::NAT_BINDINGS, ct_max_flows)
        .map_max_entries(names::NAT_CLAIMS, ct_max_flows);
}

/// Loads the embedded object with fresh (unpinned) maps sized for `ct_max_flows`, and every
/// program in it.
pub(crate) fn load_object(ct_max_flows: u32) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    sized(&mut loader, ct_max_flows);
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    for hook in Hook::ALL {
        let program = classifier(&mut ebpf, hook)?;
        load_program(hook.name(), || program.load())?;
    }
    Ok(ebpf)
}

/// Loads program `name` by `load`, as libbpf does: a BPF_PROG_LOAD that fails with EAGAIN
/// (the verifier gives up when a signal is pending; seen on a busy host) is tried again, up
/// to five times in all. (aya tries again once on any error, to fetch the verifier's log:
/// one EAGAIN alone is already absorbed there.)
pub(crate) fn load_program(
    name: &'static str,
    mut load: impl FnMut() -> std::result::Result<(), aya::programs::ProgramError>,
) -> Result<()> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                log::debug!("loading program {name}: EAGAIN, trying again");
                attempt += 1;
            }
            done => return done.map_err(|e| Error::program(name, e)),
        }
    }
}

pub(crate) fn classifier(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let name = hook.name();
    let program = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
    program.try_into().map_err(|e| Error::program(name, e))
}

/// What a pinned map must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} bytes, value {} bytes, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The layout of every map this binary's object declares, sized for `ct_max_flows`.
pub(crate) fn expected_layout(ct_max_flows: u32) -> Result<Vec<(&'static str, MapLayout)>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| Error::Io {
        context: format!("parsing the embedded eBPF object: {e}"),
        source: std::io::Error::other("invalid object"),
    })?;
    let mut out = Vec::new();
    for name in names::ALL {
        let map = obj.maps.get(name).ok_or(Error::MissingMap(name))?;
        let max_entries = match name {
            names::CONNTRACK => ct_max_flows.saturating_mul(2),
            names::CT_INBOUND => names::inbound_flows(ct_max_flows).saturating_mul(2),
            names::NAT_BINDINGS | names::NAT_CLAIMS => ct_max_flows,
            _ => map.max_entries(),
        };
        out.push((
            name,
            MapLayout {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
            },
        ));
    }
    Ok(out)
}

/// The layout of every map of the embedded object, at the default sizes.
#[cfg(test)]
pub(crate) fn object_layout() -> Result<Vec<(&'static str, MapLayout)>> {
    expected_layout(DEFAULT_CT_MAX_FLOWS)
}

/// The index of `interface` in the calling thread's network namespace.
pub fn ifindex(interface: &str) -> Result<u32> {
    let c = CString::new(interface).map_err(|_| Error::NoInterface(interface.to_owned()))?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(Error::NoInterface(interface.to_owned())),
        i => Ok(i),
    }
}

/// The loaded dataplane: maps, the programs loaded so far, and the attachments it owns.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Where maps and links are pinned; `None` for a dataplane that lives with this value.
    pins: Option<PathBuf>,
    loaded: HashSet<&'static str>,
    /// The running programs are another build's (described): this one attaches none of its
    /// own beside them.
    other_build: Option<String>,
}

impl Dataplane {
    /// Loads every program and map into the kernel; everything goes away with the value.
    pub fn load() -> Result<Self> {
        let mut ebpf = load_object(DEFAULT_CT_MAX_FLOWS)?;
        maps::write_config(&mut ebpf, &DpConfig::default())?;
        Ok(Dataplane {
            ebpf,
            pins: None,
            loaded: Hook::ALL.iter().map(|h| h.name()).collect(),
            other_build: None,
        })
    }

    /// Whether `host` has a pinned dataplane.
    pub fn exists(host: &Host) -> Result<bool> {
        Ok(host.pin_dir()?.join(names::CONNTRACK).exists())
    }

    /// The pinned dataplane of `host`, created with `settings` if there is none. An existing
    /// one is reused only if its maps have exactly the layout and sizes `settings` asks for.
    pub fn open(host: &Host, settings: &Settings) -> Result<Self> {
        let dir = host.pin_dir()?;
        if dir.join(names::CONNTRACK).exists() {
            let compat = upgrade::check(&dir, host)?;
            let found = MapInfo::from_pin(dir.join(names::CONNTRACK))
                .map_err(|e| Error::map(names::CONNTRACK, e))?
                .max_entries()
                / 2;
            if found != settings.ct_max_flows {
                return Err(Error::Settings(format!(
                    "the dataplane of {} already tracks up to {found} flows; it cannot be resized \
                     in place (run `netfast down` first, which drops every flow)",
                    host.describe()
                )));
            }
            return Self::reopen(&dir, settings.ct_max_flows, host, compat);
        }
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let mut dp = Self::pinned(&dir, settings.ct_max_flows)?;
        upgrade::write_meta(&dir, &upgrade::this_build())?;
        maps::write_config(&mut dp.ebpf, &settings.config)?;
        Ok(dp)
    }

    /// The pinned dataplane of `host`, or `None` when it has none. Never creates a pin: aya
    /// pins a new map in place of a missing one, so every map must be there first (and a
    /// read-only command holds the host's lock, [`crate::loader::Loader::read`], so that no
    /// `down` removes them while they are opened).
    pub fn open_existing(host: &Host) -> Result<Option<Self>> {
        let dir = host.pin_dir()?;
        let ct = dir.join(names::CONNTRACK);
        if !ct.exists() {
            return Ok(None);
        }
        let compat = upgrade::check(&dir, host)?;
        if let Some(missing) = names::ALL.iter().find(|n| !dir.join(n).exists()) {
            return Err(Error::Settings(format!(
                "the dataplane of {} lacks its map {missing} ({}): removed by hand, or by a \
                 `netfast down` that did not finish; run `netfast down` to remove the rest",
                host.describe(),
                dir.join(missing).display()
            )));
        }
        let flows = MapInfo::from_pin(&ct)
            .map_err(|e| Error::map(names::CONNTRACK, e))?
            .max_entries()
            / 2;
        Self::reopen(&dir, flows, host, compat).map(Some)
    }

    fn reopen(dir: &Path, ct_max_flows: u32, host: &Host, compat: upgrade::Compat) -> Result<Self> {
        for (name, want) in expected_layout(ct_max_flows)? {
            let path = dir.join(name);
            let info = MapInfo::from_pin(&path).map_err(|e| Error::map(name, e))?;
            let found = MapLayout {
                map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            if found != want {
                return Err(Error::PinnedMapMismatch {
                    map: name,
                    path,
                    found: found.to_string(),
                    expected: want.to_string(),
                });
            }
        }
        let mut dp = Self::pinned(dir, ct_max_flows)?;
        if let upgrade::Compat::OtherBuild(running) = compat {
            log::warn!("{}", upgrade::other_build_warning(host, &running));
            dp.other_build = Some(running);
        }
        Ok(dp)
    }

    /// For a command that runs on (`conntrack watch`): `Err` when the dataplane it opened
    /// has since been removed, or upgraded to another layout, so that the maps it holds are
    /// no longer the ones the programs use.
    pub fn check_still_current(&self) -> Result<()> {
        let Some(dir) = &self.pins else {
            return Ok(());
        };
        match upgrade::read_meta(dir)? {
            Some(m) if m.layout == netfast_common::upgrade::LAYOUT_VERSION => Ok(()),
            Some(m) => Err(Error::Settings(format!(
                "the dataplane was upgraded to {} since this command started, and its maps \
                 moved to that layout: run the command again with that netfast",
                upgrade::describe(m.layout, m.object, &m.version)
            ))),
            None => Err(Error::Settings(
                "the dataplane was removed since this command started".into(),
            )),
        }
    }

    /// Refuses to attach this build's programs beside another build's.
    fn may_attach(&self) -> Result<()> {
        match &self.other_build {
            None => Ok(()),
            Some(running) => Err(Error::Settings(format!(
                "the dataplane runs the programs of {running}, not this netfast's ({}): this \
                 netfast attaches none of its own beside them; run `netfast upgrade` first \
                 (it replaces them in place and keeps every flow), or use the netfast that \
                 made them",
                upgrade::describe(
                    netfast_common::upgrade::LAYOUT_VERSION,
                    upgrade::object_id(),
                    &netfast_common::upgrade::version_field(upgrade::VERSION)
                )
            ))),
        }
    }

    fn pinned(dir: &Path, ct_max_flows: u32) -> Result<Self> {
        let paths: Vec<(&'static str, PathBuf)> =
            names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        sized(&mut loader, ct_max_flows);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(EBPF_OBJECT)?;
        Ok(Dataplane {
            ebpf,
            pins: Some(dir.to_path_buf()),
            loaded: HashSet::new(),
            other_build: None,
        })
    }

    /// Unpins everything of `host`'s dataplane: its links detach, its maps go with the last
    /// user. Returns whether there was anything.
    pub fn remove(host: &Host) -> Result<bool> {
        let dir = host.pin_dir()?;
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(false);
        };
        let io = |context: String| move |source| Error::Io { context, source };
        for entry in entries.flatten() {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(format!("unpinning {}", path.display())))?;
        }
        fs::remove_dir(&dir).map_err(io(format!("removing {}", dir.display())))?;
        if let Some(parent) = dir.parent() {
            // Shared by every host; gone when the last one is.
            let _ = fs::remove_dir(parent);
        }
        Ok(true)
    }

    fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        let first = self.loaded.insert(hook.name());
        let program = classifier(&mut self.ebpf, hook)?;
        if first {
            load_program(hook.name(), || program.load())?;
        }
        Ok(program)
    }

    fn link_pin(&self, ifindex: u32, hook: Hook) -> Option<PathBuf> {
        self.pins
            .as_ref()
            .map(|d| d.join(format!("link-{ifindex}-{}", hook.name())))
    }

    /// The names of the TCX programs attached to `interface` in the direction of `hook`, in
    /// order (asks the kernel).
    pub fn tcx_programs(interface: &str, hook: Hook) -> Result<Vec<String>> {
        let (_, progs) = SchedClassifier::query_tcx(interface, attach_type(hook))
            .map_err(|e| Error::program(hook.name(), e))?;
        Ok(progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect())
    }

    /// Whether our program for `hook` is attached to `interface`.
    fn attached(interface: &str, hook: Hook) -> bool {
        Self::tcx_programs(interface, hook)
            .map(|progs| progs.iter().any(|p| p == hook.name()))
            .unwrap_or(false)
    }

    /// Attaches the programs of `role` to both directions of `interface` (TCX). Idempotent
    /// for a pinned dataplane: an attachment that is already there is kept. Returns whether
    /// it attached anything.
    pub fn attach(&mut self, interface: &str, role: InterfaceRole) -> Result<bool> {
        let mut attached = false;
        let index = ifindex(interface)?;
        if role == InterfaceRole::Uplink {
            maps::set_uplink(&mut self.ebpf, index)?;
        }
        for hook in role.hooks() {
            let pin = self.link_pin(index, hook);
            if let Some(pin) = &pin {
                if pin.exists() && Self::attached(interface, hook) {
                    continue;
                }
                // A stale pin (its interface was deleted and recreated) holds a dead link.
                let _ = fs::remove_file(pin);
            }
            self.may_attach()?;
            let attach_error = |e| Error::Attach {
                program: hook.name(),
                interface: interface.to_owned(),
                source: Box::new(e),
            };
            let program = self.program(hook)?;
            let id = program
                .attach(interface, attach_type(hook))
                .map_err(attach_error)?;
            attached = true;
            if let Some(pin) = pin {
                let link = program.take_link(id).map_err(attach_error)?;
                let link = FdLink::try_from(link).map_err(|e| Error::Io {
                    context: format!("{} on {interface} is not a TCX link: {e}", hook.name()),
                    source: std::io::Error::other("not an fd link"),
                })?;
                link.pin(&pin).map_err(|e| Error::Io {
                    context: format!("pinning the {} link at {}: {e}", hook.name(), pin.display()),
                    source: std::io::Error::other("pin failed"),
                })?;
            }
            log::debug!("attached {} to {interface}", hook.name());
        }
        Ok(attached)
    }

    /// Detaches the programs of `role` from the interface with index `ifindex` (pinned
    /// dataplane; an ephemeral one detaches on drop).
    pub fn detach(&mut self, ifindex: u32, role: InterfaceRole) -> Result<()> {
        if role == InterfaceRole::Uplink {
            maps::remove_uplink(&mut self.ebpf, ifindex)?;
        }
        for hook in role.hooks() {
            let Some(pin) = self.link_pin(ifindex, hook) else {
                continue;
            };
            if !pin.exists() {
                continue;
            }
            match PinnedLink::from_pin(&pin) {
                // Dropping the unpinned link closes its last reference: the kernel detaches it.
                Ok(link) => drop(link.unpin()),
                Err(_) => drop(fs::remove_file(&pin)),
            }
        }
        Ok(())
    }

    /// Makes `subnet/prefix` a network of the dataplane.
    pub fn set_network(
        &mut self,
        subnet: std::net::Ipv4Addr,
        prefix: u8,
        info: &NetInfo,
    ) -> Result<()> {
        maps::set_network(&mut self.ebpf, subnet, prefix, info)
    }

    pub fn remove_network(&mut self, subnet: std::net::Ipv4Addr, prefix: u8) -> Result<()> {
        maps::remove_network(&mut self.ebpf, subnet, prefix)
    }

    /// Timeouts, port range and filtering, effective for the next packet. The clock fields
    /// stay as the map has them: the programs read the map while it is written, and a new
    /// reference point (calibrated again by this process) read beside the old one, or a tick
    /// rate beside no reference point, would move their clock by days.
    pub fn configure(&mut self, config: &DpConfig) -> Result<()> {
        let running = maps::read_config(&self.ebpf)?;
        let config = DpConfig {
            clock_hz: running.clock_hz,
            clock_j0: running.clock_j0,
            clock_m0: running.clock_m0,
            clock_advance: running.clock_advance,
            ..*config
        };
        maps::write_config_uncalibrated(&mut self.ebpf, &config)
    }

    pub fn config(&self) -> Result<DpConfig> {
        maps::read_config(&self.ebpf)
    }

    /// The counters, summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        stats::of(&self.ebpf)
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Dataplane {
    /// Lets the fast path hand packets for `addr` straight to the container behind it.
    pub fn set_endpoint(
        &mut self,
        addr: std::net::Ipv4Addr,
        ep: &netfast_common::config::Endpoint,
    ) -> Result<()> {
        maps::set_endpoint(&mut self.ebpf, addr, ep)
    }

    pub fn remove_endpoint(&mut self, addr: std::net::Ipv4Addr) -> Result<()> {
        maps::remove_endpoint(&mut self.ebpf, addr)
    }
}

/// A pinned TCX link of the dataplane: `link-<ifindex>-<hook>` in the pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub ifindex: u32,
    pub hook: Hook,
    pub path: PathBuf,
}

impl Dataplane {
    /// The TCX links pinned for this dataplane (none for an ephemeral one).
    pub fn link_pins(&self) -> Vec<LinkPin> {
        let Some(dir) = &self.pins else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (index, hook) = name.strip_prefix("link-")?.split_once('-')?;
                Some(LinkPin {
                    ifindex: index.parse().ok()?,
                    hook: Hook::ALL.into_iter().find(|h| h.name() == hook)?,
                    path: e.path(),
                })
            })
            .collect()
    }

    /// Unpins a link: the kernel detaches it when the last reference goes (it already has,
    /// when its interface was deleted).
    pub fn unpin_link(&mut self, pin: &LinkPin) -> Result<()> {
        match PinnedLink::from_pin(&pin.path) {
            Ok(link) => drop(link.unpin()),
            Err(_) => fs::remove_file(&pin.path).map_err(|source| Error::Io {
                context: format!("unpinning {}", pin.path.display()),
                source,
            })?,
        }
        Ok(())
    }

    /// Forgets an uplink's ifindex (see `maps::UPLINKS`): its interface is gone.
    pub fn forget_uplink(&mut self, ifindex: u32) -> Result<()> {
        maps::remove_uplink(&mut self.ebpf, ifindex)
    }
}

#[cfg(test)]
mod load_tests {
    use std::{cell::Cell, io};

    use aya::programs::ProgramError;

    use super::load_program;

    fn failing(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        }
    }

    /// A load that fails with `errno` `failures` times, then succeeds; and how often it ran.
    fn attempts(errno: i32, failures: usize) -> (bool, usize) {
        let calls = Cell::new(0);
        let result = load_program("p", || {
            calls.set(calls.get() + 1);
            if calls.get() <= failures {
                Err(failing(errno))
            } else {
                Ok(())
            }
        });
        (result.is_ok(), calls.get())
    }

    /// Found in review: the verifier gives up with EAGAIN when a signal is pending (a
    /// test's load failed so on a busy machine); libbpf loads again, aya did not.
    #[test]
    fn a_load_that_fails_with_eagain_is_tried_again() {
        assert_eq!(attempts(libc::EAGAIN, 0), (true, 1));
        assert_eq!(attempts(libc::EAGAIN, 4), (true, 5));
        assert_eq!(attempts(libc::EAGAIN, 5), (false, 5), "five tries at most");
    }

    #[test]
    fn a_load_that_fails_otherwise_is_not_tried_again() {
        assert_eq!(attempts(libc::EPERM, 1), (false, 1));
        assert_eq!(attempts(libc::EINVAL, 1), (false, 1));
    }
}
