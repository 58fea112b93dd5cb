//! Backends: what translates and filters a network's traffic. The eBPF dataplane
//! ([`crate::dataplane`]) is the default; on hosts where eBPF cannot be used, netfast writes
//! the same behaviour as its own nftables table (`ip netfast`) or its own iptables chains
//! (`NETFAST-…`), never touching anyone else's rules.
//!
//! A fallback's rules are a function of the state: every change to networks or publications
//! re-renders them from the state and replaces them atomically ([`sync`]), so applying twice
//! changes nothing and removing the last network removes every rule.

mod iptables;
mod nftables;

use std::collections::HashMap;

use netfast_common::conntrack::{PROTO_TCP, PROTO_UDP};

use crate::{
    error::{Error, Result},
    loader::model::{Backend, BackendChoice, State},
    netfilter::{
        Counts, ctnetlink,
        render_ipt::ipt_raw_counter,
        rules::{Rules, Way, net_counter},
        sockdiag::Connection,
    },
};

/// Why `backend` cannot serve a network on this host, if it cannot.
pub fn unusable(backend: Backend) -> Option<String> {
    match backend {
        Backend::Ebpf => crate::doctor::ebpf_usable().err(),
        Backend::Nftables => nftables::unusable()
            .map(|e| format!("nftables is not usable: {}", crate::error::report(&e))),
        Backend::Iptables => iptables::unusable()
            .map(|e| format!("iptables is not usable: {}", crate::error::report(&e))),
    }
}

/// The backend for `choice`: the named one if it works here, or for `auto` the first of
/// eBPF, nftables, iptables that does.
pub fn resolve(choice: BackendChoice) -> Result<Backend> {
    resolve_with(choice, unusable)
}

/// [`resolve`] for a network whose uplink the eBPF dataplane cannot serve when `no_ebpf`
/// says why (a layer-3 uplink): `auto` passes over eBPF, and asking for it is refused.
pub fn resolve_for_uplink(choice: BackendChoice, no_ebpf: Option<String>) -> Result<Backend> {
    match no_ebpf {
        None => resolve(choice),
        Some(why) if choice == BackendChoice::Ebpf => {
            Err(Error::Settings(format!("--backend ebpf: {why}")))
        }
        Some(why) => resolve_with(choice, |b| match b {
            Backend::Ebpf => Some(why.clone()),
            _ => unusable(b),
        }),
    }
}

fn resolve_with(
    choice: BackendChoice,
    unusable: impl Fn(Backend) -> Option<String>,
) -> Result<Backend> {
    if let Some(b) = choice.named() {
        return match unusable(b) {
            None => Ok(b),
            Some(why) => Err(Error::Settings(format!(
                "--backend {b}: {why}; run `netfast doctor` for the fixes, or pick another \
                 backend (--backend auto picks one that works)"
            ))),
        };
    }
    let mut reasons = Vec::new();
    for b in [Backend::Ebpf, Backend::Nftables, Backend::Iptables] {
        match unusable(b) {
            None => return Ok(b),
            Some(why) => reasons.push(format!("{b}: {why}")),
        }
    }
    Err(Error::Settings(format!(
        "no backend works on this host ({}); run `netfast doctor`",
        reasons.join("; ")
    )))
}

