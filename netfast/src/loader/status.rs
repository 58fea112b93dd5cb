//! `network ls` and `container ls`: the state compared with the kernel, drift named.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netfast_common::Hook;
use serde::Serialize;

use super::{
    Loader,
    intent::{Intent, Object, Owner},
    model::{Backend, Container, Network, State},
    nsfs,
};
use crate::{dataplane::Dataplane, error::Result};

/// A row of `network ls`: the network as the state has it (or a placeholder for one it
/// lacks), and what the kernel says of it.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkStatus {
    #[serde(flatten)]
    pub network: Network,
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

/// A network row for something the state does not have.
fn unknown_row(name: &str, bridge: &str) -> NetworkStatus {
    NetworkStatus {
        network: Network {
            name: name.to_owned(),
            id: 0,
            subnet: Ipv4Net::default(),
            gateway: Ipv4Addr::UNSPECIFIED,
            bridge: bridge.to_owned(),
            uplink: "-".into(),
            adopted: false,
            adopted_ports: Vec::new(),
            masquerade: false,
            backend: Backend::Ebpf,
            route_localnet: false,
            hairpin_set: Vec::new(),
        },
        containers: 0,
        drift: Vec::new(),
    }
}

/// The row of network `name`, made from `known` (or as unknown, with `bridge`) when there is
/// none yet.
fn row<'a>(
    rows: &'a mut Vec<NetworkStatus>,
    name: &str,
    known: Option<&Network>,
    bridge: &str,
) -> &'a mut NetworkStatus {
    if let Some(i) = rows.iter().position(|r| r.network.name == name) {
        return &mut rows[i];
    }
    rows.push(match known {
        Some(n) => NetworkStatus {
            network: n.clone(),
            containers: 0,
            drift: Vec::new(),
        },
        None => unknown_row(name, bridge),
    });
    rows.last_mut().expect("just pushed")
}

/// What the next command that changes something does with what a dead command left.
const NEXT: &str = "the next netfast command that changes something (or `netfast down`)";

