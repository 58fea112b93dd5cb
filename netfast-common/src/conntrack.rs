//! Connection tracking: one LRU hash map holds both directions of every flow.
//!
//! A flow is a pair of entries. Each is keyed by the tuple a packet carries *before*
//! translation at the hook that sees it, and says what to rewrite:
//! - an entry with [`CT_F_REWRITE_SRC`] rewrites the source to `(rewrite_addr, rewrite_port)`
//!   (masquerade, outbound); its peer is keyed `(dst, rewrite_addr, dport, rewrite_port)`;
//! - an entry with [`CT_F_REWRITE_DST`] rewrites the destination (the replies of a
//!   masqueraded flow, inbound); its peer is keyed `(rewrite_addr, src, rewrite_port, sport)`.
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

/// This entry rewrites the source (address and port) of the packets it matches.
pub const CT_F_REWRITE_SRC: u8 = 1 << 0;
/// This entry rewrites the destination.
pub const CT_F_REWRITE_DST: u8 = 1 << 1;
/// This entry is the reply direction of its flow (the flow's initiator is the peer).
pub const CT_F_REPLY: u8 = 1 << 2;
/// A packet has been seen in the reply direction.
pub const CT_F_SEEN_REPLY: u8 = 1 << 3;
/// A FIN has been seen from the original direction.
pub const CT_F_FIN_ORIG: u8 = 1 << 4;
/// A FIN has been seen from the reply direction.
pub const CT_F_FIN_REPLY: u8 = 1 << 5;
/// The flow holds a masquerade mapping (see `nat`).
pub const CT_F_MASQ: u8 = 1 << 6;
/// The flow's TCP close has been subtracted from its mapping's flow count.
pub const CT_F_RELEASED: u8 = 1 << 7;
/// Flags that describe the flow rather than one direction: both entries carry them.
pub const CT_F_SHARED: u8 =
    CT_F_SEEN_REPLY | CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_MASQ | CT_F_RELEASED;

/// One direction of a tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC seconds after which the entry counts as absent (unless its peer lives).
    pub expires: u32,
    /// CLOCK_MONOTONIC seconds when the flow was created.
    pub created: u32,
    /// The address written into the packet, network byte order.
    pub rewrite_addr: u32,
    /// The port (or ICMP identifier) written into the packet, network byte order.
    pub rewrite_port: u16,
    /// `CT_F_*`.
    pub flags: u8,
    /// [`TcpState`] as u8 (0 for other protocols).
    pub tcp_state: u8,
    /// The netfast network the flow belongs to (an index into the per-network stats).
    pub net_id: u16,
    pub _pad: [u8; 2],
    /// CLOCK_MONOTONIC seconds up to which this flow last extended its mapping.
    pub map_expires: u32,
    /// Packets and bytes that matched this entry (this direction only).
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 40);

impl CtEntry {
    /// The key of the other direction of this entry's flow, given the key of this one.
    pub const fn peer_key(&self, key: &CtKey) -> CtKey {
        if self.flags & CT_F_REWRITE_DST != 0 {
            CtKey::new(
                self.rewrite_addr,
                key.src_addr,
                self.rewrite_port,
                key.src_port,
                key.proto,
            )
        } else {
            CtKey::new(
                key.dst_addr,
                self.rewrite_addr,
                key.dst_port,
                self.rewrite_port,
                key.proto,
            )
        }
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
const _: () = assert!(core::mem::size_of::<CtEvent>() == 64);

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
    ct_flags: u8,
) -> (TcpState, u8) {
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
