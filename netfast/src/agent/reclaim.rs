//! Reclaiming what the datapath left to expire: conntrack entries, NAT bindings and claims.
//!
//! The datapath never deletes a flow entry, a binding or a claim (so that no CPU removes what
//! another has just made); it treats an expired one as absent and overwrites it in place
//! when it needs the slot. Until then the LRU maps hold the dead beside the living, and
//! their occupancy says nothing. The agent removes the dead, judged by the datapath's own
//! rules with [`GRACE`] seconds to spare:
//! - a conntrack entry is dead when it has expired and its flow's other entry does not keep
//!   it alive (the datapath revives an expired entry whose peer lives and points back);
//! - a binding is dead when it has expired and no living flow of its internal endpoint
//!   uses it (one that did would make it again);
//! - a claim is dead when its hint has expired, its owner's binding is dead, absent or leads
//!   to another port (the rule by which the datapath lets another endpoint take the port
//!   over), and no living flow uses the port.
//!
//! Each is removed atomically with the value it was judged by ([`maps::take_if`]): one the
//! datapath used or took over in between is put back at once, so that a claim taken over a
//! moment ago is never lost (two endpoints would then share the port).

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::Ebpf;
use netfast_common::{
    conntrack::{CT_F_MASQ_DST, CT_F_MASQ_SRC, CtEntry, CtKey},
    maps as names,
    nat::{NatBindKey, NatBinding, NatClaim, NatClaimKey, mapping_keys},
};

use crate::{
    error::Result,
    maps::{self, Taken},
};

/// Seconds past its expiry before anything is judged dead: the programs' clock (jiffies,
/// calibrated to CLOCK_MONOTONIC when they were loaded) may run a little behind the agent's.
pub const GRACE: u32 = 5;

fn dead(expires: u32, now: u32) -> bool {
    expires.saturating_add(GRACE) < now
}

/// The maps as read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub main: HashMap<CtKey, CtEntry>,
    pub inbound: HashMap<CtKey, CtEntry>,
    pub bindings: HashMap<NatBindKey, NatBinding>,
    pub claims: HashMap<NatClaimKey, NatClaim>,
}

impl Snapshot {
    pub fn read(ebpf: &Ebpf) -> Result<Snapshot> {
        Ok(Snapshot {
            main: maps::conntrack_main(ebpf)?.into_iter().collect(),
            inbound: maps::inbound_entries(ebpf)?.into_iter().collect(),
            bindings: maps::nat_bindings(ebpf)?.into_iter().collect(),
            claims: maps::nat_claims(ebpf)?.into_iter().collect(),
        })
    }
}

/// What is dead, with the values it was judged by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub main: Vec<(CtKey, CtEntry)>,
    pub inbound: Vec<(CtKey, CtEntry)>,
    pub bindings: Vec<(NatBindKey, NatBinding)>,
    pub claims: Vec<(NatClaimKey, NatClaim)>,
}

/// Whether the entry `key` of `table` is dead at `now`.
fn entry_dead(table: &HashMap<CtKey, CtEntry>, key: &CtKey, e: &CtEntry, now: u32) -> bool {
    if !dead(e.expires, now) {
        return false;
    }
    let peer_key = e.peer_key(key);
    !table
        .get(&peer_key)
        .is_some_and(|p| !dead(p.expires, now) && p.peer_key(&peer_key) == *key)
}

fn masquerade(e: &CtEntry) -> bool {
    e.flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0
}

