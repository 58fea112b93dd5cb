//! Networks and containers that Docker makes through `netfast docker-plugin`: the same records
//! as the command line's, in the same state file, under the same lock, with Docker's IDs for
//! them kept beside (`docker` in the state).
//!
//! - A Docker network is a netfast network (bridge, programs or rules, masquerade), named by
//!   `-o name=…` or `docker-<first 12 characters of its ID>`.
//! - A Docker endpoint is a container record whose namespace is Docker's: netfast creates its
//!   veth pair in the host namespace, the host end on the network's bridge and the other end
//!   (`nfd…`) handed to Docker, which moves it into the container's namespace (its sandbox)
//!   as `eth0` and gives it the address Docker's IPAM chose. The record is named
//!   `docker-<first 12 characters of the endpoint ID>` (`docker network inspect` shows the
//!   IDs); netfast never creates, enters or deletes Docker's namespace.
//!
//! The records are only the IDs: whether a network or container exists is what the state's
//! own lists say, so a record whose object the command line removed is ignored, and dropped
//! at the next change.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{
    Loader, caps,
    change::Change,
    intent::{Intent, Mark, Object},
    model::{Container, ContainerSpec, Network, NetworkSpec, State, veth_name},
    state::Locked,
    validate::{self, Invalid},
};
use crate::{
    dataplane::Dataplane,
    error::{Error, Result},
};

/// Docker's IDs for what it made through the plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerObjects {
    #[serde(default)]
    pub networks: Vec<DockerNetwork>,
    #[serde(default)]
    pub endpoints: Vec<DockerEndpoint>,
}

/// A Docker network that a netfast network serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    /// Docker's network ID.
    pub id: String,
    /// The netfast network.
    pub network: String,
}

/// A Docker endpoint: a container record on the network of `network_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    /// Docker's endpoint ID.
    pub id: String,
    /// Docker's ID of its network.
    pub network_id: String,
    /// The container record (`docker-<first 12 of the ID>`).
    pub container: String,
    /// The end of the veth pair handed to Docker: named so in the host namespace until Docker
    /// moves it into the sandbox (and after Docker gives it back on leave).
    pub peer: String,
    /// The MAC address of that end (the fast path writes it into frames for the container).
    pub mac: String,
    /// Docker's namespace for the container (its sandbox key) while it is joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

impl DockerObjects {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.endpoints.is_empty()
    }

    pub fn network(&self, id: &str) -> Option<&DockerNetwork> {
        self.networks.iter().find(|n| n.id == id)
    }

    pub fn endpoint(&self, id: &str) -> Option<&DockerEndpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// The endpoint whose container record is `container`.
    pub fn endpoint_of(&self, container: &str) -> Option<&DockerEndpoint> {
        self.endpoints.iter().find(|e| e.container == container)
    }

    /// Whether netfast network `name` serves a Docker network.
    pub fn owns_network(&self, name: &str) -> bool {
        self.networks.iter().any(|n| n.network == name)
    }

    /// Whether container record `name` is a Docker endpoint.
    pub fn owns_container(&self, name: &str) -> bool {
        self.endpoint_of(name).is_some()
    }
}

/// Drops the records whose netfast network or container is gone (removed by the command
/// line), so that they never point at a later object of the same name.
fn prune(state: &mut State) {
    let (networks, containers) = (state.networks.clone(), state.containers.clone());
    state
        .docker
        .networks
        .retain(|d| networks.iter().any(|n| n.name == d.network));
    state
        .docker
        .endpoints
        .retain(|e| containers.iter().any(|c| c.name == e.container));
}

/// Refuses what is not a Docker ID (hex, at least 12 characters): IDs become names.
pub fn check_id(what: &str, id: &str) -> Result<(), Invalid> {
    if id.len() >= 12 && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "Docker's {what} ID {id:?} is not 12 to 64 hexadecimal digits"
        )))
    }
}

/// The container record of endpoint `id`: `docker-` and its first 12 characters.
pub fn endpoint_container_name(id: &str) -> String {
    format!("docker-{}", &id[..12.min(id.len())])
}

/// The default netfast network name of Docker network `id`.
pub fn default_network_name(id: &str) -> String {
    format!("docker-{}", &id[..12.min(id.len())])
}

/// The default bridge of Docker network `id`: `nf-` and its first 12 characters (15 bytes).
pub fn default_bridge_name(id: &str) -> String {
    format!("nf-{}", &id[..12.min(id.len())])
}

