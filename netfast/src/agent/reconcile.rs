//! One reconciling pass: the kernel as it is now against what the state says, under the
//! host's exclusive lock (commands wait for a pass, a pass for a command). Each pass is
//! complete and idempotent, so that a missed netlink event costs nothing but a delay until
//! the next pass.
//!
//! What it repairs:
//! - the dataplane's host addresses (ports published on every address are reachable on
//!   every address the host has now);
//! - masquerade's address: a network whose uplink no longer has the address it masquerades
//!   to takes the uplink's first address, and the flows that left as the old one end with
//!   their mappings (as MASQUERADE ends them: their peers could never answer again);
//! - interfaces deleted and made again: programs attached to the new bridge or uplink, the
//!   ifindex-keyed maps re-keyed (networks, bridges, uplinks, endpoints), link pins of gone
//!   interfaces removed; a netfast bridge made again gets its gateway address, and the
//!   containers' veths go back on it;
//! - the fast path's entries for addresses no container holds (a Docker endpoint's create
//!   killed before it saved the state leaves one, into an ifindex another interface may
//!   take), as the next command would remove them;
//! - the fallback backends' rules, when they are missing (removed by hand, a firewall
//!   reload), and their bridges' `route_localnet`.
//!
//! The eBPF dataplane is repaired before the bridges and their ports: a container's packet
//! that crosses a bridge made again before its programs are attached and keyed to it would
//! miss hairpin, or be dropped as a forged source.
//!
//! What it cannot repair (a missing bridge or uplink, a veth gone, an uplink without any
//! address) is reported as drift. The fallbacks need nothing else: their rules match
//! interfaces by name and local addresses by type, and the kernel's MASQUERADE ends the
//! flows of an address that goes.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use crate::{
    backend,
    dataplane::{Dataplane, InterfaceRole},
    error::Result,
    loader::{
        Change, Loader,
        intent::Object,
        model::{Backend, Network},
        netlink::{Link, Nl},
        state::Locked,
    },
    maps::{self, addr_of, raw_addr},
};

/// A kind of repair, as the metrics count them.
pub const REPAIR_KINDS: [&str; 10] = [
    "host_addresses",
    "masquerade_address",
    "attach",
    "rekey",
    "stale_link",
    "unknown_endpoint",
    "bridge",
    "bridge_port",
    "fallback_rules",
    "interrupted_command",
];

/// Something a pass changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// One of [`REPAIR_KINDS`].
    pub kind: &'static str,
    pub what: String,
}

/// What a pass did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub repairs: Vec<Repair>,
    /// Problems it cannot repair, per network (the host's own under "").
    pub drift: BTreeMap<String, Vec<String>>,
    /// Flows ended because the address they were translated to is gone.
    pub flows_ended: u64,
}

impl Pass {
    fn repair(&mut self, kind: &'static str, what: String) {
        debug_assert!(REPAIR_KINDS.contains(&kind));
        self.repairs.push(Repair { kind, what });
    }

    fn drift(&mut self, network: &str, what: String) {
        self.drift.entry(network.to_owned()).or_default().push(what);
    }
}

fn by_name<'a>(links: &'a [Link], name: &str) -> Option<&'a Link> {
    links.iter().find(|l| l.name == name)
}

