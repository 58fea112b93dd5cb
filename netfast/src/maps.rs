//! Typed access to the dataplane's maps, shared by the loader and the packet-test harness so
//! that tests provision the programs exactly the way production does.

use std::{collections::HashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use netfast_common::{
    config::{DpConfig, NetInfo},
    conntrack::{
        CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REPLY, CT_F_SEEN_REPLY, CtEntry, CtKey, PROTO_ICMP,
        PROTO_TCP, PROTO_UDP, TcpState,
    },
    maps,
    nat::{self, FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey},
    publish::{AllowKey, PubKey, PubTarget},
};
use serde::Serialize;

use crate::error::{Error, Result};

/// CLOCK_MONOTONIC seconds: the clock of every `expires` field (bpf_ktime_get_ns).
pub fn monotonic_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// An address as the maps hold it (network byte order in a u32).
pub fn raw_addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub fn addr_of(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name).ok_or(Error::MissingMap(name))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or(Error::MissingMap(name))
}

/// Writes the settings, with the programs' clock calibrated (see [`crate::clock`]).
pub fn write_config(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<()> {
    let cfg = &crate::clock::calibrated(ebpf, cfg)?;
    write_config_uncalibrated(ebpf, cfg)
}

/// Writes the settings as they are: with `clock_hz` 0 the programs read the clock helper.
/// For tests of that path; everything else calls [`write_config`].
pub fn write_config_uncalibrated(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<()> {
    let mut array: Array<&mut MapData, DpConfig> =
        Array::try_from(map_mut(ebpf, maps::CONFIG)?).map_err(|e| Error::map(maps::CONFIG, e))?;
    array
        .set(0, cfg, 0)
        .map_err(|e| Error::map(maps::CONFIG, e))
}

pub fn read_config(ebpf: &Ebpf) -> Result<DpConfig> {
    let array: Array<&MapData, DpConfig> =
        Array::try_from(map(ebpf, maps::CONFIG)?).map_err(|e| Error::map(maps::CONFIG, e))?;
    array.get(&0, 0).map_err(|e| Error::map(maps::CONFIG, e))
}

/// Makes `subnet/prefix` a network of the dataplane.
pub fn set_network(ebpf: &mut Ebpf, subnet: Ipv4Addr, prefix: u8, info: &NetInfo) -> Result<()> {
    set_net_bridge(ebpf, info.id, info.bridge_ifindex)?;
    let mut trie: LpmTrie<&mut MapData, u32, NetInfo> =
        LpmTrie::try_from(map_mut(ebpf, maps::NETWORKS)?)
            .map_err(|e| Error::map(maps::NETWORKS, e))?;
    trie.insert(&Key::new(u32::from(prefix), raw_addr(subnet)), info, 0)
        .map_err(|e| Error::map(maps::NETWORKS, e))
}

fn set_net_bridge(ebpf: &mut Ebpf, id: u16, ifindex: u32) -> Result<()> {
    let mut array: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps::NET_BRIDGES)?)
        .map_err(|e| Error::map(maps::NET_BRIDGES, e))?;
    array
        .set(u32::from(id), ifindex, 0)
        .map_err(|e| Error::map(maps::NET_BRIDGES, e))
}

pub fn remove_network(ebpf: &mut Ebpf, subnet: Ipv4Addr, prefix: u8) -> Result<()> {
    let key = Key::new(u32::from(prefix), raw_addr(subnet));
    let mut trie: LpmTrie<&mut MapData, u32, NetInfo> =
        LpmTrie::try_from(map_mut(ebpf, maps::NETWORKS)?)
            .map_err(|e| Error::map(maps::NETWORKS, e))?;
    let id = trie.get(&key, 0).ok().map(|info| info.id);
    match trie.remove(&key) {
        Ok(()) => {}
        Err(ref e) if absent(e) => {}
        Err(e) => return Err(Error::map(maps::NETWORKS, e)),
    }
    match id {
        Some(id) => set_net_bridge(ebpf, id, 0),
        None => Ok(()),
    }
}

