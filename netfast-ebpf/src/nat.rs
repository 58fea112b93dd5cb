//! Masquerade: deciding which packets are translated, claiming external ports, rewriting
//! headers, and carrying a datagram's translation over to its later fragments.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_get_prandom_u32, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    config::{DpConfig, NET_F_MASQUERADE, NetInfo},
    conntrack::{
        CT_F_INWARD, CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REDIRECT, CT_F_REPLY, CT_F_REWRITE_DST,
        CT_F_REWRITE_SRC, CtEntry, CtKey, FwdCache, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TcpFlags,
        TcpState, tcp_next, timeout,
    },
    maps::{FRAGMENT_TIMEOUT, NAT_PORT_TRIES},
    nat::{
        FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey, mapping_keys,
        mapping_slack, port_candidate,
    },
};

use crate::outcome::Outcome;
use crate::{
    conntrack, csum,
    maps::{NETFAST_FRAGS, NETFAST_NAT_BIND, NETFAST_NAT_CLAIM, NETFAST_NETWORKS},
    parse::{
        ETH_HLEN, Frag, IP_CSUM, IP_DST, IP_SRC, Ipv4, Pkt, load, port_offsets, ptr_at, store,
    },
    stats,
};

/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN: u32 = 10;

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

/// Rewrites the source (`src_side`) or destination address in the IPv4 header and its
/// checksum only; returns the old address.
#[inline(always)]
pub fn rewrite_l3(ctx: &TcContext, src_side: bool, addr: u32) -> Result<u32, DropReason> {
    let addr_off = ETH_HLEN + if src_side { IP_SRC } else { IP_DST };
    let old: u32 = load(ctx, addr_off)?;
    if old != addr {
        store(ctx, addr_off, addr)?;
        let check: u16 = load(ctx, ETH_HLEN + IP_CSUM)?;
        store(ctx, ETH_HLEN + IP_CSUM, csum::replace32(check, old, addr))?;
    }
    Ok(old)
}

/// Rewrites the source (`src_side`) or destination address and port of the packet, with
/// every checksum; a later fragment gets its address only.
#[inline(always)]
fn rewrite_side(
    ctx: &TcContext,
    ip: &Ipv4,
    src_side: bool,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let old_addr = rewrite_l3(ctx, src_side, addr)?;
    if ip.frag == Frag::Later {
        return Ok(());
    }
    let (port_at, csum_off) = port_offsets(ip.proto, src_side);
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
        rewrite_side(ctx, ip, true, e.src_addr, e.src_port)?;
    }
    if e.flags & CT_F_REWRITE_DST != 0 {
        rewrite_side(ctx, ip, false, e.dst_addr, e.dst_port)?;
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
            redirect: u8::from(e.flags & CT_F_REDIRECT != 0),
            _pad: [0; 3],
        };
        // A lost record only costs the later fragments, which are then counted as drops.
        let _ = NETFAST_FRAGS.insert(fk, entry, BPF_ANY as u64);
    }
    Ok(1)
}

