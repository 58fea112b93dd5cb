//! Every map of the dataplane. Names and sizes come from `netfast_common::maps`; the loader
//! resizes the conntrack and NAT maps to `--ct-max` before loading.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netfast_common::{
    Traffic,
    config::{ClockSample, DpConfig, Endpoint, NetInfo},
    conntrack::{CtEntry, CtKey},
    maps::{
        ALLOW_MAX, CT_EVENTS_BYTES, DEFAULT_CT_MAX_FLOWS, DROP_EVENTS_BYTES, ENDPOINTS_MAX,
        FRAGMENTS_MAX, HOOK_DROP_SLOTS, HOST_ADDRS_MAX, MAX_NETWORKS, PUBLISHED_MAX,
        SOCK_REVNAT_MAX, STATS_SLOTS, UPLINKS_MAX,
    },
    monitor::MonitorBudget,
    nat::{FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey},
    publish::{AllowKey, HostInfo, PubKey, PubTarget, SockRevNat},
    upgrade::Meta,
};

/// `maps::META`: the layout version and build of the running programs, for the loader (the
/// programs never read it).
#[map]
pub static NETFAST_META: Array<Meta> = Array::with_max_entries(1, 0);

/// `maps::STATS`: packets and bytes per hook and per drop reason, per CPU.
#[map]
pub static NETFAST_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// `maps::NET_STATS`: packets and bytes per network and direction, per CPU.
#[map]
pub static NETFAST_NET_STATS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(MAX_NETWORKS * 2, 0);

/// `maps::CONFIG`: timeouts, port range, filtering.
#[map]
pub static NETFAST_CONFIG: Array<DpConfig> = Array::with_max_entries(1, 0);

/// `maps::CLOCK`: what `netfast_clock` read.
#[map]
pub static NETFAST_CLOCK: Array<ClockSample> = Array::with_max_entries(1, 0);

/// `maps::NETWORKS`: container subnets (LPM on the address) → network.
#[map]
pub static NETFAST_NETWORKS: LpmTrie<u32, NetInfo> =
    LpmTrie::with_max_entries(MAX_NETWORKS, BPF_F_NO_PREALLOC);

/// `maps::NET_BRIDGES`: each network's bridge.
#[map]
pub static NETFAST_NET_BRIDGES: Array<u32> = Array::with_max_entries(MAX_NETWORKS, 0);

/// `maps::CONNTRACK`: both directions of every tracked flow.
#[map]
pub static NETFAST_CT: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_MAX_FLOWS * 2, 0);

/// `maps::CT_INBOUND`: flows opened from outside, not answered yet.
#[map]
pub static NETFAST_CT_INBOUND: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(DEFAULT_CT_MAX_FLOWS / 2, 0);

/// `maps::NAT_BINDINGS`: internal endpoint → its external port.
#[map]
pub static NETFAST_NAT_BIND: LruHashMap<NatBindKey, NatBinding> =
    LruHashMap::with_max_entries(DEFAULT_CT_MAX_FLOWS, 0);

/// `maps::NAT_CLAIMS`: external port → the internal endpoint that owns it.
#[map]
pub static NETFAST_NAT_CLAIM: LruHashMap<NatClaimKey, NatClaim> =
    LruHashMap::with_max_entries(DEFAULT_CT_MAX_FLOWS, 0);

/// `maps::FRAGMENTS`: how the first fragment of a datagram was translated.
#[map]
pub static NETFAST_FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(FRAGMENTS_MAX, 0);

/// `maps::CT_EVENTS`: NEW and UPDATE events for `netfast conntrack watch`.
#[map]
pub static NETFAST_CT_EVENTS: RingBuf = RingBuf::with_byte_size(CT_EVENTS_BYTES, 0);

/// `maps::PUBLISHED`: published host ports and where they lead.
#[map]
pub static NETFAST_PUBLISHED: HashMap<PubKey, PubTarget> =
    HashMap::with_max_entries(PUBLISHED_MAX, 0);

/// `maps::ALLOW`: the clients each restricted publication accepts.
#[map]
pub static NETFAST_ALLOW: LpmTrie<AllowKey, u8> =
    LpmTrie::with_max_entries(ALLOW_MAX, BPF_F_NO_PREALLOC);

/// `maps::HOST_ADDRS`: the host's own addresses.
#[map]
pub static NETFAST_HOST_ADDRS: HashMap<u32, u8> = HashMap::with_max_entries(HOST_ADDRS_MAX, 0);

/// `maps::HOST`: the host namespace this dataplane serves.
#[map]
pub static NETFAST_HOST: Array<HostInfo> = Array::with_max_entries(1, 0);

/// `maps::SOCK_REVNAT`: host-local sockets connected to a published port, by socket cookie.
#[map]
pub static NETFAST_SOCK_REVNAT: LruHashMap<u64, SockRevNat> =
    LruHashMap::with_max_entries(SOCK_REVNAT_MAX, 0);

/// `maps::ENDPOINTS`: netfast's containers, for the fast path's redirect to their veth peer.
#[map]
pub static NETFAST_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(ENDPOINTS_MAX, 0);

/// Per-CPU scratch space for the two entries of a flow being created: they would not fit a
/// BPF stack frame beside everything else on the way.
#[map]
pub static NETFAST_SCRATCH: PerCpuArray<crate::conntrack::Pair> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: what `conntrack::lookup` saw of the other entry of the flow it found, for the
/// window check of the same packet (`conntrack::PeerSeen`).
#[map]
pub static NETFAST_PEER: PerCpuArray<crate::conntrack::PeerSeen> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the packet at hand (`parse::pkt`): off the stack.
#[map]
pub static NETFAST_PKT: PerCpuArray<crate::parse::Pkt> = PerCpuArray::with_max_entries(1, 0);

/// `maps::UPLINKS`: the uplinks' ifindexes.
#[map]
pub static NETFAST_UPLINKS: HashMap<u32, u8> = HashMap::with_max_entries(UPLINKS_MAX, 0);

/// `maps::DROP_EVENTS`: dropped packets, for `netfast monitor --drops`.
#[map]
pub static NETFAST_DROP_EVENTS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);

/// `maps::MONITOR_BUDGET`: the drop events each CPU may still write this second.
#[map]
pub static NETFAST_MONITOR_BUDGET: PerCpuArray<MonitorBudget> = PerCpuArray::with_max_entries(1, 0);

/// `maps::HOOK_DROPS`: packets dropped per hook and reason, per CPU.
#[map]
pub static NETFAST_HOOK_DROPS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(HOOK_DROP_SLOTS * 4, 0);
