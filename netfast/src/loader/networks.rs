//! `network create` and `network rm`: the bridge, its address and routes, the dataplane on
//! the bridge and the uplink (or a fallback's rules), and their removal.

use std::net::Ipv4Addr;

use netfast_common::{
    config::{NET_F_MASQUERADE, NetInfo},
    maps::MAX_NETWORKS,
};

use super::{
    Loader,
    apply::Ahead,
    change::{Change, DataplaneGone, Masquerade},
    intent::{Intent, Mark, Object},
    ipam,
    model::{Backend, Network, NetworkSpec, State, default_bridge},
    netlink::{Link, Nl},
    plumb::{self},
    state::Locked,
    transaction::{Created, Step, creating_all, transaction},
    validate::{self},
};
use crate::{
    conntrack_filter::Filter,
    dataplane::{Dataplane, InterfaceRole},
    error::{Error, Result},
    host::Host,
    maps::{self, raw_addr},
};

impl Loader {
    pub fn network_create(&self, spec: &NetworkSpec) -> Result<Vec<Change>> {
        self.changing("network create", true, |step, locked| {
            step.create_network(locked, spec)
        })
    }

    /// Everything `network create` checks before it changes anything, against the kernel as
    /// `ahead` says it will be (an apply's earlier steps): the network to make, the uplink's
    /// address, and what to tell the user about the backend.
    pub(super) fn prepare_network(
        &self,
        nl: &Nl<'_>,
        state: &State,
        spec: &NetworkSpec,
        ahead: &Ahead,
        out: &mut Vec<Change>,
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
            out.push(Change::BackendChosen {
                backend,
                why: why.clone(),
            });
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
        out: &mut Vec<Change>,
    ) -> Result<Network> {
        let (bridge_name, gateway, backend) =
            (network.bridge.clone(), network.gateway, network.backend);
        let mark = Mark::network(&self.host.key, &network.name);
        let settings = validate::dataplane(&state.dataplane)?;
        transaction(&self.host, nl, state, |undo| {
            if network.adopted {
                out.push(Change::BridgeAdopted {
                    bridge: bridge_name.clone(),
                    gateway,
                });
            } else {
                plumb::bridge(
                    nl,
                    &bridge_name,
                    gateway,
                    network.subnet.prefix_len(),
                    Some(&mark),
                    &mut |m| undo.push(m.into()),
                )?;
                out.push(Change::BridgeCreated {
                    bridge: bridge_name.clone(),
                    gateway,
                    prefix: network.subnet.prefix_len(),
                });
            }
            if set_ip_forward(true)? {
                undo.push(Created::IpForward);
                out.push(Change::IpForwardEnabled);
            }
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
                super::publications::refresh_host_addrs(&self.host, nl)?;
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
            out.push(Change::NetworkServed {
                network: network.name.clone(),
                backend,
                bridge: bridge_name.clone(),
                uplink: network.uplink.clone(),
                masquerade: network.masquerade.then(|| Masquerade {
                    subnet: network.subnet,
                    address: ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
                }),
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
                    out.push(Change::HairpinOn {
                        ports: network.hairpin_set.clone(),
                    });
                }
            }
            Ok(())
        })?;
        Ok(network)
    }

    pub fn network_rm(&self, name: &str) -> Result<Vec<Change>> {
        self.changing("network rm", false, |step, locked| {
            let network = locked.state.known_network(name)?.clone();
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
            let command = format!("network rm {name}");
            locked.begin(Intent::removing(command, Object::Network(network.clone())))?;
            step.remove_network(&mut locked.state, &network)
        })
    }
}

