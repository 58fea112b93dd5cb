//! Map names and sizes, in one place. The `#[map]` statics in `netfast-ebpf` are named after
//! these constants (the symbol is the map name) and the loader looks maps up by them.

/// Per-CPU array of [`crate::Traffic`] indexed by [`crate::stats::hook_slot`] and
/// [`crate::stats::drop_slot`]: what each hook saw and what each drop reason dropped.
pub const STATS: &str = "NETFAST_STATS";
pub const STATS_SLOTS: u32 = 64;

/// Per-CPU array of [`crate::Traffic`]: per network, `2 * id` leaving the containers and
/// `2 * id + 1` coming to them.
pub const NET_STATS: &str = "NETFAST_NET_STATS";
/// Networks one host can have (the per-network stats slots).
pub const MAX_NETWORKS: u32 = 256;

/// Array with one [`crate::config::DpConfig`].
pub const CONFIG: &str = "NETFAST_CONFIG";

/// LPM trie: container subnet → [`crate::config::NetInfo`].
pub const NETWORKS: &str = "NETFAST_NETWORKS";

/// Array of u32, indexed by network id: the ifindex of each network's bridge (0: none). A
/// packet from a container uses only flows of the network of the bridge it came in on: one
/// array read per packet, where the subnet's trie would cost a helper call.
pub const NET_BRIDGES: &str = "NETFAST_NET_BRIDGES";

/// LRU hash: [`crate::conntrack::CtKey`] → [`crate::conntrack::CtEntry`], two per flow.
pub const CONNTRACK: &str = "NETFAST_CT";
/// Default number of flows tracked (`--ct-max`); the map holds twice as many entries.
pub const DEFAULT_CT_MAX_FLOWS: u32 = 262_144;

/// LRU hash: [`crate::conntrack::CtKey`] → [`crate::conntrack::CtEntry`], two per flow: the
/// flows opened from outside (a published port, an endpoint-independent mapping) that have
/// not been answered yet (TCP: the handshake has not completed; UDP, ICMP: no reply). Kept
/// apart from `CONNTRACK` so that a flood of unanswered packets can only push out its own
/// kind, never an established flow; an answered flow moves to `CONNTRACK`.
pub const CT_INBOUND: &str = "NETFAST_CT_INBOUND";

/// Flows the table of unanswered inbound flows holds for a conntrack table of
/// `ct_max_flows`: a quarter, and at least 256.
pub const fn inbound_flows(ct_max_flows: u32) -> u32 {
    let q = ct_max_flows / 4;
    if q < 256 { 256 } else { q }
}

/// LRU hash: [`crate::nat::NatBindKey`] → [`crate::nat::NatBinding`].
pub const NAT_BINDINGS: &str = "NETFAST_NAT_BIND";
/// LRU hash: [`crate::nat::NatClaimKey`] → [`crate::nat::NatClaim`].
pub const NAT_CLAIMS: &str = "NETFAST_NAT_CLAIM";

/// LRU hash: [`crate::nat::FragKey`] → [`crate::nat::FragEntry`].
pub const FRAGMENTS: &str = "NETFAST_FRAGS";
pub const FRAGMENTS_MAX: u32 = 8192;
/// Seconds a datagram's fragments are remembered (the kernel's ipfrag_time is 30).
pub const FRAGMENT_TIMEOUT: u32 = 30;

/// Ring buffer of [`crate::conntrack::CtEvent`].
pub const CT_EVENTS: &str = "NETFAST_CT_EVENTS";
pub const CT_EVENTS_BYTES: u32 = 256 * 1024;

/// How many ports masquerade tries (the original one, then a sequence from a random
/// start in the configured range) before it gives up and counts a drop.
pub const NAT_PORT_TRIES: u32 = 32;

/// Hash: [`crate::publish::PubKey`] → [`crate::publish::PubTarget`], one per published port.
pub const PUBLISHED: &str = "NETFAST_PUBLISHED";
pub const PUBLISHED_MAX: u32 = 65536;

/// LPM trie: [`crate::publish::AllowKey`] → u8, the `--allow` prefixes of each publication.
pub const ALLOW: &str = "NETFAST_ALLOW";
pub const ALLOW_MAX: u32 = 4096;

/// Hash: host address (network byte order) → u8: the host's own IPv4 addresses, where a
/// port published on every address (`PubKey::addr == 0`) is reachable.
pub const HOST_ADDRS: &str = "NETFAST_HOST_ADDRS";
pub const HOST_ADDRS_MAX: u32 = 256;

/// Array with one [`crate::publish::HostInfo`].
pub const HOST: &str = "NETFAST_HOST";

/// LRU hash: socket cookie → [`crate::publish::SockRevNat`].
pub const SOCK_REVNAT: &str = "NETFAST_SOCK_REVNAT";
pub const SOCK_REVNAT_MAX: u32 = 65536;

/// Hash: container address (network byte order) → [`crate::config::Endpoint`].
pub const ENDPOINTS: &str = "NETFAST_ENDPOINTS";
pub const ENDPOINTS_MAX: u32 = 65536;

/// Hash: ifindex → u8: the uplinks of the host's networks. A packet the fast path sends out
/// of one is marked (`FORWARDED_TC_INDEX`) so that the uplink's egress program lets it pass
/// without looking it up again.
pub const UPLINKS: &str = "NETFAST_UPLINKS";
pub const UPLINKS_MAX: u32 = 256;
/// The bit of `skb->tc_index` (a field no kernel user reads since the dsmark qdisc and the
/// tcindex classifier were removed) that says "translated and forwarded by netfast".
pub const FORWARDED_TC_INDEX: u32 = 0x4000;

/// Array with one [`crate::upgrade::Meta`]: the layout version and build of the running
/// programs. Read by the loader only; its layout never changes.
pub const META: &str = "NETFAST_META";

/// Array with one [`crate::config::ClockSample`], written by the `netfast_clock` program
/// when the loader runs it to calibrate the programs' clock. Not pinned: scratch.
pub const CLOCK: &str = "NETFAST_CLOCK";

/// The program the loader runs to read the kernel's clocks (never attached).
pub const CLOCK_PROGRAM: &str = "netfast_clock";

/// Every map, in the order the loader pins and checks them.
pub const ALL: [&str; 19] = [
    META,
    STATS,
    NET_STATS,
    CONFIG,
    NETWORKS,
    NET_BRIDGES,
    CONNTRACK,
    CT_INBOUND,
    NAT_BINDINGS,
    NAT_CLAIMS,
    FRAGMENTS,
    CT_EVENTS,
    PUBLISHED,
    ALLOW,
    HOST_ADDRS,
    HOST,
    SOCK_REVNAT,
    ENDPOINTS,
    UPLINKS,
];