/// The dead of `s` at `now` (the programs' clock).
pub fn plan(s: &Snapshot, now: u32) -> Plan {
    let dead_in = |table: &HashMap<CtKey, CtEntry>| -> Vec<(CtKey, CtEntry)> {
        let mut v: Vec<_> = table
            .iter()
            .filter(|(k, e)| entry_dead(table, k, e, now))
            .map(|(k, e)| (*k, *e))
            .collect();
        v.sort_by_key(|(k, _)| (k.src_addr, k.dst_addr, k.src_port, k.dst_port, k.proto));
        v
    };
    let main = dead_in(&s.main);
    let inbound = dead_in(&s.inbound);
    let gone: HashSet<CtKey> = main.iter().chain(&inbound).map(|(k, _)| *k).collect();
    // The mappings, and the external ports, of the entries that stay.
    let in_use: HashSet<(NatBindKey, NatClaimKey)> = s
        .main
        .iter()
        .chain(&s.inbound)
        .filter(|(k, e)| masquerade(e) && !gone.contains(k))
        .map(|(k, e)| mapping_keys(k, e))
        .collect();
    let ports: HashSet<NatClaimKey> = in_use.iter().map(|(_, c)| *c).collect();
    let mut bindings: Vec<(NatBindKey, NatBinding)> = s
        .bindings
        .iter()
        .filter(|(bk, b)| dead(b.expires, now) && !in_use.iter().any(|(k, _)| k == *bk))
        .map(|(k, b)| (*k, *b))
        .collect();
    bindings.sort_by_key(|(k, _)| (k.int_addr, k.ext_addr, k.int_port, k.proto));
    let dead_bindings: HashSet<NatBindKey> = bindings.iter().map(|(k, _)| *k).collect();
    let mut claims: Vec<(NatClaimKey, NatClaim)> = s
        .claims
        .iter()
        .filter(|(ck, c)| {
            if !dead(c.expires, now) || ports.contains(ck) {
                return false;
            }
            let owner = NatBindKey {
                int_addr: c.int_addr(),
                ext_addr: ck.ext_addr,
                int_port: c.int_port(),
                proto: ck.proto,
                _pad: 0,
            };
            match s.bindings.get(&owner) {
                None => true,
                Some(b) => dead_bindings.contains(&owner) || b.ext_port != ck.ext_port,
            }
        })
        .map(|(k, c)| (*k, *c))
        .collect();
    claims.sort_by_key(|(k, _)| (k.ext_addr, k.ext_port, k.proto));
    Plan {
        main,
        inbound,
        bindings,
        claims,
    }
}

/// What one pass removed (and put back, having found it in use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub entries: u64,
    pub bindings: u64,
    pub claims: u64,
    /// Judged dead but used by the datapath in the meantime: left in place.
    pub kept: u64,
}

/// Removes what `plan` found dead: the flows' entries first, then the bindings, then the
/// claims (so that a claim goes only after everything that led to it).
pub fn apply(ebpf: &mut Ebpf, plan: &Plan) -> Result<Reclaimed> {
    let mut r = Reclaimed::default();
    let count = |t: Taken, n: &mut u64, kept: &mut u64| match t {
        Taken::Removed => *n += 1,
        Taken::Kept => *kept += 1,
        Taken::Absent => {}
    };
    let mut kept = 0;
    for (table, entries) in [
        (names::CONNTRACK, &plan.main),
        (names::CT_INBOUND, &plan.inbound),
    ] {
        for (k, e) in entries {
            count(maps::take_if(ebpf, table, k, e)?, &mut r.entries, &mut kept);
        }
    }
    for (k, b) in &plan.bindings {
        count(
            maps::take_if(ebpf, names::NAT_BINDINGS, k, b)?,
            &mut r.bindings,
            &mut kept,
        );
    }
    for (k, c) in &plan.claims {
        count(
            maps::take_if(ebpf, names::NAT_CLAIMS, k, c)?,
            &mut r.claims,
            &mut kept,
        );
    }
    r.kept = kept;
    Ok(r)
}

/// How full the tables are, after a pass: live entries against capacity, and the external
/// ports held per address and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Entries (two per flow) of the main table and of the unanswered inbound flows.
    pub main_entries: u64,
    pub inbound_entries: u64,
    pub main_capacity: u64,
    pub inbound_capacity: u64,
    pub bindings: u64,
    pub claims: u64,
    pub nat_capacity: u64,
    /// Live claims per (external address, protocol number).
    pub ports: BTreeMap<(std::net::Ipv4Addr, u8), u64>,
}

