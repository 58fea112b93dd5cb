//! Published ports: finding the publication a packet is for, checking its allow-list, and
//! opening the flow (DNAT from outside; DNAT and masquerade together for hairpin).

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    config::{DpConfig, NetInfo},
    conntrack::{
        CT_F_INWARD, CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_PUBLISHED, CT_F_REDIRECT, CT_F_REPLY,
        CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtEntry, CtKey, FwdCache, PROTO_TCP, PROTO_UDP,
        TcpFlags, TcpState, tcp_next, timeout,
    },
    nat::mapping_slack,
    publish::{AllowKey, PubKey, PubTarget},
};

use crate::outcome::Outcome;
use crate::{
    conntrack,
    maps::{NETFAST_ALLOW, NETFAST_HOST_ADDRS, NETFAST_PUBLISHED},
    nat,
    parse::Pkt,
};

/// The publication of `(addr, port)` for `proto`: one for that address, or one for every
/// address of the host when `addr` is one of them.
#[inline(always)]
pub fn published(addr: u32, port: u16, proto: u8) -> Option<PubTarget> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let exact = PubKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: map values are plain data, read at once.
    if let Some(t) = unsafe { NETFAST_PUBLISHED.get(exact) } {
        return Some(*t);
    }
    // SAFETY: as above.
    unsafe { NETFAST_HOST_ADDRS.get(addr) }?;
    let any = PubKey {
        addr: 0,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: as above.
    unsafe { NETFAST_PUBLISHED.get(any) }.copied()
}

/// Whether `client` may use the publication `target`.
#[inline(always)]
pub fn allowed(target: &PubTarget, client: u32) -> bool {
    target.rule == 0
        || NETFAST_ALLOW
            .get(Key::new(
                64,
                AllowKey {
                    rule: target.rule.to_be(),
                    addr: client,
                },
            ))
            .is_some()
}

/// The state a new flow starts in, and its timeouts; `None` when this packet may not open
/// a flow (a TCP segment that is not a SYN).
#[inline(always)]
fn opening(key: &CtKey, tcp_flags: u8, cfg: &DpConfig) -> Option<(TcpState, u32)> {
    if key.proto != PROTO_TCP {
        return Some((TcpState::None, timeout(cfg, key.proto, TcpState::None)));
    }
    let tcp = TcpFlags::from_byte(tcp_flags);
    if !tcp.syn || tcp.ack || tcp.rst {
        return None;
    }
    let state = tcp_next(TcpState::None, tcp, false, 0).0;
    Some((state, timeout(cfg, key.proto, state)))
}

/// A client from outside opens a flow to a published port: its destination becomes the
/// container, and the container's replies get the published address and port back.
/// False when the packet cannot open a flow (it goes to the host, which answers as usual).
#[inline(never)]
pub fn dnat_new_flow(ctx: &TcContext, p: &Pkt, target: &PubTarget) -> Outcome {
    Outcome::from(try_dnat_new_flow(ctx, p, target))
}

#[inline(always)]
fn try_dnat_new_flow(ctx: &TcContext, p: &Pkt, target: &PubTarget) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);
    let cfg = &crate::conntrack::config();

    let Some((state, t)) = opening(key, tcp_flags, cfg) else {
        return Ok(0);
    };
    let pair = conntrack::scratch()?;
    pair.orig = CtEntry {
        expires: now + t,
        created: now,
        src_addr: 0,
        src_port: 0,
        dst_addr: target.addr,
        dst_port: target.port,
        flags: CT_F_REWRITE_DST | CT_F_PUBLISHED | CT_F_INWARD,
        tcp_state: state as u8,
        _pad: 0,
        net_id: target.net_id,
        _pad2: [0; 2],
        map_expires: 0,
        packets: 1,
        bytes: u64::from(ctx.len()),
        fwd: FwdCache::EMPTY,
    };
    pair.reply = CtEntry {
        src_addr: key.dst_addr,
        src_port: key.dst_port,
        dst_addr: 0,
        dst_port: 0,
        flags: CT_F_REWRITE_SRC | CT_F_PUBLISHED | CT_F_REPLY,
        packets: 0,
        bytes: 0,
        ..pair.orig
    };
    conntrack::insert_pair(key, &pair.orig, &pair.orig.peer_key(key), &pair.reply, now).get()?;
    Ok(1)
}

/// A container opens a flow to a published port of its own host (RFC 4787 REQ-9): the
/// destination becomes the serving container, and the source the container's masquerade
/// mapping, so that the server's replies come back through the host to be translated.
/// Both directions are forwarded by redirect (see `CT_F_REDIRECT`).
#[inline(never)]
pub fn hairpin_new_flow(ctx: &TcContext, p: &Pkt, target: &PubTarget, net: &NetInfo) -> Outcome {
    Outcome::from(try_hairpin_new_flow(ctx, p, target, net))
}

#[inline(always)]
fn try_hairpin_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    target: &PubTarget,
    net: &NetInfo,
) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);
    let cfg = &crate::conntrack::config();

    let Some((state, t)) = opening(key, tcp_flags, cfg) else {
        return Ok(0);
    };
    let expires = now + t;
    let until = expires + mapping_slack(t);
    let (bk, ext_port) = nat::mapping(ctx, key, net, cfg, now, until)?;
    let pair = conntrack::scratch()?;
    pair.orig = CtEntry {
        expires,
        created: now,
        src_addr: net.ext_addr,
        src_port: ext_port,
        dst_addr: target.addr,
        dst_port: target.port,
        flags: CT_F_REWRITE_SRC
            | CT_F_REWRITE_DST
            | CT_F_MASQ_SRC
            | CT_F_PUBLISHED
            | CT_F_INWARD
            | CT_F_REDIRECT,
        tcp_state: state as u8,
        _pad: 0,
        net_id: target.net_id,
        _pad2: [0; 2],
        map_expires: until,
        packets: 1,
        bytes: u64::from(ctx.len()),
        fwd: FwdCache::EMPTY,
    };
    pair.reply = CtEntry {
        src_addr: key.dst_addr,
        src_port: key.dst_port,
        dst_addr: key.src_addr,
        dst_port: key.src_port,
        flags: CT_F_REWRITE_SRC
            | CT_F_REWRITE_DST
            | CT_F_MASQ_DST
            | CT_F_PUBLISHED
            | CT_F_INWARD
            | CT_F_REDIRECT
            | CT_F_REPLY,
        packets: 0,
        bytes: 0,
        ..pair.orig
    };
    if let Err(reason) =
        conntrack::insert_pair(key, &pair.orig, &pair.orig.peer_key(key), &pair.reply, now).get()
    {
        nat::unuse_mapping(&bk, ext_port);
        return Err(reason);
    }
    Ok(1)
}
