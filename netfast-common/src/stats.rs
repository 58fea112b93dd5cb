//! Counters: per hook, and per drop reason.

use bytemuck::{Pod, Zeroable};

use crate::maps::STATS_SLOTS;

/// Packets and bytes; the value type of the per-CPU stats map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Traffic {
    pub packets: u64,
    /// Bytes of the frame as the hook saw it (`skb->len`, Ethernet header included).
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 16);
crate::aya_pod!(Traffic);

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// The attach points of the dataplane: a TC hook on a bridge or an uplink, one direction.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Bridge ingress: frames the bridge hands up to the host stack (from containers).
    BridgeIngress = 0,
    /// Bridge egress: frames the host stack sends down into the bridge (to containers).
    BridgeEgress = 1,
    /// Uplink ingress: frames arriving from the outside.
    UplinkIngress = 2,
    /// Uplink egress: frames leaving for the outside.
    UplinkEgress = 3,
}

impl Hook {
    /// The hook with this value, if any.
    pub const fn from_u32(v: u32) -> Option<Hook> {
        match v {
            0 => Some(Hook::BridgeIngress),
            1 => Some(Hook::BridgeEgress),
            2 => Some(Hook::UplinkIngress),
            3 => Some(Hook::UplinkEgress),
            _ => None,
        }
    }

    pub const ALL: [Hook; 4] = [
        Hook::BridgeIngress,
        Hook::BridgeEgress,
        Hook::UplinkIngress,
        Hook::UplinkEgress,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "bridge_ingress",
            Hook::BridgeEgress => "bridge_egress",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::UplinkEgress => "uplink_egress",
        }
    }
}

/// Why a program dropped a packet. The values are stable (they index the stats map and are
/// shown to users) and never overlap TC return codes, because they are never returned: a
/// program counts the reason and returns `TC_ACT_SHOT`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header claimed more bytes than the packet has.
    Malformed = 1,
    /// Masquerade found no free external port.
    NatPortExhausted = 2,
    /// The NAT mapping (claim and binding) could not be stored.
    NatMappingFailed = 3,
    /// The conntrack pair could not be stored.
    CtInsertFailed = 4,
    /// A TCP RST for no tracked flow, from a masqueraded address: it would leak that address.
    TcpRstWithoutFlow = 5,
    /// A later fragment whose first fragment was not seen: it cannot be translated.
    FragmentWithoutFirst = 6,
    /// An ICMP error from a masqueraded address about no tracked flow.
    IcmpErrorWithoutFlow = 7,
    /// A protocol masquerade does not translate (not TCP, UDP or ICMP).
    UnsupportedProtocol = 8,
    /// A client outside the `--allow` list of a published port.
    NotAllowed = 9,
    /// A packet from outside straight to a masqueraded container's address.
    DirectAccess = 10,
    /// A container reaching a container of another network.
    InterNetwork = 11,
    /// A hairpinned packet for which the FIB has no route.
    NoRoute = 12,
    /// A container's packet to the host's loopback addresses, which the nftables/iptables
    /// backends' `route_localnet` would otherwise let in (CVE-2020-8558).
    ToHostLoopback = 13,
    /// A packet from the network to 127.0.0.0/8: a port published on 127.0.0.1 is for the
    /// host's own clients only (moby#45610).
    LoopbackFromNetwork = 14,
    /// A TCP RST whose sequence number lies outside the window of its flow: a blind reset
    /// (RFC 5961), which must not end the flow.
    TcpRstOutOfWindow = 15,
    /// A packet from a container whose source address is not of the network of the bridge
    /// it came in on: a forged source.
    SpoofedSource = 16,
    /// A container's packet to another container's external endpoint (hairpin) that the
    /// receiver's mapping filters out: it has not contacted the sender's external endpoint
    /// (address-and-port-dependent filtering, RFC 4787). Its own packet to the sender opens
    /// the way.
    NatFiltered = 17,
}

