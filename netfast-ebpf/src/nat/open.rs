//! The flow openers of masquerade: a container's first packet out, a hairpin to another
//! container's mapping, and a packet from outside to a mapping (endpoint-independent
//! filtering); each builds its flow's pair, inserts it, and leaves the translation to its
//! caller.

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason,
    config::NetInfo,
    conntrack::{
        CT_F_AWAIT_REPLY, CT_F_FROM_INSIDE, CT_F_INWARD, CT_F_MASQ_DST, CT_F_MASQ_SRC,
        CT_F_REDIRECT, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CT_F_TWO_MAPPINGS, FlowTimes, NewEntry,
        PROTO_TCP, PROTO_UDP, TcpFlags, TcpState, tcp_next,
    },
    nat::{NatBindKey, NatBinding, NatClaimKey},
};

use super::{
    apply,
    mapping::{HOST_FLOWS, host_uses, live_claim, load_word, reuse_mapping},
};
use crate::conntrack::{Opening, Table};
use crate::outcome::Outcome;
use crate::{
    conntrack,
    maps::{NETFAST_NAT_BIND, NETFAST_NAT_CLAIM},
    parse::Pkt,
    stats,
};

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

/// The first packet of a flow from a masqueraded network leaving through its uplink: map
/// its source endpoint (endpoint-independent), track the flow, translate the packet.
// Its own BPF function: a new flow's entries would not fit the caller's stack frame.
#[inline(never)]
pub fn snat_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo, ext_port: u16) -> Outcome {
    Outcome::from(try_snat_new_flow(ctx, p, net, ext_port))
}

#[inline(always)]
fn try_snat_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    net: &NetInfo,
    ext_port: u16,
) -> Result<u32, DropReason> {
    let times = new_flow_times(p)?;
    // The replies of a container's flow go to the container; those of a host flow (see
    // `host_new_flow`) to the host.
    let reply_flags = if net.id == HOST_FLOWS { 0 } else { CT_F_INWARD };
    let pair = conntrack::scratch()?;
    let orig = NewEntry {
        flags: CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_FROM_INSIDE,
        src: (net.ext_addr, ext_port),
        dst: (0, 0),
        net_id: net.id,
        times,
        bytes: ctx.len(),
    };
    conntrack::start_pair(ctx, p, pair, &orig, reply_flags)?;
    // A flow that fails to open leaves its mapping counted one flow too many: it then lives
    // to its expiry, never shorter than a flow that uses it.
    insert_new(ctx, p, Table::Main)
}

/// Inserts the new flow in this CPU's scratch pair into `table`: what `opened` answers.
#[inline(always)]
pub fn insert_new(ctx: &TcContext, p: &Pkt, table: Table) -> Result<u32, DropReason> {
    opened(
        ctx,
        conntrack::insert_pair(&p.key, p.now, Opening::New, table),
    )
}

/// The state a masqueraded flow opened by `p` starts in, when its entries expire, and until
/// when its mapping lives: what the mapping is claimed with (see `mapping`) before the flow
/// opens (a TCP RST opens none: it would leak a container's address).
#[inline(always)]
pub fn new_flow_times(p: &Pkt) -> Result<FlowTimes, DropReason> {
    let tcp = TcpFlags::from_byte(p.tcp_flags);
    let state = if p.key.proto == PROTO_TCP {
        if tcp.rst {
            return Err(DropReason::TcpRstWithoutFlow);
        }
        tcp_next(TcpState::None, tcp, false, 0).0
    } else {
        TcpState::None
    };
    Ok(times_of(p, state))
}

/// The state a flow `p` opens starts in; `None` when `p` may not open one (a TCP segment
/// that is not a SYN without ACK or RST).
#[inline(always)]
pub fn opening_state(p: &Pkt) -> Option<TcpState> {
    let tcp = TcpFlags::from_byte(p.tcp_flags);
    match p.key.proto {
        PROTO_TCP if tcp.opens() => Some(tcp_next(TcpState::None, tcp, false, 0).0),
        PROTO_TCP => None,
        _ => Some(TcpState::None),
    }
}

/// Whether the packet `p` may open a flow: a TCP SYN, or any UDP or ICMP echo.
#[inline(always)]
pub fn can_open(p: &Pkt) -> bool {
    opening_state(p).is_some()
}

/// The state and times of the flow `p` opens; `None` when it may not open one.
#[inline(always)]
pub fn opening_times(p: &Pkt) -> Option<FlowTimes> {
    opening_state(p).map(|state| times_of(p, state))
}

/// The times of a flow `p` opens in `state`.
#[inline(always)]
pub fn times_of(p: &Pkt, state: TcpState) -> FlowTimes {
    FlowTimes::opening(state, p.now, conntrack::timeout_of(p.key.proto, state))
}

/// A container sends to an external endpoint of its own host that a live masquerade
/// mapping holds — another container's, or its own (RFC 4787 REQ-9, hairpinning): the
/// packet goes to that mapping's owner, from the sender's own external endpoint, so that the
/// receiver sees what an outside peer would (ICE between containers of one host depends on
/// it). Between networks the receiver's filtering applies: with address-and-port-dependent
/// filtering, the way opens only once the receiver has sent to the sender's external
/// endpoint. Returns 0 when no live mapping holds the destination (or the packet cannot
/// open a flow), 1 when the packet goes on, `FILTERED` when it waits.
#[inline(never)]
pub fn mapping_hairpin_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo, ext_port: u16) -> Outcome {
    Outcome::from(try_mapping_hairpin_new_flow(ctx, p, net, ext_port))
}

