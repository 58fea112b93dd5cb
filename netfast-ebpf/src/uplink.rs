//! The uplink's programs: masquerade on the way out, its replies and published ports on the
//! way in, and what must not cross (container addresses leaking out, direct access in,
//! anything for the host's loopback addresses).

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason,
    config::{NET_F_MASQUERADE, NetInfo},
    conntrack::{CT_F_INWARD, CT_F_REDIRECT, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtKey},
    maps::FORWARDED_TC_INDEX,
    verdict::NEXT,
};

use crate::conntrack::{Origin, Table};
use crate::{
    conntrack,
    forward::{self, Hop, Route},
    icmp,
    maps::NETFAST_NETWORKS,
    nat,
    parse::{self, Frag, Ipv4, L4Kind, Pkt},
    publish, stats,
};

/// Which way a packet crosses the uplink.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Arriving from the outside (the uplink's ingress).
    In,
    /// Leaving for the outside (the uplink's egress): a container's, routed by the host, or
    /// the host's own.
    Out,
}

/// What to drop rather than pass untranslated: on the way out, anything from a masqueraded
/// network (it would leak a container address, `reason`); on the way in, anything straight
/// to a masqueraded container (direct access, as Docker refuses it).
#[inline(always)]
fn forbidden(
    ctx: &TcContext,
    dir: Direction,
    ip: &Ipv4,
    reason: DropReason,
) -> Result<i32, DropReason> {
    if dir == Direction::Out {
        if nat::masq_network(ip.src, nat::ifindex(ctx)).is_some() {
            return Err(reason);
        }
    } else if let Some(net) = NETFAST_NETWORKS.get(aya_ebpf::maps::lpm_trie::Key::new(32, ip.dst))
        && net.flags & NET_F_MASQUERADE != 0
    {
        return Err(DropReason::DirectAccess);
    }
    Ok(NEXT)
}

/// A packet translated here without a flow entry of its own (an ICMP error about a flow, a
/// later fragment): on the way in, the fast path forwards it into its container like the
/// flow's packets — handed to the host's stack, it would meet the FORWARD chain that Docker
/// leaves at DROP (and path MTU discovery with it). Otherwise the stack routes it.
#[inline(always)]
fn forward_in(
    ctx: &TcContext,
    dir: Direction,
    ip: &Ipv4,
    src: u32,
    dst: u32,
    now: u32,
) -> Result<i32, DropReason> {
    if dir == Direction::In && conntrack::fast_path() {
        let mut r = Route::NONE;
        let hop = Hop::may(src, dst, now);
        if forward::route(ctx, ip, &hop, &mut r) {
            return forward::forward(ctx, &r);
        }
        forward::fallback(ctx);
    }
    Ok(NEXT)
}