impl DropReason {
    /// The reason with this value, if any.
    pub const fn from_u32(v: u32) -> Option<DropReason> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == v {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    pub const ALL: [DropReason; 17] = [
        DropReason::Malformed,
        DropReason::NatPortExhausted,
        DropReason::NatMappingFailed,
        DropReason::CtInsertFailed,
        DropReason::TcpRstWithoutFlow,
        DropReason::FragmentWithoutFirst,
        DropReason::IcmpErrorWithoutFlow,
        DropReason::UnsupportedProtocol,
        DropReason::NotAllowed,
        DropReason::DirectAccess,
        DropReason::InterNetwork,
        DropReason::NoRoute,
        DropReason::ToHostLoopback,
        DropReason::LoopbackFromNetwork,
        DropReason::TcpRstOutOfWindow,
        DropReason::SpoofedSource,
        DropReason::NatFiltered,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NatPortExhausted => "nat_port_exhausted",
            DropReason::NatMappingFailed => "nat_mapping_failed",
            DropReason::CtInsertFailed => "ct_insert_failed",
            DropReason::TcpRstWithoutFlow => "tcp_rst_without_flow",
            DropReason::FragmentWithoutFirst => "fragment_without_first",
            DropReason::IcmpErrorWithoutFlow => "icmp_error_without_flow",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NotAllowed => "not_allowed",
            DropReason::DirectAccess => "direct_access",
            DropReason::InterNetwork => "inter_network",
            DropReason::NoRoute => "no_route",
            DropReason::ToHostLoopback => "to_host_loopback",
            DropReason::LoopbackFromNetwork => "loopback_from_network",
            DropReason::TcpRstOutOfWindow => "tcp_rst_out_of_window",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NatFiltered => "nat_filtered",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            DropReason::Malformed => "a header claimed more bytes than the packet has",
            DropReason::NatPortExhausted => {
                "no free external port in the masquerade port range (widen it: netfast config --port-range)"
            }
            DropReason::NatMappingFailed => "the NAT mapping could not be stored",
            DropReason::CtInsertFailed => "the conntrack entries could not be stored",
            DropReason::TcpRstWithoutFlow => {
                "a TCP RST from a container for no tracked flow (it would leak the container address)"
            }
            DropReason::FragmentWithoutFirst => {
                "a later IPv4 fragment arrived before its first fragment"
            }
            DropReason::IcmpErrorWithoutFlow => {
                "an ICMP error from a container about no tracked flow"
            }
            DropReason::UnsupportedProtocol => {
                "a protocol masquerade does not translate (only TCP, UDP, ICMP)"
            }
            DropReason::NotAllowed => "a client outside the --allow list of a published port",
            DropReason::DirectAccess => {
                "a packet from outside straight to a masqueraded container (publish a port instead)"
            }
            DropReason::InterNetwork => "a container reaching a container of another network",
            DropReason::NoRoute => "a hairpinned packet the routing table has no route for",
            DropReason::ToHostLoopback => {
                "a container's packet to the host's 127.0.0.0/8, which a service bound to \
                 127.0.0.1 must never see from a container (CVE-2020-8558)"
            }
            DropReason::LoopbackFromNetwork => {
                "a packet from the network to 127.0.0.0/8 (ports published on 127.0.0.1 are \
                 for the host's own clients only)"
            }
            DropReason::TcpRstOutOfWindow => {
                "a TCP RST outside its flow's window: a blind reset, which does not end the \
                 flow (RFC 5961)"
            }
            DropReason::SpoofedSource => {
                "a container's packet whose source address is not of its bridge's network"
            }
            DropReason::NatFiltered => {
                "a container's packet to another's external endpoint, which has not contacted \
                 the sender's (address-and-port-dependent filtering)"
            }
        }
    }
}

