//! The bridge's ingress: packets from containers to the host. Hairpin flows (a container to
//! a port its own host publishes) are translated and forwarded here; with the fast path, so
//! are masqueraded and published flows, from their first packet. A container may only speak
//! with its own network's addresses, use its own network's flows, and reach no other
//! network's containers. Everything else goes on to the host's routing.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    config::{NET_F_MASQUERADE, NetInfo},
    conntrack::{
        CT_F_AWAIT_REPLY, CT_F_INWARD, CT_F_REDIRECT, CT_F_SEEN_REPLY, CtEntry, PROTO_ICMP,
    },
    maps::FORWARDED_TC_INDEX,
    verdict::NEXT,
};

use crate::conntrack::{Origin, Table};
use crate::{
    conntrack,
    forward::{self, Hop, Route, route},
    icmp,
    maps::{NETFAST_NET_BRIDGES, NETFAST_NETWORKS},
    nat::{self, ifindex},
    outcome::Outcome,
    parse::{self, Frag, Ipv4, L4Kind, Pkt},
    publish, stats,
};

/// The network of the packet's source, which must be the network of the bridge it came in
/// on: a container that forges another address is dropped (the fast path would otherwise
/// carry its packets past the host's reverse-path filter). `None` for the unspecified
/// source a DHCP client uses, which only the host may answer.
#[inline(always)]
fn source_network(ctx: &TcContext, ip: &Ipv4) -> Result<Option<NetInfo>, DropReason> {
    if ip.src == 0 {
        return Ok(None);
    }
    match NETFAST_NETWORKS.get(Key::new(32, ip.src)) {
        Some(net) if net.bridge_ifindex == ifindex(ctx) => Ok(Some(*net)),
        _ => Err(DropReason::SpoofedSource),
    }
}

/// Containers of one network may not reach those of another (Docker's isolation): decided
/// by the bridge the packet came in on (its source is that bridge's network, see
/// `source_network`).
#[inline(always)]
fn isolated(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    match NETFAST_NETWORKS.get(Key::new(32, ip.dst)) {
        Some(to) if to.bridge_ifindex != ifindex(ctx) => Err(DropReason::InterNetwork),
        _ => Ok(NEXT),
    }
}

/// A later fragment or an ICMP error (`translated` already, when it is about a flow the
/// bridge forwards): no flow of its own, but translated and forwarded like the flow it
/// belongs to, if any.
// Its own BPF function: rare packets, kept out of the hot path's stack frame.
#[inline(never)]
fn not_a_flow(ctx: &TcContext, ip: &Ipv4, now: u32, translated: bool) -> Outcome {
    Outcome::from_verdict(try_not_a_flow(ctx, ip, now, translated))
}

#[inline(always)]
fn try_not_a_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    now: u32,
    translated: bool,
) -> Result<i32, DropReason> {
    if ip.frag == Frag::Later {
        source_network(ctx, ip)?;
        // Translated, its source may be the host's own address, which the host's input path
        // would drop as a martian: it is forwarded here, as its first fragment was.
        if let Some((src, dst)) = nat::later_fragment(ctx, ip, now)? {
            return forward_here(ctx, ip, src, dst, now);
        }
        return isolated(ctx, ip);
    }
    if translated {
        let (src, dst) = (
            parse::load(ctx, parse::ETH_HLEN + parse::IP_SRC)?,
            parse::load(ctx, parse::ETH_HLEN + parse::IP_DST)?,
        );
        return forward_here(ctx, ip, src, dst, now);
    }
    isolated(ctx, ip)
}

/// Forwards a packet already translated to `src` → `dst`: it cannot go to the host's stack,
/// whose input path would drop a source of its own as a martian.
#[inline(always)]
fn forward_here(
    ctx: &TcContext,
    ip: &Ipv4,
    src: u32,
    dst: u32,
    now: u32,
) -> Result<i32, DropReason> {
    let mut r = Route::NONE;
    let hop = Hop::must(src, dst, now);
    if !route(ctx, ip, &hop, &mut r) {
        return Err(DropReason::NoRoute);
    }
    forward::forward(ctx, &r)
}