fn entries<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let hm: BpfHashMap<&MapData, K, V> =
        BpfHashMap::try_from(map(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    let mut out = Vec::new();
    for item in hm.iter() {
        match item {
            Ok(kv) => out.push(kv),
            // An entry evicted or deleted while we walk: skip it.
            Err(ref e) if absent(e) => continue,
            Err(e) => return Err(Error::map(name, e)),
        }
    }
    Ok(out)
}

/// Every conntrack entry, live or expired: the main table's, then those of inbound flows not
/// answered yet (`maps::CT_INBOUND`; a flow's two entries are always in one table).
pub fn conntrack_entries(ebpf: &Ebpf) -> Result<Vec<(CtKey, CtEntry)>> {
    let mut all = entries(ebpf, maps::CONNTRACK)?;
    all.extend(entries::<CtKey, CtEntry>(ebpf, maps::CT_INBOUND)?);
    Ok(all)
}

/// The entries of the main table only.
pub fn conntrack_main(ebpf: &Ebpf) -> Result<Vec<(CtKey, CtEntry)>> {
    entries(ebpf, maps::CONNTRACK)
}

/// The entries of inbound flows not answered yet only.
pub fn inbound_entries(ebpf: &Ebpf) -> Result<Vec<(CtKey, CtEntry)>> {
    entries(ebpf, maps::CT_INBOUND)
}

pub fn nat_bindings(ebpf: &Ebpf) -> Result<Vec<(NatBindKey, NatBinding)>> {
    entries(ebpf, maps::NAT_BINDINGS)
}

pub fn nat_claims(ebpf: &Ebpf) -> Result<Vec<(NatClaimKey, NatClaim)>> {
    entries(ebpf, maps::NAT_CLAIMS)
}

pub fn insert_conntrack(ebpf: &mut Ebpf, key: &CtKey, entry: &CtEntry) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, CtKey, CtEntry> =
        BpfHashMap::try_from(map_mut(ebpf, maps::CONNTRACK)?)
            .map_err(|e| Error::map(maps::CONNTRACK, e))?;
    hm.insert(key, entry, 0)
        .map_err(|e| Error::map(maps::CONNTRACK, e))
}

fn clear<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<usize> {
    let keys: Vec<K> = entries::<K, V>(ebpf, name)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    let mut removed = 0;
    for k in &keys {
        match hm.remove(k) {
            Ok(()) => removed += 1,
            Err(ref e) if absent(e) => {}
            Err(e) => return Err(Error::map(name, e)),
        }
    }
    Ok(removed)
}

/// Forgets every flow, mapping and fragment record. Returns the number of flows removed.
pub fn flush_conntrack(ebpf: &mut Ebpf) -> Result<usize> {
    let entries = clear::<CtKey, CtEntry>(ebpf, maps::CONNTRACK)?
        + clear::<CtKey, CtEntry>(ebpf, maps::CT_INBOUND)?;
    clear::<NatBindKey, NatBinding>(ebpf, maps::NAT_BINDINGS)?;
    clear::<NatClaimKey, NatClaim>(ebpf, maps::NAT_CLAIMS)?;
    clear::<FragKey, FragEntry>(ebpf, maps::FRAGMENTS)?;
    Ok(entries.div_ceil(2))
}

/// One side of a flow, as `conntrack -L` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports; for ICMP echo the identifier is in `id`.
    pub sport: u16,
    pub dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// Absent when not known (an event reports one direction's entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl Tuple {
    fn new(key: &CtKey, entry: Option<&CtEntry>) -> Self {
        let icmp = key.proto == PROTO_ICMP;
        let sport = u16::from_be(key.src_port);
        let dport = u16::from_be(key.dst_port);
        Tuple {
            src: addr_of(key.src_addr),
            dst: addr_of(key.dst_addr),
            sport: if icmp { 0 } else { sport },
            dport: if icmp { 0 } else { dport },
            id: icmp.then_some(sport | dport),
            packets: entry.map(|e| e.packets),
            bytes: entry.map(|e| e.bytes),
        }
    }

    fn describe(&self, request: bool) -> String {
        let mut s = format!("src={} dst={}", self.src, self.dst);
        match self.id {
            Some(id) => s.push_str(&format!(
                " type={} code=0 id={id}",
                if request { 8 } else { 0 }
            )),
            None => s.push_str(&format!(" sport={} dport={}", self.sport, self.dport)),
        }
        if let (Some(p), Some(b)) = (self.packets, self.bytes) {
            s.push_str(&format!(" packets={p} bytes={b}"));
        }
        s
    }
}

