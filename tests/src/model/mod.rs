//! A reference model of netfast's datapath: what the four TC programs do to each packet and
//! to the dataplane's state, in plain Rust, as a state machine over events (a packet at a
//! hook, time passing, a publication, a setting). It is the specification a reviewer reads:
//! each rule is stated once, where it applies, with the reason beside it.
//!
//! - [`hooks`]: the decision each program makes, in order, for a packet.
//! - [`conntrack`]: flows as pairs of entries (each keyed by the tuple its packets carry at
//!   the hook that sees them), their lookup, creation, bookkeeping and repair; the table of
//!   inbound flows not answered yet.
//! - [`nat`]: endpoint-independent mappings (RFC 4787 REQ-1): an internal endpoint's
//!   binding to an external port, and the claim on that port; port preservation, the port
//!   range, collisions, expiry and takeover.
//! - [`publish`]: published ports and their allow-lists: DNAT from outside, and the
//!   source-port remap when two publications would clash.
//! - [`hairpin`]: containers reaching their own host's external address: a published port,
//!   or a masquerade mapping (RFC 4787 REQ-9), and the filtering between networks.
//! - [`icmp`]: ICMP errors about translated flows, translated back (RFC 5508).
//! - [`route`]: the fast path's view of the host's routes and neighbours.
//! - [`tcp`]: TCP states, windows, and when a RST is believed.
//! - [`frame`]: parsing frames and building the frame a program must leave.
//! - [`invariants`]: the promises that hold whatever the mechanism: one external endpoint
//!   per internal endpoint, both entries of a flow pointing at each other, no flow on a
//!   mapping that another endpoint holds.
//!
//! The model is deterministic but for one thing: where the datapath picks a port at random
//! (masquerade when the original port is taken, the source-port remap of a clashing
//! publication), the model reads the datapath's choice from the packet it put out and checks
//! that the choice was allowed (free, in range, not the host's, not published), rather than
//! predicting a number. Where the datapath says no port was free, the model checks that a
//! search of the datapath's length could have found none.
//!
//! What the model leaves out: LRU eviction (the fuzzer's tables never fill), the fast
//! path's route cache (the fuzzer's routes never change, so a cached route is the route),
//! per-network counters, the conntrack event ring, and the socket-level programs.

pub mod conntrack;
pub mod frame;
pub mod hairpin;
pub mod hooks;
pub mod icmp;
pub mod invariants;
pub mod nat;
pub mod publish;
pub mod route;
pub mod tcp;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netfast::common::{DropReason, config::DpConfig, stats::Event};
use serde::{Deserialize, Serialize};

pub use frame::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// A packet's tuple as a hook sees it, host byte order. ICMP echo: a request is
/// `(src, dst, id, 0)`, a reply `(src, dst, 0, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    pub const fn new(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> Self {
        Tuple {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }

    /// The same conversation seen the other way.
    pub const fn reversed(&self) -> Tuple {
        Tuple::new(self.dst, self.src, self.dport, self.sport, self.proto)
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            PROTO_ICMP => "icmp",
            _ => "ip",
        };
        write!(
            f,
            "{}:{} > {}:{} {p}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

/// An address and port (or ICMP identifier).
pub type Endpoint = (Ipv4Addr, u16);

/// What an entry says about its packets and its flow. `shared` flags describe the flow and
/// both entries carry them; the others are the entry's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryFlags {
    /// The reply direction (the flow's initiator is the other entry).
    pub reply: bool,
    /// Shared: a packet was seen in the reply direction.
    pub seen_reply: bool,
    /// Shared: FINs seen from the original and the reply side.
    pub fin_orig: bool,
    pub fin_reply: bool,
    /// The source is a masqueraded internal endpoint (its mapping: key source → new source).
    pub masq_src: bool,
    /// The destination is a masquerade mapping (internal endpoint: the new destination).
    pub masq_dst: bool,
    /// Shared: the flow's TCP close was subtracted from its mapping's flow count.
    pub released: bool,
    /// Packets of this entry go to a container.
    pub inward: bool,
    /// Forwarded by redirect at the bridge (hairpin), never at the uplink.
    pub redirect: bool,
    /// Shared: opened through a published port.
    pub published: bool,
    /// For packets from inside (a container, or the host at the uplink's egress); else for
    /// packets arriving at the uplink.
    pub from_inside: bool,
    /// TCP: this direction's sequence and window are known.
    pub td_seen: bool,
    /// A hairpin between two masquerade mappings: each direction leaves through its own
    /// sender's mapping, and both mappings live (and are released) with the flow.
    pub two_mappings: bool,
    /// This direction may not pass until the other has been seen (the receiver's mapping
    /// filters by address and port, and has not contacted this sender yet).
    pub await_reply: bool,
}

impl EntryFlags {
    /// The flags that describe the flow: both entries carry the same.
    pub fn shared(&self) -> EntryFlags {
        EntryFlags {
            seen_reply: self.seen_reply,
            fin_orig: self.fin_orig,
            fin_reply: self.fin_reply,
            released: self.released,
            published: self.published,
            ..EntryFlags::default()
        }
    }

