//! The loader's commands: each takes the host's lock, checks everything it can before it
//! changes anything, and undoes what it created if a later step fails.

use std::net::Ipv4Addr;

use netfast_common::{
    config::{NET_F_MASQUERADE, NetInfo},
    maps::MAX_NETWORKS,
};

use super::{
    caps,
    intent::{Intent, Mark, Object, Owner},
    ipam,
    model::{
        Backend, Container, ContainerSpec, DataplaneConfig, Network, NetworkSpec, State,
        default_bridge, veth_name,
    },
    netlink::{Link, Netlink, Nl},
    nsfs,
    plan::{Action, ApplyFile, plan},
    plumb::{self, ContainerPlumbing, Made},
    state::Locked,
    validate::{self, Invalid},
};
use crate::{
    conntrack_filter::Filter,
    dataplane::{Dataplane, InterfaceRole},
    error::{Error, Result},
    host::Host,
    maps::{self, raw_addr},
};

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Settings(e.0)
    }
}

/// Something a command created, to remove again if it fails later.
enum Created {
    Link(Link),
    /// A port of an adopted bridge whose hairpin mode was turned on.
    Hairpin(Link),
    Namespace(String),
    Network {
        network: Network,
        fresh_dataplane: bool,
    },
}

impl From<Made> for Created {
    fn from(m: Made) -> Self {
        match m {
            Made::Link(l) => Created::Link(l),
            Made::Namespace(n) => Created::Namespace(n),
        }
    }
}

/// What a command created so far; [`Undo::rollback`] removes it, newest first.
#[derive(Default)]
struct Undo(Vec<Created>);

impl Undo {
    fn push(&mut self, c: Created) {
        self.0.push(c);
    }

    fn rollback(self, host: &Host, nl: &Nl<'_>, state: &State) {
        for c in self.0.into_iter().rev() {
            let done = match c {
                Created::Link(link) => nl.delete_link(&link),
                Created::Hairpin(port) => nl.set_hairpin(&port, false),
                Created::Namespace(name) => nsfs::delete(&name).map_err(|source| Error::Io {
                    context: format!("deleting namespace {name}"),
                    source,
                }),
                Created::Network { network, .. } if network.backend != Backend::Ebpf => {
                    let mut with = state.clone();
                    with.networks.push(network);
                    crate::backend::sync(&with, state)
                }
                Created::Network {
                    network,
                    fresh_dataplane,
                } => uninstall(host, nl, state, &network).and_then(|()| {
                    let mut with = state.clone();
                    with.networks.push(network);
                    crate::backend::sync(&with, state)?;
                    if fresh_dataplane {
                        Dataplane::remove(host).map(|_| ())
                    } else {
                        Ok(())
                    }
                }),
            };
            if let Err(e) = done {
                eprintln!("netfast: rolling back: {}", crate::error::report(&e));
            }
        }
    }
}

/// Runs `f` and rolls back what it recorded in `undo` if it fails.
fn transaction<T>(
    host: &Host,
    nl: &Nl<'_>,
    state: &State,
    f: impl FnOnce(&mut Undo) -> Result<T>,
) -> Result<T> {
    let mut undo = Undo::default();
    match f(&mut undo) {
        Ok(v) => Ok(v),
        Err(e) => {
            undo.rollback(host, nl, state);
            Err(e)
        }
    }
}

/// What an apply's earlier steps will have done to the kernel when a later step runs, as far
/// as the later step's checks need to know; empty for a command on its own.
#[derive(Default)]
struct Ahead {
    /// Links deleted, and their indexes (whose addresses and routes go with them).
    gone_links: Vec<String>,
    gone_ifindexes: Vec<u32>,
    /// Namespaces deleted.
    gone_namespaces: Vec<String>,
    /// Links created (bridges).
    made_links: Vec<String>,
    /// Whether the eBPF dataplane exists.
    dataplane: bool,
}

/// Refuses a change of ct-max while the dataplane exists (its conntrack map has its size).
fn ct_max_fixed(running: &DataplaneConfig, wanted: &DataplaneConfig) -> Result<()> {
    if wanted.ct_max != running.ct_max {
        return Err(Error::Settings(format!(
            "the dataplane runs with ct-max {}; it can only change while no network exists \
             (`netfast down` removes everything, and every tracked flow with it)",
            running.ct_max
        )));
    }
    Ok(())
}

/// The loader of one host namespace (the calling thread's).
pub struct Loader {
    pub host: Host,
    netlink: Netlink,
}

impl Loader {
    pub fn new() -> Result<Self> {
        Ok(Loader {
            host: Host::current()?,
            netlink: Netlink::new()?,
        })
    }

