//! Connection tracking: one LRU hash map holds both directions of every flow.
//!
//! A flow is a pair of entries. Each is keyed by the tuple a packet carries *before*
//! translation at the hook that sees it, and says what to write into it: a new source
//! ([`CT_F_REWRITE_SRC`]: masquerade outbound, or the replies of a published port), a new
//! destination ([`CT_F_REWRITE_DST`]: a published port, or the replies of masquerade), or both
//! (hairpin). The other entry of the flow is keyed by the translated tuple, reversed
//! ([`CtEntry::peer_key`]).
//!
//! ICMP echo uses the identifier as a port: a request is keyed `(src, dst, id, 0)`, a reply
//! `(src, dst, 0, id)`, so that the two directions are each other's mirror.

use bytemuck::{Pod, Zeroable};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The tuple of a packet as a hook sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    /// Source address, network byte order (the packet's bytes).
    pub src_addr: u32,
    /// Destination address, network byte order.
    pub dst_addr: u32,
    /// Source port or ICMP echo-request identifier, network byte order; 0 for echo replies.
    pub src_port: u16,
    /// Destination port or ICMP echo-reply identifier, network byte order; 0 for requests.
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        CtKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        }
    }
}

/// This entry writes `src_addr`/`src_port` into the packets it matches.
pub const CT_F_REWRITE_SRC: u16 = 1 << 0;
/// This entry writes `dst_addr`/`dst_port` into the packets it matches.
pub const CT_F_REWRITE_DST: u16 = 1 << 1;
/// This entry is the reply direction of its flow (the flow's initiator is the peer).
pub const CT_F_REPLY: u16 = 1 << 2;
/// A packet has been seen in the reply direction.
pub const CT_F_SEEN_REPLY: u16 = 1 << 3;
/// A FIN has been seen from the original direction.
pub const CT_F_FIN_ORIG: u16 = 1 << 4;
/// A FIN has been seen from the reply direction.
pub const CT_F_FIN_REPLY: u16 = 1 << 5;
/// This entry's source is a masqueraded internal endpoint; its mapping is
/// `(key.src_addr, key.src_port)` → `(src_addr, src_port)`.
pub const CT_F_MASQ_SRC: u16 = 1 << 6;
/// This entry's destination is a masquerade mapping; its internal endpoint is
/// `(dst_addr, dst_port)`, its external one `(key.dst_addr, key.dst_port)`.
pub const CT_F_MASQ_DST: u16 = 1 << 7;
/// The flow's TCP close has been subtracted from its mapping's flow count.
pub const CT_F_RELEASED: u16 = 1 << 8;
/// Packets matching this entry go to a container (for the per-network counters).
pub const CT_F_INWARD: u16 = 1 << 9;
/// After translation the packet is forwarded by redirect (to the neighbour the FIB names)
/// rather than handed to the host's routing: a hairpin's source is a local address, which
/// the host's input path would drop as a martian.
pub const CT_F_REDIRECT: u16 = 1 << 10;
/// The flow was opened through a published port.
pub const CT_F_PUBLISHED: u16 = 1 << 11;
/// Flags that describe the flow rather than one direction: both entries carry them.
pub const CT_F_SHARED: u16 =
    CT_F_SEEN_REPLY | CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_RELEASED | CT_F_PUBLISHED;

/// One direction of a tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC seconds after which the entry counts as absent (unless its peer lives).
    pub expires: u32,
    /// CLOCK_MONOTONIC seconds when the flow was created.
    pub created: u32,
    /// The source written with [`CT_F_REWRITE_SRC`], network byte order.
    pub src_addr: u32,
    /// The destination written with [`CT_F_REWRITE_DST`], network byte order.
    pub dst_addr: u32,
    /// The source port (or ICMP identifier) written with the source, network byte order.
    pub src_port: u16,
    /// The destination port (or ICMP identifier) written with the destination.
    pub dst_port: u16,
    /// `CT_F_*`.
    pub flags: u16,
    /// [`TcpState`] as u8 (0 for other protocols).
    pub tcp_state: u8,
    pub _pad: u8,
    /// The netfast network the flow belongs to (an index into the per-network stats).
    pub net_id: u16,
    pub _pad2: [u8; 2],
    /// CLOCK_MONOTONIC seconds up to which this flow last extended its mapping.
    pub map_expires: u32,
    /// Packets and bytes that matched this entry (this direction only).
    pub packets: u64,
    pub bytes: u64,
    /// Where the fast path sent this direction's packets last (a FIB lookup costs more than
    /// everything else a packet needs).
    pub fwd: FwdCache,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 72);

/// The cached route leaves through an uplink of ours (see `maps::UPLINKS`).
pub const FWD_F_UPLINK: u8 = 1;

/// A cached route: good until `expires` for packets of at most `max_len` bytes of IPv4
/// (or GSO packets, which the kernel segments to the route's MTU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FwdCache {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The route's kind (the datapath's `forward::PEER`, `NEIGH`); 0: nothing cached.
    pub kind: u8,
    /// `FWD_F_*`.
    pub flags: u8,
    /// The largest IPv4 packet the route is known to carry without fragmentation.
    pub max_len: u16,
    /// CLOCK_MONOTONIC seconds up to which the route may be used without a new lookup.
    pub expires: u32,
}
const _: () = assert!(core::mem::size_of::<FwdCache>() == 24);