    /// These flags with the shared ones replaced by `from`'s.
    pub fn with_shared(&self, from: &EntryFlags) -> EntryFlags {
        EntryFlags {
            seen_reply: from.seen_reply,
            fin_orig: from.fin_orig,
            fin_reply: from.fin_reply,
            released: from.released,
            published: from.published,
            ..*self
        }
    }

    /// These flags plus the shared ones of `from`.
    pub fn or_shared(&self, from: &EntryFlags) -> EntryFlags {
        EntryFlags {
            seen_reply: self.seen_reply || from.seen_reply,
            fin_orig: self.fin_orig || from.fin_orig,
            fin_reply: self.fin_reply || from.fin_reply,
            released: self.released || from.released,
            published: self.published || from.published,
            ..*self
        }
    }

    pub fn masq(&self) -> bool {
        self.masq_src || self.masq_dst
    }

    /// The reply entry's own flags, for a flow whose original entry goes to a container
    /// with these flags: it comes from inside, and carries the flow's shared flags.
    pub fn inward_reply(&self) -> EntryFlags {
        EntryFlags {
            from_inside: true,
            ..self.shared()
        }
    }
}

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry counts as absent after this second, unless its other half lives.
    pub expires: u32,
    pub created: u32,
    /// The source its packets get (masquerade out; a published port's replies).
    pub new_src: Option<Endpoint>,
    /// The destination its packets get (masquerade's replies; a published port).
    pub new_dst: Option<Endpoint>,
    pub flags: EntryFlags,
    pub state: tcp::State,
    /// This direction's sequence, window and window scale (TCP).
    pub window: tcp::Window,
    pub net_id: u16,
    /// Up to when this flow last extended its mapping.
    pub map_expires: u32,
    pub packets: u64,
    pub bytes: u64,
}

impl Entry {
    /// A flow's original entry, opened now by a packet of `bytes` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn opening(
        flags: EntryFlags,
        new_src: Option<Endpoint>,
        new_dst: Option<Endpoint>,
        state: tcp::State,
        net_id: u16,
        now: u32,
        expires: u32,
        map_expires: u32,
        bytes: usize,
    ) -> Entry {
        Entry {
            expires,
            created: now,
            new_src,
            new_dst,
            flags,
            state,
            window: tcp::Window {
                wscale: tcp::WSCALE_UNKNOWN,
                ..tcp::Window::default()
            },
            net_id,
            map_expires,
            packets: 1,
            bytes: bytes as u64,
        }
    }

    /// The tuple a packet keyed `key` carries once this entry has translated it.
    pub fn translated(&self, key: &Tuple) -> Tuple {
        let (src, sport) = self.new_src.unwrap_or((key.src, key.sport));
        let (dst, dport) = self.new_dst.unwrap_or((key.dst, key.dport));
        Tuple::new(src, dst, sport, dport, key.proto)
    }

    /// The key of the other entry of this entry's flow: the translated tuple, reversed.
    pub fn peer_key(&self, key: &Tuple) -> Tuple {
        self.translated(key).reversed()
    }

    /// The reply entry of the flow whose original entry this is, for packets keyed `key`:
    /// it undoes the original's rewrites (and its mapping's side) and shares its lifetime;
    /// `own` are the reply direction's own flags. Counters start at zero.
    pub fn reply(&self, key: &Tuple, own: EntryFlags) -> Entry {
        Entry {
            new_dst: self.new_src.map(|_| (key.src, key.sport)),
            new_src: self.new_dst.map(|_| (key.dst, key.dport)),
            flags: EntryFlags {
                reply: true,
                masq_dst: self.flags.masq_src,
                masq_src: self.flags.masq_dst,
                ..own
            },
            packets: 0,
            bytes: 0,
            ..*self
        }
    }

    pub fn serves(&self, from_inside: bool) -> bool {
        self.flags.from_inside == from_inside
    }
}

/// An internal endpoint leaving through an external address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindKey {
    pub int_addr: Ipv4Addr,
    pub ext_addr: Ipv4Addr,
    pub int_port: u16,
    pub proto: u8,
}

/// The internal endpoint's external port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub ext_port: u16,
    /// Open flows (TCP flows are subtracted when they close).
    pub flows: u16,
    pub expires: u32,
}

/// An external (address, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimKey {
    pub ext_addr: Ipv4Addr,
    pub ext_port: u16,
    pub proto: u8,
}

/// Who holds an external port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: Endpoint,
    pub owner_net: u16,
    pub expires: u32,
    /// The latest a flow of the mapping that has closed may live (see `release_mapping`).
    pub closed_until: u32,
}

impl Claim {
    pub fn owned_by(&self, int: Endpoint) -> bool {
        self.owner == int
    }
}

/// A fragmented datagram, as its fragments carry it before translation (once translated, a
/// fragment no longer matches: no hook translates it twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub proto: u8,
}

/// The addresses the first fragment got, for the later ones, at whichever hook sees them
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragRecord {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub expires: u32,
}