/// Makes the fallback backends' rules match `after`: netfast's nftables table and iptables
/// chains hold exactly what the networks they serve need (and vanish when they serve none),
/// and the bridges they serve let the host's 127.0.0.1 clients through. A backend that serves
/// no network in `before` nor in `after` is not touched at all: listing iptables rules can
/// load netfilter modules and hook them into the namespace, which an eBPF-only host must not
/// pay for.
pub fn sync(before: &State, after: &State) -> Result<()> {
    for backend in [Backend::Nftables, Backend::Iptables] {
        let serves = |s: &State| s.networks.iter().any(|n| n.backend == backend);
        if !serves(before) && !serves(after) {
            continue;
        }
        let rules = Rules::of(after, backend);
        // Every name was validated where it entered; a rule is never written with one that
        // was not, whatever path led here.
        rules.check().map_err(Error::from)?;
        for bridge in rules.bridges() {
            set_route_localnet(bridge, true)?;
        }
        // Bridges this backend no longer serves (their network removed, or moved to another
        // backend) get their own setting back, if they are still there.
        for n in before.networks.iter().filter(|n| n.backend == backend) {
            let still = after
                .networks
                .iter()
                .any(|a| a.bridge == n.bridge && a.backend != Backend::Ebpf);
            if !still && route_localnet_of(&n.bridge) && !n.route_localnet {
                set_route_localnet(&n.bridge, false)?;
            }
        }
        match backend {
            Backend::Nftables => nftables::sync(&rules)?,
            Backend::Iptables => iptables::sync(&rules)?,
            Backend::Ebpf => unreachable!(),
        }
        if !rules.is_empty() {
            // Packet and byte counts in `netfast conntrack list`, as the eBPF dataplane
            // gives them. Best effort: without it the flows are listed without counts.
            let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1");
        }
    }
    Ok(())
}

/// On: lets packets from 127.0.0.0/8 leave through `bridge` (they are masqueraded on the
/// way): what Docker sets for the host's clients of 127.0.0.1 without its userland proxy.
fn set_route_localnet(bridge: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&path, if on { "1" } else { "0" }).map_err(|source| Error::Io {
        context: format!("writing {path}"),
        source,
    })
}

/// Whether `bridge` exists and has `route_localnet` on.
pub fn route_localnet_of(bridge: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
        .is_ok_and(|v| v.trim() == "1")
}

/// Whether netfast's rules of a fallback `backend` are in place (always true for eBPF, whose
/// attachments `network ls` checks itself).
pub fn installed(backend: Backend) -> bool {
    match backend {
        Backend::Ebpf => true,
        Backend::Nftables => nftables::exists(),
        Backend::Iptables => iptables::installed(),
    }
}

/// Removes netfast's nftables table and iptables chains whatever the state says: `down`'s
/// last sweep, for what a command that died before it saved its state left. iptables is
/// asked only about the tables that exist already (listing one can load its module and hook
/// it into the namespace). Returns whether there was anything.
pub fn remove_all() -> Result<bool> {
    let mut any = false;
    if nftables::table_exists()? {
        nftables::sync(&Rules::default())?;
        any = true;
    }
    let mut chains = Vec::new();
    for table in iptables::tables_present()? {
        chains.extend(iptables::own_chains(table)?);
    }
    if !chains.is_empty() {
        iptables::sync(&Rules::default())?;
        any = true;
    }
    Ok(any)
}

/// The fallback backends' counters: packets and bytes per drop reason (summed over both) and
/// per network they serve ([`net_counter`]).
pub fn counters(state: &State) -> Result<Counts> {
    let mut total = Counts::new();
    let mut add = |c: Vec<(String, (u64, u64))>| {
        for (k, (p, b)) in c {
            let e = total.entry(k).or_default();
            e.0 += p;
            e.1 += b;
        }
    };
    if state
        .networks
        .iter()
        .any(|n| n.backend == Backend::Nftables)
    {
        add(nftables::counters()?.into_iter().collect());
    }
    let ipt = Rules::of(state, Backend::Iptables);
    if !ipt.is_empty() {
        // A reason dropped in both of iptables' tables is one reason to `stats`.
        add(iptables::counters(&ipt.nets)?
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(&ipt_raw_counter("")) {
                Some(reason) => (reason.to_owned(), v),
                None => (k, v),
            })
            .collect());
    }
    Ok(total)
}

/// The container port host port `host_port` of publication `p` leads to.
fn container_port(p: &crate::loader::publish::Publication, host_port: u16) -> Option<u16> {
    p.host_ports
        .iter()
        .zip(p.container_ports.iter())
        .find_map(|(h, c)| (h == host_port).then_some(c))
}