    fn nl(&self) -> Result<Nl<'_>> {
        self.netlink.host()
    }

    /// The state, read under a shared lock (which creates nothing).
    pub fn state(&self) -> Result<State> {
        Ok(self.read()?.state)
    }

    /// The state under a shared lock, held until the value is dropped: nothing changes (no
    /// `down` removes the dataplane) while a read-only command looks at it.
    pub fn read(&self) -> Result<Locked> {
        Locked::acquire(&self.host, false)
    }

    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    pub fn network_create(&self, spec: &NetworkSpec) -> Result<Vec<String>> {
        caps::require("network create", true)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let network = self.create_network(&nl, &mut locked, spec, &mut out)?;
        locked.state.networks.push(network);
        locked.save()?;
        locked.finish()?;
        Ok(out)
    }

    /// Checks, records the intent, and makes the network; the caller adds it to the state,
    /// saves it and finishes the intent.
    pub(super) fn create_network(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        spec: &NetworkSpec,
        out: &mut Vec<String>,
    ) -> Result<Network> {
        let (network, ext_addr) =
            self.prepare_network(nl, &locked.state, spec, &Ahead::default(), out)?;
        locked.begin(Intent::creating(
            format!("network create {}", spec.name),
            Object::Network(network.clone()),
        ))?;
        let made = self.build_network(nl, &locked.state, network, ext_addr, out);
        if made.is_err() {
            // It removed what it made.
            locked.finish()?;
        }
        made
    }

    /// Everything `network create` checks before it changes anything, against the kernel as
    /// `ahead` says it will be (an apply's earlier steps): the network to make, the uplink's
    /// address, and what to tell the user about the backend.
    fn prepare_network(
        &self,
        nl: &Nl<'_>,
        state: &State,
        spec: &NetworkSpec,
        ahead: &Ahead,
        out: &mut Vec<String>,
    ) -> Result<(Network, Option<Ipv4Addr>)> {
        let mut gateway = validate::network(spec, state)?;
        let id = ipam::next_network_id(state, MAX_NETWORKS as u16)?;
        validate::dataplane(&state.dataplane)?;
        let bridge_name = spec
            .bridge
            .clone()
            .unwrap_or_else(|| default_bridge(&spec.name));
        let uplink = nl.link(&spec.uplink)?.ok_or_else(|| {
            Error::Settings(format!(
                "uplink {} does not exist in {}; pick an existing interface (see `ip link`)",
                spec.uplink,
                self.host.describe()
            ))
        })?;
        let existing = if ahead.made_links.contains(&bridge_name) {
            return Err(Error::Settings(format!(
                "a link named {bridge_name} is created by an earlier step; pick another bridge name"
            )));
        } else if ahead.gone_links.contains(&bridge_name) {
            None
        } else {
            nl.link(&bridge_name)?
        };
        let adopted_bridge = existing.as_ref().filter(|_| spec.adopt).map(|b| b.index);
        host_conflicts(
            nl,
            spec,
            state,
            &bridge_name,
            &uplink,
            adopted_bridge,
            &ahead.gone_ifindexes,
        )?;
        // The eBPF programs read an Ethernet header first; a layer-3 uplink (tun, wireguard,
        // ipip) has none, and they would translate the wrong bytes.
        let no_ethernet = (!uplink.is_ethernet()).then(|| {
            format!(
                "uplink {} has no Ethernet header ({}), which the eBPF dataplane's programs \
                 need; create the network with --backend nftables (or iptables)",
                uplink.name,
                uplink.describe_type()
            )
        });
        let backend = crate::backend::resolve_for_uplink(spec.backend, no_ethernet.clone())?;
        if let (Some(why), None) = (&no_ethernet, spec.backend.named()) {
            out.push(format!("--backend auto: {why}; it takes {backend}"));
        }
        let ext_addr = nl.addresses(&uplink)?.first().map(|(ip, _)| *ip);
        if spec.masquerade && ext_addr.is_none() {
            return Err(Error::Settings(format!(
                "uplink {} has no IPv4 address for masquerade to use; give it one, or create the network with --no-masquerade",
                spec.uplink
            )));
        }
        let mut adopted_ports = Vec::new();
        if spec.adopt {
            let bridge = existing.as_ref().filter(|l| l.kind.as_deref() == Some("bridge")).ok_or_else(|| {
                Error::Settings(format!("--adopt needs an existing bridge named {bridge_name}; there is none (see `ip link show type bridge`)"))
            })?;
            let addrs = nl.addresses(bridge)?;
            match spec.gateway {
                Some(g) if !addrs.iter().any(|(a, _)| *a == g) => {
                    return Err(Error::Settings(format!(
                        "gateway {g} is not an address of bridge {bridge_name}; --adopt does not change the bridge: \
                         add it (`ip addr add {g}/{} dev {bridge_name}`) or omit --gateway",
                        spec.subnet.prefix_len()
                    )));
                }
                Some(_) => {}
                None => {
                    gateway = addrs.iter().map(|(a, _)| *a).find(|a| spec.subnet.contains(a)).ok_or_else(|| {
                        Error::Settings(format!(
                            "bridge {bridge_name} has no address in {}; give it one or pass --gateway",
                            spec.subnet
                        ))
                    })?;
                }
            }
            adopted_ports = nl
                .links()?
                .into_iter()
                .filter(|l| l.controller == Some(bridge.index))
                .map(|l| l.name)
                .collect();
        } else if existing.is_some() {
            return Err(Error::Settings(format!(
                "a link named {bridge_name} already exists; pass --adopt to take it over, or --bridge to pick another name"
            )));
        }
        let network = Network {
            name: spec.name.clone(),
            id,
            subnet: spec.subnet,
            gateway,
            bridge: bridge_name.clone(),
            uplink: spec.uplink.clone(),
            adopted: spec.adopt,
            adopted_ports,
            masquerade: spec.masquerade,
            backend,
            // An adopted bridge's own setting, put back when no fallback serves it.
            route_localnet: spec.adopt && crate::backend::route_localnet_of(&bridge_name),
            hairpin_set: Vec::new(),
        };
        Ok((network, ext_addr))
    }

    /// Makes the network [`Loader::prepare_network`] prepared; removes what it made again if
    /// a step fails. Returns it as the state keeps it.
    fn build_network(
        &self,
        nl: &Nl<'_>,
        state: &State,
        mut network: Network,
        ext_addr: Option<Ipv4Addr>,
        out: &mut Vec<String>,
    ) -> Result<Network> {
        let (bridge_name, gateway, backend) =
            (network.bridge.clone(), network.gateway, network.backend);
        let mark = Mark::network(&self.host.key, &network.name);
        let settings = validate::dataplane(&state.dataplane)?;
        transaction(&self.host, nl, state, |undo| {
            if network.adopted {
                out.push(format!("adopted bridge {bridge_name} (gateway {gateway})"));
            } else {
                plumb::bridge(
                    nl,
                    &bridge_name,
                    gateway,
                    network.subnet.prefix_len(),
                    Some(&mark),
                    &mut |m| undo.push(m.into()),
                )?;
                out.push(format!(
                    "created bridge {bridge_name} with {gateway}/{}",
                    network.subnet.prefix_len()
                ));
            }
            if set_ip_forward()? {
                out.push("enabled net.ipv4.ip_forward in this namespace (it was off)".into());
            }
            let masquerading = if network.masquerade {
                format!(
                    ", masquerading {} as {}",
                    network.subnet,
                    ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED)
                )
            } else {
                String::new()
            };
            if backend == Backend::Ebpf {
                let fresh = !Dataplane::exists(&self.host)?;
                undo.push(Created::Network {
                    network: network.clone(),
                    fresh_dataplane: fresh,
                });
                install(
                    nl,
                    &self.host,
                    &settings,
                    &network,
                    ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
                )?;
                super::publish_ops::refresh_host_addrs(&self.host, nl)?;
            } else {
                undo.push(Created::Network {
                    network: network.clone(),
                    fresh_dataplane: false,
                });
            }
            // A fallback's rules; and their isolation rules name every netfast bridge.
            let mut after = state.clone();
            after.networks.push(network.clone());
            crate::backend::sync(state, &after)?;
            out.push(match backend {
                Backend::Ebpf => format!(
                    "attached the dataplane to {bridge_name} and {}{masquerading}",
                    network.uplink
                ),
                Backend::Nftables => format!("nftables table `ip netfast` serves it{masquerading}"),
                Backend::Iptables => format!("iptables chains NETFAST-… serve it{masquerading}"),
            });
            // A fallback's hairpin NAT sends a frame back out of the port it came in on, as
            // for the ports of netfast's own containers: the adopted ones need it too.
            if backend != Backend::Ebpf {
                for port in &network.adopted_ports {
                    if let Some(link) = nl.link(port)?
                        && link.hairpin == Some(false)
                    {
                        nl.set_hairpin(&link, true)?;
                        undo.push(Created::Hairpin(link));
                        network.hairpin_set.push(port.clone());
                    }
                }
                if !network.hairpin_set.is_empty() {
                    out.push(format!(
                        "turned hairpin mode on for adopted port(s) {}",
                        network.hairpin_set.join(", ")
                    ));
                }
            }
            Ok(())
        })?;
        Ok(network)
    }

    pub fn network_rm(&self, name: &str) -> Result<Vec<String>> {
        caps::require("network rm", false)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let network = locked.state.network(name).cloned().ok_or_else(|| {
            Error::Settings(format!(
                "no network named `{name}` (see `netfast network ls`)"
            ))
        })?;
        let on_it: Vec<_> = locked
            .state
            .containers_of(name)
            .map(|c| c.name.clone())
            .collect();
        if !on_it.is_empty() {
            return Err(Error::Settings(format!(
                "network `{name}` still has containers: {}; remove them first (`netfast container rm …`)",
                on_it.join(", ")
            )));
        }
        locked.begin(Intent::removing(
            format!("network rm {name}"),
            Object::Network(network.clone()),
        ))?;
        let removed = self.remove_network(&nl, &mut locked.state, &network, &mut out);
        conclude(&mut locked, removed)?;
        Ok(out)
    }

    pub(super) fn remove_network(
        &self,
        nl: &Nl<'_>,
        state: &mut State,
        network: &Network,
        out: &mut Vec<String>,
    ) -> Result<()> {
        // Publications by address lead to no container, so no `container rm` took them: they
        // go with their network (network ids are reused, and a stale entry would revive).
        let publications: Vec<_> = state
            .publications
            .iter()
            .filter(|p| p.network == network.name)
            .cloned()
            .collect();
        for p in &publications {
            self.remove_publication(state, p, out)?;
        }
        let before = state.clone();
        if network.backend == Backend::Ebpf {
            uninstall(&self.host, nl, state, network)?;
        }
        state.networks.retain(|n| n.name != network.name);
        crate::backend::sync(&before, state)?;
        // The network's flows end with it (its subnet's, to and from it).
        let filter = Filter::network(network.id);
        let ended = if network.backend != Backend::Ebpf {
            crate::backend::delete_kernel_flows(&before, &filter)?
        } else {
            match Dataplane::open_existing(&self.host)? {
                Some(mut dp) => {
                    maps::delete_flows(dp.ebpf_mut(), maps::monotonic_now(), |f| filter.matches(f))?
                        .flows
                }
                None => 0,
            }
        };
        if ended > 0 {
            out.push(format!("ended {ended} flows of network {}", network.name));
        }
        if !state.networks.iter().any(|n| n.backend == Backend::Ebpf)
            && Dataplane::remove(&self.host)?
        {
            out.push("removed the dataplane (no network on it left)".into());
        }
        remove_bridge(nl, network, out)
    }

    pub fn container_create(&self, spec: &ContainerSpec) -> Result<Vec<String>> {
        caps::require("container create", true)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let c = self.create_container(&nl, &mut locked, spec, &mut out)?;
        locked.state.containers.push(c);
        locked.save()?;
        locked.finish()?;
        Ok(out)
    }

    /// The addresses of `network`'s subnet in use on `bridge` that the state does not know
    /// of: what the neighbour table has seen on an adopted bridge (hand-made containers), and
    /// the addresses in the namespaces behind the bridge's ports that carry netfast's mark
    /// for a container the state does not have (left by a command that died, if anything
    /// escaped its intent record). IPAM never hands these out.
    fn addresses_in_use(
        &self,
        nl: &Nl<'_>,
        state: &State,
        network: &Network,
        bridge: &Link,
    ) -> Result<Vec<Ipv4Addr>> {
        let mut used = if network.adopted {
            nl.neighbours(bridge)?
        } else {
            Vec::new()
        };
        for port in nl.links()? {
            let Some(Mark {
                owner: Owner::Container(name),
                host,
            }) = port.alias.as_deref().and_then(Mark::parse)
            else {
                continue;
            };
            if port.controller != Some(bridge.index)
                || host != self.host.key
                || state.container(&name).is_some()
                || !nsfs::exists(&name)
            {
                continue;
            }
            if let Ok(inside) = self.netlink.namespace(&name) {
                used.extend(
                    inside
                        .all_addresses()?
                        .into_iter()
                        .filter(|a| network.subnet.contains(a)),
                );
            }
        }
        Ok(used)
    }

    /// Everything `container create` checks before it changes anything, against the kernel
    /// as `ahead` says it will be: the network, its bridge (`None` while an earlier step of an
    /// apply is still to create it), the address and the veth's name.
    fn prepare_container(
        &self,
        nl: &Nl<'_>,
        state: &State,
        spec: &ContainerSpec,
        ahead: &Ahead,
    ) -> Result<(Network, Option<Link>, Ipv4Addr, String)> {
        validate::container(spec, state)?;
        let network = state.network(&spec.network).expect("validated").clone();
        let bridge = if ahead.made_links.contains(&network.bridge) {
            None
        } else {
            Some(nl.link(&network.bridge)?.ok_or_else(|| {
                Error::Settings(format!(
                    "bridge {} of network `{}` is missing (deleted by hand?); recreate the network",
                    network.bridge, network.name
                ))
            })?)
        };
        let ip = match spec.ip {
            Some(ip) => ip,
            None => {
                let seen = match &bridge {
                    Some(bridge) => self.addresses_in_use(nl, state, &network, bridge)?,
                    None => Vec::new(),
                };
                ipam::next_free(&network, state, &seen)?
            }
        };
        if nsfs::exists(&spec.name) && !ahead.gone_namespaces.contains(&spec.name) {
            return Err(Error::Settings(format!(
                "a network namespace named {} already exists (see `ip netns list`); pick another container name",
                spec.name
            )));
        }
        let veth = veth_name(&spec.name);
        if nl.link(&veth)?.is_some() && !ahead.gone_links.contains(&veth) {
            return Err(Error::Settings(format!(
                "a link named {veth} already exists; remove it or rename the container"
            )));
        }
        Ok((network, bridge, ip, veth))
    }

    /// Checks, records the intent, and makes the container; the caller adds it to the
    /// state, saves it and finishes the intent.
    fn create_container(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        spec: &ContainerSpec,
        out: &mut Vec<String>,
    ) -> Result<Container> {
        let (network, bridge, ip, veth) =
            self.prepare_container(nl, &locked.state, spec, &Ahead::default())?;
        let bridge = bridge.expect("no earlier step");
        let container = Container {
            name: spec.name.clone(),
            network: network.name.clone(),
            ip,
            veth: veth.clone(),
        };
        locked.begin(Intent::creating(
            format!("container create {}", spec.name),
            Object::Container(container.clone()),
        ))?;
        let made = self.build_container(nl, &locked.state, &network, &bridge, &container, out);
        if made.is_err() {
            // It removed what it made.
            locked.finish()?;
        }
        made.map(|()| container)
    }

    fn build_container(
        &self,
        nl: &Nl<'_>,
        state: &State,
        network: &Network,
        bridge: &Link,
        container: &Container,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let (spec, ip, veth) = (container, container.ip, &container.veth);
        let mark = Mark::container(&self.host.key, &container.name);
        transaction(&self.host, nl, state, |undo| {
            let plumbed = plumb::container(
                &self.netlink,
                nl,
                &ContainerPlumbing {
                    name: &spec.name,
                    veth,
                    bridge,
                    ip,
                    prefix: network.subnet.prefix_len(),
                    gateway: network.gateway,
                    mark: Some(&mark),
                },
                &mut |m| undo.push(m.into()),
            )?;
            let (host_side, eth0) = (plumbed.host_side, plumbed.eth0);
            if network.backend != Backend::Ebpf {
                nl.set_hairpin(&host_side, true)?;
            }
            // The fast path delivers straight into the container: its veth, its MAC, and
            // the gateway's MAC as the frame's source.
            if network.backend == Backend::Ebpf
                && let (Some(mac), Some(gw_mac), Some(mut dp)) =
                    (eth0.mac, bridge.mac, Dataplane::open_existing(&self.host)?)
            {
                dp.set_endpoint(
                    ip,
                    &netfast_common::config::Endpoint {
                        ifindex: host_side.index,
                        mac,
                        gw_mac,
                        mtu: u16::try_from(bridge.mtu).unwrap_or(u16::MAX),
                        _pad: 0,
                    },
                )?;
            }
            Ok(())
        })?;
        out.push(format!(
            "created container {} on {} at {ip}/{} (veth {veth}, gateway {}, mtu {})",
            spec.name,
            network.name,
            network.subnet.prefix_len(),
            network.gateway,
            bridge.mtu
        ));
        Ok(())
    }

    pub fn container_rm(&self, name: &str) -> Result<Vec<String>> {
        caps::require("container rm", true)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let c = locked.state.container(name).cloned().ok_or_else(|| {
            Error::Settings(format!(
                "no container named `{name}` (see `netfast container ls`)"
            ))
        })?;
        locked.begin(Intent::removing(
            format!("container rm {name}"),
            Object::Container(c.clone()),
        ))?;
        let removed = self.remove_container_and_publications(&nl, &mut locked.state, &c, &mut out);
        conclude(&mut locked, removed)?;
        Ok(out)
    }

    /// Removes a container with the publications that lead to it, from the kernel and the
    /// state.
    pub(super) fn remove_container_and_publications(
        &self,
        nl: &Nl<'_>,
        state: &mut State,
        c: &Container,
        out: &mut Vec<String>,
    ) -> Result<()> {
        for p in publications_of(state, c) {
            self.remove_publication(state, &p, out)?;
        }
        remove_container(nl, state, c, out)?;
        state.containers.retain(|x| x.name != c.name);
        Ok(())
    }

    /// Converges the host to `file`, printing each change; nothing when it already matches.
    /// Every step is checked before the first one changes anything, each against the state
    /// and the kernel as the earlier steps leave them ([`Loader::preflight`]); a step that
    /// still fails (the kernel refusing something) undoes what this apply created, and the
    /// error says what was changed, undone and left as it was.
    pub fn apply(&self, file: &ApplyFile) -> Result<Vec<String>> {
        caps::require("apply", true)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let actions = plan(file, &locked.state)?;
        self.preflight(&nl, &locked.state, &actions)?;
        let mut done: Vec<Action> = Vec::new();
        for (i, action) in actions.iter().enumerate() {
            out.push(action.to_string());
            // Each step records its own intent, and the state is saved after it: a crash
            // leaves the steps before it done, the one it was in completed or undone by the
            // next command, and the rest not begun.
            let command = format!("apply (step `{action}`)");
            let step = match action {
                Action::Unpublish { network, spec } => {
                    let p = locked
                        .state
                        .publications
                        .iter()
                        .find(|p| &p.network == network && &p.spec == spec)
                        .cloned()
                        .expect("planned from the state");
                    locked.begin(Intent::removing(command, Object::Publication(p.clone())))?;
                    self.remove_publication(&mut locked.state, &p, &mut Vec::new())
                }
                Action::Publish(d) => self
                    .check_publication(&nl, &locked.state, &d.network, &d.spec, &d.allow)
                    .and_then(|p| self.publish_checked(&nl, &mut locked, p, &mut Vec::new())),
                Action::RemoveContainer(name) => {
                    let c = locked
                        .state
                        .container(name)
                        .cloned()
                        .expect("planned from the state");
                    locked.begin(Intent::removing(command, Object::Container(c.clone())))?;
                    remove_container(&nl, &locked.state, &c, &mut Vec::new())
                        .map(|()| locked.state.containers.retain(|x| &x.name != name))
                }
                Action::RemoveNetwork(name) => {
                    let n = locked
                        .state
                        .network(name)
                        .cloned()
                        .expect("planned from the state");
                    locked.begin(Intent::removing(command, Object::Network(n.clone())))?;
                    self.remove_network(&nl, &mut locked.state, &n, &mut Vec::new())
                }
                Action::Configure(cfg) => {
                    locked.begin(Intent::creating(command, Object::Settings))?;
                    self.configure_locked(&mut locked.state, cfg)
                }
                Action::CreateNetwork(spec) => self
                    .create_network(&nl, &mut locked, spec, &mut Vec::new())
                    .map(|n| locked.state.networks.push(n)),
                Action::CreateContainer(spec) => self
                    .create_container(&nl, &mut locked, spec, &mut Vec::new())
                    .map(|c| locked.state.containers.push(c)),
            };
            if let Err(e) = step {
                locked.finish()?;
                let (undone, not_undone) = self.undo_creations(&nl, &mut locked, &done);
                locked.save()?;
                return Err(Error::Settings(apply_failure(
                    action,
                    &e,
                    &done,
                    &undone,
                    &not_undone,
                    &actions[i + 1..],
                )));
            }
            done.push(action.clone());
            locked.save()?;
            locked.finish()?;
        }
        if actions.is_empty() {
            out.push("no changes".into());
        }
        Ok(out)
    }

    /// Checks every step of an apply before the first one runs, each against the state and
    /// the kernel as the earlier steps will leave them: what `network create`, `container
    /// create`, `publish` and `config` check before they change anything. A file that would
    /// fail at a later step changes nothing.
    fn preflight(&self, nl: &Nl<'_>, state: &State, actions: &[Action]) -> Result<()> {
        let mut s = state.clone();
        let mut ahead = Ahead {
            dataplane: Dataplane::exists(&self.host)?,
            ..Ahead::default()
        };
        for action in actions {
            let checked = (|| -> Result<()> {
                match action {
                    Action::Unpublish { .. } => {}
                    Action::RemoveContainer(name) => {
                        if let Some(c) = s.container(name) {
                            ahead.gone_links.push(c.veth.clone());
                            ahead.gone_namespaces.push(c.name.clone());
                        }
                    }
                    Action::RemoveNetwork(name) => {
                        if let Some(n) = s.network(name).filter(|n| !n.adopted) {
                            ahead.gone_links.push(n.bridge.clone());
                            ahead.made_links.retain(|l| *l != n.bridge);
                            if let Some(link) = nl.link(&n.bridge)? {
                                ahead.gone_ifindexes.push(link.index);
                            }
                        }
                        // The dataplane goes with the last network it serves.
                        if !s
                            .networks
                            .iter()
                            .any(|n| &n.name != name && n.backend == Backend::Ebpf)
                        {
                            ahead.dataplane = false;
                        }
                    }
                    Action::Configure(cfg) => {
                        validate::dataplane(cfg)?;
                        if ahead.dataplane {
                            ct_max_fixed(&s.dataplane, cfg)?;
                        }
                    }
                    Action::CreateNetwork(spec) => {
                        let (network, _) =
                            self.prepare_network(nl, &s, spec, &ahead, &mut Vec::new())?;
                        ahead.made_links.push(network.bridge.clone());
                        ahead.gone_links.retain(|l| *l != network.bridge);
                        ahead.dataplane |= network.backend == Backend::Ebpf;
                    }
                    Action::CreateContainer(spec) => {
                        self.prepare_container(nl, &s, spec, &ahead)?;
                    }
                    Action::Publish(d) => {
                        self.check_publication(nl, &s, &d.network, &d.spec, &d.allow)?;
                    }
                }
                Ok(())
            })();
            checked.map_err(|e| {
                Error::Settings(format!(
                    "apply refused at `{action}`: {}; nothing was changed",
                    crate::error::report(&e)
                ))
            })?;
            s = super::plan::simulate(std::slice::from_ref(action), &s)?;
        }
        Ok(())
    }

    /// Removes what the steps `done` of a failed apply created (newest first): its
    /// publications, containers and networks. Removals and settings stay as they are. Returns
    /// the steps undone, and those that could not be, with why.
    fn undo_creations(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        done: &[Action],
    ) -> (Vec<Action>, Vec<(Action, String)>) {
        let (mut undone, mut failed) = (Vec::new(), Vec::new());
        for action in done.iter().rev() {
            // Each undo is a removal that a crash leaves for the next command to finish.
            let what = match action {
                Action::Publish(d) => {
                    let canonical = d
                        .spec
                        .parse::<super::publish::PublishSpec>()
                        .map(|s| s.to_string());
                    locked
                        .state
                        .publications
                        .iter()
                        .find(|p| p.network == d.network && Ok(&p.spec) == canonical.as_ref())
                        .cloned()
                        .map(Object::Publication)
                }
                Action::CreateContainer(spec) => locked
                    .state
                    .container(&spec.name)
                    .cloned()
                    .map(Object::Container),
                Action::CreateNetwork(spec) => locked
                    .state
                    .network(&spec.name)
                    .cloned()
                    .map(Object::Network),
                _ => None,
            };
            if let Some(o) = what
                && let Err(e) =
                    locked.begin(Intent::removing(format!("apply (undoing `{action}`)"), o))
            {
                failed.push((action.clone(), crate::error::report(&e)));
                continue;
            }
            let state = &mut locked.state;
            let result = match action {
                Action::Publish(d) => {
                    let canonical = d
                        .spec
                        .parse::<super::publish::PublishSpec>()
                        .map(|s| s.to_string());
                    match state
                        .publications
                        .iter()
                        .find(|p| p.network == d.network && Ok(&p.spec) == canonical.as_ref())
                        .cloned()
                    {
                        Some(p) => self.remove_publication(state, &p, &mut Vec::new()),
                        None => Ok(()),
                    }
                }
                Action::CreateContainer(spec) => match state.container(&spec.name).cloned() {
                    Some(c) => remove_container(nl, state, &c, &mut Vec::new())
                        .map(|()| state.containers.retain(|x| x.name != c.name)),
                    None => Ok(()),
                },
                Action::CreateNetwork(spec) => match state.network(&spec.name).cloned() {
                    Some(n) => self.remove_network(nl, state, &n, &mut Vec::new()),
                    None => Ok(()),
                },
                _ => continue,
            };
            let result = result
                .and_then(|()| locked.save())
                .and_then(|()| locked.finish());
            match result {
                Ok(()) => undone.push(action.clone()),
                Err(e) => {
                    let _ = locked.finish();
                    failed.push((action.clone(), crate::error::report(&e)));
                }
            }
        }
        (undone, failed)
    }

    /// Host-wide dataplane settings; effective immediately where the dataplane runs.
    pub fn configure(&self, cfg: &DataplaneConfig) -> Result<Vec<String>> {
        self.configure_with(|c| *c = cfg.clone())
            .map(|(_, lines)| lines)
    }

    /// Changes the settings with `change`, reading and writing them under one exclusive lock
    /// (two commands changing different settings at once both count). Returns the settings
    /// now in force; nothing is written when `change` changes nothing.
    pub fn configure_with(
        &self,
        change: impl FnOnce(&mut DataplaneConfig),
    ) -> Result<(DataplaneConfig, Vec<String>)> {
        caps::require("config", false)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let mut cfg = locked.state.dataplane.clone();
        change(&mut cfg);
        if cfg == locked.state.dataplane {
            return Ok((cfg, out));
        }
        let cfg = &cfg;
        locked.begin(Intent::creating("config", Object::Settings))?;
        let changed = self.configure_locked(&mut locked.state, cfg);
        conclude(&mut locked, changed)?;
        out.push(format!(
            "dataplane settings: {}",
            serde_json::to_string(cfg).unwrap_or_default()
        ));
        let fallback: Vec<&str> = locked
            .state
            .networks
            .iter()
            .filter(|n| n.backend != Backend::Ebpf)
            .map(|n| n.name.as_str())
            .collect();
        if !fallback.is_empty() {
            out.push(format!(
                "note: network(s) {} on the nftables/iptables backends take the timeouts \
                 (nftables: TCP and UDP; the kernel's ICMP timeout stays); the other settings \
                 are the eBPF dataplane's: their flows are the kernel conntrack's (its size is \
                 net.netfilter.nf_conntrack_max, its port range and filtering MASQUERADE's)",
                fallback.join(", ")
            ));
        }
        Ok((cfg.clone(), out))
    }

    pub(super) fn configure_locked(&self, state: &mut State, cfg: &DataplaneConfig) -> Result<()> {
        let settings = validate::dataplane(cfg)?;
        if let Some(mut dp) = Dataplane::open_existing(&self.host)? {
            ct_max_fixed(&state.dataplane, cfg)?;
            dp.configure(&settings.config)?;
        }
        // The fallbacks' rules carry the timeouts: re-render them; on failure, the eBPF
        // dataplane goes back to the settings it had, so nothing is half applied.
        let before = state.clone();
        state.dataplane = cfg.clone();
        if let Err(e) = crate::backend::sync(&before, state) {
            state.dataplane = before.dataplane;
            if let Some(mut dp) = Dataplane::open_existing(&self.host)? {
                dp.configure(&validate::dataplane(&state.dataplane)?.config)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes everything netfast created in this host namespace, and nothing else: what the
    /// state knows, what an interrupted command was creating or removing (its intent), and
    /// every link that carries netfast's mark for this host, with the namespace behind it.
    pub fn down(&self) -> Result<Vec<String>> {
        caps::require("down", true)?;
        let nl = self.nl()?;
        let mut locked = Locked::acquire(&self.host, true)?;
        let mut out = Vec::new();
        // An earlier `down` or another command that died: what it was about is netfast's too.
        let mut pending: Vec<Object> = Vec::new();
        if let Some(i) = locked.intent.take() {
            out.push(format!(
                "an interrupted `netfast {}` left changes: removing them too",
                i.command
            ));
            pending.extend(
                i.create
                    .into_iter()
                    .chain(i.remove)
                    .filter(|o| *o != Object::Everything),
            );
        }
        let mut intent = Intent::removing("down", Object::Everything);
        intent.remove.extend(pending.iter().cloned());
        locked.begin(intent)?;
        self.remove_everything(&nl, &mut locked, &pending, &mut out)?;
        locked.remove()?;
        if out.is_empty() {
            out.push("nothing to remove".into());
        }
        Ok(out)
    }

    /// What `down` does before it removes the state: every network, container and
    /// publication of the state and of `pending` (an interrupted command's), the dataplane,
    /// the fallbacks' rules, and the links netfast marked as this host's (with their
    /// namespaces). The state is saved empty.
    pub(super) fn remove_everything(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        pending: &[Object],
        out: &mut Vec<String>,
    ) -> Result<()> {
        let mut all = locked.state.clone();
        for o in pending {
            match o {
                Object::Network(n) if all.network(&n.name).is_none() => {
                    all.networks.push(n.clone())
                }
                Object::Container(c) if all.container(&c.name).is_none() => {
                    all.containers.push(c.clone())
                }
                Object::Publication(p)
                    if !all
                        .publications
                        .iter()
                        .any(|q| q.network == p.network && q.spec == p.spec) =>
                {
                    all.publications.push(p.clone())
                }
                _ => {}
            }
        }
        // Unpinning first detaches every program, without opening the maps: `down` is the way
        // out of a dataplane this binary cannot reuse (another version's), so it must not
        // need to read it.
        if Dataplane::remove(&self.host)? {
            out.push("removed the dataplane".into());
        }
        crate::backend::sync(&all, &State::default())?;
        if all.networks.iter().any(|n| n.backend != Backend::Ebpf) {
            out.push("removed netfast's nftables table / iptables chains".into());
            let ended = crate::backend::delete_kernel_flows(&all, &Filter::default())?;
            if ended > 0 {
                out.push(format!(
                    "ended {ended} flows of its networks in the kernel's conntrack table"
                ));
            }
        }
        // Rules no state or intent knows of (a command that died before it saved).
        if crate::backend::remove_all()? {
            out.push("removed netfast's nftables table / iptables chains left by a crash".into());
        }
        locked.state.publications.clear();
        all.publications.clear();
        for c in all.containers.clone() {
            remove_container(nl, &all, &c, out)?;
            locked.state.containers.retain(|x| x.name != c.name);
            locked.save()?;
        }
        for n in all.networks.clone() {
            remove_bridge(nl, &n, out)?;
            locked.state.networks.retain(|x| x.name != n.name);
            locked.save()?;
        }
        self.sweep_marked(nl, &locked.state, out)?;
        locked.state = State::default();
        locked.save()
    }
}

/// Ends a step begun with [`Locked::begin`]: saves the state when it succeeded, and forgets
/// the intent either way (a step that fails undoes itself or leaves what it could not do to
/// `network ls`'s drift).
pub(super) fn conclude(locked: &mut Locked, result: Result<()>) -> Result<()> {
    if result.is_ok() {
        locked.save()?;
    }
    locked.finish()?;
    result
}

/// The publications that lead to container `c`.
pub(super) fn publications_of(state: &State, c: &Container) -> Vec<super::publish::Publication> {
    state
        .publications
        .iter()
        .filter(|p| p.network == c.network && (p.container == c.name || p.container_ip == c.ip))
        .cloned()
        .collect()
}

/// Deletes a network's bridge unless it was adopted.
pub(super) fn remove_bridge(nl: &Nl<'_>, network: &Network, out: &mut Vec<String>) -> Result<()> {
    if network.adopted {
        for port in &network.hairpin_set {
            if let Some(link) = nl.link(port)?
                && link.controller.is_some()
            {
                nl.set_hairpin(&link, false)?;
                out.push(format!("turned hairpin mode off again for {port}"));
            }
        }
        out.push(format!("left adopted bridge {} in place", network.bridge));
    } else if let Some(bridge) = nl.link(&network.bridge)? {
        nl.delete_link(&bridge)?;
        out.push(format!("deleted bridge {}", network.bridge));
    }
    out.push(format!("removed network {}", network.name));
    Ok(())
}

/// Removes a container (its veth and namespace) and ends its flows: from it (masqueraded or
/// not) and to it, in the eBPF dataplane or, for a network on a fallback backend, in the
/// kernel's conntrack table. `state` still has the container's network.
pub(super) fn remove_container(
    nl: &Nl<'_>,
    state: &State,
    c: &Container,
    out: &mut Vec<String>,
) -> Result<()> {
    let host = Host::current()?;
    if let Some(mut dp) = Dataplane::open_existing(&host)? {
        dp.remove_endpoint(c.ip)?;
    }
    if let Some(veth) = nl.link(&c.veth)? {
        nl.delete_link(&veth)?;
    }
    // A Docker endpoint's namespace is Docker's: its veth is all netfast made.
    if !state.docker.owns_container(&c.name) {
        nsfs::delete(&c.name).map_err(|source| Error::Io {
            context: format!("deleting namespace {}", c.name),
            source,
        })?;
    }
    out.push(format!("removed container {} ({})", c.name, c.ip));
    // Its veth is gone: no new flow of it can start.
    let filter = Filter::container(c.ip);
    let fallback = state
        .network(&c.network)
        .is_some_and(|n| n.backend != Backend::Ebpf);
    let ended = if fallback {
        crate::backend::delete_kernel_flows(state, &filter)?
    } else {
        match Dataplane::open_existing(&host)? {
            Some(mut dp) => {
                maps::delete_flows(dp.ebpf_mut(), maps::monotonic_now(), |f| filter.matches(f))?
                    .flows
            }
            None => 0,
        }
    };
    if ended > 0 {
        out.push(format!("ended {ended} flows of container {}", c.name));
    }
    Ok(())
}

/// Refuses a network that would take the host's own traffic: an uplink that is loopback or
/// one of netfast's own links, a subnet that overlaps an address or a route the host has (as
/// Docker refuses them). `adopted`: the adopted bridge, whose addresses and routes in the
/// subnet are the network's own; `gone`: links an earlier step of an apply deletes.
fn host_conflicts(
    nl: &Nl<'_>,
    spec: &NetworkSpec,
    state: &State,
    bridge: &str,
    uplink: &Link,
    adopted: Option<u32>,
    gone: &[u32],
) -> Result<()> {
    let refuse = |why: String| Err(Error::Settings(why));
    if uplink.is_loopback() || uplink.name == "lo" {
        return refuse(format!(
            "uplink {} is the loopback interface: nothing leaves the host through it; pick the \
             interface towards the outside (the one `ip route show default` names)",
            uplink.name
        ));
    }
    if uplink.name == bridge {
        return refuse(format!(
            "the bridge and the uplink are both `{bridge}`; they must differ"
        ));
    }
    let links = nl.links()?;
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("interface #{index}"), |l| l.name.clone())
    };
    if let Some(n) = state.networks.iter().find(|n| n.bridge == uplink.name) {
        return refuse(format!(
            "uplink {} is the bridge of netfast network `{}`; pick the interface towards the outside",
            uplink.name, n.name
        ));
    }
    if let Some(c) = state.containers.iter().find(|c| c.veth == uplink.name) {
        return refuse(format!(
            "uplink {} is the veth of netfast container `{}`; pick the interface towards the outside",
            uplink.name, c.name
        ));
    }
    if let Some(controller) = uplink.controller
        && let Some(n) = state
            .networks
            .iter()
            .find(|n| n.bridge == name_of(controller))
    {
        return refuse(format!(
            "uplink {} is a port of bridge {} of netfast network `{}`; pick the interface towards the outside",
            uplink.name, n.bridge, n.name
        ));
    }
    let overlaps = |net: &ipnet::Ipv4Net| {
        net.contains(&spec.subnet.network()) || spec.subnet.contains(&net.network())
    };
    let fix = "containers there would take the host's own traffic; pick a subnet the host does \
               not use (see `ip -4 addr` and `ip route`)";
    for (index, ip, prefix) in nl.address_nets()? {
        let Ok(net) = ipnet::Ipv4Net::new(ip, prefix) else {
            continue;
        };
        if Some(index) != adopted && !gone.contains(&index) && overlaps(&net.trunc()) {
            return refuse(format!(
                "subnet {} overlaps {ip}/{prefix}, an address of {}: {fix}",
                spec.subnet,
                name_of(index)
            ));
        }
    }
    for route in nl.routes()? {
        // The default route leads everywhere; it is where the network's traffic goes.
        if route.dst.prefix_len() == 0
            || (adopted.is_some() && route.oif == adopted)
            || route.oif.is_some_and(|oif| gone.contains(&oif))
        {
            continue;
        }
        if overlaps(&route.dst) {
            return refuse(format!(
                "subnet {} overlaps the host's route to {}{}: {fix}",
                spec.subnet,
                route.dst,
                route
                    .oif
                    .map(|i| format!(" (dev {})", name_of(i)))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Turns forwarding on in this namespace; true if it was off.
fn set_ip_forward() -> Result<bool> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    let was = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading {path}"),
        source,
    })?;
    if was.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1").map_err(|source| Error::Io {
        context: format!("writing {path}"),
        source,
    })?;
    Ok(true)
}

