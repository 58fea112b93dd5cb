//! `container create` and `container rm`: a named namespace on a network's bridge, and its
//! removal with its publications and flows.

use std::net::Ipv4Addr;

use super::{
    Loader,
    apply::Ahead,
    change::Change,
    intent::{Intent, Mark, Object, Owner},
    ipam,
    model::{Backend, Container, ContainerSpec, Network, State, veth_name},
    netlink::{Link, Nl},
    nsfs,
    plumb::{self, ContainerPlumbing},
    state::Locked,
    transaction::{Step, creating, transaction},
    validate::{self},
};
use crate::{
    conntrack_filter::Filter,
    dataplane::Dataplane,
    error::{Error, Result},
    host::Host,
    maps::{self},
};

impl Loader {
    pub fn container_create(&self, spec: &ContainerSpec) -> Result<Vec<Change>> {
        self.changing("container create", true, |step, locked| {
            step.create_container(locked, spec)
        })
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
            if let Ok(inside) = self.netlink().namespace(&name) {
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
    pub(super) fn prepare_container(
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
        let ip = if let Some(ip) = spec.ip {
            ip
        } else {
            let seen = match &bridge {
                Some(bridge) => self.addresses_in_use(nl, state, &network, bridge)?,
                None => Vec::new(),
            };
            ipam::next_free(&network, state, &seen)?
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

    fn build_container(
        &self,
        nl: &Nl<'_>,
        state: &State,
        network: &Network,
        bridge: &Link,
        container: &Container,
        out: &mut Vec<Change>,
    ) -> Result<u64> {
        let (spec, ip, veth) = (container, container.ip, &container.veth);
        let mark = Mark::container(&self.host.key, &container.name);
        let netns_cookie = transaction(&self.host, nl, state, |undo| {
            let plumbed = plumb::container(
                self.netlink(),
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
            connect_endpoint(
                &self.host,
                nl,
                network,
                bridge,
                &plumbed.host_side,
                ip,
                plumbed.eth0.mac,
            )?;
            Ok(plumbed.netns_cookie)
        })?;
        out.push(Change::ContainerCreated {
            container: spec.name.clone(),
            network: network.name.clone(),
            ip,
            prefix: network.subnet.prefix_len(),
            veth: veth.clone(),
            gateway: network.gateway,
            mtu: bridge.mtu,
        });
        Ok(netns_cookie)
    }

    pub fn container_rm(&self, name: &str) -> Result<Vec<Change>> {
        self.changing("container rm", true, |step, locked| {
            let c = locked.state.known_container(name)?.clone();
            let command = format!("container rm {name}");
            locked.begin(Intent::removing(command, Object::Container(c.clone())))?;
            step.remove_container_and_publications(&mut locked.state, &c)
        })
    }
}

impl Step<'_> {
    /// Checks, records the intent, makes the container and adds it to the state; the caller
    /// saves it and finishes the intent.
    pub(super) fn create_container(
        &mut self,
        locked: &mut Locked,
        spec: &ContainerSpec,
    ) -> Result<()> {
        let (loader, nl) = (self.loader, self.nl);
        let (network, bridge, ip, veth) =
            loader.prepare_container(nl, &locked.state, spec, &Ahead::default())?;
        let bridge = bridge.expect("no earlier step");
        let mut container = Container {
            name: spec.name.clone(),
            network: network.name.clone(),
            ip,
            veth: veth.clone(),
            netns_cookie: None,
        };
        let command = format!("container create {}", spec.name);
        container.netns_cookie = Some(creating(
            locked,
            command,
            Object::Container(container.clone()),
            |state| loader.build_container(nl, state, &network, &bridge, &container, self.out),
        )?);
        locked.state.containers.push(container);
        Ok(())
    }

    /// Removes a container with the publications that lead to it, from the kernel and the
    /// state.
    pub(super) fn remove_container_and_publications(
        &mut self,
        state: &mut State,
        c: &Container,
    ) -> Result<()> {
        for p in publications_of(state, c) {
            self.loader.remove_publication(state, &p, self.out)?;
        }
        self.loader.remove_container(self.nl, state, c, self.out)?;
        state.containers.retain(|x| x.name != c.name);
        Ok(())
    }
}

/// Readies a container's veth (`host_side`, on `bridge`) for its network's backend: hairpin
/// mode for a fallback's hairpin NAT; for the eBPF dataplane, the fast path's entry, which
/// delivers straight into the container (its veth, `mac`, and the gateway's MAC as the
/// frame's source).
pub(super) fn connect_endpoint(
    host: &Host,
    nl: &Nl<'_>,
    network: &Network,
    bridge: &Link,
    host_side: &Link,
    ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
) -> Result<()> {
    if network.backend != Backend::Ebpf {
        return nl.set_hairpin(host_side, true);
    }
    // The bridge as it is now that the port has joined: a bridge without a MAC of its own
    // takes its first port's at the join, and `bridge` was read before it.
    let bridge = nl.link(&bridge.name)?.unwrap_or_else(|| bridge.clone());
    if let (Some(mac), Some(gw_mac), Some(mut dp)) =
        (mac, bridge.mac, Dataplane::open_existing(host)?)
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

impl Loader {
    /// Removes a container (its veth and namespace) and ends its flows: from it (masqueraded or
    /// not) and to it, in the eBPF dataplane or, for a network on a fallback backend, in the
    /// kernel's conntrack table. `state` still has the container's network.
    pub(super) fn remove_container(
        &self,
        nl: &Nl<'_>,
        state: &State,
        c: &Container,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        let host = &self.host;
        if let Some(mut dp) = Dataplane::open_existing(host)? {
            dp.remove_endpoint(c.ip)?;
        }
        if let Some(veth) = nl.link(&c.veth)? {
            nl.delete_link(&veth)?;
        }
        // A Docker endpoint's namespace is Docker's: its veth is all netfast made.
        if !state.docker.owns_container(&c.name) {
            self.remove_namespace(c)?;
        }
        out.push(Change::ContainerRemoved {
            container: c.name.clone(),
            ip: c.ip,
        });
        // Its veth is gone: no new flow of it can start.
        let filter = Filter::container(c.ip);
        let fallback = state
            .network(&c.network)
            .is_some_and(|n| n.backend != Backend::Ebpf);
        let ended = if fallback {
            crate::backend::delete_kernel_flows(state, &filter)?
        } else {
            match Dataplane::open_existing(host)? {
                Some(mut dp) => {
                    maps::delete_flows(dp.ebpf_mut(), maps::monotonic_now(), |f| filter.matches(f))?
                        .flows
                }
                None => 0,
            }
        };
        if ended > 0 {
            out.push(Change::ContainerFlowsEnded {
                container: c.name.clone(),
                flows: ended,
            });
        }
        Ok(())
    }

    /// Deletes container `c`'s namespace, if it is the one netfast made for it: the namespace
    /// of its name has the cookie recorded when it was made. One deleted by hand and made
    /// again since, by someone else, is theirs, with what they run in it: left alone, and said
    /// so. Without a recorded cookie (a container of a state written before netfast recorded
    /// it, or of a create killed before it saved), the namespace of its name goes only if it
    /// carries the container's mark (`lo`'s alias, set before the namespace had its name, or
    /// `eth0`'s, for one made by an older netfast); a file of its name with no namespace on it
    /// (a create killed before it mounted one) goes too.
    fn remove_namespace(&self, c: &Container) -> Result<()> {
        let now = nsfs::cookie(&c.name)?;
        let ours = match (c.netns_cookie, now) {
            (_, None) => true,
            (Some(made), Some(now)) => made == now,
            (None, Some(_)) => {
                let mark = Mark::container(&self.host.key, &c.name);
                // Not knowing is not "not ours": the error stops the command, and an
                // interrupted one's intent stays for the next.
                self.namespace_carries(&c.name, &mark)?
            }
        };
        if !ours {
            log::warn!(
                "namespace {} is not the one netfast made for container {} (made since, by \
                 someone else?): left alone; delete it with `ip netns del {}` if it is yours \
                 to delete",
                c.name,
                c.name,
                c.name
            );
            return Ok(());
        }
        nsfs::delete(&c.name).map_err(|source| Error::Io {
            context: format!("deleting namespace {}", c.name),
            source,
        })
    }
}