/// A tracked flow: both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// Seconds until the flow expires if idle.
    pub expires_in: u32,
    /// No packet seen in the reply direction yet.
    pub unreplied: bool,
    pub network_id: u16,
    pub original: Tuple,
    pub reply: Tuple,
    #[serde(skip)]
    proto: u8,
}

impl Flow {
    /// The IP protocol number (6 tcp, 17 udp, 1 icmp).
    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// One line in the style of `conntrack -L`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<5} {:<3} {:>6} ",
            self.protocol, self.proto, self.expires_in
        );
        if let Some(state) = self.state {
            s.push_str(state);
            s.push(' ');
        }
        s.push_str(&self.original.describe(true));
        s.push(' ');
        if self.unreplied {
            s.push_str("[UNREPLIED] ");
        }
        s.push_str(&self.reply.describe(false));
        s
    }
}

impl Flow {
    /// A flow from its parts (the kernel's conntrack table, for fallback backends).
    pub fn from_parts(
        proto: u8,
        state: Option<&'static str>,
        expires_in: u32,
        unreplied: bool,
        network_id: u16,
        original: Tuple,
        reply: Tuple,
    ) -> Flow {
        Flow {
            protocol: protocol_name(proto),
            state,
            expires_in,
            unreplied,
            network_id,
            original,
            reply,
            proto,
        }
    }
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

impl Flow {
    /// The flow an original-direction entry describes, with its reply entry when known.
    pub fn new(key: &CtKey, entry: &CtEntry, reply: Option<&CtEntry>, now: u32) -> Flow {
        let reply_key = entry.peer_key(key);
        let expires = entry.expires.max(reply.map_or(0, |r| r.expires));
        Flow {
            protocol: protocol_name(key.proto),
            state: (key.proto == PROTO_TCP).then(|| TcpState::from_u8(entry.tcp_state).name()),
            expires_in: expires.saturating_sub(now),
            unreplied: entry.flags & CT_F_SEEN_REPLY == 0,
            network_id: entry.net_id,
            original: Tuple::new(key, Some(entry)),
            reply: Tuple::new(&reply_key, reply),
            proto: key.proto,
        }
    }
}

/// Live flows, pairing each original entry with its reply entry; sorted by original tuple.
pub fn flows(ebpf: &Ebpf, now: u32) -> Result<Vec<Flow>> {
    let all: HashMap<CtKey, CtEntry> = conntrack_entries(ebpf)?.into_iter().collect();
    let mut out: Vec<Flow> = live_flows(&all, now).map(|(_, f)| f).collect();
    out.sort_by_key(|f| {
        (
            f.original.src,
            f.original.sport,
            f.original.dst,
            f.original.dport,
            f.proto,
        )
    });
    Ok(out)
}

/// The live flows of a snapshot of the conntrack map: each original entry's key with its
/// flow (paired with its reply entry).
fn live_flows(all: &HashMap<CtKey, CtEntry>, now: u32) -> impl Iterator<Item = (CtKey, Flow)> + '_ {
    all.iter().filter_map(move |(key, entry)| {
        if entry.flags & CT_F_REPLY != 0 {
            return None;
        }
        let reply = all.get(&entry.peer_key(key));
        (entry.expires.max(reply.map_or(0, |r| r.expires)) >= now)
            .then(|| (*key, Flow::new(key, entry, reply, now)))
    })
}

/// What [`delete_flows`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Flows (both of their entries).
    pub flows: usize,
    /// NAT mappings (binding and claim) that no remaining flow used.
    pub mappings: usize,
}

