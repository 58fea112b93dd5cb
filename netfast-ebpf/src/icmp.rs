//! ICMP errors about translated flows (RFC 5508): destination unreachable (including
//! fragmentation needed), time exceeded and parameter problem carry the start of the packet
//! that caused them. That packet went out translated; the error must come back with the
//! translation undone — in its outer header, in the embedded header, and in every checksum —
//! so that traceroute and path-MTU discovery work from a container.

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason,
    conntrack::{
        CT_F_INWARD, CT_F_REDIRECT, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtKey, PROTO_ICMP,
        PROTO_TCP, PROTO_UDP,
    },
};

use crate::{
    conntrack, csum,
    nat::rewrite_l3,
    parse::{
        ETH_HLEN, IP_CSUM, IP_DST, IP_SRC, Ipv4, L4, L4Kind, Side, be16, be32, header, icmp, load,
        store,
    },
    stats,
};
use crate::{conntrack::Origin, outcome::Outcome};

/// Length of the ICMP error header before the embedded packet.
const ICMP_HLEN: usize = 8;

/// Translates an ICMP error about a tracked flow. False when it is about none (it may be for
/// the host itself; the caller decides). `at_bridge`: a container's error, at its bridge's
/// ingress, where a flow's entry serves only that bridge's network (an error about another
/// network's flow is dropped: `InterNetwork`), and where, with the fast path off, only a
/// hairpin's error is translated (the others go to the host's stack as sent, and the
/// uplink's egress translates them after routing, like their flows' packets).
// Its own BPF function: rare, and heavy on the stack.
#[inline(never)]
pub fn translate_error(
    ctx: &TcContext,
    ip: &Ipv4,
    now: u32,
    origin: Origin,
    at_bridge: bool,
) -> Outcome {
    Outcome::from(try_translate_error(ctx, ip, now, origin, at_bridge))
}

#[inline(always)]
fn try_translate_error(
    ctx: &TcContext,
    ip: &Ipv4,
    now: u32,
    origin: Origin,
    at_bridge: bool,
) -> Result<u32, DropReason> {
    crate::parse::linearize(ctx, crate::parse::ICMP_ERROR_LINEAR);
    // Where the IPv4 packet ends: bytes past it (a frame's padding) are not the message's,
    // and its checksum does not cover them.
    let ip_end = ETH_HLEN + usize::from(ip.tot_len);
    let inner = ip.l4() + ICMP_HLEN;
    let h = header::<20>(ctx, inner)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Ok(0);
    }
    let proto = h[9];
    let src = be32(&h, IP_SRC);
    let dst = be32(&h, IP_DST);
    let l4 = inner + ihl;
    // The quoted ports (or echo identifier) must lie inside the message.
    if l4 + 8 > ip_end {
        return Ok(0);
    }
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => {
            let ports = header::<4>(ctx, l4)?;
            (be16(&ports, 0), be16(&ports, 2))
        }
        PROTO_ICMP => match icmp(ctx, l4)? {
            L4 {
                kind: L4Kind::Flow,
                sport,
                dport,
                ..
            } => (sport, dport),
            _ => return Ok(0),
        },
        _ => return Ok(0),
    };
    // The embedded packet went out translated; a reply to it would match this entry, and
    // the error is undone the way that reply would be.
    let key = CtKey::new(dst, src, dport, sport, proto);
    let Some(entry) = conntrack::lookup(&key, now, origin)
        .or_else(|| conntrack::lookup_inbound(&key, now, origin))
    else {
        return Ok(0);
    };
    // An error goes to the source of the packet it quotes: one addressed elsewhere is about
    // no flow of ours, whatever it quotes (let through as translated, it would reach a
    // container from outside, or another network's).
    if ip.dst != key.dst_addr {
        return Ok(0);
    }
    // SAFETY: a live map value pointer from `lookup`; copied before the packet changes.
    let e = unsafe { *entry };
    if at_bridge {
        if !crate::bridge::of_this_bridge(ctx, e.net_id) {
            return Err(DropReason::InterNetwork);
        }
        if !conntrack::fast_path() && e.flags & CT_F_REDIRECT == 0 {
            return Ok(0);
        }
    }
    let quote = Quote {
        icmp_off: ip.l4(),
        inner,
        l4,
        ip_end,
        proto,
    };
    // The entry says how replies to the embedded packet are translated; the error is
    // translated the same way: its embedded packet (which went the other way) gets the
    // rewrites on the opposite sides, and its outer header too. A new source is the NAT's
    // address whoever sent the error (the quoted packet went inwards: the sender is a
    // container or the host, whose inside address must not leak, as MASQUERADE rewrites
    // it); a new destination leaves the sender's address as it is (an error from a router
    // outside keeps the router's address).
    if e.flags & CT_F_REWRITE_DST != 0 {
        rewrite_embedded(ctx, &quote, Side::Src, e.dst_addr, e.dst_port)?;
        rewrite_l3(ctx, Side::Dst, e.dst_addr)?;
    }
    if e.flags & CT_F_REWRITE_SRC != 0 {
        rewrite_embedded(ctx, &quote, Side::Dst, e.src_addr, e.src_port)?;
        rewrite_l3(ctx, Side::Src, e.src_addr)?;
    }
    stats::count_network(ctx, e.net_id, e.flags & CT_F_INWARD != 0);
    Ok(1)
}