/// The name of the veth end handed to Docker, beside host end `veth` (`nfv…` → `nfd…`).
pub fn peer_name(veth: &str) -> String {
    format!("nfd{}", veth.strip_prefix("nfv").unwrap_or(veth))
}

/// The MAC Docker's bridge driver would give `ip` (02:42 and the address), used when Docker
/// asks for none: stable for an address, and never a multicast one.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], Invalid> {
    let bad = || {
        Invalid(format!(
            "{text:?} is not a MAC address like 02:42:ac:12:00:02"
        ))
    };
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| bad())?;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(Invalid(format!(
            "{text} is a multicast or zero MAC address; a container's must be unicast"
        )));
    }
    Ok(mac)
}

/// The netfast network that serves Docker network `id`.
fn network_of(state: &State, id: &str) -> Result<Network> {
    state
        .docker
        .network(id)
        .and_then(|d| state.network(&d.network))
        .cloned()
        .ok_or_else(|| {
            Error::Settings(format!(
                "Docker network {id} has no netfast network (removed with `netfast network rm` \
                 or `netfast down`?); remove it (`docker network rm`) and create it again"
            ))
        })
}

impl Loader {
    /// Creates the netfast network for Docker network `docker_id` (nothing when it exists).
    pub fn docker_network_create(
        &self,
        spec: &NetworkSpec,
        docker_id: &str,
    ) -> Result<Vec<Change>> {
        caps::require("docker network create", true)?;
        check_id("network", docker_id)?;
        let nl = self.netlink().host()?;
        // As `network create`: what an interrupted command left is converged first.
        let (mut locked, mut out) = self.lock(&nl)?;
        if let Ok(n) = network_of(&locked.state, docker_id) {
            return Ok(vec![Change::DockerNetworkExists {
                network: n.name.clone(),
                docker_network: docker_id.to_owned(),
            }]);
        }
        prune(&mut locked.state);
        self.step(&nl, &mut out).create_network(&mut locked, spec)?;
        out.push(Change::DockerNetworkServed {
            network: spec.name.clone(),
            docker_network: docker_id.to_owned(),
        });
        locked.state.docker.networks.retain(|d| d.id != docker_id);
        locked.state.docker.networks.push(DockerNetwork {
            id: docker_id.to_owned(),
            network: spec.name.clone(),
        });
        locked.save()?;
        locked.finish()?;
        Ok(out)
    }

