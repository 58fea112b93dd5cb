//! The bridge's ingress: packets from containers to the host. Hairpin flows (a container to
//! a port its own host publishes) are translated and forwarded here; with the fast path, so
//! are masqueraded and published flows, from their first packet; containers of two networks
//! may not reach each other. Everything else goes on to the host's routing.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    config::NET_F_MASQUERADE,
    conntrack::{CT_F_REDIRECT, CtKey},
    verdict::NEXT,
};

use crate::{
    conntrack,
    forward::{self, Hop, Route, route},
    maps::NETFAST_NETWORKS,
    nat,
    parse::{self, Frag, Ipv4, L4, Pkt},
    publish, stats,
};

/// Containers of one network may not reach those of another (Docker's isolation).
#[inline(always)]
fn isolated(ip: &Ipv4) -> Result<i32, DropReason> {
    let Some(to) = NETFAST_NETWORKS.get(Key::new(32, ip.dst)) else {
        return Ok(NEXT);
    };
    match NETFAST_NETWORKS.get(Key::new(32, ip.src)) {
        Some(from) if from.id != to.id => Err(DropReason::InterNetwork),
        _ => Ok(NEXT),
    }
}

#[inline(always)]
pub fn try_bridge_ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    parse::linearize_headers(ctx);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(NEXT);
    };
    let now = conntrack::now();
    if ip.frag == Frag::Later {
        if nat::later_fragment(ctx, &ip, true, now)? {
            let (src, dst) = (
                parse::load(ctx, parse::ETH_HLEN + parse::IP_SRC)?,
                parse::load(ctx, parse::ETH_HLEN + parse::IP_DST)?,
            );
            let mut r = Route::NONE;
            if !route(
                ctx,
                &ip,
                &Hop {
                    src,
                    dst,
                    must: true,
                    now,
                },
                &mut r,
            ) {
                return Err(DropReason::NoRoute);
            }
            return forward::forward(ctx, &r);
        }
        return isolated(&ip);
    }
    let L4::Flow {
        sport,
        dport,
        tcp_flags,
    } = parse::l4(ctx, &ip)?
    else {
        return isolated(&ip);
    };
    let key = CtKey::new(ip.src, ip.dst, sport, dport, ip.proto);
    let fast_path = conntrack::fast_path();
    if let Some(entry) = conntrack::lookup(&key, now) {
        // SAFETY (each access): a live map value pointer from `lookup`, read in place: a
        // copy would cost 48 bytes of a stack frame that has few to spare.
        let flags = unsafe { (*entry).flags };
        let hairpin = flags & CT_F_REDIRECT != 0;
        if !hairpin && !fast_path {
            // Translated at the uplink, after the host has routed it.
            return Ok(NEXT);
        }
        let t = unsafe { (*entry).translated(&key) };
        let mut r = Route::NONE;
        let hop = Hop {
            src: t.src_addr,
            dst: t.dst_addr,
            must: hairpin,
            now,
        };
        if !forward::route_cached(ctx, &ip, &hop, entry, &mut r) {
            if hairpin {
                return Err(DropReason::NoRoute);
            }
            forward::fallback(ctx);
            return Ok(NEXT);
        }
        conntrack::track(&key, entry, ctx.len(), tcp_flags, now);
        let e = unsafe { &*entry };
        nat::apply(ctx, &ip, &key, e, now).get()?;
        stats::count_network(
            ctx,
            e.net_id,
            e.flags & netfast_common::conntrack::CT_F_INWARD != 0,
        );
        return forward::forward(ctx, &r);
    }
    if let Some(target) = publish::published(ip.dst, dport, ip.proto)
        && let Some(net) = NETFAST_NETWORKS.get(Key::new(32, ip.src))
        && net.ext_addr != 0
    {
        if !publish::allowed(&target, ip.src) {
            return Err(DropReason::NotAllowed);
        }
        let net = *net;
        let mut r = Route::NONE;
        let hop = Hop {
            src: net.ext_addr,
            dst: target.addr,
            must: true,
            now,
        };
        if !route(ctx, &ip, &hop, &mut r) {
            return Err(DropReason::NoRoute);
        }
        let p = Pkt {
            ip,
            key,
            tcp_flags,
            now,
        };
        if publish::hairpin_new_flow(ctx, &p, &target, &net).get()? {
            nat::apply_opened(ctx, &p)?;
            return forward::forward(ctx, &r);
        }
        return Ok(NEXT);
    }
    if fast_path {
        return new_masquerade_flow(
            ctx,
            &Pkt {
                ip,
                key,
                tcp_flags,
                now,
            },
        );
    }
    isolated(&ip)
}

/// The fast path opens a masqueraded flow at its first packet, so that none of its packets
/// meets the host's FORWARD chain (whose policy Docker leaves at DROP): when the packet's
/// source is a masqueraded network and its route leaves through that network's uplink.
#[inline(always)]
fn new_masquerade_flow(ctx: &TcContext, p: &Pkt) -> Result<i32, DropReason> {
    let ip = &p.ip;
    let Some(net) = NETFAST_NETWORKS.get(Key::new(32, ip.src)).copied() else {
        return isolated(ip);
    };
    if net.flags & NET_F_MASQUERADE == 0 {
        return isolated(ip);
    }
    let mut r = Route::NONE;
    let hop = Hop {
        src: net.ext_addr,
        dst: ip.dst,
        must: false,
        now: p.now,
    };
    if !route(ctx, ip, &hop, &mut r) {
        forward::fallback(ctx);
        return isolated(ip);
    }
    // Not towards the uplink (the host, another bridge): not masquerade's.
    if r.kind == forward::PEER || r.ifindex != net.uplink_ifindex {
        return isolated(ip);
    }
    nat::snat_new_flow(ctx, p, &net).get()?;
    nat::apply_opened(ctx, p)?;
    forward::forward(ctx, &r)
}