#[inline(always)]
pub fn try_uplink(ctx: &TcContext, dir: Direction) -> Result<i32, DropReason> {
    let out = dir == Direction::Out;
    // What goes out has come from inside (a container, or the host itself).
    let origin = if out { Origin::Inside } else { Origin::Outside };
    if out {
        // SAFETY: a field of the context TC programs may read and write.
        let tc_index = unsafe { (*ctx.skb.skb).tc_index };
        if tc_index & FORWARDED_TC_INDEX != 0 {
            // Translated and routed by the fast path a moment ago: nothing left to do. (The
            // bridge's ingress clears the mark on everything a container sends.)
            unsafe { (*ctx.skb.skb).tc_index = tc_index & !FORWARDED_TC_INDEX };
            stats::count_event(netfast_common::stats::Event::FastPathEgress, ctx.len());
            return Ok(NEXT);
        }
    }
    parse::linearize_headers(ctx);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(NEXT);
    };
    if !out && publish::loopback(ip.dst) {
        // The host's loopback addresses are its own: nothing from the network reaches them,
        // least of all a port published on 127.0.0.1.
        return Err(DropReason::LoopbackFromNetwork);
    }
    let now = conntrack::now();
    if ip.frag == Frag::Later {
        if let Some((src, dst)) = nat::later_fragment(ctx, &ip, now)? {
            return forward_in(ctx, dir, &ip, src, dst, now);
        }
        return forbidden(ctx, dir, &ip, DropReason::FragmentWithoutFirst);
    }
    let l4 = parse::l4(ctx, &ip)?;
    let (sport, dport, tcp_flags) = match l4.kind {
        L4Kind::Flow => (l4.sport, l4.dport, l4.tcp_flags),
        L4Kind::IcmpError => {
            if icmp::translate_error(ctx, &ip, now, origin, false).get()? {
                let (src, dst) = (
                    parse::load(ctx, parse::ETH_HLEN + parse::IP_SRC)?,
                    parse::load(ctx, parse::ETH_HLEN + parse::IP_DST)?,
                );
                return forward_in(ctx, dir, &ip, src, dst, now);
            }
            return forbidden(ctx, dir, &ip, DropReason::IcmpErrorWithoutFlow);
        }
        L4Kind::Other => return forbidden(ctx, dir, &ip, DropReason::UnsupportedProtocol),
    };
    let p = &Pkt {
        ip,
        key: CtKey::new(ip.src, ip.dst, sport, dport, ip.proto),
        tcp_flags,
        now,
    };
    let fast_path = conntrack::fast_path();
    // The main table first; then, only for packets that could belong to a flow opened from
    // outside and not answered yet, that table: on the way out a container's answer, on
    // the way in a client's packet to a published port (or to a mapping, with
    // endpoint-independent filtering). The host's own traffic pays for neither.
    let mut masq = None;
    let mut target = None;
    let mut found = conntrack::lookup(&p.key, now, origin).map(|e| (e, Table::Main));
    if found.is_none() {
        if out {
            masq = nat::masq_network(ip.src, nat::ifindex(ctx));
            if masq.is_some() {
                found = conntrack::lookup_inbound(&p.key, now, Origin::Inside)
                    .map(|e| (e, Table::Inbound));
            }
        } else {
            target = publish::published(ip.dst, dport, ip.proto);
            if target.is_some() || conntrack::endpoint_independent() {
                found = conntrack::lookup_inbound(&p.key, now, Origin::Outside)
                    .map(|e| (e, Table::Inbound));
            }
            // A masqueraded flow that lost its reply entry (the LRU, under pressure) while
            // its original one lives: restored rather than left to the host.
            if found.is_none() && target.is_none() && conntrack::restore_reply(&p.key, now) {
                stats::count_event(netfast_common::stats::Event::CtRepaired, ctx.len());
                found = conntrack::lookup(&p.key, now, Origin::Outside).map(|e| (e, Table::Main));
            }
        }
    }
    if let Some((entry, table)) = found {
        // SAFETY (each access): a live map value pointer from `lookup`, read in place.
        let flags = unsafe { (*entry).flags };
        // Hairpin flows are the bridge's; a tuple of theirs seen here is another packet.
        if flags & CT_F_REDIRECT == 0 {
            // Towards a container, the fast path takes it from here.
            let mut r = Route::NONE;
            let mut fast = false;
            if !out && fast_path && flags & CT_F_INWARD != 0 {
                let t = unsafe { (*entry).translated(&p.key) };
                let hop = Hop::may(t.src_addr, t.dst_addr, now);
                fast = forward::route_cached(ctx, &p.ip, &hop, entry, &mut r);
                if !fast {
                    forward::fallback(ctx);
                }
            }
            let answered = conntrack::track(ctx, p, entry, table).value()? == conntrack::ANSWERED;
            let e = unsafe { &*entry };
            if e.flags & (CT_F_REWRITE_SRC | CT_F_REWRITE_DST) != 0 {
                nat::apply(ctx, &p.ip, &p.key, e, now).get()?;
                stats::count_network(ctx, e.net_id, e.flags & CT_F_INWARD != 0);
            }
            if answered {
                conntrack::promote(ctx, &p.key, entry, p.now);
            }
            return if fast {
                forward::forward(ctx, &r)
            } else {
                Ok(NEXT)
            };
        }
    }
    if out {
        let net = match masq.or_else(|| nat::masq_network(ip.src, nat::ifindex(ctx))) {
            Some(net) => net,
            // The host's own packet, from a port a container's mapping holds: it leaves
            // masqueraded behind its own address, from a port nobody holds.
            None if nat::held_by_a_container(&p.key, now) => {
                stats::count_event(netfast_common::stats::Event::HostFlowRemapped, ctx.len());
                NetInfo {
                    id: nat::HOST_FLOWS,
                    flags: 0,
                    uplink_ifindex: nat::ifindex(ctx),
                    bridge_ifindex: 0,
                    ext_addr: ip.src,
                }
            }
            None => return Ok(NEXT),
        };
        let until = nat::new_flow_times(p)?.map_expires;
        let ext_port = nat::mapping(ctx, &p.key, &net, now, until).value()? as u16;
        nat::snat_new_flow(ctx, p, &net, ext_port).get()?;
        nat::apply_opened(ctx, p)?;
        return Ok(NEXT);
    }
    // From outside, a packet of no flow with the source address of one of our networks is
    // forged: those addresses live behind our bridges. Let it open a flow, and the flow's
    // answers would go there, into a container of any network.
    if NETFAST_NETWORKS
        .get(aya_ebpf::maps::lpm_trie::Key::new(32, ip.src))
        .is_some()
    {
        return Err(DropReason::SpoofedSource);
    }
    if let Some(target) = target.or_else(|| publish::published(ip.dst, dport, ip.proto)) {
        if !publish::allowed(&target, ip.src) {
            return Err(DropReason::NotAllowed);
        }
        let mut r = Route::NONE;
        let hop = Hop::may(ip.src, target.addr, now);
        let fast = fast_path && forward::route(ctx, &p.ip, &hop, &mut r);
        // A packet that cannot open a flow (a stray ACK) is the host's to answer.
        if publish::dnat_new_flow(ctx, p, &target).get()? {
            nat::apply_opened(ctx, p)?;
            if fast {
                return forward::forward(ctx, &r);
            }
        }
        return Ok(NEXT);
    }
    if conntrack::endpoint_independent() && nat::eif_new_flow(ctx, p).get()? {
        nat::apply_opened(ctx, p)?;
        return Ok(NEXT);
    }
    forbidden(ctx, dir, &p.ip, DropReason::DirectAccess)
}