/// The occupancy of `s` once `plan` is carried out.
pub fn occupancy(s: &Snapshot, plan: &Plan, ct_max_flows: u32) -> Occupancy {
    let gone = |n: usize, d: usize| (n.saturating_sub(d)) as u64;
    let dead_claims: HashSet<NatClaimKey> = plan.claims.iter().map(|(k, _)| *k).collect();
    let mut ports = BTreeMap::new();
    for ck in s.claims.keys().filter(|k| !dead_claims.contains(k)) {
        *ports
            .entry((maps::addr_of(ck.ext_addr), ck.proto))
            .or_insert(0) += 1;
    }
    Occupancy {
        main_entries: gone(s.main.len(), plan.main.len()),
        inbound_entries: gone(s.inbound.len(), plan.inbound.len()),
        main_capacity: u64::from(ct_max_flows) * 2,
        inbound_capacity: u64::from(names::inbound_flows(ct_max_flows)) * 2,
        bindings: gone(s.bindings.len(), plan.bindings.len()),
        claims: gone(s.claims.len(), plan.claims.len()),
        nat_capacity: u64::from(ct_max_flows),
        ports,
    }
}

/// One pass: read, judge, remove. `now` is the programs' clock.
pub fn reclaim(ebpf: &mut Ebpf, now: u32, ct_max_flows: u32) -> Result<(Reclaimed, Occupancy)> {
    let snapshot = Snapshot::read(ebpf)?;
    let plan = plan(&snapshot, now);
    let done = apply(ebpf, &plan)?;
    Ok((done, occupancy(&snapshot, &plan, ct_max_flows)))
}

#[cfg(test)]
mod tests {
    use netfast_common::conntrack::{
        CT_F_FROM_INSIDE, CT_F_INWARD, CT_F_MASQ_SRC, CT_F_REWRITE_SRC, FlowTimes, NewEntry,
        TcpState,
    };

    use super::*;

    const NOW: u32 = 10_000;
    const EXT: u32 = 0x0100_33c6;

    /// A masqueraded flow from `int_port`, whose entries expire at `expires` (original) and
    /// `reply_expires`, on external port `ext_port`.
    fn flow(
        s: &mut Snapshot,
        int_port: u16,
        ext_port: u16,
        expires: u32,
        reply_expires: u32,
    ) -> (CtKey, CtKey) {
        let key = CtKey::new(
            0x0200_12ac,
            0x0a00_71cb,
            int_port.to_be(),
            80u16.to_be(),
            17,
        );
        let mut orig = CtEntry::opening(&NewEntry {
            flags: CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_FROM_INSIDE,
            src: (EXT, ext_port.to_be()),
            dst: (0, 0),
            net_id: 1,
            times: FlowTimes {
                state: TcpState::None,
                now: 100,
                expires,
                map_expires: expires,
            },
            bytes: 60,
        });
        let mut reply = orig.reply(&key, CT_F_INWARD);
        reply.expires = reply_expires;
        orig.expires = expires;
        let reply_key = orig.peer_key(&key);
        s.main.insert(key, orig);
        s.main.insert(reply_key, reply);
        (key, reply_key)
    }

    fn mapping(s: &mut Snapshot, int_port: u16, ext_port: u16, expires: u32, claim_expires: u32) {
        let bk = NatBindKey {
            int_addr: 0x0200_12ac,
            ext_addr: EXT,
            int_port: int_port.to_be(),
            proto: 17,
            _pad: 0,
        };
        s.bindings.insert(
            bk,
            NatBinding {
                ext_port: ext_port.to_be(),
                flows: 1,
                expires,
            },
        );
        s.claims.insert(
            NatClaimKey {
                ext_addr: EXT,
                ext_port: ext_port.to_be(),
                proto: 17,
                _pad: 0,
            },
            NatClaim {
                owner: NatClaim::owner_of(0x0200_12ac, int_port.to_be(), 1),
                expires: claim_expires,
                closed_until: 0,
            },
        );
    }