/// The external port of the sender's masquerade mapping, for a flow `p` opens (claimed here,
/// before the opener runs, so that the two never nest: the verifier allows 512 bytes of
/// stack down a chain of calls).
#[inline(always)]
fn masquerade_port(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Result<u16, DropReason> {
    let until = nat::new_flow_times(p)?.map_expires;
    Ok(nat::mapping(ctx, &p.key, net, p.now, until).value()? as u16)
}

/// The start of a hairpin to `dst`: its route (into `r`; none is a drop), and the sender's
/// external port when `p` may open a flow (`None`: a packet that cannot, a stray ACK, is the
/// host's to answer).
#[inline(always)]
fn hairpin_start(
    ctx: &TcContext,
    p: &Pkt,
    net: &NetInfo,
    dst: u32,
    r: &mut Route,
) -> Result<Option<u16>, DropReason> {
    let hop = Hop::must(net.ext_addr, dst, p.now);
    if !route(ctx, &p.ip, &hop, r) {
        return Err(DropReason::NoRoute);
    }
    if !nat::can_open(p) {
        return Ok(None);
    }
    masquerade_port(ctx, p, net).map(Some)
}

/// Whether a flow entry belongs to the network of the bridge the packet came in on.
#[inline(always)]
pub fn of_this_bridge(ctx: &TcContext, net_id: u16) -> bool {
    NETFAST_NET_BRIDGES
        .get(u32::from(net_id))
        .is_some_and(|&b| b == ifindex(ctx))
}

#[inline(always)]
pub fn try_bridge_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    // The fast path's mark says "translated by netfast" to the uplink's egress: a container
    // must not be able to send it there (a program of its own could set it).
    // SAFETY: a field of the context TC programs may read and write.
    let tc_index = unsafe { (*ctx.skb.skb).tc_index };
    if tc_index & FORWARDED_TC_INDEX != 0 {
        unsafe { (*ctx.skb.skb).tc_index = tc_index & !FORWARDED_TC_INDEX };
    }
    parse::linearize_headers(ctx);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(NEXT);
    };
    if publish::loopback(ip.dst) {
        return Err(DropReason::ToHostLoopback);
    }
    let now = conntrack::now();
    if ip.frag == Frag::Later {
        return not_a_flow(ctx, &ip, now, false).verdict();
    }
    let l4 = parse::l4(ctx, &ip)?;
    if l4.kind == L4Kind::IcmpError {
        // A container's error about a flow of its network (a port unreachable to a client
        // of a published port): translated and forwarded here, like the flow's packets —
        // or, with the fast path off, left to the host's stack as it was sent, and
        // translated by the uplink's egress after routing (translated here, its source
        // would be the host's own address, which the stack drops as a martian). A hairpin's
        // error is always translated and forwarded here, as the hairpin's packets are.
        source_network(ctx, &ip)?;
        let translated = icmp::translate_error(ctx, &ip, now, Origin::Inside, true).get()?;
        return not_a_flow(ctx, &ip, now, translated).verdict();
    }
    if l4.kind != L4Kind::Flow {
        source_network(ctx, &ip)?;
        return isolated(ctx, &ip);
    }
    let p = parse::pkt(&ip, l4.sport, l4.dport, l4.tcp_flags, now)?;
    // The main table, else the inbound flows not answered yet (this may be a container's
    // answer to one): a miss here is a new flow, rare next to the packets of known ones.
    let found = match conntrack::lookup(&p.key, now, Origin::Inside) {
        Some(e) => Some((e, Table::Main)),
        None => conntrack::lookup_inbound(&p.key, now, Origin::Inside).map(|e| (e, Table::Inbound)),
    };
    if let Some((entry, table)) = found
        // SAFETY: a live map value pointer from `lookup`.
        && of_this_bridge(ctx, unsafe { (*entry).net_id })
    {
        return established(ctx, p, entry, table).verdict();
    }
    let Some(net) = source_network(ctx, &p.ip)? else {
        return Ok(NEXT);
    };
    new_flow(ctx, p, &net).verdict()
}

/// A packet of a tracked flow (`entry`, in the table of unanswered inbound flows when
/// `inbound`): tracked, translated and forwarded — or, with the fast path off, left to the
/// uplink's egress after the host has routed it.
// Its own BPF function: the hot path, with a stack frame of its own beside the new-flow
// paths' (the verifier allows 512 bytes down a chain of calls).
#[inline(never)]
fn established(ctx: &TcContext, p: &Pkt, entry: *mut CtEntry, table: Table) -> Outcome {
    Outcome::from_verdict(try_established(ctx, p, entry, table))
}