/// Seconds a datagram's first fragment is remembered: the datapath's constant, a setting
/// the model takes as given rather than a decision it checks.
pub use netfast::common::maps::FRAGMENT_TIMEOUT;
/// The idle timeouts: the product's settings type, taken as given like the fragment timeout.
pub use netfast::loader::model::Timeouts;

/// The dataplane settings (`netfast config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// As `netfast config` sets them (the JSON of fixtures spells them inline).
    #[serde(flatten)]
    pub timeouts: Timeouts,
    pub port_min: u16,
    pub port_max: u16,
    pub endpoint_independent: bool,
    pub fast_path: bool,
}

impl Default for Config {
    fn default() -> Self {
        let d = DpConfig::default();
        Config {
            timeouts: Timeouts::default(),
            port_min: d.port_min,
            port_max: d.port_max,
            endpoint_independent: false,
            fast_path: true,
        }
    }
}

impl Config {
    /// The idle timeout of a flow of `proto` in `state`.
    pub fn timeout(&self, proto: u8, state: tcp::State) -> u32 {
        let t = &self.timeouts;
        match proto {
            PROTO_TCP => match state {
                tcp::State::Established => t.tcp_established,
                tcp::State::Close => t.tcp_close,
                _ => t.tcp_transitory,
            },
            PROTO_UDP => t.udp,
            _ => t.icmp,
        }
    }

    /// The longest a closed TCP flow (TIME_WAIT or CLOSE) lives without a packet.
    pub fn closed_timeout(&self) -> u32 {
        self.timeout(PROTO_TCP, tcp::State::TimeWait)
            .max(self.timeout(PROTO_TCP, tcp::State::Close))
    }
}

/// How long a mapping outlives the flows that extend it: an eighth of their timeout, at
/// least a second, so that a mapping never expires before one of its flows.
pub fn mapping_slack(timeout: u32) -> u32 {
    (timeout / 8).max(1)
}

/// A netfast network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub id: u16,
    pub subnet: Ipv4Net,
    pub bridge: u32,
    pub uplink: u32,
    pub masquerade: bool,
    /// The address masquerade translates to.
    pub ext_addr: Ipv4Addr,
}

/// A container the fast path can hand packets to directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub gw_mac: [u8; 6],
    /// The container's MTU (0: not known): a whole packet larger than it is left to the
    /// host's stack, which fragments it or says "fragmentation needed".
    pub mtu: u16,
}

/// A published host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PubKey {
    /// `None`: every address of the host.
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub proto: u8,
}

/// Where a published port leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubTarget {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub net_id: u16,
    /// The allow-list; 0 for anyone.
    pub rule: u32,
}

/// One of the host's own sockets on an external address, which masquerade must not collide
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostSocket {
    pub proto: u8,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// What the model counts, as the datapath's stats map does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub drops: BTreeMap<u32, u64>,
    pub events: BTreeMap<u32, u64>,
    pub hooks: BTreeMap<u32, u64>,
    /// How often each rule of interest applied (the fuzzer's coverage report; the datapath
    /// has no such counters).
    pub rules: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub fn rule(&mut self, name: &'static str) {
        *self.rules.entry(name).or_default() += 1;
    }

    pub fn drop(&mut self, r: DropReason) {
        *self.drops.entry(r as u32).or_default() += 1;
    }

    pub fn event(&mut self, e: Event) {
        *self.events.entry(e as u32).or_default() += 1;
    }
}

/// The host's interfaces, addresses and routes, as far as the programs can see them.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub networks: Vec<Network>,
    pub host_addrs: BTreeSet<Ipv4Addr>,
    pub endpoints: BTreeMap<Ipv4Addr, EndpointInfo>,
    pub uplinks: BTreeSet<u32>,
    pub fib: route::Fib,
}

impl Topology {
    /// The network whose subnet holds `addr` (the networks trie, longest prefix first).
    pub fn network_of(&self, addr: Ipv4Addr) -> Option<&Network> {
        self.networks
            .iter()
            .filter(|n| n.subnet.contains(&addr))
            .max_by_key(|n| n.subnet.prefix_len())
    }

    /// The bridge of network `id` (the per-network array: 0 when there is none).
    pub fn bridge_of(&self, id: u16) -> u32 {
        self.networks
            .iter()
            .find(|n| n.id == id)
            .map_or(0, |n| n.bridge)
    }
}

/// The dataplane's state and settings, as the model keeps them.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The programs' clock (seconds).
    pub now: u32,
    pub config: Config,
    pub topo: Topology,
    pub publications: BTreeMap<PubKey, PubTarget>,
    pub allow: BTreeMap<u32, Vec<Ipv4Net>>,
    pub host_sockets: BTreeSet<HostSocket>,
    pub ct: conntrack::Tables,
    pub bindings: BTreeMap<BindKey, Binding>,
    pub claims: BTreeMap<ClaimKey, Claim>,
    pub frags: BTreeMap<FragKey, FragRecord>,
    pub counters: Counters,
    /// Flows created (pairs inserted), for the fuzzer's report.
    pub flows_opened: u64,
}

impl Model {
    pub fn new(now: u32, config: Config, topo: Topology) -> Self {
        Model {
            now,
            config,
            topo,
            ..Model::default()
        }
    }
}