/// Events counted that are not drops.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A live conntrack entry whose other entry's tuple now belongs to another flow (the
    /// LRU evicted that entry and a new flow took its tuple), removed when a packet matched
    /// it: the packet went on as one of no known flow. Its bytes are not counted. (Slot 7:
    /// the one below the other events that no hook uses.)
    CtStaleHalf = 7,
    /// A packet forwarded by the fast path (redirect after a FIB or endpoint lookup).
    FastPath = 8,
    /// A packet the fast path left to the host's stack: no route or neighbour the FIB could
    /// give, a TTL about to expire, a fragment, or a packet over the MTU.
    FastPathFallback = 9,
    /// A packet the fast path had sent out of an uplink, let pass by the uplink's egress
    /// program without a second look.
    FastPathEgress = 10,
    /// A flow that had lost one of its two entries (evicted under pressure) was repaired
    /// from the other.
    CtRepaired = 11,
    /// A flow opened from outside (a published port, an endpoint-independent mapping): kept
    /// apart, in the table of unanswered flows, until it is answered.
    InboundOpened = 12,
    /// An inbound flow that was answered (TCP: the handshake completed; UDP, ICMP: a reply)
    /// and moved to the main table, where unanswered packets cannot push it out.
    InboundAnswered = 13,
    /// One of the host's own flows given another source port, because a container's
    /// masquerade mapping holds the one it used.
    HostFlowRemapped = 14,
    /// A dropped packet not written to the monitor's ring: its CPU had spent its budget of
    /// events for the second (a flood), or the ring was full (nobody reads it).
    MonitorSuppressed = 15,
}

impl Event {
    pub const ALL: [Event; 9] = [
        Event::FastPath,
        Event::FastPathFallback,
        Event::FastPathEgress,
        Event::CtRepaired,
        Event::CtStaleHalf,
        Event::InboundOpened,
        Event::InboundAnswered,
        Event::HostFlowRemapped,
        Event::MonitorSuppressed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Event::FastPath => "fast_path",
            Event::FastPathFallback => "fast_path_fallback",
            Event::FastPathEgress => "fast_path_egress",
            Event::CtRepaired => "ct_repaired",
            Event::CtStaleHalf => "ct_stale_half",
            Event::InboundOpened => "inbound_opened",
            Event::InboundAnswered => "inbound_answered",
            Event::HostFlowRemapped => "host_flow_remapped",
            Event::MonitorSuppressed => "monitor_suppressed",
        }
    }
}

/// First stats slot used for drop reasons; slots below it are hooks and events.
pub const DROP_SLOT_BASE: u32 = 16;

/// The stats-map index of a hook's counter.
pub const fn hook_slot(hook: Hook) -> u32 {
    hook as u32
}

/// The stats-map index of an event's counter.
pub const fn event_slot(event: Event) -> u32 {
    event as u32
}

/// The stats-map index of a drop reason's counter.
pub const fn drop_slot(reason: DropReason) -> u32 {
    DROP_SLOT_BASE + reason as u32
}

/// The index of a drop's counter in the per-hook drop counters (`maps::HOOK_DROPS`).
pub const fn hook_drop_slot(hook: Hook, reason: DropReason) -> u32 {
    hook as u32 * crate::maps::HOOK_DROP_SLOTS + reason as u32
}

const _: () = assert!((Hook::UplinkEgress as u32) < DROP_SLOT_BASE);
const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!((DropReason::ALL[i] as u32) < crate::maps::HOOK_DROP_SLOTS);
        i += 1;
    }
};
const _: () = {
    let mut i = 0;
    while i < Event::ALL.len() {
        assert!(event_slot(Event::ALL[i]) < DROP_SLOT_BASE);
        assert!(event_slot(Event::ALL[i]) > Hook::UplinkEgress as u32);
        i += 1;
    }
};
const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!(drop_slot(DropReason::ALL[i]) < STATS_SLOTS);
        i += 1;
    }
};