/// Ends the kernel's flows through a publication of a fallback network (as the eBPF dataplane
/// ends its own): the entries DNATed from its host ports to its container. Calls `ending` with
/// the container's end and its peer of each TCP one while the entries still translate (see
/// [`crate::netfilter::sockdiag`]), then deletes them; returns how many.
///
/// Each UDP flow on a host port equal to its container port is then replaced by an
/// untranslated entry of the client's direction, which lives `udp_timeout` seconds (the
/// kernel's own UDP timeout once the client's packets refresh it): they reach the host,
/// which tells the client the port is closed, and a container's datagram to the client (a
/// UDP server's socket serves every client and cannot be ended) is masqueraded from another
/// port than the one published, as that entry holds it (`nf_nat_used_tuple`), so the client
/// does not take it for the publication's.
pub fn end_flows(
    p: &crate::loader::publish::Publication,
    udp_timeout: u32,
    ending: impl FnOnce(&[Connection]) -> Vec<Connection>,
) -> Result<usize> {
    let ct = ctnetlink::Conntrack::open()?;
    // Translated to the container (not a connection to it directly, from the host or a
    // container, whose entry has the container's address in both directions).
    let doomed: Vec<ctnetlink::KEntry> = ct
        .dump()?
        .into_iter()
        .filter(|e| {
            e.original.proto == p.proto.number()
                && e.original.icmp.is_none()
                && (p.host_ip.is_none() || p.host_ip == Some(e.original.dst))
                && e.reply.src == p.container_ip
                && e.original.dst != p.container_ip
                && container_port(p, e.original.dport) == Some(e.reply.sport)
        })
        .collect();
    // Each TCP entry's connection, as the container's socket sees it.
    let tcp: Vec<(Connection, &ctnetlink::KTuple)> = doomed
        .iter()
        .filter(|e| e.reply.proto == PROTO_TCP)
        .map(|e| {
            let c = Connection::of_reply(e.reply.src, e.reply.sport, e.reply.dst, e.reply.dport);
            (c, &e.original)
        })
        .collect();
    let connections: Vec<Connection> = tcp.iter().map(|(c, _)| *c).collect();
    let of_connection: HashMap<Connection, &ctnetlink::KTuple> = tcp.into_iter().collect();
    let reset = ending(&connections);
    // Each aborted socket's RST crosses its entry to the client: the entries end once it has.
    crate::netfilter::sockdiag::wait_for_resets(&reset, |c| {
        let Some(original) = of_connection.get(c) else {
            return Ok(true);
        };
        let now = ct.get(original)?;
        Ok(now.is_none_or(|n| n.tcp_state.map(ctnetlink::tcp_state_name) == Some("CLOSE")))
    });
    delete_all(&ct, doomed.iter(), |e| {
        // A UDP flow on a host port equal to its container port: a container's datagram to
        // the client would be masqueraded keeping its port, the published one.
        if e.original.proto == PROTO_UDP
            && e.original.dport == e.reply.sport
            && let Err(err) = hold_for_client(&ct, e, p.container_ip, udp_timeout)
        {
            log::warn!(
                "the container's datagrams to {}:{} may leave from published port {} while \
                 the client sends: {}",
                e.original.src,
                e.original.sport,
                e.original.dport,
                crate::error::report(&err)
            );
        }
    })
}

/// Replaces the ended UDP flow `e` by an untranslated entry of its client's direction, which
/// holds the published port against the container's masquerade (see [`end_flows`]). A flow
/// the container opened to the client in between (masqueraded from that port) is ended and
/// the entry made again.
fn hold_for_client(
    ct: &ctnetlink::Conntrack,
    e: &ctnetlink::KEntry,
    container: std::net::Ipv4Addr,
    timeout: u32,
) -> Result<()> {
    for _ in 0..2 {
        if ct.create_untranslated(&e.original, timeout)? {
            return Ok(());
        }
        match ct.get(&e.original)? {
            // Made by the client's own next datagram, untranslated: as good.
            Some(n) if n.reply.src == e.original.dst => return Ok(()),
            Some(n) if n.original.src == container => {
                ct.delete(&n.original)?;
            }
            _ => {}
        }
    }
    Err(crate::error::Error::Settings(
        "another flow holds the client's tuple".into(),
    ))
}