impl Step<'_> {
    /// Checks, records the intent, makes the network and adds it to the state; the caller
    /// saves it and finishes the intent.
    pub(super) fn create_network(&mut self, locked: &mut Locked, spec: &NetworkSpec) -> Result<()> {
        let (loader, nl) = (self.loader, self.nl);
        let (network, ext_addr) =
            loader.prepare_network(nl, &locked.state, spec, &Ahead::default(), self.out)?;
        let command = format!("network create {}", spec.name);
        let mut intent = Intent::creating(command, Object::Network(network.clone()));
        // The create turns forwarding on: off now, it is turned off again if the create is
        // undone after a crash.
        intent.ip_forward_was_off = !ip_forward_on()?;
        let made = creating_all(locked, intent, |state| {
            loader.build_network(nl, state, network, ext_addr, self.out)
        })?;
        locked.state.networks.push(made);
        Ok(())
    }

    pub(super) fn remove_network(&mut self, state: &mut State, network: &Network) -> Result<()> {
        let (host, nl, out) = (&self.loader.host, self.nl, &mut *self.out);
        // Publications by address lead to no container, so no `container rm` took them: they
        // go with their network (network ids are reused, and a stale entry would revive).
        let publications: Vec<_> = state
            .publications
            .iter()
            .filter(|p| p.network == network.name)
            .cloned()
            .collect();
        for p in &publications {
            self.loader.remove_publication(state, p, out)?;
        }
        let before = state.clone();
        if network.backend == Backend::Ebpf {
            uninstall(host, nl, state, network)?;
        }
        state.networks.retain(|n| n.name != network.name);
        crate::backend::sync(&before, state)?;
        // The network's flows end with it (its subnet's, to and from it).
        let filter = Filter::network(network.id);
        let ended = if network.backend == Backend::Ebpf {
            match Dataplane::open_existing(host)? {
                Some(mut dp) => {
                    maps::delete_flows(dp.ebpf_mut(), maps::monotonic_now(), |f| filter.matches(f))?
                        .flows
                }
                None => 0,
            }
        } else {
            crate::backend::delete_kernel_flows(&before, &filter)?
        };
        if ended > 0 {
            out.push(Change::NetworkFlowsEnded {
                network: network.name.clone(),
                flows: ended,
            });
        }
        if !state.networks.iter().any(|n| n.backend == Backend::Ebpf) && Dataplane::remove(host)? {
            out.push(Change::DataplaneRemoved {
                why: DataplaneGone::LastNetwork,
            });
        }
        remove_bridge(nl, network, out)
    }
}

/// Deletes a network's bridge unless it was adopted.
pub(super) fn remove_bridge(nl: &Nl<'_>, network: &Network, out: &mut Vec<Change>) -> Result<()> {
    if network.adopted {
        for port in &network.hairpin_set {
            if let Some(link) = nl.link(port)?
                && link.controller.is_some()
            {
                nl.set_hairpin(&link, false)?;
                out.push(Change::HairpinOff { port: port.clone() });
            }
        }
        out.push(Change::BridgeLeft {
            bridge: network.bridge.clone(),
        });
    } else if let Some(bridge) = nl.link(&network.bridge)? {
        nl.delete_link(&bridge)?;
        out.push(Change::BridgeDeleted {
            bridge: network.bridge.clone(),
        });
    }
    out.push(Change::NetworkRemoved {
        network: network.name.clone(),
    });
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

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether IPv4 forwarding is on in this namespace.
pub(super) fn ip_forward_on() -> Result<bool> {
    let was = std::fs::read_to_string(IP_FORWARD).map_err(|source| Error::Io {
        context: format!("reading {IP_FORWARD}"),
        source,
    })?;
    Ok(was.trim() != "0")
}

/// Turns IPv4 forwarding on (or off) in this namespace; true if it was the other way.
pub(super) fn set_ip_forward(on: bool) -> Result<bool> {
    let want = if on { "1" } else { "0" };
    if ip_forward_on()? == on {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, want).map_err(|source| Error::Io {
        context: format!("writing {IP_FORWARD}"),
        source,
    })?;
    Ok(true)
}

/// Attaches the dataplane to a network's bridge and uplink and makes its subnet known.
pub(super) fn install(
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
        log::warn!(
            "warning: no cgroup v2 hierarchy is mounted; the host's own clients cannot \
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
pub(super) fn uninstall(host: &Host, nl: &Nl<'_>, state: &State, network: &Network) -> Result<()> {
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