/// Removes the live flows `matches` selects: both conntrack entries of each, and the NAT
/// mapping (binding and claim) of each masqueraded one that no remaining flow uses any more,
/// so that its external port is free again. A flow the datapath opens on the mapping while
/// this runs re-creates it on its next packet.
pub fn delete_flows(ebpf: &mut Ebpf, now: u32, matches: impl Fn(&Flow) -> bool) -> Result<Deleted> {
    let mut all: HashMap<CtKey, CtEntry> = conntrack_entries(ebpf)?.into_iter().collect();
    let doomed: Vec<CtKey> = live_flows(&all, now)
        .filter(|(_, f)| matches(f))
        .map(|(k, _)| k)
        .collect();
    let mut keys = Vec::new();
    // The mappings of the deleted flows.
    let mut mappings: std::collections::HashSet<(NatBindKey, NatClaimKey)> =
        std::collections::HashSet::new();
    for key in &doomed {
        let Some(entry) = all.remove(key) else {
            continue;
        };
        let peer = entry.peer_key(key);
        let reply = all.remove(&peer);
        keys.push(*key);
        if reply.is_some() {
            keys.push(peer);
        }
        let masq = std::iter::once((key, &entry))
            .chain(reply.as_ref().map(|r| (&peer, r)))
            .find(|(_, e)| e.flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0);
        if let Some((k, e)) = masq {
            mappings.insert(nat::mapping_keys(k, e));
        }
    }
    remove_conntrack(ebpf, &keys)?;
    // The mappings the remaining entries still use.
    let in_use: std::collections::HashSet<(NatBindKey, NatClaimKey)> = all
        .iter()
        .filter(|(_, e)| e.flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0)
        .map(|(k, e)| nat::mapping_keys(k, e))
        .collect();
    let bindings: HashMap<NatBindKey, NatBinding> = nat_bindings(ebpf)?.into_iter().collect();
    let claims: HashMap<NatClaimKey, NatClaim> = nat_claims(ebpf)?.into_iter().collect();
    let mut freed = 0;
    for (bind, claim) in &mappings {
        // Only the mapping these flows used: the binding still leads to this claim, and the
        // claim still belongs to this internal endpoint.
        if bindings
            .get(bind)
            .is_none_or(|b| b.ext_port != claim.ext_port)
        {
            continue;
        }
        if claims
            .get(claim)
            .is_none_or(|c| !c.owned_by(bind.int_addr, bind.int_port))
        {
            continue;
        }
        if in_use.contains(&(*bind, *claim)) {
            // Its count of open TCP flows stays as it is: lowered from here, it could lose an
            // increment the datapath makes at the same moment, and a count below the truth
            // would let the mapping expire under a live flow. Too high, it only keeps the
            // mapping to its own expiry.
            continue;
        }
        remove_key::<NatBindKey, NatBinding>(ebpf, maps::NAT_BINDINGS, bind)?;
        remove_key::<NatClaimKey, NatClaim>(ebpf, maps::NAT_CLAIMS, claim)?;
        freed += 1;
    }
    Ok(Deleted {
        flows: doomed.len(),
        mappings: freed,
    })
}

fn remove_key<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    match hm.remove(key) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(name, e)),
    }
}

/// Publishes `key` (one host port) to `target`.
pub fn publish(ebpf: &mut Ebpf, key: &PubKey, target: &PubTarget) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, PubKey, PubTarget> =
        BpfHashMap::try_from(map_mut(ebpf, maps::PUBLISHED)?)
            .map_err(|e| Error::map(maps::PUBLISHED, e))?;
    hm.insert(key, target, 0)
        .map_err(|e| Error::map(maps::PUBLISHED, e))
}

pub fn unpublish(ebpf: &mut Ebpf, key: &PubKey) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, PubKey, PubTarget> =
        BpfHashMap::try_from(map_mut(ebpf, maps::PUBLISHED)?)
            .map_err(|e| Error::map(maps::PUBLISHED, e))?;
    match hm.remove(key) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(maps::PUBLISHED, e)),
    }
}

pub fn published(ebpf: &Ebpf) -> Result<Vec<(PubKey, PubTarget)>> {
    entries(ebpf, maps::PUBLISHED)
}

fn allow_key(rule: u32, net: ipnet::Ipv4Net) -> Key<AllowKey> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        AllowKey {
            rule: rule.to_be(),
            addr: raw_addr(net.network()),
        },
    )
}

/// Lets clients in `net` use the publications of allow-list `rule`.
pub fn allow(ebpf: &mut Ebpf, rule: u32, net: ipnet::Ipv4Net) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, AllowKey, u8> =
        LpmTrie::try_from(map_mut(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    trie.insert(&allow_key(rule, net), 1, 0)
        .map_err(|e| Error::map(maps::ALLOW, e))
}

pub fn disallow(ebpf: &mut Ebpf, rule: u32, net: ipnet::Ipv4Net) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, AllowKey, u8> =
        LpmTrie::try_from(map_mut(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    match trie.remove(&allow_key(rule, net)) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(maps::ALLOW, e)),
    }
}

