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

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

crate::map_type! {
    /// The tuple of a packet as a hook sees it.
    #[derive(Default, Hash)]
    pub struct CtKey: 16 {
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
}

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
/// The flow's TCP close has been subtracted from its mapping's flow count. The datapath turns
/// it with atomic instructions only, on the original direction's entry first: of two CPUs that
/// see one close at once, one subtracts it.
pub const CT_F_RELEASED: u16 = 1 << 8;
/// Packets matching this entry go to a container (for the per-network counters).
pub const CT_F_INWARD: u16 = 1 << 9;
/// After translation the packet is forwarded by redirect (to the neighbour the FIB names)
/// rather than handed to the host's routing: a hairpin's source is a local address, which
/// the host's input path would drop as a martian.
pub const CT_F_REDIRECT: u16 = 1 << 10;
/// The flow was opened through a published port.
pub const CT_F_PUBLISHED: u16 = 1 << 11;
/// This entry matches packets from inside: a container's (at the bridge's ingress, or the
/// uplink's egress after the host routed it) or the host's own (the uplink's egress). An
/// entry without it matches packets arriving at the uplink. A hook only uses entries of its
/// own side: a container that forges a remote's address cannot step into another's flow.
pub const CT_F_FROM_INSIDE: u16 = 1 << 12;
/// `td_end`, `td_maxwin` and `wscale` hold what this entry's direction has sent (a TCP
/// segment of it was seen since the flow was tracked).
pub const CT_F_TD_SEEN: u16 = 1 << 13;
/// A hairpin between two masquerade mappings (a container to another's, or its own,
/// external endpoint): each entry's packets leave through its own sender's mapping, so both
/// mappings are kept alive, and released, with the flow.
pub const CT_F_TWO_MAPPINGS: u16 = 1 << 14;
/// This direction may not pass until the other has been seen: the receiver's mapping filters
/// by address and port (RFC 4787), and it has not contacted this sender's external endpoint
/// yet. Its answer, in the other direction, opens the flow both ways.
pub const CT_F_AWAIT_REPLY: u16 = 1 << 15;
/// Flags that describe the flow rather than one direction: both entries carry them.
pub const CT_F_SHARED: u16 =
    CT_F_SEEN_REPLY | CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_RELEASED | CT_F_PUBLISHED;

/// `wscale` when the direction's SYN was not seen (a flow picked up mid-stream): windows are
/// then judged as if scaled by the largest factor TCP allows.
pub const WSCALE_UNKNOWN: u8 = 0xf;
/// The largest window scale TCP allows (RFC 7323).
pub const WSCALE_MAX: u8 = 14;

crate::map_type! {
    /// One direction of a tracked flow.
    #[derive(Default)]
    pub struct CtEntry: (if cfg!(feature = "layout-next") { 88 } else { 80 }) {
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
        /// TCP: the window scale this direction's sender announced in its SYN (0 when it did
        /// not, or the other side did not: then windows are not scaled), [`WSCALE_UNKNOWN`]
        /// when its SYN was not seen.
        pub wscale: u8,
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
        /// TCP: the end of the highest sequence this direction has sent (seq + length, SYN and
        /// FIN counted), host byte order: where a genuine RST from it must fall (RFC 5961).
        pub td_end: u32,
        /// TCP: the largest window this direction has offered to the other, scaled: how far from
        /// `td_end` of the other direction its segments may lie.
        pub td_maxwin: u32,
        /// Test builds only (`layout-next`): a field the layout after this one adds, so that the
        /// upgrade test migrates a live conntrack table into a changed layout.
        #[cfg(feature = "layout-next")]
        pub layout_next: u64,
    }
}

/// What the original entry of a new flow is made of (see [`CtEntry::open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// `CT_F_*`: the rewrites it does (`CT_F_REWRITE_SRC`, `CT_F_REWRITE_DST`) and the rest.
    pub flags: u16,
    /// The source and the destination it writes, as `flags` say (address and port, network
    /// byte order).
    pub src: (u32, u16),
    pub dst: (u32, u16),
    pub net_id: u16,
    pub times: FlowTimes,
    /// The length of the packet that opens the flow.
    pub bytes: u32,
}

/// A new flow's state, and its times: CLOCK_MONOTONIC seconds now, when its entries expire,
/// and up to when it keeps its masquerade mapping alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimes {
    pub state: TcpState,
    pub now: u32,
    pub expires: u32,
    pub map_expires: u32,
}