/// Gives a later fragment the addresses its first fragment got, at the hook that translated
/// the first one (`at_bridge`: a redirected flow's). False when no first fragment of that
/// datagram was translated there.
#[inline(always)]
pub fn later_fragment(
    ctx: &TcContext,
    ip: &Ipv4,
    at_bridge: bool,
    now: u32,
) -> Result<bool, DropReason> {
    let key = FragKey {
        src_addr: ip.src,
        dst_addr: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(entry) = NETFAST_FRAGS.get_ptr(key) else {
        return Ok(false);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let entry = unsafe { *entry };
    if entry.expires < now || (entry.redirect != 0) != at_bridge {
        return Ok(false);
    }
    rewrite_l3(ctx, true, entry.src_addr)?;
    rewrite_l3(ctx, false, entry.dst_addr)?;
    Ok(true)
}

/// The external port of a live mapping for this internal endpoint, counted as used by one
/// more flow and kept alive until at least `until`.
#[inline(always)]
fn reuse_mapping(bk: &NatBindKey, now: u32, until: u32) -> Option<u16> {
    let binding = NETFAST_NAT_BIND.get_ptr_mut(bk)?;
    // SAFETY: map value pointers, valid for this program run.
    let b = unsafe { &mut *binding };
    if b.expires < now {
        return None;
    }
    let ck = NatClaimKey {
        ext_addr: bk.ext_addr,
        ext_port: b.ext_port,
        proto: bk.proto,
        _pad: 0,
    };
    let claim = NETFAST_NAT_CLAIM.get_ptr_mut(ck)?;
    // SAFETY: as above.
    let c = unsafe { &mut *claim };
    if c.int_addr != bk.int_addr || c.int_port != bk.int_port || c.expires < now {
        return None;
    }
    b.flows = b.flows.saturating_add(1);
    if b.expires < until {
        b.expires = until;
    }
    if c.expires < until {
        c.expires = until;
    }
    Some(b.ext_port)
}

/// Claims `ck` for `claim`'s endpoint: atomically when free; also when its holder has
/// expired, or is this very endpoint (its binding evicted by the LRU).
#[inline(always)]
fn claim_port(ck: &NatClaimKey, claim: &NatClaim, now: u32) -> bool {
    if NETFAST_NAT_CLAIM
        .insert(ck, claim, BPF_NOEXIST as u64)
        .is_ok()
    {
        return true;
    }
    let Some(held) = NETFAST_NAT_CLAIM.get_ptr(ck) else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let held = unsafe { *held };
    if held.expires >= now && (held.int_addr != claim.int_addr || held.int_port != claim.int_port) {
        return false;
    }
    let _ = NETFAST_NAT_CLAIM.remove(ck);
    NETFAST_NAT_CLAIM
        .insert(ck, claim, BPF_NOEXIST as u64)
        .is_ok()
}

/// Whether the host itself uses `(ext_addr, port)` towards `remote`: a TCP connection with
/// exactly that tuple, or a UDP socket bound to the port. Masquerade must not take such a
/// port, or the remote would see two conversations as one (iptables avoids it because host
/// flows share its conntrack table; here the kernel's socket tables are asked instead).
// Its own BPF function: the socket tuple takes stack, and this runs for new mappings only.
#[inline(never)]
fn host_uses(ctx: &TcContext, proto: u8, remote: &(u32, u16), ext_addr: u32, port: u16) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: remote.0,
                daddr: ext_addr,
                sport: remote.1,
                dport: port,
            },
        },
    };
    let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as i64 as u64;
    // SAFETY: the helpers take the context, a tuple on our stack, its size, and flags.
    let sk = unsafe {
        match proto {
            PROTO_TCP => bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, size, netns, 0),
            PROTO_UDP => bpf_sk_lookup_udp(ctx.skb.skb.cast(), &mut tuple, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // A listening socket only matched for lack of a connection: the tuple itself is free.
    // SAFETY: a non-null socket from the lookup, released below on every path.
    let used = proto == PROTO_UDP || unsafe { (*sk).state } != TCP_LISTEN;
    // SAFETY: the socket the lookup returned.
    unsafe { bpf_sk_release(sk.cast()) };
    used
}

/// A new mapping: the original port when free, else a walk through the configured range.
#[inline(always)]
fn new_mapping(
    ctx: &TcContext,
    bk: &NatBindKey,
    remote: (u32, u16),
    net_id: u16,
    cfg: &DpConfig,
    now: u32,
    until: u32,
) -> Result<u16, DropReason> {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let original = u16::from_be(bk.int_port);
    let claim = NatClaim {
        int_addr: bk.int_addr,
        int_port: bk.int_port,
        net_id,
        expires: until,
    };
    for attempt in 0..NAT_PORT_TRIES {
        let port = port_candidate(attempt, original, random, cfg.port_min, cfg.port_max);
        if port == 0 && bk.proto != PROTO_ICMP {
            continue;
        }
        let port = port.to_be();
        // Not a port the host uses itself, nor one it publishes.
        if host_uses(ctx, bk.proto, &remote, bk.ext_addr, port)
            || crate::publish::published(bk.ext_addr, port, bk.proto).is_some()
        {
            continue;
        }
        let ck = NatClaimKey {
            ext_addr: bk.ext_addr,
            ext_port: port,
            proto: bk.proto,
            _pad: 0,
        };
        if !claim_port(&ck, &claim, now) {
            continue;
        }
        let binding = NatBinding {
            ext_port: port,
            flows: 1,
            expires: until,
        };
        if NETFAST_NAT_BIND
            .insert(bk, binding, BPF_ANY as u64)
            .is_err()
        {
            let _ = NETFAST_NAT_CLAIM.remove(ck);
            return Err(DropReason::NatMappingFailed);
        }
        return Ok(port);
    }
    Err(DropReason::NatPortExhausted)
}

/// Undoes `reuse_mapping`/`new_mapping` for a flow that could not be inserted.
#[inline(always)]
pub fn unuse_mapping(bk: &NatBindKey, ext_port: u16) {
    if let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(bk) {
        // SAFETY: a map value pointer, valid for this program run.
        let b = unsafe { &mut *binding };
        b.flows = b.flows.saturating_sub(1);
        if b.flows == 0 {
            let _ = NETFAST_NAT_BIND.remove(bk);
            let ck = NatClaimKey {
                ext_addr: bk.ext_addr,
                ext_port,
                proto: bk.proto,
                _pad: 0,
            };
            let _ = NETFAST_NAT_CLAIM.remove(ck);
        }
    }
}

/// Keeps the mapping of a flow alive until `until`; returns the new high-water mark.
#[inline(always)]
pub fn extend_mapping(key: &CtKey, entry: &CtEntry, until: u32) -> u32 {
    let (bk, ck) = mapping_keys(key, entry);
    if let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(bk) {
        // SAFETY: a map value pointer, valid for this program run.
        let b = unsafe { &mut *binding };
        if b.expires < until && b.ext_port == ck.ext_port {
            b.expires = until;
        }
    }
    if let Some(claim) = NETFAST_NAT_CLAIM.get_ptr_mut(ck) {
        // SAFETY: as above.
        let c = unsafe { &mut *claim };
        if c.expires < until {
            c.expires = until;
        }
    }
    until
}

/// A TCP flow of the mapping has closed: one flow fewer; when it was the last, the mapping
/// lives only as long as this flow's entries (`until`).
#[inline(always)]
pub fn release_mapping(key: &CtKey, entry: &mut CtEntry, until: u32) {
    let (bk, ck) = mapping_keys(key, entry);
    let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(bk) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this program run. The count is not atomic: a
    // race leaves it too high, which only keeps the mapping until its own expiry.
    let b = unsafe { &mut *binding };
    b.flows = b.flows.saturating_sub(1);
    if b.flows != 0 || b.ext_port != ck.ext_port {
        return;
    }
    let until = until + mapping_slack(until.saturating_sub(conntrack::now()));
    b.expires = until;
    if let Some(claim) = NETFAST_NAT_CLAIM.get_ptr_mut(ck) {
        // SAFETY: as above.
        unsafe { (*claim).expires = until };
    }
    entry.map_expires = until;
}

/// Translates the packet that opened a flow: the flow's original entry is still in this
/// CPU's scratch pair. (The openers leave it to their caller, so that `apply` and the
/// openers' stack frames never nest.)
#[inline(always)]
pub fn apply_opened(ctx: &TcContext, p: &Pkt) -> Result<(), DropReason> {
    let pair = conntrack::scratch()?;
    apply(ctx, &p.ip, &p.key, &pair.orig, p.now).get()?;
    stats::count_network(ctx, pair.orig.net_id, pair.orig.flags & CT_F_INWARD != 0);
    Ok(())
}

/// The masquerade mapping of the source of `key` on the network's external address, counted
/// as used by one more flow: the live one, or a new one.
#[inline(always)]
pub fn mapping(
    ctx: &TcContext,
    key: &CtKey,
    net: &NetInfo,
    cfg: &DpConfig,
    now: u32,
    until: u32,
) -> Result<(NatBindKey, u16), DropReason> {
    let bk = NatBindKey {
        int_addr: key.src_addr,
        ext_addr: net.ext_addr,
        int_port: key.src_port,
        proto: key.proto,
        _pad: 0,
    };
    let port = match reuse_mapping(&bk, now, until) {
        Some(port) => port,
        None => new_mapping(
            ctx,
            &bk,
            (key.dst_addr, key.dst_port),
            net.id,
            cfg,
            now,
            until,
        )?,
    };
    Ok((bk, port))
}

/// The first packet of a flow from a masqueraded network leaving through its uplink: map
/// its source endpoint (endpoint-independent), track the flow, translate the packet.
// Its own BPF function: a new flow's entries would not fit the caller's stack frame.
#[inline(never)]
pub fn snat_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Outcome {
    Outcome::from(try_snat_new_flow(ctx, p, net))
}

#[inline(always)]
fn try_snat_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);
    let cfg = &crate::conntrack::config();

    let tcp = TcpFlags::from_byte(tcp_flags);
    let state = if key.proto == PROTO_TCP {
        if tcp.rst {
            return Err(DropReason::TcpRstWithoutFlow);
        }
        tcp_next(TcpState::None, tcp, false, 0).0
    } else {
        TcpState::None
    };
    let t = timeout(cfg, key.proto, state);
    let expires = now + t;
    let until = expires + mapping_slack(t);
    let (bk, ext_port) = mapping(ctx, key, net, cfg, now, until)?;
    let pair = conntrack::scratch()?;
    pair.orig = CtEntry {
        expires,
        created: now,
        src_addr: net.ext_addr,
        src_port: ext_port,
        dst_addr: 0,
        dst_port: 0,
        flags: CT_F_REWRITE_SRC | CT_F_MASQ_SRC,
        tcp_state: state as u8,
        _pad: 0,
        net_id: net.id,
        _pad2: [0; 2],
        map_expires: until,
        packets: 1,
        bytes: u64::from(ctx.len()),
        fwd: FwdCache::EMPTY,
    };
    let reply_key = pair.orig.peer_key(key);
    pair.reply = CtEntry {
        src_addr: 0,
        src_port: 0,
        dst_addr: key.src_addr,
        dst_port: key.src_port,
        flags: CT_F_REWRITE_DST | CT_F_REPLY | CT_F_MASQ_DST | CT_F_INWARD,
        packets: 0,
        bytes: 0,
        ..pair.orig
    };
    if let Err(reason) = conntrack::insert_pair(key, &pair.orig, &reply_key, &pair.reply, now).get()
    {
        unuse_mapping(&bk, ext_port);
        return Err(reason);
    }
    Ok(1)
}