/// Every allow-list entry: its rule and client network.
pub fn allow_entries(ebpf: &Ebpf) -> Result<Vec<(u32, ipnet::Ipv4Net)>> {
    let trie: LpmTrie<&MapData, AllowKey, u8> =
        LpmTrie::try_from(map(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    let mut out = Vec::new();
    for key in trie.keys() {
        let key = key.map_err(|e| Error::map(maps::ALLOW, e))?;
        let data = key.data();
        let addr = Ipv4Addr::from(u32::from_be(data.addr));
        let len = key.prefix_len().saturating_sub(32).min(32) as u8;
        if let Ok(net) = ipnet::Ipv4Net::new(addr, len) {
            out.push((u32::from_be(data.rule), net));
        }
    }
    Ok(out)
}

/// Makes the host-address map hold exactly `addrs`.
pub fn set_host_addrs(ebpf: &mut Ebpf, addrs: &[Ipv4Addr]) -> Result<()> {
    let current: Vec<u32> = entries::<u32, u8>(ebpf, maps::HOST_ADDRS)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut hm: BpfHashMap<&mut MapData, u32, u8> =
        BpfHashMap::try_from(map_mut(ebpf, maps::HOST_ADDRS)?)
            .map_err(|e| Error::map(maps::HOST_ADDRS, e))?;
    let wanted: Vec<u32> = addrs.iter().map(|a| raw_addr(*a)).collect();
    for k in current.iter().filter(|k| !wanted.contains(k)) {
        let _ = hm.remove(k);
    }
    for k in &wanted {
        hm.insert(k, 1, 0)
            .map_err(|e| Error::map(maps::HOST_ADDRS, e))?;
    }
    Ok(())
}

/// Removes these conntrack entries from whichever table holds them (those already gone are
/// skipped).
pub fn remove_conntrack(ebpf: &mut Ebpf, keys: &[CtKey]) -> Result<()> {
    for table in [maps::CONNTRACK, maps::CT_INBOUND] {
        let mut hm: BpfHashMap<&mut MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(map_mut(ebpf, table)?).map_err(|e| Error::map(table, e))?;
        for k in keys {
            match hm.remove(k) {
                Ok(()) => {}
                Err(ref e) if absent(e) => {}
                Err(e) => return Err(Error::map(table, e)),
            }
        }
    }
    Ok(())
}

/// The host namespace the dataplane serves.
pub fn write_host(ebpf: &mut Ebpf, info: &netfast_common::publish::HostInfo) -> Result<()> {
    let mut array: Array<&mut MapData, netfast_common::publish::HostInfo> =
        Array::try_from(map_mut(ebpf, maps::HOST)?).map_err(|e| Error::map(maps::HOST, e))?;
    array.set(0, info, 0).map_err(|e| Error::map(maps::HOST, e))
}

/// A key that is not there (aya reports it as `KeyNotFound` or as the syscall's ENOENT).
fn absent(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

pub fn set_endpoint(
    ebpf: &mut Ebpf,
    addr: Ipv4Addr,
    ep: &netfast_common::config::Endpoint,
) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, u32, netfast_common::config::Endpoint> =
        BpfHashMap::try_from(map_mut(ebpf, maps::ENDPOINTS)?)
            .map_err(|e| Error::map(maps::ENDPOINTS, e))?;
    hm.insert(raw_addr(addr), ep, 0)
        .map_err(|e| Error::map(maps::ENDPOINTS, e))
}

pub fn remove_endpoint(ebpf: &mut Ebpf, addr: Ipv4Addr) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, u32, netfast_common::config::Endpoint> =
        BpfHashMap::try_from(map_mut(ebpf, maps::ENDPOINTS)?)
            .map_err(|e| Error::map(maps::ENDPOINTS, e))?;
    match hm.remove(&raw_addr(addr)) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(maps::ENDPOINTS, e)),
    }
}

