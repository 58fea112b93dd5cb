//! The promises that hold whatever the mechanism (issue #13), checked on a snapshot of the
//! state — the model's after every step, the datapath's maps after the multi-CPU phase.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    BindKey, Binding, Claim, ClaimKey, Config, Entry, Tuple, conntrack::Table, mapping_slack,
    nat::mapping_keys,
};

/// A snapshot of the dataplane's state.
pub struct Snapshot<'a> {
    pub now: u32,
    pub main: &'a BTreeMap<Tuple, Entry>,
    pub inbound: &'a BTreeMap<Tuple, Entry>,
    pub bindings: &'a BTreeMap<BindKey, Binding>,
    pub claims: &'a BTreeMap<ClaimKey, Claim>,
    /// Entries were evicted: a live entry may have lost its other half (the datapath
    /// repairs it from the survivor), or its other half's tuple may have been taken by
    /// another flow since (the datapath removes the survivor when a packet matches it).
    pub evicted: bool,
    /// Port claims the LRU evicted under live mappings: until a packet of the mapping
    /// claims its port again, the port is free to another endpoint, which may bind it
    /// meanwhile (two internal endpoints then share it, their flows kept apart by their
    /// remote ends). Not held to the one-endpoint promise.
    pub lost_claims: &'a BTreeSet<ClaimKey>,
}

/// A broken promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// A live mapping leads to an external port whose claim is another endpoint's (or
    /// nobody's).
    MappingOnForeignClaim {
        bk: BindKey,
        ck: ClaimKey,
        holder: Option<Claim>,
    },
    /// Two live mappings lead to one external port.
    SharedExternal { ck: ClaimKey, holders: Vec<BindKey> },
    /// A live entry whose other half is missing or points elsewhere.
    HalfFlow { table: Table, key: Tuple },
    /// A live flow uses an external port whose claim is another endpoint's.
    FlowOnForeignClaim {
        table: Table,
        key: Tuple,
        bk: BindKey,
        ck: ClaimKey,
        holder: Claim,
    },
    /// A live mapping counts fewer open flows than use it: the next close would end it
    /// under a flow still open, and another endpoint could take its port.
    UndercountedMapping { bk: BindKey, flows: u16, open: u16 },
    /// A live TCP flow whose two entries hold different states, or whose state is not what
    /// its FINs say (both seen: TIME_WAIT, or CLOSE after a RST): a transition was lost.
    TcpState {
        table: Table,
        key: Tuple,
        state: super::tcp::State,
        peer: Option<super::tcp::State>,
    },
    /// A flow's entry that lives longer from now than its state's timeout: a packet gave it
    /// the time of a state it no longer is in.
    EntryOutlives {
        table: Table,
        key: Tuple,
        state: super::tcp::State,
        left: u32,
        bound: u32,
    },
    /// A mapping that lives longer from now than the longest its flows may live, and the
    /// slack: it holds its external port for a flow that can no longer renew it.
    MappingOutlives { bk: BindKey, left: u32, bound: u32 },
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::MappingOnForeignClaim { bk, ck, holder } => write!(
                f,
                "the live mapping of {}:{} (proto {}) leads to {}:{}, {}",
                bk.int_addr,
                bk.int_port,
                bk.proto,
                ck.ext_addr,
                ck.ext_port,
                match holder {
                    Some(c) => format!("whose claim is {}:{}'s", c.owner.0, c.owner.1),
                    None => "which nobody claims".into(),
                }
            ),
            Broken::SharedExternal { ck, holders } => {
                let who: Vec<String> = holders
                    .iter()
                    .map(|b| format!("{}:{}", b.int_addr, b.int_port))
                    .collect();
                write!(
                    f,
                    "{}:{} (proto {}) is the external endpoint of {}",
                    ck.ext_addr,
                    ck.ext_port,
                    ck.proto,
                    who.join(" and ")
                )
            }
            Broken::TcpState {
                table,
                key,
                state,
                peer,
            } => write!(
                f,
                "the live TCP flow {key} ({table:?} table) is {state:?}, its other entry {peer:?}: \
                 a state written over another CPU's"
            ),
            Broken::EntryOutlives {
                table,
                key,
                state,
                left,
                bound,
            } => write!(
                f,
                "the flow {key} ({table:?} table) is {state:?} but lives {left} s more, above \
                 the {bound} s its state allows: it was given the time of a state it left"
            ),
            Broken::MappingOutlives { bk, left, bound } => write!(
                f,
                "the mapping of {}:{} (proto {}) lives {left} s more, above the {bound} s its \
                 flows and the slack allow",
                bk.int_addr, bk.int_port, bk.proto
            ),
            Broken::HalfFlow { table, key } => write!(
                f,
                "{table:?} table: the live entry {key} has no other half pointing back at it"
            ),
            Broken::FlowOnForeignClaim {
                key,
                bk,
                ck,
                holder,
                ..
            } => write!(
                f,
                "the live flow {key} uses {}:{} for {}:{}, but {}:{} holds that port",
                ck.ext_addr, ck.ext_port, bk.int_addr, bk.int_port, holder.owner.0, holder.owner.1
            ),
            Broken::UndercountedMapping { bk, flows, open } => write!(
                f,
                "the live mapping of {}:{} (proto {}) counts {flows} open flows, but {open} use it",
                bk.int_addr, bk.int_port, bk.proto
            ),
        }
    }
}