/// Endpoint-independent filtering: the first packet from outside to a mapped external port,
/// from an endpoint the internal one never contacted, opens a flow to it. TCP only on SYN.
/// False when the packet is not for a live mapping.
#[inline(never)]
pub fn eif_new_flow(ctx: &TcContext, p: &Pkt) -> Outcome {
    Outcome::from(try_eif_new_flow(ctx, p))
}

#[inline(always)]
fn try_eif_new_flow(ctx: &TcContext, p: &Pkt) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);
    let cfg = &crate::conntrack::config();

    let tcp = TcpFlags::from_byte(tcp_flags);
    match key.proto {
        PROTO_UDP => {}
        PROTO_TCP if tcp.syn && !tcp.ack && !tcp.rst => {}
        _ => return Ok(0),
    }
    let ck = NatClaimKey {
        ext_addr: key.dst_addr,
        ext_port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    let Some(claim) = NETFAST_NAT_CLAIM.get_ptr(ck) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let claim = unsafe { *claim };
    if claim.expires < now {
        return Ok(0);
    }
    let state = if key.proto == PROTO_TCP {
        tcp_next(TcpState::None, tcp, false, 0).0
    } else {
        TcpState::None
    };
    let t = timeout(cfg, key.proto, state);
    let expires = now + t;
    let until = expires + mapping_slack(t);
    let bk = NatBindKey {
        int_addr: claim.int_addr,
        ext_addr: key.dst_addr,
        int_port: claim.int_port,
        proto: key.proto,
        _pad: 0,
    };
    if reuse_mapping(&bk, now, until) != Some(key.dst_port) {
        return Ok(0);
    }
    let pair = conntrack::scratch()?;
    pair.orig = CtEntry {
        expires,
        created: now,
        src_addr: 0,
        src_port: 0,
        dst_addr: claim.int_addr,
        dst_port: claim.int_port,
        flags: CT_F_REWRITE_DST | CT_F_MASQ_DST | CT_F_INWARD,
        tcp_state: state as u8,
        _pad: 0,
        net_id: claim.net_id,
        _pad2: [0; 2],
        map_expires: until,
        packets: 1,
        bytes: u64::from(ctx.len()),
        fwd: FwdCache::EMPTY,
    };
    let reply_key = pair.orig.peer_key(key);
    pair.reply = CtEntry {
        src_addr: key.dst_addr,
        src_port: key.dst_port,
        dst_addr: 0,
        dst_port: 0,
        flags: CT_F_REWRITE_SRC | CT_F_REPLY | CT_F_MASQ_SRC,
        packets: 0,
        bytes: 0,
        ..pair.orig
    };
    if let Err(reason) = conntrack::insert_pair(key, &pair.orig, &reply_key, &pair.reply, now).get()
    {
        unuse_mapping(&bk, key.dst_port);
        return Err(reason);
    }
    Ok(1)
}