impl FwdCache {
    pub const EMPTY: FwdCache = FwdCache {
        ifindex: 0,
        dmac: [0; 6],
        smac: [0; 6],
        kind: 0,
        flags: 0,
        max_len: 0,
        expires: 0,
    };
}

impl CtEntry {
    /// The tuple a packet keyed `key` carries once this entry has translated it.
    pub const fn translated(&self, key: &CtKey) -> CtKey {
        let (src_addr, src_port) = if self.flags & CT_F_REWRITE_SRC != 0 {
            (self.src_addr, self.src_port)
        } else {
            (key.src_addr, key.src_port)
        };
        let (dst_addr, dst_port) = if self.flags & CT_F_REWRITE_DST != 0 {
            (self.dst_addr, self.dst_port)
        } else {
            (key.dst_addr, key.dst_port)
        };
        CtKey::new(src_addr, dst_addr, src_port, dst_port, key.proto)
    }

    /// The key of the other direction of this entry's flow: the translated tuple, reversed.
    pub const fn peer_key(&self, key: &CtKey) -> CtKey {
        let t = self.translated(key);
        CtKey::new(t.dst_addr, t.src_addr, t.dst_port, t.src_port, key.proto)
    }
}

/// TCP connection states, as conntrack names them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    TimeWait = 6,
    Close = 7,
}

impl TcpState {
    pub const fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::CloseWait,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            _ => TcpState::None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

/// Ring-buffer event kinds (`netfast conntrack watch`).
pub const CT_EVENT_NEW: u8 = 1;
pub const CT_EVENT_UPDATE: u8 = 2;
pub const CT_EVENT_DESTROY: u8 = 3;

/// A conntrack event: a flow was created, or changed TCP state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEvent {
    /// The original direction's key.
    pub key: CtKey,
    /// The original direction's entry (its `tcp_state` and `expires` are the new ones).
    pub entry: CtEntry,
    /// `CT_EVENT_*`.
    pub kind: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<CtEvent>() == 96);

crate::aya_pod!(CtKey, CtEntry, CtEvent);

/// TCP flags a state transition looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    /// From the flags byte of a TCP header (offset 13).
    pub const fn from_byte(b: u8) -> Self {
        TcpFlags {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            ack: b & 0x10 != 0,
        }
    }
}

/// The TCP state after a segment with `flags`, sent in the reply direction if `reply`, and
/// the entry flags updated with the FINs seen. A simplified conntrack:
/// SYN → SYN_SENT, SYN-ACK back → SYN_RECV, ACK → ESTABLISHED; the first FIN → FIN_WAIT,
/// the other side's ACK → CLOSE_WAIT, the other side's FIN → TIME_WAIT; RST → CLOSE; a new
/// SYN from the original side on a closed flow reopens it.
pub const fn tcp_next(
    state: TcpState,
    flags: TcpFlags,
    reply: bool,
    ct_flags: u16,
) -> (TcpState, u16) {
    let own_fin = if reply { CT_F_FIN_REPLY } else { CT_F_FIN_ORIG };
    let other_fin = if reply { CT_F_FIN_ORIG } else { CT_F_FIN_REPLY };
    if flags.rst {
        return (TcpState::Close, ct_flags);
    }
    if flags.syn && !flags.ack && !reply {
        return match state {
            TcpState::None | TcpState::SynSent | TcpState::TimeWait | TcpState::Close => (
                TcpState::SynSent,
                ct_flags & !(CT_F_FIN_ORIG | CT_F_FIN_REPLY),
            ),
            other => (other, ct_flags),
        };
    }
    if flags.fin {
        let ct_flags = ct_flags | own_fin;
        if ct_flags & other_fin != 0 {
            return (TcpState::TimeWait, ct_flags);
        }
        return match state {
            TcpState::SynRecv | TcpState::Established | TcpState::SynSent => {
                (TcpState::FinWait, ct_flags)
            }
            other => (other, ct_flags),
        };
    }
    match state {
        TcpState::SynSent if flags.syn && flags.ack && reply => (TcpState::SynRecv, ct_flags),
        TcpState::SynRecv if flags.ack && !reply => (TcpState::Established, ct_flags),
        // The side that did not send the first FIN acknowledges it: half-closed.
        TcpState::FinWait if flags.ack && ct_flags & other_fin != 0 => {
            (TcpState::CloseWait, ct_flags)
        }
        // A flow picked up mid-stream (after a flush, say): loose, as Linux conntrack.
        TcpState::None => (TcpState::Established, ct_flags),
        other => (other, ct_flags),
    }
}

/// The idle timeout, in seconds, of a flow of `proto` in `state`.
pub const fn timeout(cfg: &crate::config::DpConfig, proto: u8, state: TcpState) -> u32 {
    match proto {
        PROTO_TCP => match state {
            TcpState::Established => cfg.tcp_established,
            TcpState::Close => cfg.tcp_close,
            _ => cfg.tcp_transitory,
        },
        PROTO_UDP => cfg.udp,
        _ => cfg.icmp,
    }
}
