//! Live events for `netfast monitor`: each packet a program drops, with its reason, hook and
//! addresses, written to a ring buffer (`maps::DROP_EVENTS`) under a per-CPU budget, so that a
//! flood of drops costs the ring a bounded number of events a second and the packet path a
//! counter increment for the rest.

/// Drop events each CPU may write in one second; the rest are counted only
/// (`Event::MonitorSuppressed`, and the drop counters as always).
pub const DROP_EVENTS_PER_CPU_PER_SECOND: u32 = 100;

crate::map_type! {
    /// A packet a program dropped.
    #[derive(Default)]
    pub struct DropEvent: 32 {
        /// CLOCK_MONOTONIC nanoseconds when it was dropped.
        pub ktime_ns: u64,
        /// IPv4 source and destination, network byte order (0 when the frame was not IPv4).
        pub src_addr: u32,
        pub dst_addr: u32,
        /// TCP/UDP ports or the ICMP identifier (in `src_port`), network byte order; 0 when the
        /// packet has none (a later fragment, another protocol).
        pub src_port: u16,
        pub dst_port: u16,
        /// The interface whose hook dropped it.
        pub ifindex: u32,
        /// The frame's length (`skb->len`).
        pub len: u32,
        /// [`crate::DropReason`] as u8.
        pub reason: u8,
        /// [`crate::Hook`] as u8.
        pub hook: u8,
        /// The IP protocol (0 when not IPv4).
        pub proto: u8,
        pub _pad: u8,
    }
}

crate::map_type! {
    /// The per-CPU budget of drop events: the second it counts, and how many it has spent.
    #[derive(Default)]
    pub struct MonitorBudget: 16 {
        pub second: u64,
        pub used: u32,
        pub _pad: u32,
    }
}