/// Where the parts of an ICMP error are: its header, the embedded packet's IPv4 header and
/// L4 header, and the end of the IPv4 packet that carries it; and the embedded protocol.
struct Quote {
    icmp_off: usize,
    inner: usize,
    l4: usize,
    ip_end: usize,
    proto: u8,
}

/// Rewrites the embedded packet's source (or destination) address and port, its IPv4 and
/// L4 checksums where present, and the ICMP checksum for every word that changed. Every
/// change stays inside the ICMP message and is balanced by its checksum, so a
/// CHECKSUM_COMPLETE skb stays consistent without a helper.
#[inline(always)]
fn rewrite_embedded(
    ctx: &TcContext,
    quote: &Quote,
    side: Side,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let Quote {
        icmp_off,
        inner,
        l4,
        ip_end,
        proto,
    } = *quote;
    let icmp_csum_off = icmp_off + 2;
    let mut icmp_csum: u16 = load(ctx, icmp_csum_off)?;

    let addr_off = inner + side.ip_addr_off();
    let old_addr: u32 = load(ctx, addr_off)?;
    store(ctx, addr_off, addr)?;
    icmp_csum = csum::replace32(icmp_csum, old_addr, addr);
    let old_ip_csum: u16 = load(ctx, inner + IP_CSUM)?;
    let new_ip_csum = csum::replace32(old_ip_csum, old_addr, addr);
    store(ctx, inner + IP_CSUM, new_ip_csum)?;
    icmp_csum = csum::replace16(icmp_csum, old_ip_csum, new_ip_csum);

    match proto {
        PROTO_TCP | PROTO_UDP => {
            let port_off = l4 + side.port_off();
            let old_port: u16 = load(ctx, port_off)?;
            store(ctx, port_off, port)?;
            icmp_csum = csum::replace16(icmp_csum, old_port, port);
            // The embedded L4 checksum, when the error quoted enough of the packet to hold it.
            let l4_csum_off = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
            if l4_csum_off + 2 <= ip_end
                && let Ok(old) = load::<u16>(ctx, l4_csum_off)
            {
                let new = if proto == PROTO_UDP {
                    csum::udp_replace16(csum::udp_replace32(old, old_addr, addr), old_port, port)
                } else {
                    csum::replace16(csum::replace32(old, old_addr, addr), old_port, port)
                };
                store(ctx, l4_csum_off, new)?;
                icmp_csum = csum::replace16(icmp_csum, old, new);
            }
        }
        _ => {
            // An embedded ICMP echo: its identifier and its own checksum.
            let old_id: u16 = load(ctx, l4 + 4)?;
            store(ctx, l4 + 4, port)?;
            icmp_csum = csum::replace16(icmp_csum, old_id, port);
            if let Ok(old) = load::<u16>(ctx, l4 + 2) {
                // Inside the message: `l4 + 8 <= ip_end` was checked.
                let new = csum::replace16(old, old_id, port);
                store(ctx, l4 + 2, new)?;
                icmp_csum = csum::replace16(icmp_csum, old, new);
            }
        }
    }
    store(ctx, icmp_csum_off, icmp_csum)
}
