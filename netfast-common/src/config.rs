//! Configuration the loader writes and the programs read.

/// Filtering of inbound packets to a mapping (RFC 4787 section 5).
pub const FILTERING_ADDRESS_AND_PORT_DEPENDENT: u8 = 0;
pub const FILTERING_ENDPOINT_INDEPENDENT: u8 = 1;

crate::map_type! {
    /// Host-wide dataplane settings: the single entry of the config array.
    pub struct DpConfig: 48 {
        /// Idle timeouts, seconds.
        pub tcp_established: u32,
        pub tcp_transitory: u32,
        pub tcp_close: u32,
        pub udp: u32,
        pub icmp: u32,
        /// Ports (and ICMP identifiers) masquerade may pick when the original one is taken,
        /// inclusive, host byte order.
        pub port_min: u16,
        pub port_max: u16,
        /// `FILTERING_*`.
        pub filtering: u8,
        /// 1: forward translated flows ourselves (FIB lookup and redirect), past the host's
        /// routing and netfilter; 0: hand them to the host's stack.
        pub fast_path: u8,
        pub _pad: [u8; 2],
        /// The kernel's tick rate, for the programs' clock: CLOCK_MONOTONIC seconds are
        /// `clock_m0 + (jiffies - clock_j0) / clock_hz`, a memory read where a clock helper
        /// costs tens of nanoseconds. 0: not calibrated, the programs read the clock helper.
        pub clock_hz: u32,
        /// CLOCK_MONOTONIC seconds at `clock_j0` jiffies (a second boundary).
        pub clock_m0: u32,
        /// Seconds the programs' clock runs ahead of CLOCK_MONOTONIC: always 0 on a host; tests
        /// move time forward with it (timeouts, expiry takeovers) instead of sleeping.
        pub clock_advance: u32,
        pub clock_j0: u64,
    }
}

impl DpConfig {
    /// RFC 5382 REQ-5: an established idle timeout of at least 2 h 4 min.
    pub const DEFAULT_TCP_ESTABLISHED: u32 = 7440;
    /// RFC 5382: transitory connections at least 4 min.
    pub const DEFAULT_TCP_TRANSITORY: u32 = 240;
    /// After a RST, as Linux conntrack does.
    pub const DEFAULT_TCP_CLOSE: u32 = 10;
    /// RFC 4787 REQ-5 asks for at least 2 min; 5 min is its recommendation.
    pub const DEFAULT_UDP: u32 = 300;
    pub const DEFAULT_ICMP: u32 = 60;
    /// As iptables MASQUERADE without --to-ports, but above the well-known ports.
    pub const DEFAULT_PORT_MIN: u16 = 1024;
    pub const DEFAULT_PORT_MAX: u16 = 65535;
}

impl Default for DpConfig {
    fn default() -> Self {
        DpConfig {
            tcp_established: Self::DEFAULT_TCP_ESTABLISHED,
            tcp_transitory: Self::DEFAULT_TCP_TRANSITORY,
            tcp_close: Self::DEFAULT_TCP_CLOSE,
            udp: Self::DEFAULT_UDP,
            icmp: Self::DEFAULT_ICMP,
            port_min: Self::DEFAULT_PORT_MIN,
            port_max: Self::DEFAULT_PORT_MAX,
            filtering: FILTERING_ADDRESS_AND_PORT_DEPENDENT,
            fast_path: 1,
            _pad: [0; 2],
            clock_hz: 0,
            clock_m0: 0,
            clock_advance: 0,
            clock_j0: 0,
        }
    }
}

crate::map_type! {
    /// A reading of the kernel's two clocks at once, by the `netfast_clock` program.
    #[derive(Default)]
    pub struct ClockSample: 16 {
        pub jiffies: u64,
        /// CLOCK_MONOTONIC, nanoseconds.
        pub mono_ns: u64,
    }
}

/// Masquerade the network's traffic leaving through its uplink.
pub const NET_F_MASQUERADE: u16 = 1 << 0;

crate::map_type! {
    /// A network, found by longest-prefix match on a container address.
    #[derive(Default)]
    pub struct NetInfo: 16 {
        /// Index of the network's counters in the per-network stats map.
        pub id: u16,
        /// `NET_F_*`.
        pub flags: u16,
        /// The uplink's ifindex in the host namespace.
        pub uplink_ifindex: u32,
        /// The bridge's ifindex in the host namespace.
        pub bridge_ifindex: u32,
        /// The address masquerade translates to (the uplink's), network byte order.
        pub ext_addr: u32,
    }
}

crate::map_type! {
    /// A container netfast made, for the fast path to hand packets straight to it.
    #[derive(Default)]
    pub struct Endpoint: 20 {
        /// The host side of the container's veth pair.
        pub ifindex: u32,
        /// The container's `eth0` MAC (the frame's destination).
        pub mac: [u8; 6],
        /// Its gateway's (the bridge's) MAC (the frame's source).
        pub gw_mac: [u8; 6],
        /// The container's `eth0` MTU: a whole packet larger than it is left to the host's
        /// stack (which fragments it, or answers "fragmentation needed") rather than sent in,
        /// where the veth would drop it silently. 0: not known.
        pub mtu: u16,
        pub _pad: u16,
    }
}