/// Every broken promise.
pub fn check(s: &Snapshot<'_>) -> Vec<Broken> {
    let mut broken = Vec::new();
    one_internal_endpoint_per_external_one(s, &mut broken);
    for (table, entries) in [(Table::Main, s.main), (Table::Inbound, s.inbound)] {
        let live = || entries.iter().filter(|(_, e)| e.expires >= s.now);
        broken.extend(live().filter_map(|(k, e)| half_flow(s, table, entries, k, e)));
        broken.extend(live().filter_map(|(k, e)| flow_on_foreign_claim(s, table, k, e)));
        broken.extend(live().filter_map(|(k, e)| tcp_state(table, entries, k, e)));
    }
    undercounted_mappings(s, &mut broken);
    broken
}

/// No entry lives longer from now than its state's timeout, and no mapping longer than the
/// longest its flows may live and the slack: a packet that read a flow's state before
/// another CPU closed it does not give the closed flow, or its mapping, the open state's
/// time. Two CPUs that move a flow on at once may leave one's state with the other's time:
/// the states other than ESTABLISHED share the longest of their timeouts as their bound.
/// For settings that stay as they are (an episode may shorten a timeout under live flows,
/// which keep the time they were given): the multi-CPU phase's.
pub fn lifetimes(s: &Snapshot<'_>, config: &Config) -> Vec<Broken> {
    use super::tcp::State;
    let bound = |proto: u8, state: State| {
        if proto == super::PROTO_TCP && state != State::Established {
            config.closed_timeout()
        } else {
            config.timeout(proto, state)
        }
    };
    let mut broken = Vec::new();
    let mut mappings: BTreeMap<BindKey, u32> = BTreeMap::new();
    for (table, entries) in [(Table::Main, s.main), (Table::Inbound, s.inbound)] {
        for (k, e) in entries {
            let b = bound(k.proto, e.state);
            if e.flags.masq_src || e.flags.masq_dst {
                let most = mappings.entry(mapping_keys(k, e).0).or_default();
                *most = (*most).max(b + mapping_slack(b));
            }
            let left = e.expires.saturating_sub(s.now);
            if left > b {
                broken.push(Broken::EntryOutlives {
                    table,
                    key: *k,
                    state: e.state,
                    left,
                    bound: b,
                });
            }
        }
    }
    for (bk, b) in s.bindings {
        let left = b.expires.saturating_sub(s.now);
        if let Some(&bound) = mappings.get(bk)
            && left > bound
        {
            broken.push(Broken::MappingOutlives {
                bk: *bk,
                left,
                bound,
            });
        }
    }
    broken
}

