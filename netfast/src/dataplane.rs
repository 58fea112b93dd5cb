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
        classifier(&mut ebpf, hook)?
            .load()
            .map_err(|e| Error::program(hook.name(), e))?;
    }
    Ok(ebpf)
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
            eprintln!("{}", upgrade::other_build_warning(host, &running));
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
            program.load().map_err(|e| Error::program(hook.name(), e))?;
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
    /// for a pinned dataplane: an attachment that is already there is kept.
    pub fn attach(&mut self, interface: &str, role: InterfaceRole) -> Result<()> {
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
        }
        Ok(())
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

    /// Timeouts, port range and filtering, effective for the next packet.
    pub fn configure(&mut self, config: &DpConfig) -> Result<()> {
        maps::write_config(&mut self.ebpf, config)
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
    /// Removes the DNAT and allow-list entries that none of `owned` (the state's eBPF
    /// publications) accounts for: what a `publish` killed before it saved its state left.
    /// An allow-list rule id is then never handed out while entries with it exist.
    pub fn prune_publications(
        &mut self,
        owned: &[&crate::loader::publish::Publication],
    ) -> Result<usize> {
        let keys: Vec<_> = owned.iter().flat_map(|p| pub_keys(p)).collect();
        let mut pruned = 0;
        for (key, _) in maps::published(&self.ebpf)? {
            if !keys.contains(&key) {
                maps::unpublish(&mut self.ebpf, &key)?;
                pruned += 1;
            }
        }
        for (rule, net) in maps::allow_entries(&self.ebpf)? {
            if !owned
                .iter()
                .any(|p| p.rule == rule && p.allow.contains(&net))
            {
                maps::disallow(&mut self.ebpf, rule, net)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Puts a publication in the dataplane: one entry per host port, and its allow-list. All
    /// or nothing: what it added is taken out again if a step fails.
    pub fn publish(&mut self, p: &crate::loader::publish::Publication, net_id: u16) -> Result<()> {
        let done = self.publish_steps(p, net_id);
        if done.is_err() {
            for key in pub_keys(p) {
                let _ = maps::unpublish(&mut self.ebpf, &key);
            }
            for net in &p.allow {
                let _ = maps::disallow(&mut self.ebpf, p.rule, *net);
            }
        }
        done
    }

    fn publish_steps(
        &mut self,
        p: &crate::loader::publish::Publication,
        net_id: u16,
    ) -> Result<()> {
        use netfast_common::publish::{PubKey, PubTarget};
        for net in &p.allow {
            maps::allow(&mut self.ebpf, p.rule, *net)?;
        }
        for (host_port, container_port) in p.host_ports.iter().zip(p.container_ports.iter()) {
            let key = PubKey {
                addr: p.host_ip.map_or(0, maps::raw_addr),
                port: host_port.to_be(),
                proto: p.proto.number(),
                _pad: 0,
            };
            let target = PubTarget {
                addr: maps::raw_addr(p.container_ip),
                port: container_port.to_be(),
                net_id,
                rule: p.rule,
            };
            maps::publish(&mut self.ebpf, &key, &target)?;
        }
        Ok(())
    }

    /// Takes a publication out of the dataplane, with the flows opened through it.
    pub fn unpublish(&mut self, p: &crate::loader::publish::Publication) -> Result<usize> {
        use netfast_common::publish::PubKey;
        for host_port in p.host_ports.iter() {
            let key = PubKey {
                addr: p.host_ip.map_or(0, maps::raw_addr),
                port: host_port.to_be(),
                proto: p.proto.number(),
                _pad: 0,
            };
            maps::unpublish(&mut self.ebpf, &key)?;
        }
        for net in &p.allow {
            maps::disallow(&mut self.ebpf, p.rule, *net)?;
        }
        // Flows through the port end with it, and only those: the client's direction is to
        // the published port (on its address, or — for a publication on every address — on
        // one that no publication of its own claims), the server's comes from the container.
        let proto = p.proto.number();
        let exact: std::collections::HashSet<(u32, u16)> = maps::published(&self.ebpf)?
            .into_iter()
            .filter(|(k, _)| k.addr != 0 && k.proto == proto)
            .map(|(k, _)| (k.addr, k.port))
            .collect();
        let name = p.proto.to_string();
        let deleted = maps::delete_flows(&mut self.ebpf, maps::monotonic_now(), |f| {
            let to = f.original.dst;
            f.protocol == name
                && p.host_ports.iter().any(|hp| hp == f.original.dport)
                && f.reply.src == p.container_ip
                && match p.host_ip {
                    Some(ip) => to == ip,
                    None => !exact.contains(&(maps::raw_addr(to), f.original.dport.to_be())),
                }
        })?;
        Ok(deleted.flows)
    }

    /// The host's own IPv4 addresses, where ports published on every address are reachable.
    pub fn set_host_addrs(&mut self, addrs: &[std::net::Ipv4Addr]) -> Result<()> {
        maps::set_host_addrs(&mut self.ebpf, addrs)
    }
}

/// The DNAT map keys of a publication: one per host port.
fn pub_keys(p: &crate::loader::publish::Publication) -> Vec<netfast_common::publish::PubKey> {
    p.host_ports
        .iter()
        .map(|port| netfast_common::publish::PubKey {
            addr: p.host_ip.map_or(0, maps::raw_addr),
            port: port.to_be(),
            proto: p.proto.number(),
            _pad: 0,
        })
        .collect()
}

/// The socket-level programs and the cgroup hook each one takes.
pub(crate) const SOCK_PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

/// The root of the cgroup v2 hierarchy (where every process of the machine is below).
fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `… mount-point … - fstype source options`
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

impl Dataplane {
    /// Attaches the socket-level programs (the host's own clients of published ports) to
    /// the root cgroup, scoped to this host namespace. Idempotent. `Ok(false)` when the
    /// machine has no cgroup v2 hierarchy to attach to.
    pub fn attach_sockets(&mut self) -> Result<bool> {
        use aya::programs::{CgroupAttachMode, CgroupSockAddr};
        let Some(root) = cgroup2_root() else {
            return Ok(false);
        };
        maps::write_host(
            &mut self.ebpf,
            &netfast_common::publish::HostInfo {
                netns_cookie: crate::host::netns_cookie()?,
            },
        )?;
        let cgroup = fs::File::open(&root).map_err(|source| Error::Io {
            context: format!("opening the cgroup v2 root {}", root.display()),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let pin = self.pins.as_ref().map(|d| d.join(format!("cgroup-{name}")));
            if pin.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            self.may_attach()?;
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|e| Error::program(name, e))?;
            if self.loaded.insert(name) {
                program.load().map_err(|e| Error::program(name, e))?;
            }
            let attach_error = |e| Error::Attach {
                program: name,
                interface: root.display().to_string(),
                source: Box::new(e),
            };
            // As a bpf link the attachment is always one of many (a link takes no ALLOW_MULTI
            // flag: that is the default mode's 0).
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_error)?;
            if let Some(pin) = pin {
                let link = FdLink::try_from(program.take_link(id).map_err(attach_error)?).map_err(
                    |e| Error::Io {
                        context: format!("{name} is not a bpf link: {e}"),
                        source: std::io::Error::other("not an fd link"),
                    },
                )?;
                link.pin(&pin).map_err(|e| Error::Io {
                    context: format!("pinning the {name} link at {}: {e}", pin.display()),
                    source: std::io::Error::other("pin failed"),
                })?;
            }
        }
        Ok(true)
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