/// Marks `ifindex` as an uplink of the dataplane (see `maps::UPLINKS`).
pub fn set_uplink(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, u32, u8> =
        BpfHashMap::try_from(map_mut(ebpf, maps::UPLINKS)?)
            .map_err(|e| Error::map(maps::UPLINKS, e))?;
    hm.insert(ifindex, 1, 0)
        .map_err(|e| Error::map(maps::UPLINKS, e))
}

pub fn remove_uplink(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, u32, u8> =
        BpfHashMap::try_from(map_mut(ebpf, maps::UPLINKS)?)
            .map_err(|e| Error::map(maps::UPLINKS, e))?;
    match hm.remove(&ifindex) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(maps::UPLINKS, e)),
    }
}

/// The network info of `subnet/prefix`, if it is a network of the dataplane.
pub fn network_info(ebpf: &Ebpf, subnet: Ipv4Addr, prefix: u8) -> Result<Option<NetInfo>> {
    let trie: LpmTrie<&MapData, u32, NetInfo> =
        LpmTrie::try_from(map(ebpf, maps::NETWORKS)?).map_err(|e| Error::map(maps::NETWORKS, e))?;
    match trie.get(&Key::new(u32::from(prefix), raw_addr(subnet)), 0) {
        Ok(info) => Ok(Some(info)),
        Err(ref e) if absent(e) => Ok(None),
        Err(e) => Err(Error::map(maps::NETWORKS, e)),
    }
}

/// The host addresses the dataplane knows (see `maps::HOST_ADDRS`).
pub fn host_addrs(ebpf: &Ebpf) -> Result<Vec<Ipv4Addr>> {
    Ok(entries::<u32, u8>(ebpf, maps::HOST_ADDRS)?
        .into_iter()
        .map(|(k, _)| addr_of(k))
        .collect())
}

/// Every fast-path endpoint: container address and where it is.
pub fn endpoints(ebpf: &Ebpf) -> Result<Vec<(Ipv4Addr, netfast_common::config::Endpoint)>> {
    Ok(
        entries::<u32, netfast_common::config::Endpoint>(ebpf, maps::ENDPOINTS)?
            .into_iter()
            .map(|(k, v)| (addr_of(k), v))
            .collect(),
    )
}

/// The ifindexes marked as uplinks (see `maps::UPLINKS`).
pub fn uplinks(ebpf: &Ebpf) -> Result<Vec<u32>> {
    Ok(entries::<u32, u8>(ebpf, maps::UPLINKS)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// What [`take_if`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The entry was `expected`, and is gone.
    Removed,
    /// The entry had changed (the datapath used it meanwhile): it was put back as it is.
    Kept,
    /// There was no entry.
    Absent,
}

/// Removes `key` from the hash map `name` if its value is still `expected`, atomically:
/// the kernel hands over the value it removed (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`), and a
/// value that changed since it was judged is put back at once (`BPF_NOEXIST`: unless the
/// datapath has already made the entry again, which then stands).
pub fn take_if<K: aya::Pod, V: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
    expected: &V,
) -> Result<Taken> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match map(ebpf, name)? {
        aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m) => m.fd().as_fd().as_raw_fd(),
        _ => {
            return Err(Error::Settings(format!(
                "map {name} is not a hash map (a bug in netfast)"
            )));
        }
    };
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    // `union bpf_attr` for the map element commands: map_fd, (pad), key, value, flags.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    // SAFETY: bpf(2) with an attribute block that outlives the call; the kernel writes a
    // value of the map's value size (checked against `V` when the map was opened) into
    // `value`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(Taken::Absent);
        }
        return Err(Error::Io {
            context: format!("taking an entry out of map {name}"),
            source: err,
        });
    }
    // SAFETY: the kernel wrote the whole value; `V` is plain old data.
    let value = unsafe { value.assume_init() };
    if value == *expected {
        return Ok(Taken::Removed);
    }
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    const BPF_NOEXIST: u64 = 1;
    match hm.insert(key, value, BPF_NOEXIST) {
        Ok(()) => Ok(Taken::Kept),
        // The datapath made it again meanwhile: its entry stands.
        Err(aya::maps::MapError::SyscallError(ref s))
            if s.io_error.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(Taken::Kept)
        }
        Err(e) => Err(Error::map(name, e)),
    }
}