impl FlowTimes {
    /// A flow that opens `now` in `state`, with the idle timeout `t`: its mapping lives a
    /// slack longer than its entries (see [`crate::nat::mapping_slack`]).
    pub const fn opening(state: TcpState, now: u32, t: u32) -> FlowTimes {
        FlowTimes {
            state,
            now,
            expires: now + t,
            map_expires: now + t + crate::nat::mapping_slack(t),
        }
    }
}

/// The cached route leaves through an uplink of ours (see `maps::UPLINKS`).
pub const FWD_F_UPLINK: u8 = 1;

crate::map_type! {
    /// A cached route: good until `expires` for packets of at most `max_len` bytes of IPv4
    /// (or GSO packets, which the kernel segments to the route's MTU).
    #[derive(Default)]
    pub struct FwdCache: 24 {
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
}

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
    /// The original entry of the new flow `n`, opened by a packet of `n.bytes` bytes: it
    /// writes `n.src` and/or `n.dst` as `n.flags` say (`CT_F_REWRITE_SRC`,
    /// `CT_F_REWRITE_DST`), and lives until `n.expires`.
    pub const fn opening(n: &NewEntry) -> CtEntry {
        let NewEntry {
            flags,
            src,
            dst,
            net_id,
            times:
                FlowTimes {
                    state,
                    now,
                    expires,
                    map_expires,
                },
            bytes,
        } = *n;
        CtEntry {
            expires,
            created: now,
            src_addr: src.0,
            dst_addr: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            flags,
            tcp_state: state as u8,
            wscale: WSCALE_UNKNOWN,
            net_id,
            _pad2: [0; 2],
            map_expires,
            packets: 1,
            bytes: bytes as u64,
            fwd: FwdCache::EMPTY,
            td_end: 0,
            td_maxwin: 0,
            #[cfg(feature = "layout-next")]
            layout_next: 0,
        }
    }

    /// [`CtEntry::opening`] of `n`, written into `self` field by field: the datapath builds
    /// a new flow's entry in place, where a whole entry built first would take 80 bytes of a
    /// BPF stack frame (inlined, so that `n` is never one either).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub const fn open(&mut self, n: &NewEntry) {
        self.expires = n.times.expires;
        self.created = n.times.now;
        self.src_addr = n.src.0;
        self.dst_addr = n.dst.0;
        self.src_port = n.src.1;
        self.dst_port = n.dst.1;
        self.flags = n.flags;
        self.tcp_state = n.times.state as u8;
        self.wscale = WSCALE_UNKNOWN;
        self.net_id = n.net_id;
        self._pad2 = [0; 2];
        self.map_expires = n.times.map_expires;
        self.packets = 1;
        self.bytes = n.bytes as u64;
        self.fwd = FwdCache::EMPTY;
        self.td_end = 0;
        self.td_maxwin = 0;
        #[cfg(feature = "layout-next")]
        {
            self.layout_next = 0;
        }
    }

    /// The reply entry of the flow whose original entry is `self`, for packets keyed `key`:
    /// it undoes the original's rewrites (a rewritten source comes back as the destination,
    /// a rewritten destination as the source, a masquerade mapping's side likewise) and
    /// shares its lifetime. `own` are the flags of the reply direction itself
    /// (`CT_F_INWARD`, `CT_F_FROM_INSIDE`, `CT_F_REDIRECT`, `CT_F_PUBLISHED`).
    pub const fn reply(&self, key: &CtKey, own: u16) -> CtEntry {
        let mut flags = own | CT_F_REPLY;
        let (mut src_addr, mut src_port, mut dst_addr, mut dst_port) = (0, 0, 0, 0);
        if self.flags & CT_F_REWRITE_SRC != 0 {
            flags |= CT_F_REWRITE_DST;
            dst_addr = key.src_addr;
            dst_port = key.src_port;
        }
        if self.flags & CT_F_REWRITE_DST != 0 {
            flags |= CT_F_REWRITE_SRC;
            src_addr = key.dst_addr;
            src_port = key.dst_port;
        }
        if self.flags & CT_F_MASQ_SRC != 0 {
            flags |= CT_F_MASQ_DST;
        }
        if self.flags & CT_F_MASQ_DST != 0 {
            flags |= CT_F_MASQ_SRC;
        }
        CtEntry {
            src_addr,
            src_port,
            dst_addr,
            dst_port,
            flags,
            packets: 0,
            bytes: 0,
            ..*self
        }
    }

    /// Whether a packet seen on the inside (`from_inside`) or arriving at the uplink may use
    /// this entry (see [`CT_F_FROM_INSIDE`]).
    pub const fn serves(&self, from_inside: bool) -> bool {
        (self.flags & CT_F_FROM_INSIDE != 0) == from_inside
    }

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