/// One pass over `loader`'s host.
pub fn reconcile(loader: &Loader) -> Result<Pass> {
    let mut pass = Pass::default();
    // A command that died left changes the state does not describe yet: completed first,
    // as the next command would, so that the pass compares the kernel with a true state.
    // One the agent cannot complete (under a service manager's sandbox it cannot delete a
    // named namespace for good) must not stop it keeping the rest in step.
    let stuck = match loader.recover() {
        Ok(true) => {
            pass.repair(
                "interrupted_command",
                "completed what an interrupted netfast command left".into(),
            );
            None
        }
        Ok(false) => None,
        Err(e) => Some(crate::error::report(&e)),
    };
    let locked = Locked::acquire(&loader.host, true)?;
    if let Some(intent) = &locked.intent {
        let Some(why) = stuck else {
            // Another command started and died since: the next pass completes it.
            pass.drift(
                "",
                format!(
                    "an interrupted `netfast {}` left changes; the next pass completes them",
                    intent.command
                ),
            );
            return Ok(pass);
        };
        // The saved state is true but for what the command was changing. Networks it was
        // removing, or everything (`down`), are not to be put back meanwhile.
        let removing = intent
            .remove
            .iter()
            .any(|o| matches!(o, Object::Network(_) | Object::Everything));
        pass.drift(
            "",
            format!(
                "cannot complete what an interrupted `netfast {}` left ({why}); {}; the next \
                 netfast command that changes something (or `netfast down`) completes it",
                intent.command,
                if removing {
                    "passes wait for it"
                } else {
                    "passes go on with the saved state"
                }
            ),
        );
        if removing {
            return Ok(pass);
        }
    }
    let state = &locked.state;
    let nl = loader.netlink().host()?;
    if state.networks.is_empty() {
        return Ok(pass);
    }
    let links = nl.links()?;
    let mut dp = None;
    if state.networks.iter().any(|n| n.backend == Backend::Ebpf) {
        dp = Dataplane::open_existing(&loader.host)?;
        match dp.as_mut() {
            // Programs and ifindex keys first: a container's packet crossing a bridge made
            // again before the programs know it would be dropped as a forged source.
            Some(dp) => dataplane(dp, &nl, state, &links, &mut pass)?,
            None => pass.drift(
                "",
                "networks on the eBPF dataplane, but no dataplane is pinned (removed by \
                 hand?): `netfast down` and create the networks again"
                    .into(),
            ),
        }
    }
    for n in &state.networks {
        bridge_and_ports(&nl, state, n, &links, &mut pass)?;
        if by_name(&links, &n.uplink).is_none() {
            pass.drift(
                &n.name,
                format!(
                    "uplink {} is missing: the network's traffic to the outside waits for it \
                     (programs are attached again when it comes back)",
                    n.uplink
                ),
            );
        }
    }
    fallback_rules(state, &mut pass)?;
    if let Some(dp) = dp.as_mut() {
        // After the ports: a bridge takes the MAC of its lowest port.
        endpoints(dp, state, &nl.links()?, &mut pass)?;
    }
    let addrs = nl.all_addresses()?;
    for p in &state.publications {
        if let Some(ip) = p.host_ip
            && !addrs.contains(&ip)
        {
            pass.drift(
                &p.network,
                format!(
                    "publication {} is on {ip}, which the host no longer has: it serves \
                     nobody until the address comes back",
                    p.spec
                ),
            );
        }
    }
    Ok(pass)
}

