//! Counters: per hook, and per drop reason.

use crate::maps::STATS_SLOTS;

crate::map_type! {
    /// Packets and bytes; the value type of the per-CPU stats map.
    #[derive(Default)]
    pub struct Traffic: 16 {
        pub packets: u64,
        /// Bytes of the frame as the hook saw it (`skb->len`, Ethernet header included).
        pub bytes: u64,
    }
}

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

crate::named_enum! {
    /// The attach points of the dataplane: a TC hook on a bridge or an uplink, one direction.
    pub enum Hook: u32, from_u32 {
        /// Bridge ingress: frames the bridge hands up to the host stack (from containers).
        BridgeIngress = 0 => "bridge_ingress",
        /// Bridge egress: frames the host stack sends down into the bridge (to containers).
        BridgeEgress = 1 => "bridge_egress",
        /// Uplink ingress: frames arriving from the outside.
        UplinkIngress = 2 => "uplink_ingress",
        /// Uplink egress: frames leaving for the outside.
        UplinkEgress = 3 => "uplink_egress",
    }
}

crate::named_enum! {
    /// Why a program dropped a packet. The values are stable (they index the stats map and are
    /// shown to users) and never overlap TC return codes, because they are never returned: a
    /// program counts the reason and returns `TC_ACT_SHOT`. After each name, what
    /// `netfast stats` says of it (`describe`).
    pub enum DropReason: u32, from_u32 {
        /// A header claimed more bytes than the packet has.
        Malformed = 1 => "malformed":
            "a header claimed more bytes than the packet has",
        /// Masquerade found no free external port.
        NatPortExhausted = 2 => "nat_port_exhausted":
            "no free external port in the masquerade port range (widen it: netfast config \
             --port-range)",
        /// The NAT mapping (claim and binding) could not be stored.
        NatMappingFailed = 3 => "nat_mapping_failed":
            "the NAT mapping could not be stored",
        /// The conntrack pair could not be stored.
        CtInsertFailed = 4 => "ct_insert_failed":
            "the conntrack entries could not be stored",
        /// A TCP RST for no tracked flow, from a masqueraded address: it would leak that address.
        TcpRstWithoutFlow = 5 => "tcp_rst_without_flow":
            "a TCP RST from a container for no tracked flow (it would leak the container \
             address)",
        /// A later fragment whose first fragment was not seen: it cannot be translated.
        FragmentWithoutFirst = 6 => "fragment_without_first":
            "a later IPv4 fragment arrived before its first fragment",
        /// An ICMP error from a masqueraded address about no tracked flow.
        IcmpErrorWithoutFlow = 7 => "icmp_error_without_flow":
            "an ICMP error from a container about no tracked flow",
        /// A protocol masquerade does not translate (not TCP, UDP or ICMP).
        UnsupportedProtocol = 8 => "unsupported_protocol":
            "a protocol masquerade does not translate (only TCP, UDP, ICMP)",
        /// A client outside the `--allow` list of a published port.
        NotAllowed = 9 => "not_allowed":
            "a client outside the --allow list of a published port",
        /// A packet from outside straight to a masqueraded container's address.
        DirectAccess = 10 => "direct_access":
            "a packet from outside straight to a masqueraded container (publish a port \
             instead)",
        /// A container reaching a container of another network.
        InterNetwork = 11 => "inter_network":
            "a container reaching a container of another network",
        /// A hairpinned packet for which the FIB has no route.
        NoRoute = 12 => "no_route":
            "a hairpinned packet the routing table has no route for",
        /// A container's packet to the host's loopback addresses, which the nftables/iptables
        /// backends' `route_localnet` would otherwise let in (CVE-2020-8558).
        ToHostLoopback = 13 => "to_host_loopback":
            "a container's packet to the host's 127.0.0.0/8, which a service bound to \
             127.0.0.1 must never see from a container (CVE-2020-8558)",
        /// A packet from the network to 127.0.0.0/8: a port published on 127.0.0.1 is for the
        /// host's own clients only (moby#45610).
        LoopbackFromNetwork = 14 => "loopback_from_network":
            "a packet from the network to 127.0.0.0/8 (ports published on 127.0.0.1 are \
             for the host's own clients only)",
        /// A TCP RST whose sequence number lies outside the window of its flow: a blind reset
        /// (RFC 5961), which must not end the flow.
        TcpRstOutOfWindow = 15 => "tcp_rst_out_of_window":
            "a TCP RST outside its flow's window: a blind reset, which does not end the \
             flow (RFC 5961)",
        /// A forged source: a packet from a container whose source address is not of the
        /// network of the bridge it came in on, or one from outside, of no flow, whose source
        /// is an address of one of our networks.
        SpoofedSource = 16 => "spoofed_source":
            "a forged source address: a container's not of its bridge's network, or one from \
             outside claiming a container network's",
        /// A container's packet to another container's external endpoint (hairpin) that the
        /// receiver's mapping filters out: it has not contacted the sender's external endpoint
        /// (address-and-port-dependent filtering, RFC 4787). Its own packet to the sender opens
        /// the way.
        NatFiltered = 17 => "nat_filtered":
            "a container's packet to another's external endpoint, which has not contacted \
             the sender's (address-and-port-dependent filtering)",
    }
}

crate::named_enum! {
    /// Events counted that are not drops.
    pub enum Event: u32, from_u32 {
        /// A packet forwarded by the fast path (redirect after a FIB or endpoint lookup).
        FastPath = 8 => "fast_path",
        /// A packet the fast path left to the host's stack: no route or neighbour the FIB could
        /// give, a TTL about to expire, a fragment, or a packet over the MTU.
        FastPathFallback = 9 => "fast_path_fallback",
        /// A packet the fast path had sent out of an uplink, let pass by the uplink's egress
        /// program without a second look.
        FastPathEgress = 10 => "fast_path_egress",
        /// A flow that had lost one of its two entries (evicted under pressure) was repaired
        /// from the other.
        CtRepaired = 11 => "ct_repaired",
        /// A live conntrack entry whose other entry's tuple now belongs to another flow (the
        /// LRU evicted that entry and a new flow took its tuple), removed when a packet
        /// matched it: the packet went on as one of no known flow. Its bytes are not
        /// counted. (Slot 7: the one below the other events that no hook uses.)
        CtStaleHalf = 7 => "ct_stale_half",
        /// A flow opened from outside (a published port, an endpoint-independent mapping): kept
        /// apart, in the table of unanswered flows, until it is answered.
        InboundOpened = 12 => "inbound_opened",
        /// An inbound flow that was answered (TCP: the handshake completed; UDP, ICMP: a reply)
        /// and moved to the main table, where unanswered packets cannot push it out.
        InboundAnswered = 13 => "inbound_answered",
        /// One of the host's own flows given another source port, because a container's
        /// masquerade mapping holds the one it used.
        HostFlowRemapped = 14 => "host_flow_remapped",
        /// A dropped packet not written to the monitor's ring: its CPU had spent its budget of
        /// events for the second (a flood), or the ring was full (nobody reads it).
        MonitorSuppressed = 15 => "monitor_suppressed",
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