/// `mapping_hairpin_new_flow`: the flow is open, the packet waits for the receiver's.
pub const FILTERED: u32 = 2;

#[inline(always)]
fn try_mapping_hairpin_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    net: &NetInfo,
    ext_port: u16,
) -> Result<u32, DropReason> {
    let (key, now) = (&p.key, p.now);
    let Some(claim) = live_claim(key.dst_addr, key.dst_port, key.proto, now) else {
        return Ok(0);
    };
    let Some(times) = opening_times(p) else {
        return Ok(0);
    };
    // The receiver's mapping, one flow more; then the sender's own.
    let receiver = NatBindKey {
        int_addr: claim.int_addr(),
        ext_addr: key.dst_addr,
        int_port: claim.int_port(),
        proto: key.proto,
        _pad: 0,
    };
    if reuse_mapping(&receiver, claim.net_id(), now, times.map_expires).value()?
        != u32::from(key.dst_port)
    {
        return Ok(0);
    }
    // Within a network, containers reach each other on their bridge anyway: a hairpin
    // between them is not filtered (RFC 5780's hairpinning test sends from a second port of
    // the same host). Across networks, the receiver's filtering applies as it would to an
    // outside peer, so that hairpinning opens no way around the networks' isolation.
    let same_network = claim.net_id() == net.id;
    let wait = !same_network && !conntrack::endpoint_independent();
    let pair = conntrack::scratch()?;
    let orig = NewEntry {
        flags: CT_F_REWRITE_SRC
            | CT_F_REWRITE_DST
            | CT_F_MASQ_SRC
            | CT_F_INWARD
            | CT_F_REDIRECT
            | CT_F_FROM_INSIDE
            | CT_F_TWO_MAPPINGS
            | if wait { CT_F_AWAIT_REPLY } else { 0 },
        src: (net.ext_addr, ext_port),
        dst: (claim.int_addr(), claim.int_port()),
        net_id: net.id,
        times,
        bytes: ctx.len(),
    };
    let reply_flags = CT_F_INWARD | CT_F_REDIRECT | CT_F_FROM_INSIDE | CT_F_TWO_MAPPINGS;
    conntrack::start_pair(ctx, p, pair, &orig, reply_flags)?;
    // The receiver's packets leave through the receiver's own mapping (the mirror of the
    // original's would name the sender's), and cross the receiver's bridge.
    pair.reply.flags = (pair.reply.flags & !CT_F_MASQ_DST) | CT_F_MASQ_SRC;
    pair.reply.net_id = claim.net_id();
    insert_new(ctx, p, Table::Main)?;
    Ok(if wait { FILTERED } else { 1 })
}

/// What an opener returns once `insert_pair` has answered: 1 when the scratch pair's
/// original entry is the flow's (new, joined or repaired), for the caller to translate with.
#[inline(always)]
pub fn opened(ctx: &TcContext, o: Outcome) -> Result<u32, DropReason> {
    match o.value()? {
        conntrack::CLASH => Err(DropReason::CtInsertFailed),
        conntrack::REPAIRED => {
            stats::count_event(netfast_common::stats::Event::CtRepaired, ctx.len());
            Ok(1)
        }
        conntrack::INSERTED_INBOUND => {
            stats::count_event(netfast_common::stats::Event::InboundOpened, ctx.len());
            Ok(1)
        }
        _ => Ok(1),
    }
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
    let (key, now) = (&p.key, p.now);
    // UDP, or a TCP SYN.
    let state = match opening_state(p) {
        Some(state) if key.proto == PROTO_UDP || key.proto == PROTO_TCP => state,
        _ => return Ok(0),
    };
    let ck = NatClaimKey::new(key.dst_addr, key.dst_port, key.proto);
    let Some(claim) = NETFAST_NAT_CLAIM.get_ptr(&ck) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let claim = unsafe { *claim };
    let bk = NatBindKey {
        int_addr: claim.int_addr(),
        ext_addr: key.dst_addr,
        int_port: claim.int_port(),
        proto: key.proto,
        _pad: 0,
    };
    // Checked before anything changes: the mapping must be alive, and this very port's.
    let Some(binding) = NETFAST_NAT_BIND.get_ptr(&bk) else {
        return Ok(0);
    };
    let b = NatBinding::from_word(load_word(binding.cast::<u64>()));
    if b.expires < now || b.ext_port != key.dst_port {
        return Ok(0);
    }
    // A packet for one of the host's own sockets (a service listening on the port, say) is
    // the host's, whatever mapping shares the port.
    if host_uses(
        ctx,
        key.proto,
        &(key.src_addr, key.src_port),
        &(key.dst_addr, key.dst_port),
        true,
    ) {
        return Ok(0);
    }
    let times = times_of(p, state);
    if reuse_mapping(&bk, claim.net_id(), now, times.map_expires).value()?
        != u32::from(key.dst_port)
    {
        return Ok(0);
    }
    let pair = conntrack::scratch()?;
    let orig = NewEntry {
        flags: CT_F_REWRITE_DST | CT_F_MASQ_DST | CT_F_INWARD,
        src: (0, 0),
        dst: (claim.int_addr(), claim.int_port()),
        net_id: claim.net_id(),
        times,
        bytes: ctx.len(),
    };
    conntrack::start_pair(ctx, p, pair, &orig, CT_F_FROM_INSIDE)?;
    insert_new(ctx, p, Table::Inbound)
}