crate::named_enum! {
    /// TCP connection states, as conntrack names them.
    pub enum TcpState: u8, try_from_u8 {
        None = 0 => "NONE",
        SynSent = 1 => "SYN_SENT",
        SynRecv = 2 => "SYN_RECV",
        Established = 3 => "ESTABLISHED",
        FinWait = 4 => "FIN_WAIT",
        CloseWait = 5 => "CLOSE_WAIT",
        TimeWait = 6 => "TIME_WAIT",
        Close = 7 => "CLOSE",
    }
}

impl TcpState {
    /// The state a `tcp_state` field holds ([`TcpState::None`] for any other value).
    // A match of its own rather than `try_from_u8`'s loop: the programs call it for every
    // TCP packet, and the loop costs the verifier some 6k more instructions.
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
}

/// Ring-buffer event kinds (`netfast conntrack watch`).
pub const CT_EVENT_NEW: u8 = 1;
pub const CT_EVENT_UPDATE: u8 = 2;
pub const CT_EVENT_DESTROY: u8 = 3;

crate::map_type! {
    /// A conntrack event: a flow was created, or changed TCP state.
    #[derive(Default)]
    pub struct CtEvent: (if cfg!(feature = "layout-next") { 112 } else { 104 }) {
        /// The original direction's key.
        pub key: CtKey,
        /// The original direction's entry (its `tcp_state` and `expires` are the new ones).
        pub entry: CtEntry,
        /// `CT_EVENT_*`.
        pub kind: u8,
        pub _pad: [u8; 7],
    }
}

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

    /// A segment that may open a flow from its first packet: a SYN, without ACK or RST.
    pub const fn opens(self) -> bool {
        self.syn && !self.ack && !self.rst
    }
}

/// `wscale` of a direction whose SYN carried no window scale option: the flow's windows are
/// then not scaled (RFC 7323 scales only when both SYNs carry the option).
pub const WSCALE_NONE: u8 = 0x10;

/// What conntrack reads of a TCP segment, host byte order (all zero for other protocols).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    /// The window field as sent (unscaled).
    pub win: u16,
    /// Payload bytes.
    pub len: u16,
    /// The window scale option of a SYN: 0..=14, or [`WSCALE_NONE`].
    pub wscale: u8,
}

/// The shift a direction's window fields take, from what its entry's `wscale` holds (before
/// its SYN-ACK has been seen a SYN's own option, afterwards the agreed shift, see
/// [`agreed_wscale`]).
pub const fn window_shift(wscale: u8) -> u8 {
    if wscale == WSCALE_UNKNOWN {
        WSCALE_MAX
    } else if wscale > WSCALE_MAX {
        0
    } else {
        wscale
    }
}

/// The shift of a direction's windows once both SYNs are seen: its own option when both
/// sides sent one (clamped to 14), else none.
pub const fn agreed_wscale(own: u8, other: u8) -> u8 {
    if own == WSCALE_UNKNOWN || other == WSCALE_UNKNOWN {
        WSCALE_UNKNOWN
    } else if own > WSCALE_MAX || other > WSCALE_MAX {
        0
    } else {
        own
    }
}

/// Whether a segment with `flags`, from the reply side if `reply`, starts its side's
/// sequence afresh: a SYN from the original side where it opens the flow or reopens a closed
/// one ([`tcp_next`] takes it to SYN_SENT), a new connection on the same tuple with a new
/// initial sequence number. (The other side starts afresh too: the reopening forgets what
/// it had seen of it, `CT_F_TD_SEEN`.)
pub const fn restarts(state: TcpState, flags: TcpFlags, reply: bool) -> bool {
    flags.syn
        && !flags.ack
        && !flags.rst
        && !reply
        && matches!(
            state,
            TcpState::None | TcpState::SynSent | TcpState::TimeWait | TcpState::Close
        )
}