/// Attaches the dataplane to a network's bridge and uplink and makes its subnet known.
fn install(
    nl: &Nl<'_>,
    host: &Host,
    settings: &crate::dataplane::Settings,
    network: &Network,
    ext_addr: Ipv4Addr,
) -> Result<()> {
    let bridge = nl
        .link(&network.bridge)?
        .ok_or_else(|| Error::NoInterface(network.bridge.clone()))?;
    let uplink = nl
        .link(&network.uplink)?
        .ok_or_else(|| Error::NoInterface(network.uplink.clone()))?;
    let mut dp = Dataplane::open(host, settings)?;
    dp.attach(&network.bridge, InterfaceRole::Bridge)?;
    dp.attach(&network.uplink, InterfaceRole::Uplink)?;
    if !dp.attach_sockets()? {
        eprintln!(
            "netfast: warning: no cgroup v2 hierarchy is mounted; the host's own clients cannot \
             reach published ports through its addresses"
        );
    }
    let info = NetInfo {
        id: network.id,
        flags: if network.masquerade {
            NET_F_MASQUERADE
        } else {
            0
        },
        uplink_ifindex: uplink.index,
        bridge_ifindex: bridge.index,
        ext_addr: raw_addr(ext_addr),
    };
    dp.set_network(network.subnet.network(), network.subnet.prefix_len(), &info)
}

