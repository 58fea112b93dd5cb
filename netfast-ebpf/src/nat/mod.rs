//! Masquerade: deciding which packets are translated, rewriting headers, and carrying a
//! datagram's translation over to its later fragments. The mappings (external port claims,
//! bindings, the port search, their lifetime) are in `mapping`, the flow openers in `open`.

use aya_ebpf::{bindings::BPF_ANY, maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    config::{NET_F_MASQUERADE, NetInfo},
    conntrack::{CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtEntry, CtKey, PROTO_ICMP},
    maps::FRAGMENT_TIMEOUT,
    nat::{FragEntry, FragKey},
};

use crate::outcome::Outcome;
use crate::{
    csum,
    maps::{NETFAST_FRAGS, NETFAST_NETWORKS},
    parse::{ETH_HLEN, Frag, IP_CSUM, Ipv4, Side, load, port_offsets, ptr_at, store},
};

mod mapping;
mod open;

pub use mapping::{
    HOST_FLOWS, extend_mapping, held_by_a_container, live_claim, mapping, outlive_closed,
    release_mapping, retake_mapping,
};
pub use open::{
    FILTERED, apply_opened, can_open, eif_new_flow, insert_new, mapping_hairpin_new_flow,
    new_flow_times, opened, opening_times, snat_new_flow, times_of,
};

/// The ifindex of the device the hook runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel passed in; ifindex is a readable field.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The masqueraded network `src` belongs to, when the packet is leaving through that
/// network's uplink: only then is it translated.
#[inline(always)]
pub fn masq_network(src: u32, ifindex: u32) -> Option<NetInfo> {
    let net = NETFAST_NETWORKS.get(Key::new(32, src))?;
    if net.flags & NET_F_MASQUERADE != 0 && net.uplink_ifindex == ifindex {
        Some(*net)
    } else {
        None
    }
}

/// Rewrites the source or destination (`side`) address in the IPv4 header and its checksum
/// only; returns the old address.
#[inline(always)]
pub fn rewrite_l3(ctx: &TcContext, side: Side, addr: u32) -> Result<u32, DropReason> {
    let addr_off = ETH_HLEN + side.ip_addr_off();
    let old: u32 = load(ctx, addr_off)?;
    if old != addr {
        store(ctx, addr_off, addr)?;
        let check: u16 = load(ctx, ETH_HLEN + IP_CSUM)?;
        store(ctx, ETH_HLEN + IP_CSUM, csum::replace32(check, old, addr))?;
    }
    Ok(old)
}

/// Rewrites the source or destination (`side`) address and port of the packet, with
/// every checksum; a later fragment gets its address only.
#[inline(always)]
fn rewrite_side(
    ctx: &TcContext,
    ip: &Ipv4,
    side: Side,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let old_addr = rewrite_l3(ctx, side, addr)?;
    if ip.frag == Frag::Later {
        return Ok(());
    }
    let (port_at, csum_off) = port_offsets(ip.proto, side);
    // The ports and the ICMP identifier are all in the first 8 bytes of the L4 header:
    // check those once, then reach the field inside them (a 2-byte field checked on its own
    // at a variable offset gets split into byte loads the verifier cannot bound).
    let h = ptr_at::<[u8; 8]>(ctx, ip.l4())?;
    // SAFETY: `h` is in bounds (checked by ptr_at) and port_at + 1 < 8.
    let old_port = unsafe { u16::from_ne_bytes([(*h)[port_at], (*h)[port_at + 1]]) };
    if old_port != port {
        let bytes = port.to_ne_bytes();
        // SAFETY: as above.
        unsafe {
            (*h)[port_at] = bytes[0];
            (*h)[port_at + 1] = bytes[1];
        }
    }
    let csum_off = ip.l4() + csum_off;
    // The checksum helpers come last: they invalidate every packet pointer.
    if old_addr != addr && ip.proto != PROTO_ICMP {
        csum::l4_addr(ctx, ip.proto, csum_off, old_addr, addr)?;
    }
    if old_port != port {
        csum::l4_word(ctx, ip.proto, csum_off, old_port, port)?;
    }
    Ok(())
}

/// Applies an entry's rewrites to the packet keyed `key`, and records a first fragment's
/// translation for the fragments that follow.
// Its own BPF function: both the per-packet path and the flow openers call it, and inlined
// it would make both stack frames too large for the two to nest.
#[inline(never)]
pub fn apply(ctx: &TcContext, ip: &Ipv4, key: &CtKey, e: &CtEntry, now: u32) -> Outcome {
    Outcome::from(try_apply(ctx, ip, key, e, now))
}

#[inline(always)]
fn try_apply(
    ctx: &TcContext,
    ip: &Ipv4,
    key: &CtKey,
    e: &CtEntry,
    now: u32,
) -> Result<u32, DropReason> {
    if e.flags & CT_F_REWRITE_SRC != 0 {
        rewrite_side(ctx, ip, Side::Src, e.src_addr, e.src_port)?;
    }
    if e.flags & CT_F_REWRITE_DST != 0 {
        rewrite_side(ctx, ip, Side::Dst, e.dst_addr, e.dst_port)?;
    }
    if ip.frag == Frag::First {
        let t = e.translated(key);
        let fk = FragKey {
            src_addr: ip.src,
            dst_addr: ip.dst,
            id: ip.id,
            proto: ip.proto,
            _pad: 0,
        };
        let entry = FragEntry {
            src_addr: t.src_addr,
            dst_addr: t.dst_addr,
            expires: now + FRAGMENT_TIMEOUT,
            _pad: 0,
        };
        // A lost record only costs the later fragments, which are then counted as drops.
        let _ = NETFAST_FRAGS.insert(fk, entry, BPF_ANY as u64);
    }
    Ok(1)
}

/// Gives a later fragment the addresses its first fragment got, wherever the first one was
/// translated; returns the fragment's new (source, destination), or `None` when no first
/// fragment of its datagram was translated. A translated fragment is keyed differently, so
/// no hook translates it twice.
#[inline(always)]
pub fn later_fragment(
    ctx: &TcContext,
    ip: &Ipv4,
    now: u32,
) -> Result<Option<(u32, u32)>, DropReason> {
    let key = FragKey {
        src_addr: ip.src,
        dst_addr: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(entry) = NETFAST_FRAGS.get_ptr(&key) else {
        return Ok(None);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let entry = unsafe { *entry };
    if entry.expires < now {
        return Ok(None);
    }
    rewrite_l3(ctx, Side::Src, entry.src_addr)?;
    rewrite_l3(ctx, Side::Dst, entry.dst_addr)?;
    Ok(Some((entry.src_addr, entry.dst_addr)))
}