/// The entry's direction after sending `seg` with `flags`: the end of its highest sequence
/// and the largest window it offered (a SYN's window is never scaled). Before anything was
/// seen of it, or from a SYN that [`restarts`] it, the segment's own values.
pub const fn sent(e: &CtEntry, flags: TcpFlags, seg: &Segment) -> (u32, u32) {
    let end = seg
        .seq
        .wrapping_add(seg.len as u32)
        .wrapping_add(flags.syn as u32)
        .wrapping_add(flags.fin as u32);
    let win = if flags.syn {
        seg.win as u32
    } else {
        (seg.win as u32) << window_shift(e.wscale)
    };
    let reply = e.flags & CT_F_REPLY != 0;
    if e.flags & CT_F_TD_SEEN == 0 || restarts(TcpState::from_u8(e.tcp_state), flags, reply) {
        return (end, win);
    }
    let td_end = if (end.wrapping_sub(e.td_end) as i32) > 0 {
        end
    } else {
        e.td_end
    };
    let td_maxwin = if win > e.td_maxwin { win } else { e.td_maxwin };
    (td_end, td_maxwin)
}

/// Whether a RST sent by the direction of `sender` may end the flow (RFC 5961 section 3, as
/// nf_conntrack's window tracking judges it): its sequence number must lie within the window
/// `receiver` has offered, around where the sender's sequence stands. A side that has sent
/// nothing yet may only refuse what it was sent: its RST must acknowledge the other side's
/// data (the answer to a refused SYN). What is not known is not held against the RST.
pub const fn rst_in_window(
    sender: &CtEntry,
    receiver: &CtEntry,
    flags: TcpFlags,
    seg: &Segment,
) -> bool {
    let receiver_seen = receiver.flags & CT_F_TD_SEEN != 0;
    if sender.flags & CT_F_TD_SEEN == 0 {
        return !receiver_seen || (flags.ack && seg.ack == receiver.td_end);
    }
    if !receiver_seen {
        return true;
    }
    within_window(sender, receiver, seg)
}

/// Whether a segment other than a RST, sent by the direction of `sender`, may move the flow
/// (its sequence, its TCP state): its sequence must lie within the window `receiver` has
/// offered, around where the sender's sequence stands, as a RST's must. Outside it, a blind
/// FIN would close the flow and a blind segment far ahead would move the sequence a RST is
/// then judged by. What is not known is not held against it.
pub const fn segment_in_window(sender: &CtEntry, receiver: &CtEntry, seg: &Segment) -> bool {
    if sender.flags & CT_F_TD_SEEN == 0 || receiver.flags & CT_F_TD_SEEN == 0 {
        return true;
    }
    within_window(sender, receiver, seg)
}

/// `seg`'s sequence lies within a window of `receiver`'s around `sender`'s: at least one
/// full unscaled window, so that a receiver that advertised a tiny window (or none yet)
/// still takes what it expects.
const fn within_window(sender: &CtEntry, receiver: &CtEntry, seg: &Segment) -> bool {
    let win = if receiver.td_maxwin < 65535 {
        65535
    } else {
        receiver.td_maxwin
    };
    let off = seg.seq.wrapping_sub(sender.td_end) as i32 as i64;
    off >= -(win as i64) && off <= win as i64
}

/// The TCP state after a segment with `flags`, sent in the reply direction if `reply`, and
/// the entry flags updated with the FINs seen. A simplified conntrack:
/// SYN → SYN_SENT, SYN-ACK back → SYN_RECV, ACK → ESTABLISHED; the first FIN → FIN_WAIT,
/// the other side's ACK → CLOSE_WAIT, the other side's FIN → TIME_WAIT; RST → CLOSE; a new
/// SYN from the original side on a closed flow reopens it. A flow left in FIN_WAIT with both
/// FINs seen (two CPUs, one FIN each, at once) closes at the next ACK.
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
        // The side that did not send the first FIN acknowledges it: half-closed. Unless both
        // FINs were seen, the flow left in FIN_WAIT by two CPUs that each read it before the
        // other's FIN (a simultaneous close): closed.
        TcpState::FinWait if flags.ack && ct_flags & other_fin != 0 => {
            if ct_flags & own_fin != 0 {
                (TcpState::TimeWait, ct_flags)
            } else {
                (TcpState::CloseWait, ct_flags)
            }
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

/// The longest a closed TCP flow (TIME_WAIT or CLOSE) lives without a packet.
pub const fn closed_timeout(cfg: &crate::config::DpConfig) -> u32 {
    let (w, c) = (
        timeout(cfg, PROTO_TCP, TcpState::TimeWait),
        timeout(cfg, PROTO_TCP, TcpState::Close),
    );
    if w < c { c } else { w }
}
