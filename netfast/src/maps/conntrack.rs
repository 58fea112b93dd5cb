//! The flows: conntrack entries read, listed as `conntrack -L` prints them, deleted with
//! the NAT mappings they hold, and flushed.

use std::{collections::HashMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use netfast_common::{
    conntrack::{
        CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REPLY, CT_F_SEEN_REPLY, CtEntry, CtKey, PROTO_ICMP,
        PROTO_TCP, PROTO_UDP, TcpState,
    },
    maps,
    nat::{self, FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey},
};
use serde::Serialize;

use super::{absent, addr_of, entries, map_mut, remove_conntrack, remove_key};
use crate::error::{Error, Result};

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

/// The TCP state of the flow whose entry is keyed `key`, in either table; `None` when there
/// is no such entry.
pub fn tcp_state(ebpf: &Ebpf, key: &CtKey) -> Result<Option<u8>> {
    for name in [maps::CONNTRACK, maps::CT_INBOUND] {
        let hm: BpfHashMap<&MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(super::map(ebpf, name)?).map_err(|e| Error::map(name, e))?;
        match hm.get(key, 0) {
            Ok(e) => return Ok(Some(e.tcp_state)),
            Err(ref e) if absent(e) => {}
            Err(e) => return Err(Error::map(name, e)),
        }
    }
    Ok(None)
}

/// Holds external port `key` for nobody until `until` (a claim whose owner no container
/// is): the datapath gives no container a new mapping on it meanwhile, and takes it over
/// once it has expired. A claim held for nobody already, or one expired at `now`, is
/// replaced; false when a container's live claim holds the port, which is left as it is.
pub fn hold_port(ebpf: &mut Ebpf, key: &NatClaimKey, now: u32, until: u32) -> Result<bool> {
    let name = maps::NAT_CLAIMS;
    let nobody_owner = NatClaim::HELD_FOR_NOBODY;
    for _ in 0..2 {
        let mut hm: BpfHashMap<&mut MapData, NatClaimKey, NatClaim> =
            BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
        match hm.insert(
            key,
            NatClaim::new(nobody_owner, until),
            crate::bpf_sys::NOEXIST,
        ) {
            Ok(()) => return Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(Error::map(name, e)),
        }
        let held = match hm.get(key, 0) {
            Ok(held) => held,
            Err(ref e) if absent(e) => continue,
            Err(e) => return Err(Error::map(name, e)),
        };
        if held.owner != nobody_owner && held.expires >= now {
            return Ok(false);
        }
        // Ours from an earlier unpublish, or over: taken out unless the datapath changed it
        // meanwhile (then it is a container's now, and stands).
        if super::take_if(ebpf, name, key, &held)? != super::Taken::Removed {
            return Ok(false);
        }
    }
    Ok(false)
}

pub fn insert_conntrack(ebpf: &mut Ebpf, key: &CtKey, entry: &CtEntry) -> Result<()> {
    super::insert_key(ebpf, maps::CONNTRACK, key, entry)
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
    delete_flows_after(ebpf, now, matches, |_, _| Ok(()))
}

/// [`delete_flows`], calling `first` with the flows it selected before it removes them.
pub fn delete_flows_after(
    ebpf: &mut Ebpf,
    now: u32,
    matches: impl Fn(&Flow) -> bool,
    first: impl FnOnce(&Ebpf, &[Flow]) -> Result<()>,
) -> Result<Deleted> {
    let mut all: HashMap<CtKey, CtEntry> = conntrack_entries(ebpf)?.into_iter().collect();
    let (doomed, flows): (Vec<CtKey>, Vec<Flow>) =
        live_flows(&all, now).filter(|(_, f)| matches(f)).unzip();
    first(ebpf, &flows)?;
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