/// The bridge of `n` and its containers' veths on it.
fn bridge_and_ports(
    nl: &Nl<'_>,
    state: &crate::loader::model::State,
    n: &Network,
    links: &[Link],
    pass: &mut Pass,
) -> Result<()> {
    let Some(bridge) = by_name(links, &n.bridge) else {
        pass.drift(
            &n.name,
            format!(
                "bridge {} is missing: its containers are cut off; create it again{}, or \
                 `netfast network rm` the network",
                n.bridge,
                if n.adopted {
                    " (it was adopted: as it was made before)".to_owned()
                } else {
                    format!(" (`ip link add {} type bridge`)", n.bridge)
                }
            ),
        );
        return Ok(());
    };
    // A bridge netfast made, made again by hand: what netfast gave it, it gets again. An
    // adopted bridge is its owner's to configure.
    if !n.adopted {
        if !nl.addresses(bridge)?.iter().any(|(a, _)| *a == n.gateway) {
            nl.add_address(bridge, n.gateway, n.subnet.prefix_len())?;
            pass.repair(
                "bridge",
                format!(
                    "gave bridge {} its gateway {}/{} again",
                    n.bridge,
                    n.gateway,
                    n.subnet.prefix_len()
                ),
            );
        }
        let mac = crate::loader::plumb::bridge_mac(n.gateway);
        if bridge.mac != Some(mac) {
            nl.set_mac(bridge, mac)?;
            pass.repair("bridge", format!("gave bridge {} its MAC again", n.bridge));
        }
        if !bridge.up {
            nl.set_up(bridge)?;
            pass.repair("bridge", format!("set bridge {} up again", n.bridge));
        }
    }
    for c in state.containers_of(&n.name) {
        match by_name(links, &c.veth) {
            None => pass.drift(
                &n.name,
                format!(
                    "veth {} of container {} is missing: `netfast container rm {}` and create \
                     it again",
                    c.veth, c.name, c.name
                ),
            ),
            Some(v) if v.controller == Some(bridge.index) => {}
            Some(v) if v.controller.is_none() => {
                // Released when its bridge was deleted: it goes back on the new one.
                nl.set_controller(v, bridge)?;
                nl.set_up(v)?;
                if n.backend != Backend::Ebpf {
                    nl.set_hairpin(v, true)?;
                }
                pass.repair(
                    "bridge_port",
                    format!(
                        "put veth {} of container {} back on bridge {}",
                        c.veth, c.name, n.bridge
                    ),
                );
            }
            Some(_) => pass.drift(
                &n.name,
                format!(
                    "veth {} of container {} is on another bridge than {}: `ip link set {} \
                     master {}`",
                    c.veth, c.name, n.bridge, c.veth, n.bridge
                ),
            ),
        }
    }
    Ok(())
}

/// The fallback backends' rules and their bridges' `route_localnet`.
fn fallback_rules(state: &crate::loader::model::State, pass: &mut Pass) -> Result<()> {
    let mut missing = Vec::new();
    for b in [Backend::Nftables, Backend::Iptables] {
        if state.networks.iter().any(|n| n.backend == b) && !backend::installed(b) {
            missing.push(b.name());
        }
    }
    let localnet: Vec<&str> = state
        .networks
        .iter()
        .filter(|n| n.backend != Backend::Ebpf)
        .filter(|n| {
            std::path::Path::new(&format!("/proc/sys/net/ipv4/conf/{}", n.bridge)).exists()
                && !backend::route_localnet_of(&n.bridge)
        })
        .map(|n| n.bridge.as_str())
        .collect();
    if missing.is_empty() && localnet.is_empty() {
        return Ok(());
    }
    backend::sync(state, state)?;
    if !missing.is_empty() {
        pass.repair(
            "fallback_rules",
            format!(
                "wrote netfast's {} rules again (they were missing)",
                missing.join(" and ")
            ),
        );
    }
    if !localnet.is_empty() {
        pass.repair(
            "fallback_rules",
            format!("turned route_localnet on again for {}", localnet.join(", ")),
        );
    }
    Ok(())
}