/// Called once a publication of a fallback network is in the rules: ends the kernel's
/// entries for its host ports (on its address, or on any of the host's `local` addresses and
/// 127.0.0.0/8) that do not lead to its container. Netfilter's NAT rules meet only the first
/// packet of a flow: an entry made while the port led elsewhere (to a removed container, or
/// untranslated to the host itself while nothing was published) would go on matching, and a
/// UDP client that keeps sending refreshes it for ever (issue #19; Kubernetes clears a UDP
/// service's entries the same way when its endpoints change). Returns how many.
pub fn end_stale_flows(
    p: &crate::loader::publish::Publication,
    local: &[std::net::Ipv4Addr],
) -> Result<usize> {
    delete_entries(|e| {
        let to_host = match p.host_ip {
            Some(ip) => e.original.dst == ip,
            None => e.original.dst.is_loopback() || local.contains(&e.original.dst),
        };
        e.original.proto == p.proto.number()
            && e.original.icmp.is_none()
            && to_host
            && container_port(p, e.original.dport)
                .is_some_and(|cp| !(e.reply.src == p.container_ip && e.reply.sport == cp))
    })
}

/// Deletes the kernel's conntrack entries that `doomed` selects; returns how many went.
fn delete_entries(doomed: impl Fn(&ctnetlink::KEntry) -> bool) -> Result<usize> {
    let ct = ctnetlink::Conntrack::open()?;
    let entries = ct.dump()?;
    delete_all(&ct, entries.iter().filter(|e| doomed(e)), |_| {})
}

/// Deletes these kernel conntrack entries, calling `then` after each; returns how many went
/// (one may have gone by itself meanwhile).
fn delete_all<'a>(
    ct: &ctnetlink::Conntrack,
    entries: impl Iterator<Item = &'a ctnetlink::KEntry>,
    mut then: impl FnMut(&ctnetlink::KEntry),
) -> Result<usize> {
    let mut ended = 0;
    for e in entries {
        if ct.delete(&e.original)? {
            ended += 1;
        }
        then(e);
    }
    Ok(ended)
}

/// Deletes the kernel conntrack entries of the fallback networks of `state` that `filter`
/// matches (`netfast conntrack delete`, and the flows `container rm`, `network rm` and
/// `down` end); returns how many went. Nothing is asked of the kernel when no network of
/// `state` is on a fallback backend.
pub fn delete_kernel_flows(
    state: &State,
    filter: &crate::conntrack_filter::Filter,
) -> Result<usize> {
    if !serves_a_fallback(state) {
        return Ok(0);
    }
    let ct = ctnetlink::Conntrack::open()?;
    let flows = kernel_flows_in(&ct, state, filter)?;
    delete_all(&ct, flows.iter().map(|(_, e)| e), |_| {})
}

/// The kernel conntrack entries of the networks the fallback backends serve (flows from
/// their subnets, and flows to their containers: [`fallback_network`]) that `filter`
/// matches, with the network's id.
/// The kernel selects what it can itself ([`ctnetlink::DumpFilter`]: exact values of the
/// original tuple); the rest of the filter (CIDRs, the reply tuple, a container on either
/// tuple, a network, a TCP state) it cannot express, and is applied here.
pub fn kernel_flows(
    state: &State,
    filter: &crate::conntrack_filter::Filter,
) -> Result<Vec<(u16, ctnetlink::KEntry)>> {
    if !serves_a_fallback(state) {
        return Ok(Vec::new());
    }
    kernel_flows_in(&ctnetlink::Conntrack::open()?, state, filter)
}

/// Whether a network of `state` is on a fallback backend: otherwise the kernel's table holds
/// no flow of netfast's, and is not asked.
fn serves_a_fallback(state: &State) -> bool {
    state.networks.iter().any(|n| n.backend != Backend::Ebpf)
}

