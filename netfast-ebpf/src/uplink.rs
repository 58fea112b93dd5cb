//! The uplink's programs: masquerade on the way out, its replies and published ports on the
//! way in, and what must not cross (container addresses leaking out, direct access in).

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason,
    config::{FILTERING_ENDPOINT_INDEPENDENT, NET_F_MASQUERADE},
    conntrack::{CT_F_INWARD, CT_F_REDIRECT, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtKey},
    verdict::NEXT,
};

use crate::{
    conntrack, icmp,
    maps::NETFAST_NETWORKS,
    nat,
    parse::{self, Frag, Ipv4, L4},
    publish, stats,
};

/// What to drop rather than pass untranslated: on the way out, anything from a masqueraded
/// network (it would leak a container address, `reason`); on the way in, anything straight
/// to a masqueraded container (direct access, as Docker refuses it).
#[inline(always)]
fn forbidden(
    ctx: &TcContext,
    egress: bool,
    ip: &Ipv4,
    reason: DropReason,
) -> Result<i32, DropReason> {
    if egress {
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

#[inline(always)]
pub fn try_uplink(ctx: &TcContext, egress: bool) -> Result<i32, DropReason> {
    parse::linearize_headers(ctx);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(NEXT);
    };
    let now = conntrack::now();
    if ip.frag == Frag::Later {
        if nat::later_fragment(ctx, &ip, false, now)? {
            return Ok(NEXT);
        }
        return forbidden(ctx, egress, &ip, DropReason::FragmentWithoutFirst);
    }
    let (sport, dport, tcp_flags) = match parse::l4(ctx, &ip)? {
        L4::Flow {
            sport,
            dport,
            tcp_flags,
        } => (sport, dport, tcp_flags),
        L4::IcmpError => {
            if icmp::translate_error(ctx, &ip, now)? {
                return Ok(NEXT);
            }
            return forbidden(ctx, egress, &ip, DropReason::IcmpErrorWithoutFlow);
        }
        L4::Other => return forbidden(ctx, egress, &ip, DropReason::UnsupportedProtocol),
    };
    let key = CtKey::new(ip.src, ip.dst, sport, dport, ip.proto);
    let cfg = conntrack::config();
    if let Some(entry) = conntrack::lookup(&key, now) {
        // SAFETY: a live map value pointer from `lookup`; copied before the packet changes.
        let e = unsafe { *entry };
        // Hairpin flows are the bridge's; a tuple of theirs seen here is another packet.
        if e.flags & CT_F_REDIRECT == 0 {
            conntrack::track(&key, entry, ctx.len(), tcp_flags, now, &cfg);
            if e.flags & (CT_F_REWRITE_SRC | CT_F_REWRITE_DST) != 0 {
                nat::apply(ctx, &ip, &key, &e, now)?;
                stats::count_network(ctx, e.net_id, e.flags & CT_F_INWARD != 0);
            }
            return Ok(NEXT);
        }
    }
    if egress {
        if let Some(net) = nat::masq_network(ip.src, nat::ifindex(ctx)) {
            nat::snat_new_flow(ctx, &ip, &key, tcp_flags, &net, &cfg, now)?;
        }
        return Ok(NEXT);
    }
    if let Some(target) = publish::published(ip.dst, dport, ip.proto) {
        if !publish::allowed(&target, ip.src) {
            return Err(DropReason::NotAllowed);
        }
        // A packet that cannot open a flow (a stray ACK) is the host's to answer.
        publish::dnat_new_flow(ctx, &ip, &key, tcp_flags, &target, &cfg, now)?;
        return Ok(NEXT);
    }
    if cfg.filtering == FILTERING_ENDPOINT_INDEPENDENT
        && nat::eif_new_flow(ctx, &ip, &key, tcp_flags, &cfg, now)?
    {
        return Ok(NEXT);
    }
    forbidden(ctx, egress, &ip, DropReason::DirectAccess)
}