#[inline(always)]
fn try_established(
    ctx: &TcContext,
    p: &Pkt,
    entry: *mut CtEntry,
    table: Table,
) -> Result<i32, DropReason> {
    let now = p.now;
    // SAFETY (each access): a live map value pointer from `lookup`, read in place: a copy
    // would cost 80 bytes of a stack frame that has few to spare.
    let flags = unsafe { (*entry).flags };
    if flags & (CT_F_AWAIT_REPLY | CT_F_SEEN_REPLY) == CT_F_AWAIT_REPLY {
        // A hairpin to a mapping whose owner has not answered yet (see nat::FILTERED).
        return Err(DropReason::NatFiltered);
    }
    let hairpin = flags & CT_F_REDIRECT != 0;
    if !hairpin && !conntrack::fast_path() {
        // Translated at the uplink, after the host has routed it.
        return Ok(NEXT);
    }
    let t = unsafe { (*entry).translated(&p.key) };
    let mut r = Route::NONE;
    let hop = Hop {
        must: hairpin,
        ..Hop::may(t.src_addr, t.dst_addr, now)
    };
    if !forward::route_cached(ctx, &p.ip, &hop, entry, &mut r) {
        if hairpin {
            return Err(DropReason::NoRoute);
        }
        forward::fallback(ctx);
        return Ok(NEXT);
    }
    let answered = conntrack::track(ctx, p, entry, table).value()? == conntrack::ANSWERED;
    let e = unsafe { &*entry };
    nat::apply(ctx, &p.ip, &p.key, e, now).get()?;
    stats::count_network(ctx, e.net_id, e.flags & CT_F_INWARD != 0);
    if answered {
        conntrack::promote(ctx, &p.key, entry, p.now);
    }
    forward::forward(ctx, &r)
}

/// A container's packet that matched no flow: a hairpin to a published port or to a
/// mapping, a new masqueraded flow, or the host's stack.
// Its own BPF function: the stack frame of the new-flow paths stays out of the hot path's.
#[inline(never)]
fn new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Outcome {
    Outcome::from_verdict(try_new_flow(ctx, p, net))
}

#[inline(always)]
fn try_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Result<i32, DropReason> {
    let (ip, now) = (p.ip, p.now);
    let dport = p.key.dst_port;
    if let Some(target) = publish::published(ip.dst, dport, ip.proto)
        && net.ext_addr != 0
    {
        if !publish::allowed(&target, ip.src) {
            return Err(DropReason::NotAllowed);
        }
        let mut r = Route::NONE;
        let Some(ext_port) = hairpin_start(ctx, p, net, target.addr, &mut r)? else {
            return Ok(NEXT);
        };
        if publish::hairpin_new_flow(ctx, p, &target, net, ext_port).get()? {
            nat::apply_opened(ctx, p)?;
            return forward::forward(ctx, &r);
        }
        return Ok(NEXT);
    }
    // Another container's external endpoint, or its own: hairpinned. Not an ICMP echo
    // request: it names no external endpoint (its key's destination port is always 0), and
    // to the host's address it is the host's.
    let echo_request = ip.proto == PROTO_ICMP && dport == 0;
    if net.ext_addr != 0
        && !echo_request
        && let Some(claim) = nat::live_claim(ip.dst, dport, ip.proto, now)
    {
        let mut r = Route::NONE;
        let Some(ext_port) = hairpin_start(ctx, p, net, claim.int_addr(), &mut r)? else {
            return Ok(NEXT);
        };
        match nat::mapping_hairpin_new_flow(ctx, p, net, ext_port).value()? {
            0 => {}
            nat::FILTERED => return Err(DropReason::NatFiltered),
            _ => {
                nat::apply_opened(ctx, p)?;
                return forward::forward(ctx, &r);
            }
        }
    }
    if conntrack::fast_path() {
        return new_masquerade_flow(ctx, p, net);
    }
    isolated(ctx, &ip)
}

/// The fast path opens a masqueraded flow at its first packet, so that none of its packets
/// meets the host's FORWARD chain (whose policy Docker leaves at DROP): when the packet's
/// source is a masqueraded network and its route leaves through that network's uplink.
#[inline(always)]
fn new_masquerade_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Result<i32, DropReason> {
    let ip = &p.ip;
    if net.flags & NET_F_MASQUERADE == 0 {
        return isolated(ctx, ip);
    }
    let mut r = Route::NONE;
    let hop = Hop::may(net.ext_addr, ip.dst, p.now);
    if !route(ctx, ip, &hop, &mut r) {
        forward::fallback(ctx);
        return isolated(ctx, ip);
    }
    // Not towards the uplink (the host, another bridge): not masquerade's.
    if r.kind == forward::PEER || r.ifindex != net.uplink_ifindex {
        return isolated(ctx, ip);
    }
    let ext_port = masquerade_port(ctx, p, net)?;
    nat::snat_new_flow(ctx, p, net, ext_port).get()?;
    nat::apply_opened(ctx, p)?;
    forward::forward(ctx, &r)
}
