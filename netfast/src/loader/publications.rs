//! `netfast publish`, `unpublish` and `publish ls`.

use ipnet::Ipv4Net;

use super::{
    Loader, caps,
    change::Change,
    intent::{Intent, Object},
    model::{Backend, State},
    netlink::Nl,
    nsfs,
    publish::{self, Publication, PublishSpec},
    sockets,
    state::Locked,
    validate::Invalid,
};
use crate::{
    dataplane::Dataplane,
    error::{Error, Result},
    host::Host,
    netfilter::sockdiag::{self, Connection},
};

/// Tells the dataplane the host's current addresses (ports published on every address are
/// reachable on each of them).
pub(super) fn refresh_host_addrs(host: &Host, nl: &Nl<'_>) -> Result<()> {
    if let Some(mut dp) = Dataplane::open_existing(host)? {
        dp.set_host_addrs(&nl.all_addresses()?)?;
    }
    Ok(())
}

impl Loader {
    pub fn publish(&self, network: &str, spec: &str, allow: &[Ipv4Net]) -> Result<Vec<Change>> {
        caps::require("publish", false)?;
        let nl = self.netlink().host()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let p = self.check_publication(&nl, &locked.state, network, spec, allow)?;
        self.publish_checked(&nl, &mut locked, p, &mut out)?;
        locked.save()?;
        locked.finish()?;
        Ok(out)
    }

    /// Records the intent and puts a checked publication in place and in the state; the
    /// caller saves the state and finishes the intent.
    pub(super) fn publish_checked(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        p: Publication,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        locked.begin(Intent::creating(
            format!("publish {} {}", p.network, p.spec),
            Object::Publication(p.clone()),
        ))?;
        match self.add_publication(nl, &locked.state, p, out) {
            Ok(p) => {
                locked.state.publications.push(p);
                Ok(())
            }
            Err(e) => {
                // All or nothing: it took out what it put in.
                locked.finish()?;
                Err(e)
            }
        }
    }

    /// Everything `publish` checks before it changes anything: the publication it makes.
    pub(super) fn check_publication(
        &self,
        nl: &Nl<'_>,
        state: &State,
        network: &str,
        spec: &str,
        allow: &[Ipv4Net],
    ) -> Result<Publication> {
        let parsed: PublishSpec = spec.parse()?;
        let p = publish::validate(network, &parsed, allow, state)?;
        if let Some(ip) = p.host_ip
            && !nl.all_addresses()?.contains(&ip)
        {
            return Err(Invalid(format!(
                "{ip} is not an address of {}; publish on one of its addresses, or on all (omit the address)",
                self.host.describe()
            ))
            .into());
        }
        Ok(p)
    }

    /// Puts a publication [`Loader::check_publication`] made in place (the dataplane's
    /// entries, or the fallback's rules).
    fn add_publication(
        &self,
        nl: &Nl<'_>,
        state: &State,
        p: Publication,
        out: &mut Vec<Change>,
    ) -> Result<Publication> {
        let network = p.network.as_str();
        let net = state.network(network).expect("validated");
        let (net_id, backend) = (net.id, net.backend);
        for l in sockets::listeners(p.proto, p.host_ports) {
            out.push(Change::HostPortShadowed {
                port: l.port,
                proto: p.proto,
                owners: l.owners,
            });
        }
        let mut stale = 0;
        if backend == Backend::Ebpf {
            let mut dp = Dataplane::open_existing(&self.host)?.ok_or_else(|| {
                Error::Settings(format!("network `{network}` has no dataplane; recreate it"))
            })?;
            dp.set_host_addrs(&nl.all_addresses()?)?;
            let owned: Vec<&Publication> = state
                .publications
                .iter()
                .filter(|q| state.network(&q.network).map(|n| n.backend) == Some(Backend::Ebpf))
                .collect();
            let pruned = dp.prune_publications(&owned)?;
            if pruned > 0 {
                out.push(Change::StalePublishPruned { entries: pruned });
            }
            dp.publish(&p, net_id)?;
        } else {
            let mut after = state.clone();
            after.publications.push(p.clone());
            crate::backend::sync(state, &after)?;
            // Flows the kernel tracked to these ports before (to a container that is gone,
            // or to the host itself) would go on matching: only new ones meet the new rule.
            stale = crate::backend::end_stale_flows(&p, &nl.all_addresses()?)?;
        }
        out.push(Change::Published {
            publication: p.clone(),
        });
        if stale > 0 {
            out.push(Change::StaleFlowsEnded {
                flows: stale,
                host_ports: p.host_ports.to_string(),
                proto: p.proto,
                container: p.container.clone(),
            });
        }
        Ok(p)
    }

