//! `network ls` and `container ls`: the state compared with the kernel, drift named.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netfast_common::Hook;
use serde::Serialize;

use super::{Loader, model::Backend, nsfs};
use crate::{dataplane::Dataplane, error::Result};

#[derive(Clone, Debug, Serialize)]
pub struct NetworkStatus {
    pub name: String,
    pub id: u16,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub uplink: String,
    pub adopted: bool,
    pub masquerade: bool,
    /// What serves it: ebpf, nftables or iptables.
    pub backend: Backend,
    pub containers: usize,
    /// What the kernel lacks of what the state says; empty when they agree.
    pub drift: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub veth: String,
    /// Its network namespace: `/run/netns/<name>` for the command line's containers; for a
    /// Docker endpoint, Docker's sandbox while the container runs (else none).
    pub netns: Option<String>,
    /// Docker's endpoint ID, for a container Docker made through `netfast docker-plugin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_endpoint: Option<String>,
    pub drift: Vec<String>,
}

impl Loader {
    pub fn network_status(&self) -> Result<Vec<NetworkStatus>> {
        let state = self.state()?;
        let nl = self.netlink().host()?;
        let mut out = Vec::new();
        for n in &state.networks {
            let mut drift = Vec::new();
            match nl.link(&n.bridge)? {
                None => drift.push(format!("bridge {} is missing", n.bridge)),
                Some(b) => {
                    if !nl.addresses(&b)?.iter().any(|(a, _)| *a == n.gateway) {
                        drift.push(format!("gateway {} is not on {}", n.gateway, n.bridge));
                    }
                    if !b.up {
                        drift.push(format!("bridge {} is down", n.bridge));
                    }
                    for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
                        if n.backend == Backend::Ebpf && !attached(&n.bridge, hook) {
                            drift.push(format!("{} is not attached to {}", hook.name(), n.bridge));
                        }
                    }
                }
            }
            if nl.link(&n.uplink)?.is_none() {
                drift.push(format!("uplink {} is missing", n.uplink));
            } else {
                for hook in [Hook::UplinkIngress, Hook::UplinkEgress] {
                    if n.backend == Backend::Ebpf && !attached(&n.uplink, hook) {
                        drift.push(format!("{} is not attached to {}", hook.name(), n.uplink));
                    }
                }
            }
            if n.backend != Backend::Ebpf && !crate::backend::installed(n.backend) {
                drift.push(format!(
                    "netfast's {} rules are missing (removed by hand?); recreate the network",
                    n.backend
                ));
            }
            out.push(NetworkStatus {
                name: n.name.clone(),
                id: n.id,
                subnet: n.subnet,
                gateway: n.gateway,
                bridge: n.bridge.clone(),
                uplink: n.uplink.clone(),
                adopted: n.adopted,
                masquerade: n.masquerade,
                backend: n.backend,
                containers: state.containers_of(&n.name).count(),
                drift,
            });
        }
        Ok(out)
    }

    pub fn container_status(&self) -> Result<Vec<ContainerStatus>> {
        let state = self.state()?;
        let nl = self.netlink().host()?;
        let mut out = Vec::new();
        for c in &state.containers {
            let mut drift = Vec::new();
            let bridge = state
                .network(&c.network)
                .and_then(|n| nl.link(&n.bridge).ok().flatten());
            match nl.link(&c.veth)? {
                None => drift.push(format!("veth {} is missing", c.veth)),
                Some(v)
                    if bridge
                        .as_ref()
                        .is_some_and(|b| v.controller != Some(b.index)) =>
                {
                    drift.push(format!("veth {} is not on the network's bridge", c.veth));
                }
                Some(_) => {}
            }
            // A Docker endpoint's namespace is Docker's (and may live in dockerd's own mount
            // namespace): its veth, gone with the namespace, is what netfast can check.
            let docker = state.docker.endpoint_of(&c.name);
            if docker.is_none() && !nsfs::exists(&c.name) {
                drift.push(format!("namespace {} is missing", c.name));
            }
            out.push(ContainerStatus {
                name: c.name.clone(),
                network: c.network.clone(),
                ip: c.ip,
                veth: c.veth.clone(),
                netns: match docker {
                    Some(ep) => ep.sandbox.clone(),
                    None => Some(nsfs::path(&c.name).display().to_string()),
                },
                docker_endpoint: docker.map(|ep| ep.id.clone()),
                drift,
            });
        }
        Ok(out)
    }
}

fn attached(interface: &str, hook: Hook) -> bool {
    Dataplane::tcx_programs(interface, hook).is_ok_and(|p| p.iter().any(|n| n == hook.name()))
}