/// Undoes [`install`]: forgets the subnet and detaches from the bridge, and from the uplink
/// unless another network still uses it.
fn uninstall(host: &Host, nl: &Nl<'_>, state: &State, network: &Network) -> Result<()> {
    let Some(mut dp) = Dataplane::open_existing(host)? else {
        return Ok(());
    };
    dp.remove_network(network.subnet.network(), network.subnet.prefix_len())?;
    if let Some(bridge) = nl.link(&network.bridge)? {
        dp.detach(bridge.index, InterfaceRole::Bridge)?;
    }
    let shared = state
        .networks
        .iter()
        .any(|n| n.name != network.name && n.uplink == network.uplink);
    if !shared && let Some(uplink) = nl.link(&network.uplink)? {
        dp.detach(uplink.index, InterfaceRole::Uplink)?;
    }
    Ok(())
}

/// What a failed apply says: the step and why, then exactly what it changed and kept, what it
/// undid, what it could not undo, and what it never did.
fn apply_failure(
    at: &Action,
    e: &Error,
    done: &[Action],
    undone: &[Action],
    not_undone: &[(Action, String)],
    not_done: &[Action],
) -> String {
    let list = |a: &[Action]| {
        a.iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut msg = format!("apply failed at `{at}`: {}", crate::error::report(e));
    let kept: Vec<Action> = done
        .iter()
        .filter(|a| !undone.contains(a) && !not_undone.iter().any(|(b, _)| b == *a))
        .cloned()
        .collect();
    if kept.is_empty() && not_undone.is_empty() {
        msg.push_str("; the host is as it was before");
        if !undone.is_empty() {
            msg.push_str(&format!(" (undone: {})", list(undone)));
        }
    } else {
        if !kept.is_empty() {
            msg.push_str(&format!(
                "; done and kept (removals and settings are not undone): {}",
                list(&kept)
            ));
        }
        if !undone.is_empty() {
            msg.push_str(&format!("; created and removed again: {}", list(undone)));
        }
        for (a, why) in not_undone {
            msg.push_str(&format!("; `{a}` could not be undone ({why}): it stays"));
        }
    }
    if !not_done.is_empty() {
        msg.push_str(&format!("; not done: {}", list(not_done)));
    }
    msg.push_str("; fix the cause and apply again");
    msg
}