    /// Removes the netfast network of Docker network `docker_id`, with the endpoints Docker
    /// left on it; nothing when there is none. Containers the command line put on it stop it.
    pub fn docker_network_rm(&self, docker_id: &str) -> Result<Vec<Change>> {
        caps::require("docker network rm", false)?;
        // Not through `lock`: its sweeps change the host before this delete's intent is
        // written, and Docker does not call a failed delete again.
        let mut locked = Locked::acquire(&self.host, true)?;
        let nl = self.netlink().host()?;
        let mut out = Vec::new();
        // What an interrupted command left (another delete cut short, say) is completed
        // first, as `lock` would; where it cannot be, this delete goes on all the same
        // (Docker forgets the network whatever netfast answers).
        if let Err(e) = self.complete_interrupted(&nl, &mut locked, &mut out) {
            log::warn!(
                "{}; deleting Docker network {docker_id} all the same",
                crate::error::report(&e)
            );
            // The state as saved, not as the failed completion left it in memory.
            drop(locked);
            locked = Locked::acquire(&self.host, true)?;
        }
        let Ok(network) = network_of(&locked.state, docker_id) else {
            locked.state.docker.networks.retain(|d| d.id != docker_id);
            prune(&mut locked.state);
            locked.save()?;
            out.push(Change::DockerNetworkUnknown {
                docker_network: docker_id.to_owned(),
            });
            return Ok(out);
        };
        let (docker, others): (Vec<Container>, Vec<Container>) = locked
            .state
            .containers_of(&network.name)
            .cloned()
            .partition(|c| locked.state.docker.owns_container(&c.name));
        if !others.is_empty() {
            return Err(Error::Settings(format!(
                "network {} still has containers made with `netfast container create`: {}; \
                 remove them first (`netfast container rm …`)",
                network.name,
                others
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // The intent, before the first change, makes the next command of any kind finish
        // a delete cut short. One left by a command netfast could not complete is not
        // written over (it is all that remembers that command): this delete then goes on
        // without one.
        let ours = locked.intent.is_none();
        if ours {
            let command = format!("docker network rm {docker_id}");
            locked.begin(Intent::removing(command, Object::Network(network.clone())))?;
        }
        let done = (|| -> Result<()> {
            for c in &docker {
                self.step(&nl, &mut out)
                    .remove_container_and_publications(&mut locked.state, c)?;
                locked.save()?;
            }
            self.step(&nl, &mut out)
                .remove_network(&mut locked.state, &network)?;
            locked.state.docker.networks.retain(|d| d.id != docker_id);
            prune(&mut locked.state);
            locked.save()
        })();
        // Failed, the intent stays too: Docker forgets the network all the same, and the
        // next command finishes its removal.
        done?;
        if ours {
            locked.finish()?;
        }
        Ok(out)
    }

    /// Creates endpoint `endpoint_id` of Docker network `network_id` at `ip`: a veth pair,
    /// the host end on the bridge, the other end for Docker to move into the container. With
    /// no `mac`, the end gets [`mac_for`] `ip`. Returns the record (the existing one when
    /// Docker asks again).
    pub fn docker_endpoint_create(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ip: Ipv4Addr,
        mac: Option<[u8; 6]>,
    ) -> Result<(DockerEndpoint, Vec<Change>)> {
        caps::require("docker endpoint create", false)?;
        check_id("endpoint", endpoint_id)?;
        // Through `lock`, as the command line's commands: what a plugin killed in an earlier
        // call left (a marked veth, a fast-path entry of no container) goes first.
        let nl = self.netlink().host()?;
        let (mut locked, _) = self.lock(&nl)?;
        if let Some(ep) = locked.state.docker.endpoint(endpoint_id)
            && locked.state.container(&ep.container).is_some()
        {
            return Ok((
                ep.clone(),
                vec![Change::DockerEndpointExists {
                    container: ep.container.clone(),
                }],
            ));
        }
        prune(&mut locked.state);
        let network = network_of(&locked.state, network_id)?;
        let mut done = Vec::new();
        // An endpoint whose veth is gone lost its container's namespace (the pair dies with
        // it) without Docker deleting it — a dockerd that could not restore a sandbox forgets
        // its endpoints unannounced. An endpoint at the address Docker's IPAM gives this one
        // was deleted by Docker, which does not retry a DeleteEndpoint that failed (a plugin
        // killed in it): it released the address. Both go first.
        let dead: Vec<(Container, Change)> = locked
            .state
            .containers_of(&network.name)
            .filter(|c| locked.state.docker.owns_container(&c.name))
            .filter_map(|c| {
                let gone = if c.ip == ip {
                    Change::DockerEndpointReleased {
                        container: c.name.clone(),
                        ip,
                    }
                } else if matches!(nl.link(&c.veth), Ok(None)) {
                    Change::DockerEndpointLost {
                        container: c.name.clone(),
                        veth: c.veth.clone(),
                    }
                } else {
                    return None;
                };
                Some((c.clone(), gone))
            })
            .collect();
        for (c, gone) in &dead {
            done.push(gone.clone());
            self.step(&nl, &mut done)
                .remove_container_and_publications(&mut locked.state, c)?;
            prune(&mut locked.state);
            locked.save()?;
        }
        let name = endpoint_container_name(endpoint_id);
        validate::container(
            &ContainerSpec {
                name: name.clone(),
                network: network.name.clone(),
                ip: Some(ip),
            },
            &locked.state,
        )?;
        let bridge = nl.link(&network.bridge)?.ok_or_else(|| {
            Error::Settings(format!(
                "bridge {} of network `{}` is missing (deleted by hand?); remove the Docker \
                 network and create it again",
                network.bridge, network.name
            ))
        })?;
        let mac = mac.unwrap_or_else(|| mac_for(ip));
        let veth = veth_name(&name);
        let peer = peer_name(&veth);
        if let Some(other) = locked.state.containers.iter().find(|c| c.veth == veth) {
            return Err(Error::Settings(format!(
                "veth name {veth} of endpoint {name} is taken by container `{}`; remove it \
                 (`netfast container rm {}`)",
                other.name, other.name
            )));
        }
        let ep = DockerEndpoint {
            id: endpoint_id.to_owned(),
            network_id: network_id.to_owned(),
            container: name.clone(),
            peer: peer.clone(),
            mac: format_mac(mac),
            sandbox: None,
        };
        let container = Container {
            name: name.clone(),
            network: network.name.clone(),
            ip,
            veth: veth.clone(),
            netns_cookie: None,
        };
        // The intent first: a plugin killed after it made the pair, before the pair carries
        // its mark, leaves links that only the intent names, and Docker may never ask for
        // this endpoint again.
        locked.begin(Intent::creating(
            format!("docker-plugin (CreateEndpoint of {name})"),
            Object::DockerEndpoint {
                container: container.clone(),
                endpoint: ep.clone(),
            },
        ))?;
        // The names come from the endpoint's ID: links of these names, which no container
        // record owns, are what an attempt at this same endpoint left when it was cut short.
        let remove_pair = || -> Result<()> {
            for leftover in [&veth, &peer] {
                if let Some(link) = nl.link(leftover)? {
                    nl.delete_link(&link)?;
                }
            }
            Ok(())
        };
        let host_side = match remove_pair().and_then(|()| nl.add_veth_pair(&veth, &peer, Some(mac)))
        {
            Ok(link) => link,
            Err(e) => {
                // What could not be removed stays named by the intent, for the next call.
                if remove_pair().is_ok() {
                    locked.finish()?;
                }
                return Err(e);
            }
        };
        let plumbed = (|| -> Result<()> {
            // Marked as the command line's containers are: a pair a sweep finds (after a
            // crash that also lost the intent) is recognised as this host's.
            nl.set_alias(&host_side, &Mark::container(&self.host.key, &name))?;
            let peer_link = nl
                .link(&peer)?
                .ok_or_else(|| Error::NoInterface(peer.clone()))?;
            nl.set_mtu(&host_side, bridge.mtu)?;
            nl.set_mtu(&peer_link, bridge.mtu)?;
            nl.set_controller(&host_side, &bridge)?;
            nl.set_up(&host_side)?;
            // As for the CLI's containers: hairpin, or the fast path's entry.
            super::containers::connect_endpoint(
                &self.host,
                &nl,
                &network,
                &bridge,
                &host_side,
                ip,
                Some(mac),
            )
        })();
        locked.state.containers.push(container);
        locked.state.docker.endpoints.push(ep.clone());
        if let Err(e) = plumbed.and_then(|()| locked.save()) {
            // Undone as far as it can be; the error that stopped it is the one to report.
            // What could not be undone stays named by the intent, for the next call.
            let undone = (|| -> Result<()> {
                if let Some(mut dp) = Dataplane::open_existing(&self.host)? {
                    dp.remove_endpoint(ip)?;
                }
                nl.delete_link(&host_side)
            })();
            locked.state.containers.retain(|c| c.name != name);
            locked
                .state
                .docker
                .endpoints
                .retain(|d| d.id != endpoint_id);
            if undone.is_ok() {
                let _ = locked.finish();
            }
            return Err(e);
        }
        locked.finish()?;
        done.push(Change::DockerEndpointCreated {
            container: name.clone(),
            network: network.name.clone(),
            ip,
            prefix: network.subnet.prefix_len(),
            veth: veth.clone(),
            peer: peer.clone(),
            mac: format_mac(mac),
        });
        Ok((ep, done))
    }

    /// Records that endpoint `endpoint_id` joined Docker's namespace `sandbox`; returns the
    /// endpoint and its network (for the interface name and gateway Docker is told).
    pub fn docker_endpoint_join(
        &self,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<(DockerEndpoint, Network)> {
        caps::require("docker join", false)?;
        let mut locked = Locked::acquire(&self.host, true)?;
        let ep = live_endpoint(&locked.state, endpoint_id)?;
        let network = network_of(&locked.state, &ep.network_id)?;
        let nl = self.netlink().host()?;
        if nl.link(&ep.peer)?.is_none() {
            return Err(Error::Settings(format!(
                "interface {} of endpoint {} is gone (deleted by hand?); remove the container \
                 and start it again",
                ep.peer, ep.container
            )));
        }
        let joined = DockerEndpoint {
            sandbox: (!sandbox.is_empty()).then(|| sandbox.to_owned()),
            ..ep
        };
        set_endpoint(&mut locked.state, &joined);
        locked.save()?;
        Ok((joined, network))
    }

    /// Records that endpoint `endpoint_id` left its sandbox (Docker hands the interface back
    /// to the host namespace; it goes with the endpoint).
    pub fn docker_endpoint_leave(&self, endpoint_id: &str) -> Result<()> {
        caps::require("docker leave", false)?;
        let mut locked = Locked::acquire(&self.host, true)?;
        if let Ok(ep) = live_endpoint(&locked.state, endpoint_id) {
            set_endpoint(
                &mut locked.state,
                &DockerEndpoint {
                    sandbox: None,
                    ..ep
                },
            );
            locked.save()?;
        }
        Ok(())
    }

    /// Removes endpoint `endpoint_id`: its publications, veth pair and flows, as `container
    /// rm` does; nothing when it is gone already.
    pub fn docker_endpoint_rm(&self, endpoint_id: &str) -> Result<Vec<Change>> {
        caps::require("docker endpoint rm", false)?;
        check_id("endpoint", endpoint_id)?;
        let nl = self.netlink().host()?;
        // Docker does not stop at a failed delete: it hands the address out again. What an
        // interrupted command left is recovered first where it can be, and never stops the
        // endpoint's own removal.
        let mut locked = match self.lock(&nl) {
            Ok((locked, _)) => locked,
            Err(e) => {
                log::warn!(
                    "{}; removing endpoint {endpoint_id} all the same",
                    crate::error::report(&e)
                );
                Locked::acquire(&self.host, true)?
            }
        };
        let mut out = Vec::new();
        if let Ok(ep) = live_endpoint(&locked.state, endpoint_id) {
            let c = locked
                .state
                .container(&ep.container)
                .cloned()
                .expect("a live endpoint has its container");
            self.step(&nl, &mut out)
                .remove_container_and_publications(&mut locked.state, &c)?;
        } else {
            // A create cut short before it saved leaves links of the endpoint's names.
            let veth = veth_name(&endpoint_container_name(endpoint_id));
            let owned = locked.state.containers.iter().any(|c| c.veth == veth);
            if !owned && let Some(link) = nl.link(&veth)? {
                nl.delete_link(&link)?;
                out.push(Change::StaleVethDeleted { veth });
            }
        }
        locked
            .state
            .docker
            .endpoints
            .retain(|e| e.id != endpoint_id);
        prune(&mut locked.state);
        locked.save()?;
        Ok(out)
    }
}

/// The endpoint `id` whose container record exists.
fn live_endpoint(state: &State, id: &str) -> Result<DockerEndpoint> {
    state
        .docker
        .endpoint(id)
        .filter(|ep| state.container(&ep.container).is_some())
        .cloned()
        .ok_or_else(|| {
            Error::Settings(format!(
                "netfast has no endpoint {id} (removed with `netfast container rm` or `netfast \
                 down`?); remove the container (`docker rm -f`) and start it again"
            ))
        })
}

fn set_endpoint(state: &mut State, ep: &DockerEndpoint) {
    if let Some(e) = state.docker.endpoints.iter_mut().find(|e| e.id == ep.id) {
        *e = ep.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_docker_ids() {
        let id = "5d1c07b2e9a1f00d5d1c07b2e9a1f00d5d1c07b2e9a1f00d5d1c07b2e9a1f00d";
        assert!(check_id("endpoint", id).is_ok());
        assert_eq!(endpoint_container_name(id), "docker-5d1c07b2e9a1");
        assert_eq!(default_bridge_name(id), "nf-5d1c07b2e9a1");
        assert!(default_bridge_name(id).len() <= 15);
        let veth = veth_name(&endpoint_container_name(id));
        let peer = peer_name(&veth);
        assert!(peer.starts_with("nfd") && peer.len() == veth.len() && peer != veth);
        assert!(validate::interface_name("peer", &peer).is_ok());
        assert!(validate::object_name("container", &endpoint_container_name(id)).is_ok());
        for bad in [
            "",
            "abc",
            "../../etc/passwd",
            "5d1c07b2e9a1 x",
            &"a".repeat(65),
        ] {
            assert!(check_id("endpoint", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn macs_parse_and_print() {
        let ip: Ipv4Addr = "172.18.0.2".parse().unwrap();
        assert_eq!(format_mac(mac_for(ip)), "02:42:ac:12:00:02");
        assert_eq!(parse_mac("02:42:ac:12:00:02").unwrap(), mac_for(ip));
        for bad in [
            "",
            "02:42:ac:12:00",
            "02:42:ac:12:00:02:03",
            "zz:42:ac:12:00:02",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_mac("01:00:5e:00:00:01")
                .unwrap_err()
                .0
                .contains("multicast")
        );
    }

    #[test]
    fn records_of_removed_objects_are_pruned() {
        let mut s = State::default();
        s.docker.networks.push(DockerNetwork {
            id: "a".repeat(64),
            network: "gone".into(),
        });
        s.docker.endpoints.push(DockerEndpoint {
            id: "b".repeat(64),
            network_id: "a".repeat(64),
            container: "docker-bbbbbbbbbbbb".into(),
            peer: "nfd00000000".into(),
            mac: "02:42:ac:12:00:02".into(),
            sandbox: None,
        });
        assert!(!s.docker.is_empty());
        prune(&mut s);
        assert!(s.docker.is_empty());
    }
}