    pub fn unpublish(&self, network: &str, spec: &str) -> Result<Vec<Change>> {
        caps::require("unpublish", false)?;
        let nl = self.netlink().host()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let canonical = spec.parse::<PublishSpec>()?.to_string();
        let Some(p) = locked.state.publication(network, &canonical).cloned() else {
            return Err(Error::Settings(format!(
                "network `{network}` does not publish `{canonical}` (see `netfast publish ls`)"
            )));
        };
        locked.begin(Intent::removing(
            format!("unpublish {network} {canonical}"),
            Object::Publication(p.clone()),
        ))?;
        let removed = self.remove_publication(&mut locked.state, &p, &mut out);
        super::transaction::conclude(&mut locked, removed)?;
        Ok(out)
    }

    pub(super) fn remove_publication(
        &self,
        state: &mut State,
        p: &Publication,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        let before = state.clone();
        state
            .publications
            .retain(|q| !(q.network == p.network && q.spec == p.spec));
        let mut ended = None;
        let ending = |c: &[Connection]| {
            let reset = end_connections(&before, p, c);
            ended = (!reset.is_empty()).then(|| Change::ConnectionsEnded {
                connections: reset.len(),
                container: p.container.clone(),
            });
            reset
        };
        let flows = if before.network(&p.network).map(|n| n.backend) == Some(Backend::Ebpf) {
            match Dataplane::open_existing(&self.host)? {
                Some(mut dp) => {
                    let subnet = before.network(&p.network).expect("its network").subnet;
                    dp.unpublish(p, subnet, ending)?
                }
                None => 0,
            }
        } else {
            crate::backend::sync(&before, state)?;
            crate::backend::end_flows(p, before.dataplane.timeouts.udp, ending)?
        };
        if flows > 0 {
            out.push(Change::PublicationFlowsEnded { flows });
        }
        out.extend(ended);
        out.push(Change::Unpublished {
            network: p.network.clone(),
            spec: p.spec.clone(),
        });
        Ok(())
    }

    pub fn publications(&self) -> Result<Vec<Publication>> {
        Ok(self.state()?.publications)
    }
}

/// Ends the container's side of the TCP connections through `p`, whose flows unpublishing it
/// is about to end (see [`crate::netfilter::sockdiag`]): without it, the container's next
/// segment would be masqueraded from the published port, and its client would go on reaching
/// it. The RST the kernel sends for each goes to the client through the flow, which still
/// translates. Only in a namespace netfast made (known by its cookie): a Docker container's
/// publications are revoked as it stops or leaves the network. A failure is logged, as the
/// publication is gone either way.
fn end_connections(state: &State, p: &Publication, connections: &[Connection]) -> Vec<Connection> {
    if connections.is_empty() {
        return Vec::new();
    }
    let container = state
        .containers
        .iter()
        .find(|c| c.network == p.network && c.ip == p.container_ip);
    let Some((name, cookie)) = container.and_then(|c| Some((c.name.as_str(), c.netns_cookie?)))
    else {
        if container.is_some() {
            // Docker's: it revokes a publication as the container stops or leaves the
            // network, and its connections end with it.
            log::debug!("{} is Docker's: its connections end with it", p.container);
        } else {
            log::warn!(
                "not ending {} TCP connection(s) through {} at {}'s sockets: no container \
                 netfast made has that address; it can go on reaching its clients until it \
                 closes them",
                connections.len(),
                p.spec,
                p.container
            );
        }
        return Vec::new();
    };
    match nsfs::within(name, cookie, || sockdiag::destroy_tcp(connections)) {
        Ok(nsfs::Within::Ran(ended)) => ended,
        // Its namespace is gone (an interrupted `container rm` deleted it): so are its
        // connections.
        Ok(nsfs::Within::Missing) => Vec::new(),
        Ok(nsfs::Within::Other) => {
            log::warn!(
                "not ending the TCP connections through {} in namespace {name}: it is not the \
                 one netfast made for container {}",
                p.spec,
                p.container
            );
            Vec::new()
        }
        Err(e) => {
            log::warn!(
                "could not end the TCP connections through {} at {name}'s sockets: {}",
                p.spec,
                crate::error::report(&e)
            );
            Vec::new()
        }
    }
}