    #[test]
    fn a_flow_lives_while_either_entry_does_and_dies_whole() {
        let mut s = Snapshot::default();
        // One way only: the original entry is fresh, the reply's long expired.
        flow(&mut s, 1000, 61000, NOW + 30, NOW - 500);
        // Both long expired.
        let (a, b) = flow(&mut s, 1001, 61001, NOW - 500, NOW - 400);
        // Expired, but within the grace.
        flow(&mut s, 1002, 61002, NOW - 1, NOW - 1);
        let p = plan(&s, NOW);
        let mut dead: Vec<CtKey> = p.main.iter().map(|(k, _)| *k).collect();
        dead.sort_by_key(|k| k.src_port);
        let mut want = vec![a, b];
        want.sort_by_key(|k| k.src_port);
        assert_eq!(dead, want);
    }

    #[test]
    fn an_expired_entry_whose_peer_points_elsewhere_is_dead() {
        let mut s = Snapshot::default();
        let (orig, reply) = flow(&mut s, 1000, 61000, NOW - 500, NOW + 30);
        // The reply's tuple now belongs to another flow, whose peer is not `orig`.
        let other = s.main.get_mut(&reply).expect("reply");
        other.dst_port = 4242u16.to_be();
        let p = plan(&s, NOW);
        assert_eq!(
            p.main.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![orig]
        );
    }

    #[test]
    fn a_mapping_goes_only_when_no_flow_uses_it_and_its_binding_is_dead() {
        let mut s = Snapshot::default();
        // Dead mapping, no flow.
        mapping(&mut s, 1000, 61000, NOW - 100, NOW - 100);
        // Binding expired, but a live flow still uses the mapping: both stay.
        mapping(&mut s, 1001, 61001, NOW - 100, NOW - 100);
        flow(&mut s, 1001, 61001, NOW + 30, NOW + 30);
        // The claim's hint expired but its binding lives: the port stays its owner's.
        mapping(&mut s, 1002, 61002, NOW + 100, NOW - 100);
        let p = plan(&s, NOW);
        let bound: Vec<u16> = p
            .bindings
            .iter()
            .map(|(k, _)| u16::from_be(k.int_port))
            .collect();
        let claimed: Vec<u16> = p
            .claims
            .iter()
            .map(|(k, _)| u16::from_be(k.ext_port))
            .collect();
        assert_eq!(bound, vec![1000]);
        assert_eq!(claimed, vec![61000]);
        let o = occupancy(&s, &p, 4096);
        assert_eq!((o.bindings, o.claims, o.main_entries), (2, 2, 2));
        assert_eq!(o.ports.get(&(maps::addr_of(EXT), 17)), Some(&2));
    }

    #[test]
    fn a_claim_whose_owner_moved_to_another_port_goes() {
        let mut s = Snapshot::default();
        mapping(&mut s, 1000, 61000, NOW + 100, NOW + 100);
        // An old claim of the same endpoint on another port, expired.
        s.claims.insert(
            NatClaimKey {
                ext_addr: EXT,
                ext_port: 62000u16.to_be(),
                proto: 17,
                _pad: 0,
            },
            NatClaim {
                owner: NatClaim::owner_of(0x0200_12ac, 1000u16.to_be(), 1),
                expires: NOW - 100,
                closed_until: 0,
            },
        );
        let p = plan(&s, NOW);
        assert!(p.bindings.is_empty());
        assert_eq!(
            p.claims
                .iter()
                .map(|(k, _)| u16::from_be(k.ext_port))
                .collect::<Vec<_>>(),
            vec![62000]
        );
    }
}