/// The eBPF dataplane: host addresses, attachments, ifindex-keyed maps, masquerade's address.
fn dataplane(
    dp: &mut Dataplane,
    nl: &Nl<'_>,
    state: &crate::loader::model::State,
    links: &[Link],
    pass: &mut Pass,
) -> Result<()> {
    let mut addrs = nl.all_addresses()?;
    addrs.sort();
    addrs.dedup();
    let mut known = maps::host_addrs(dp.ebpf())?;
    known.sort();
    if known != addrs {
        dp.set_host_addrs(&addrs)?;
        let added: Vec<String> = addrs
            .iter()
            .filter(|a| !known.contains(a))
            .map(ToString::to_string)
            .collect();
        let gone: Vec<String> = known
            .iter()
            .filter(|a| !addrs.contains(a))
            .map(ToString::to_string)
            .collect();
        pass.repair(
            "host_addresses",
            format!(
                "host addresses for publications: {}{}",
                if added.is_empty() {
                    String::new()
                } else {
                    format!("+{} ", added.join(" +"))
                },
                if gone.is_empty() {
                    String::new()
                } else {
                    format!("-{}", gone.join(" -"))
                }
            )
            .trim_end()
            .to_owned(),
        );
    }
    let mut pins: HashSet<(u32, &'static str)> = HashSet::new();
    let mut uplinks: HashSet<u32> = HashSet::new();
    // (network, old address, new address)
    let mut moved: Vec<(String, Ipv4Addr, Ipv4Addr)> = Vec::new();
    for n in state.networks.iter().filter(|n| n.backend == Backend::Ebpf) {
        let bridge = by_name(links, &n.bridge);
        let uplink = by_name(links, &n.uplink);
        if let Some(b) = bridge {
            if dp.attach(&n.bridge, InterfaceRole::Bridge)? {
                pass.repair(
                    "attach",
                    format!(
                        "attached the dataplane to bridge {} (#{})",
                        n.bridge, b.index
                    ),
                );
            }
            pins.extend(InterfaceRole::Bridge.hooks().map(|h| (b.index, h.name())));
        }
        if let Some(u) = uplink {
            if u.is_ethernet() {
                if dp.attach(&n.uplink, InterfaceRole::Uplink)? {
                    pass.repair(
                        "attach",
                        format!(
                            "attached the dataplane to uplink {} (#{})",
                            n.uplink, u.index
                        ),
                    );
                }
                pins.extend(InterfaceRole::Uplink.hooks().map(|h| (u.index, h.name())));
                uplinks.insert(u.index);
            } else {
                pass.drift(
                    &n.name,
                    format!(
                        "uplink {} is back without an Ethernet header ({}): the eBPF programs \
                         cannot serve it; move the network to --backend nftables",
                        n.uplink,
                        u.describe_type()
                    ),
                );
            }
        }
        let (subnet, prefix) = (n.subnet.network(), n.subnet.prefix_len());
        let Some(info) = maps::network_info(dp.ebpf(), subnet, prefix)? else {
            pass.drift(
                &n.name,
                format!(
                    "subnet {} is not in the dataplane (removed by hand?): `netfast network rm \
                     {}` and create it again",
                    n.subnet, n.name
                ),
            );
            continue;
        };
        let mut want = info;
        if let Some(b) = bridge {
            want.bridge_ifindex = b.index;
        }
        if let Some(u) = uplink {
            want.uplink_ifindex = u.index;
            if n.masquerade {
                let on_uplink = nl.addresses(u)?;
                let old = addr_of(info.ext_addr);
                if !on_uplink.iter().any(|(a, _)| *a == old) {
                    match on_uplink.first() {
                        Some((new, _)) => {
                            want.ext_addr = raw_addr(*new);
                            moved.push((n.name.clone(), old, *new));
                        }
                        None => pass.drift(
                            &n.name,
                            format!(
                                "uplink {} has no IPv4 address: masquerade waits for one \
                                 (it still names {old}, which the host no longer has)",
                                n.uplink
                            ),
                        ),
                    }
                }
            }
        }
        if want != info {
            dp.set_network(subnet, prefix, &want)?;
            let mut moves = Vec::new();
            if want.bridge_ifindex != info.bridge_ifindex {
                moves.push(format!(
                    "bridge {} #{} → #{}",
                    n.bridge, info.bridge_ifindex, want.bridge_ifindex
                ));
            }
            if want.uplink_ifindex != info.uplink_ifindex {
                moves.push(format!(
                    "uplink {} #{} → #{}",
                    n.uplink, info.uplink_ifindex, want.uplink_ifindex
                ));
            }
            if !moves.is_empty() {
                pass.repair("rekey", format!("network {}: {}", n.name, moves.join(", ")));
            }
        }
    }
    // Links of interfaces that are gone (or that no network uses any more).
    for pin in dp.link_pins() {
        if !pins.contains(&(pin.ifindex, pin.hook.name())) {
            dp.unpin_link(&pin)?;
            pass.repair(
                "stale_link",
                format!(
                    "removed the {} link of interface #{}, which is gone",
                    pin.hook.name(),
                    pin.ifindex
                ),
            );
        }
    }
    for index in maps::uplinks(dp.ebpf())? {
        if !uplinks.contains(&index) {
            dp.forget_uplink(index)?;
            pass.repair("rekey", format!("forgot uplink #{index}, which is gone"));
        }
    }
    // The flows that left as an address the uplink no longer has end with their mappings:
    // their peers could never answer them again.
    let now = programs_now(dp)?;
    for (network, old, new) in moved {
        let ended = maps::delete_flows(dp.ebpf_mut(), now, |f| {
            f.reply.dst == old && f.original.src != old
        })?;
        pass.flows_ended += ended.flows as u64;
        pass.repair(
            "masquerade_address",
            format!(
                "network {network} masquerades as {new} now ({old} is gone); ended {} flows and \
                 {} mappings of {old}",
                ended.flows, ended.mappings
            ),
        );
    }
    Ok(())
}

/// The fast path's way into each container: its veth's ifindex, the bridge's MAC and MTU;
/// and no way in for an address no container holds.
fn endpoints(
    dp: &mut Dataplane,
    state: &crate::loader::model::State,
    links: &[Link],
    pass: &mut Pass,
) -> Result<()> {
    let endpoints: HashMap<Ipv4Addr, netfast_common::config::Endpoint> =
        maps::endpoints(dp.ebpf())?.into_iter().collect();
    let mut unknown: Vec<(&Ipv4Addr, &netfast_common::config::Endpoint)> = endpoints
        .iter()
        .filter(|(addr, _)| state.container_at(**addr).is_none())
        .collect();
    unknown.sort_by_key(|(addr, _)| **addr);
    for (&addr, ep) in unknown {
        dp.remove_endpoint(addr)?;
        pass.repair(
            "unknown_endpoint",
            Change::UnknownEndpointRemoved {
                addr,
                ifindex: ep.ifindex,
            }
            .to_string(),
        );
    }
    for n in state.networks.iter().filter(|n| n.backend == Backend::Ebpf) {
        let Some(b) = by_name(links, &n.bridge) else {
            continue;
        };
        for c in state.containers_of(&n.name) {
            let (Some(v), Some(ep)) = (by_name(links, &c.veth), endpoints.get(&c.ip)) else {
                continue;
            };
            let fresh = netfast_common::config::Endpoint {
                ifindex: v.index,
                gw_mac: b.mac.unwrap_or(ep.gw_mac),
                mtu: u16::try_from(b.mtu).unwrap_or(u16::MAX),
                ..*ep
            };
            if fresh != *ep {
                dp.set_endpoint(c.ip, &fresh)?;
                let mut what = Vec::new();
                if fresh.ifindex != ep.ifindex {
                    what.push(format!("veth #{} → #{}", ep.ifindex, fresh.ifindex));
                }
                if fresh.gw_mac != ep.gw_mac {
                    what.push(format!("bridge {} MAC {}", n.bridge, mac(&fresh.gw_mac)));
                }
                if fresh.mtu != ep.mtu {
                    what.push(format!("MTU {} → {}", ep.mtu, fresh.mtu));
                }
                pass.repair(
                    "rekey",
                    format!("fast path into container {}: {}", c.name, what.join(", ")),
                );
            }
        }
    }
    Ok(())
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The programs' clock: CLOCK_MONOTONIC seconds and what a test advanced it by (nothing, on
/// a host).
pub fn programs_now(dp: &Dataplane) -> Result<u32> {
    Ok(maps::monotonic_now().wrapping_add(dp.config()?.clock_advance))
}
