//! Published ports: finding the publication a packet is for, checking its allow-list, and
//! opening the flow (DNAT from outside; DNAT and masquerade together for hairpin).

use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::lpm_trie::Key, programs::TcContext};
use netfast_common::{
    DropReason,
    config::NetInfo,
    conntrack::{
        CT_F_FROM_INSIDE, CT_F_INWARD, CT_F_MASQ_SRC, CT_F_PUBLISHED, CT_F_REDIRECT,
        CT_F_REWRITE_DST, CT_F_REWRITE_SRC, FlowTimes, NewEntry, PROTO_TCP, PROTO_UDP, TcpState,
    },
    nat::port_candidate,
    publish::{AllowKey, PubKey, PubTarget},
};

use crate::conntrack::{Opening, Table};
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
    // 127.0.0.0/8 is the host's own: a port published there is reached only through the
    // socket programs, never by a packet (moby#45610).
    if (proto != PROTO_TCP && proto != PROTO_UDP) || loopback(addr) {
        return None;
    }
    lookup(addr, port, proto, || host_addr(addr))
}

/// The publication of `(port, proto)` on `addr`, else the one on every address when
/// `on_host` says that `addr` is one of the host's.
#[inline(always)]
pub fn lookup(
    addr: u32,
    port: u16,
    proto: u8,
    on_host: impl FnOnce() -> bool,
) -> Option<PubTarget> {
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
    if !on_host() {
        return None;
    }
    let any = PubKey { addr: 0, ..exact };
    // SAFETY: as above.
    unsafe { NETFAST_PUBLISHED.get(any) }.copied()
}

/// Whether `addr` (network byte order) is one of the host's addresses.
#[inline(always)]
pub fn host_addr(addr: u32) -> bool {
    // SAFETY: map values are plain data.
    unsafe { NETFAST_HOST_ADDRS.get(addr) }.is_some()
}

/// Whether `addr` (network byte order) is in 127.0.0.0/8.
#[inline(always)]
pub fn loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
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

/// A client from outside opens a flow to a published port: its destination becomes the
/// container, and the container's replies get the published address and port back.
/// False when the packet cannot open a flow (it goes to the host, which answers as usual).
#[inline(never)]
pub fn dnat_new_flow(ctx: &TcContext, p: &Pkt, target: &PubTarget) -> Outcome {
    Outcome::from(try_dnat_new_flow(ctx, p, target))
}

#[inline(always)]
fn try_dnat_new_flow(ctx: &TcContext, p: &Pkt, target: &PubTarget) -> Result<u32, DropReason> {
    let (key, now) = (&p.key, p.now);

    // A segment that cannot open a flow may still belong to one that lost its original
    // entry: it restores it, or goes to the host.
    let (times, may_open) = match nat::opening_times(p) {
        Some(times) => (times, Opening::New),
        None => (nat::times_of(p, TcpState::Established), Opening::RepairOnly),
    };
    let pair = conntrack::scratch()?;
    let orig = NewEntry {
        flags: CT_F_REWRITE_DST | CT_F_PUBLISHED | CT_F_INWARD,
        src: (0, 0),
        dst: (target.addr, target.port),
        net_id: target.net_id,
        // No mapping: a published port's flows keep none alive.
        times: FlowTimes {
            map_expires: 0,
            ..times
        },
        bytes: ctx.len(),
    };
    conntrack::start_pair(ctx, p, pair, &orig, CT_F_PUBLISHED | CT_F_FROM_INSIDE)?;
    let inserted = conntrack::insert_pair(key, now, may_open, Table::Inbound);
    match inserted.value()? {
        conntrack::ABSENT => return Ok(0),
        conntrack::CLASH => {}
        _ => return nat::opened(ctx, inserted),
    }
    // The container already talks to this client's address and port through another
    // publication (8080→ct:80 and 8081→ct:80 from one source port): its replies could not
    // tell the two apart. As Linux does, the client's source port is translated too.
    pair.orig.flags |= CT_F_REWRITE_SRC;
    pair.orig.src_addr = key.src_addr;
    pair.reply = pair.orig.reply(key, CT_F_PUBLISHED | CT_F_FROM_INSIDE);
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    for attempt in 1..=CLASH_TRIES {
        let (port_min, port_max) = conntrack::port_range();
        let port = port_candidate(attempt, 0, random, port_min, port_max);
        pair.orig.src_port = port.to_be();
        let inserted = conntrack::insert_pair(key, now, Opening::New, Table::Inbound);
        if inserted.value()? != conntrack::CLASH {
            return nat::opened(ctx, inserted);
        }
    }
    Err(DropReason::CtInsertFailed)
}

/// Source ports tried for a client whose flow clashes with another (see `dnat_new_flow`).
const CLASH_TRIES: u32 = 8;

/// A container opens a flow to a published port of its own host (RFC 4787 REQ-9): the
/// destination becomes the serving container, and the source the container's masquerade
/// mapping, so that the server's replies come back through the host to be translated.
/// Both directions are forwarded by redirect (see `CT_F_REDIRECT`).
#[inline(never)]
pub fn hairpin_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    target: &PubTarget,
    net: &NetInfo,
    ext_port: u16,
) -> Outcome {
    Outcome::from(try_hairpin_new_flow(ctx, p, target, net, ext_port))
}

#[inline(always)]
fn try_hairpin_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    target: &PubTarget,
    net: &NetInfo,
    ext_port: u16,
) -> Result<u32, DropReason> {
    // The pair first: the times are not kept across its lookup, on the stack.
    let pair = conntrack::scratch()?;
    let Some(times) = nat::opening_times(p) else {
        return Ok(0);
    };
    let orig = NewEntry {
        flags: CT_F_REWRITE_SRC
            | CT_F_REWRITE_DST
            | CT_F_MASQ_SRC
            | CT_F_PUBLISHED
            | CT_F_INWARD
            | CT_F_REDIRECT
            | CT_F_FROM_INSIDE,
        src: (net.ext_addr, ext_port),
        dst: (target.addr, target.port),
        net_id: net.id,
        times,
        bytes: ctx.len(),
    };
    let reply_flags = CT_F_PUBLISHED | CT_F_INWARD | CT_F_REDIRECT | CT_F_FROM_INSIDE;
    conntrack::start_pair(ctx, p, pair, &orig, reply_flags)?;
    // Each direction crosses its own sender's bridge.
    pair.reply.net_id = target.net_id;
    nat::insert_new(ctx, p, Table::Main)
}