/// [`kernel_flows`], asked over `ct`.
fn kernel_flows_in(
    ct: &ctnetlink::Conntrack,
    state: &State,
    filter: &crate::conntrack_filter::Filter,
) -> Result<Vec<(u16, ctnetlink::KEntry)>> {
    let exact =
        |net: Option<ipnet::Ipv4Net>| net.filter(|n| n.prefix_len() == 32).map(|n| n.addr());
    let f = &filter.flow;
    let published = f.published;
    let hint = ctnetlink::DumpFilter {
        proto: f
            .proto
            .or(published.and_then(|p| p.proto))
            .or(f.state.map(|_| 6)),
        src: exact(f.orig_src),
        dst: exact(f.orig_dst).or(published.and_then(|p| p.host_ip)),
        sport: f.orig_sport,
        dport: f.orig_dport.or(published.map(|p| p.port)),
    };
    Ok(ct
        .dump_matching(&hint)?
        .into_iter()
        .filter_map(|e| {
            let id = fallback_network(state, &e)?;
            filter.matches(&e.flow(id)).then_some((id, e))
        })
        .collect())
}

/// The id of the fallback network a kernel conntrack entry belongs to: the flow comes from
/// its subnet, or goes to one of its containers.
pub fn fallback_network(state: &State, e: &ctnetlink::KEntry) -> Option<u16> {
    state
        .networks
        .iter()
        .filter(|n| n.backend != Backend::Ebpf)
        .find(|n| n.subnet.contains(&e.original.src) || n.subnet.contains(&e.reply.src))
        .map(|n| n.id)
}

/// The fallback backends' counters added to `stats` (the eBPF dataplane's, or empty): their
/// drops under the eBPF dataplane's reasons, and a line per network they serve, with the
/// packets the kernel forwarded out of (tx) and into (rx) its bridge.
pub fn add_fallback_counters(state: &State, stats: &mut crate::stats::Stats) -> Result<()> {
    let counts = counters(state)?;
    for (reason, (packets, bytes)) in &counts {
        let Some(r) = netfast_common::DropReason::ALL
            .into_iter()
            .find(|r| r.name() == reason)
        else {
            continue;
        };
        match stats.drops.iter_mut().find(|d| d.reason == r.name()) {
            Some(d) => {
                d.traffic.packets += packets;
                d.traffic.bytes += bytes;
            }
            None => stats.drops.push(crate::stats::DropStats {
                reason: r.name(),
                description: r.describe(),
                traffic: netfast_common::Traffic {
                    packets: *packets,
                    bytes: *bytes,
                },
            }),
        }
    }
    for n in state.networks.iter().filter(|n| n.backend != Backend::Ebpf) {
        let get = |way| {
            counts
                .get(&net_counter(way, n.id))
                .copied()
                .unwrap_or_default()
        };
        let ((tx_packets, tx_bytes), (rx_packets, rx_bytes)) = (get(Way::Tx), get(Way::Rx));
        stats.networks.push(crate::stats::NetworkStats {
            id: n.id,
            name: n.name.clone(),
            subnet: n.subnet.to_string(),
            tx_packets,
            tx_bytes,
            rx_packets,
            rx_bytes,
        });
    }
    stats.networks.sort_by_key(|n| n.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_first_backend_that_works_and_a_named_one_must_work() {
        let none_but = |ok: Backend| move |b: Backend| (b != ok).then(|| format!("no {b}"));
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Ebpf)).unwrap(),
            Backend::Ebpf
        );
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Nftables)).unwrap(),
            Backend::Nftables
        );
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Iptables)).unwrap(),
            Backend::Iptables
        );
        let err = resolve_with(BackendChoice::Nftables, none_but(Backend::Ebpf))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--backend nftables: no nftables") && err.contains("netfast doctor"),
            "{err}"
        );
        let err = resolve_with(BackendChoice::Auto, |b| Some(format!("no {b}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ebpf: no ebpf; nftables: no nftables; iptables: no iptables"),
            "{err}"
        );
    }
}
