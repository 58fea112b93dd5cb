//! The bridge's ingress: packets from containers to the host. Hairpin flows (a container to
//! a port its own host publishes) are translated and forwarded here; containers of two
//! networks may not reach each other. Everything else goes on to the host's routing (and,
//! leaving, to the uplink's programs).

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    conntrack::{CT_F_REDIRECT, CtKey},
    verdict::NEXT,
};

use crate::{
    conntrack, forward,
    maps::NETFAST_NETWORKS,
    nat,
    parse::{self, Frag, Ipv4, L4},
    publish,
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
            return forward::redirect(ctx, ip.proto);
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
    if let Some(entry) = conntrack::lookup(&key, now) {
        // SAFETY: a live map value pointer from `lookup`; copied before the packet changes.
        let e = unsafe { *entry };
        // Only hairpin flows are translated here; the others at the uplink, after routing.
        if e.flags & CT_F_REDIRECT == 0 {
            return Ok(NEXT);
        }
        let cfg = conntrack::config();
        conntrack::track(&key, entry, ctx.len(), tcp_flags, now, &cfg);
        nat::apply(ctx, &ip, &key, &e, now)?;
        crate::stats::count_network(ctx, e.net_id, true);
        return forward::redirect(ctx, ip.proto);
    }
    if let Some(target) = publish::published(ip.dst, dport, ip.proto)
        && let Some(net) = NETFAST_NETWORKS.get(Key::new(32, ip.src))
        && net.ext_addr != 0
    {
        if !publish::allowed(&target, ip.src) {
            return Err(DropReason::NotAllowed);
        }
        let cfg = conntrack::config();
        let net = *net;
        if publish::hairpin_new_flow(ctx, &ip, &key, tcp_flags, &target, &net, &cfg, now)? {
            return forward::redirect(ctx, ip.proto);
        }
        return Ok(NEXT);
    }
    isolated(&ip)
}