impl Loader {
    /// What an interrupted command (its intent) and links marked as netfast's that nothing
    /// knows add to `network ls`: rows for networks the state lacks, drift on the others.
    fn crash_drift(
        &self,
        nl: &super::netlink::Nl<'_>,
        state: &State,
        intent: Option<&Intent>,
        rows: &mut Vec<NetworkStatus>,
    ) -> Result<()> {
        if let Some(i) = intent {
            let who = format!("an interrupted `netfast {}`", i.command);
            // Host-wide changes with no network to name them on get a row of their own.
            let host_wide = i
                .create
                .iter()
                .chain(&i.remove)
                .any(|o| matches!(o, Object::Settings | Object::Everything));
            if host_wide && rows.is_empty() {
                rows.push(unknown_row("-", "-"));
            }
            for o in &i.create {
                match o {
                    Object::Network(n) if state.network(&n.name).is_none() => {
                        let present = nl.link(&n.bridge)?.is_some();
                        row(rows, &n.name, Some(n), &n.bridge).drift.push(format!(
                            "not in the state: {who} was creating it{}; {NEXT} removes it",
                            if present {
                                format!(" (bridge {} exists)", n.bridge)
                            } else {
                                String::new()
                            }
                        ));
                    }
                    Object::Container(c) if state.container(&c.name).is_none() => {
                        let r = row(rows, &c.network, state.network(&c.network), "-");
                        r.drift.push(format!(
                            "container {} ({}) is not in the state: {who} was creating it; \
                             {NEXT} removes its namespace and veth {}",
                            c.name, c.ip, c.veth
                        ));
                    }
                    Object::DockerEndpoint { container: c, .. }
                        if state.container(&c.name).is_none() =>
                    {
                        let r = row(rows, &c.network, state.network(&c.network), "-");
                        r.drift.push(format!(
                            "Docker endpoint {} ({}) is not in the state: {who} was creating \
                             it; {NEXT} removes its veth {}",
                            c.name, c.ip, c.veth
                        ));
                    }
                    Object::Publication(p)
                        if !state
                            .publications
                            .iter()
                            .any(|q| q.network == p.network && q.spec == p.spec) =>
                    {
                        let r = row(rows, &p.network, state.network(&p.network), "-");
                        r.drift.push(format!(
                            "publication {} is not in the state: {who} was making it; {NEXT} \
                             removes what it put in place",
                            p.spec
                        ));
                    }
                    Object::Settings => {
                        for r in rows.iter_mut() {
                            r.drift.push(format!(
                                "{who} was changing the dataplane settings: {NEXT} puts the \
                                 saved ones back"
                            ));
                        }
                    }
                    _ => {}
                }
            }
            for o in &i.remove {
                let (network, what) = match o {
                    Object::Network(n) => (n.name.clone(), format!("network {}", n.name)),
                    Object::Container(c) | Object::DockerEndpoint { container: c, .. } => {
                        (c.network.clone(), format!("container {}", c.name))
                    }
                    Object::Publication(p) => {
                        (p.network.clone(), format!("publication {}", p.spec))
                    }
                    Object::Everything => {
                        for r in rows.iter_mut() {
                            r.drift
                                .push(format!("{who} was removing everything: {NEXT} finishes"));
                        }
                        continue;
                    }
                    Object::Settings => continue,
                };
                let known = state.network(&network).cloned();
                row(rows, &network, known.as_ref(), "-").drift.push(format!(
                    "{what}: {who} was removing it; {NEXT} finishes the removal"
                ));
            }
        }
        let covered = |link: &str| {
            intent.is_some_and(|i| {
                i.create.iter().chain(&i.remove).any(|o| match o {
                    Object::Network(n) => n.bridge == link,
                    Object::Container(c) | Object::DockerEndpoint { container: c, .. } => {
                        c.veth == link
                    }
                    _ => false,
                })
            })
        };
        let links = nl.links()?;
        for (link, owner) in self.unknown_marked(nl, state)? {
            // A renamed link of the state's own: its row says what is missing.
            if covered(&link.name) || super::recover::renamed(state, &owner).is_some() {
                continue;
            }
            match owner {
                Owner::Network(name) => {
                    let r = row(rows, &name, None, &link.name);
                    if let Some((ip, prefix)) = nl.addresses(&link)?.first() {
                        r.network.gateway = *ip;
                        r.network.subnet = Ipv4Net::new(*ip, *prefix)
                            .map(|n| n.trunc())
                            .unwrap_or_default();
                    }
                    r.drift.push(format!(
                        "not in the state: bridge {} carries netfast's mark; {NEXT} removes it",
                        link.name
                    ));
                }
                Owner::Container(name) => {
                    let bridge = link
                        .controller
                        .and_then(|i| links.iter().find(|l| l.index == i))
                        .map(|l| l.name.clone());
                    let network = bridge
                        .as_ref()
                        .and_then(|b| state.networks.iter().find(|n| &n.bridge == b))
                        .map_or_else(|| "-".into(), |n| n.name.clone());
                    let known = state.network(&network).cloned();
                    row(
                        rows,
                        &network,
                        known.as_ref(),
                        bridge.as_deref().unwrap_or("-"),
                    )
                    .drift
                    .push(format!(
                        "container {name} is not in the state: veth {} carries netfast's \
                             mark; {NEXT} removes it and its namespace",
                        link.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fast path's entries for addresses no container of `state` holds (what the next
    /// command's sweep removes), as drift on the eBPF network whose subnet has the address,
    /// else on the first eBPF network.
    fn stray_endpoints(&self, state: &State, rows: &mut [NetworkStatus]) {
        // A dataplane this netfast cannot open (another layout, an upgrade to finish) is
        // the commands' to explain; `network ls` shows what it can.
        let entries = match Dataplane::open_existing(&self.host)
            .and_then(|dp| dp.map(|dp| crate::maps::endpoints(dp.ebpf())).transpose())
        {
            Ok(Some(entries)) => entries,
            Ok(None) => return,
            Err(e) => {
                log::debug!(
                    "not reading the fast path's endpoints: {}",
                    crate::error::report(&e)
                );
                return;
            }
        };
        let stray = state.stray_endpoints(entries);
        let ebpf = |r: &NetworkStatus| r.network.backend == Backend::Ebpf;
        for (addr, ep) in stray {
            let row = rows
                .iter()
                .position(|r| ebpf(r) && r.network.subnet.contains(&addr))
                .or_else(|| rows.iter().position(ebpf));
            if let Some(i) = row {
                rows[i].drift.push(format!(
                    "fast-path entry for {addr} (interface #{}) of no container of the state \
                     (a command killed before it saved?); {NEXT} removes it",
                    ep.ifindex
                ));
            }
        }
    }

    pub fn network_status(&self) -> Result<Vec<NetworkStatus>> {
        let locked = self.read()?;
        let (state, intent) = (&locked.state, locked.intent.as_ref());
        let nl = self.netlink().host()?;
        let mut out = Vec::new();
        // Whether each fallback's rules are in place: asked once per backend, not once per
        // network (iptables' answer takes a run of `iptables -C` for each of its jumps).
        let mut installed: Vec<(Backend, bool)> = Vec::new();
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
            let rules_in_place =
                if let Some((_, yes)) = installed.iter().find(|(b, _)| *b == n.backend) {
                    *yes
                } else {
                    let yes = crate::backend::installed(n.backend);
                    installed.push((n.backend, yes));
                    yes
                };
            if !rules_in_place {
                drift.push(format!(
                    "netfast's {} rules are missing (removed by hand?); recreate the network",
                    n.backend
                ));
            }
            out.push(NetworkStatus {
                network: n.clone(),
                containers: state.containers_of(&n.name).count(),
                drift,
            });
        }
        self.stray_endpoints(state, &mut out);
        self.crash_drift(&nl, state, intent, &mut out)?;
        Ok(out)
    }

    pub fn container_status(&self) -> Result<Vec<ContainerStatus>> {
        let locked = self.read()?;
        let (state, intent) = (&locked.state, locked.intent.as_ref());
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
            if docker.is_none() {
                let cookie = nsfs::cookie(&c.name);
                // (A namespace it cannot enter to read the cookie of is judged by its name.)
                let missing = match &cookie {
                    Ok(found) => found.is_none(),
                    Err(_) => !nsfs::exists(&c.name),
                };
                if missing {
                    drift.push(format!("namespace {} is missing", c.name));
                } else if let (Ok(Some(now)), Some(made)) = (cookie, c.netns_cookie)
                    && now != made
                {
                    drift.push(format!(
                        "namespace {} is not the one netfast made (deleted and made again \
                         since?): `container rm` leaves it alone",
                        c.name
                    ));
                }
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
        // What an interrupted command was creating, and veths marked as netfast's that
        // nothing knows.
        let mut unknown: Vec<(Container, String)> = Vec::new();
        if let Some(i) = intent {
            for o in &i.create {
                if let Object::Container(c) | Object::DockerEndpoint { container: c, .. } = o
                    && state.container(&c.name).is_none()
                {
                    unknown.push((
                        c.clone(),
                        format!(
                            "not in the state: an interrupted `netfast {}` was creating it; {NEXT} \
                             removes it",
                            i.command
                        ),
                    ));
                }
            }
        }
        for (link, owner) in self.unknown_marked(&nl, state)? {
            if super::recover::renamed(state, &owner).is_some() {
                continue;
            }
            if let Owner::Container(name) = owner
                && !unknown.iter().any(|(c, _)| c.veth == link.name)
            {
                let ip = self
                    .netlink()
                    .namespace(&name)
                    .and_then(|inside| inside.all_addresses())
                    .ok()
                    .and_then(|a| a.into_iter().find(|a| !a.is_loopback()))
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                unknown.push((
                    Container {
                        name: name.clone(),
                        network: "-".into(),
                        ip,
                        veth: link.name.clone(),
                        netns_cookie: None,
                    },
                    format!(
                        "not in the state: veth {} carries netfast's mark; {NEXT} removes it and \
                         its namespace",
                        link.name
                    ),
                ));
            }
        }
        for (c, why) in unknown {
            let mut drift = vec![why];
            let netns = nsfs::exists(&c.name).then(|| nsfs::path(&c.name).display().to_string());
            if netns.is_some() {
                drift.push(format!("namespace {} exists", c.name));
            }
            out.push(ContainerStatus {
                name: c.name,
                network: c.network,
                ip: c.ip,
                veth: c.veth,
                netns,
                docker_endpoint: None,
                drift,
            });
        }
        Ok(out)
    }
}

fn attached(interface: &str, hook: Hook) -> bool {
    Dataplane::tcx_programs(interface, hook).is_ok_and(|p| p.iter().any(|n| n == hook.name()))
}