/// A mapping's count of open flows is never below the truth, the LRU's evictions included
/// (a binding it evicted is made again not knowing the count, which is above any): each live
/// entry whose source is the mapping's internal endpoint, and whose close has not been
/// subtracted, is one of them — on the binding's port: a flow left on another port (its
/// binding evicted, and made again on a new one) closes without subtracting.
fn undercounted_mappings(s: &Snapshot<'_>, broken: &mut Vec<Broken>) {
    let mut open: BTreeMap<(BindKey, u16), u16> = BTreeMap::new();
    for (k, e) in s.main.iter().chain(s.inbound) {
        if e.expires >= s.now && e.flags.masq_src && !e.flags.released {
            let (bk, ck) = mapping_keys(k, e);
            *open.entry((bk, ck.ext_port)).or_default() += 1;
        }
    }
    for ((bk, port), open) in open {
        let Some(b) = s.bindings.get(&bk) else {
            continue;
        };
        if b.expires >= s.now && b.ext_port == port && b.flows < open {
            broken.push(Broken::UndercountedMapping {
                bk,
                flows: b.flows,
                open,
            });
        }
    }
}

/// At every instant an external (address, port, protocol) belongs to one internal
/// endpoint: no two live mappings lead to it, and the one that does holds its claim.
fn one_internal_endpoint_per_external_one(s: &Snapshot<'_>, broken: &mut Vec<Broken>) {
    let mut holders: BTreeMap<ClaimKey, Vec<BindKey>> = BTreeMap::new();
    for (bk, b) in s.bindings {
        if b.expires < s.now {
            continue;
        }
        let ck = ClaimKey {
            ext_addr: bk.ext_addr,
            ext_port: b.ext_port,
            proto: bk.proto,
        };
        if s.lost_claims.contains(&ck) {
            continue;
        }
        holders.entry(ck).or_default().push(*bk);
        let holder = s.claims.get(&ck).copied();
        if !holder.is_some_and(|c| c.owned_by((bk.int_addr, bk.int_port))) {
            broken.push(Broken::MappingOnForeignClaim {
                bk: *bk,
                ck,
                holder,
            });
        }
    }
    for (ck, holders) in holders {
        if holders.len() > 1 {
            broken.push(Broken::SharedExternal { ck, holders });
        }
    }
}

/// A live TCP flow's entries agree on its state, and it is what its FINs say.
fn tcp_state(
    table: Table,
    entries: &BTreeMap<Tuple, Entry>,
    k: &Tuple,
    e: &Entry,
) -> Option<Broken> {
    use super::tcp::State;
    if k.proto != netfast::common::conntrack::PROTO_TCP {
        return None;
    }
    let peer = entries.get(&e.peer_key(k)).map(|p| p.state);
    let both_fins = e.flags.fin_orig && e.flags.fin_reply;
    let wrong = peer.is_some_and(|p| p != e.state)
        || (both_fins && !matches!(e.state, State::TimeWait | State::Close));
    wrong.then_some(Broken::TcpState {
        table,
        key: *k,
        state: e.state,
        peer,
    })
}

/// Both entries of every live flow point at each other: the live entry `e` at `k` is not
/// half of one.
fn half_flow(
    s: &Snapshot<'_>,
    table: Table,
    entries: &BTreeMap<Tuple, Entry>,
    k: &Tuple,
    e: &Entry,
) -> Option<Broken> {
    let pk = e.peer_key(k);
    let broken_pair = match entries.get(&pk) {
        None => !s.evicted,
        // Where the other half is now another flow's (the LRU evicted it and a new flow took
        // its tuple), a packet that matches `e` removes it (the lookup's rule).
        Some(p) => !s.evicted && p.peer_key(&pk) != *k,
    };
    broken_pair.then_some(Broken::HalfFlow { table, key: *k })
}

/// No live flow uses a mapping whose claim belongs to another endpoint: the live entry `e`
/// at `k` does not.
fn flow_on_foreign_claim(s: &Snapshot<'_>, table: Table, k: &Tuple, e: &Entry) -> Option<Broken> {
    if !e.flags.masq() {
        return None;
    }
    let (bk, ck) = mapping_keys(k, e);
    if s.lost_claims.contains(&ck) {
        return None;
    }
    let c = s.claims.get(&ck)?;
    (!c.owned_by((bk.int_addr, bk.int_port))).then_some(Broken::FlowOnForeignClaim {
        table,
        key: *k,
        bk,
        ck,
        holder: *c,
    })
}
