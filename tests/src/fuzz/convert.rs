//! The model's state in the datapath's map layout (network byte order, flag words), for
//! comparing the two.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use netfast::{
    agent::reclaim::Snapshot,
    common::{
        config::{DpConfig, FILTERING_ADDRESS_AND_PORT_DEPENDENT, FILTERING_ENDPOINT_INDEPENDENT},
        conntrack::{
            CT_F_AWAIT_REPLY, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_FROM_INSIDE, CT_F_INWARD,
            CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_PUBLISHED, CT_F_REDIRECT, CT_F_RELEASED, CT_F_REPLY,
            CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CT_F_SEEN_REPLY, CT_F_TD_SEEN, CT_F_TWO_MAPPINGS,
            CtEntry, CtKey, FwdCache,
        },
        nat::{FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey},
    },
    maps::{addr_of, raw_addr},
};

use super::dp::Dump;
use crate::model::{
    BindKey, Binding, Claim, ClaimKey, Config, Entry, FragKey as MFragKey, FragRecord, Model, Tuple,
};

pub fn ct_key(t: &Tuple) -> CtKey {
    CtKey::new(
        raw_addr(t.src),
        raw_addr(t.dst),
        t.sport.to_be(),
        t.dport.to_be(),
        t.proto,
    )
}

pub fn tuple(k: &CtKey) -> Tuple {
    Tuple::new(
        netfast::maps::addr_of(k.src_addr),
        netfast::maps::addr_of(k.dst_addr),
        u16::from_be(k.src_port),
        u16::from_be(k.dst_port),
        k.proto,
    )
}

// The struct update fills what a later layout adds (the upgrade test's `layout-next` build);
// in this one every field is named.
#[allow(clippy::needless_update)]
pub fn ct_entry(e: &Entry) -> CtEntry {
    let f = &e.flags;
    let mut flags = 0u16;
    for (on, bit) in [
        (e.new_src.is_some(), CT_F_REWRITE_SRC),
        (e.new_dst.is_some(), CT_F_REWRITE_DST),
        (f.reply, CT_F_REPLY),
        (f.seen_reply, CT_F_SEEN_REPLY),
        (f.fin_orig, CT_F_FIN_ORIG),
        (f.fin_reply, CT_F_FIN_REPLY),
        (f.masq_src, CT_F_MASQ_SRC),
        (f.masq_dst, CT_F_MASQ_DST),
        (f.released, CT_F_RELEASED),
        (f.inward, CT_F_INWARD),
        (f.redirect, CT_F_REDIRECT),
        (f.published, CT_F_PUBLISHED),
        (f.from_inside, CT_F_FROM_INSIDE),
        (f.td_seen, CT_F_TD_SEEN),
        (f.two_mappings, CT_F_TWO_MAPPINGS),
        (f.await_reply, CT_F_AWAIT_REPLY),
    ] {
        if on {
            flags |= bit;
        }
    }
    let (src_addr, src_port) = e.new_src.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    let (dst_addr, dst_port) = e.new_dst.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
    CtEntry {
        expires: e.expires,
        created: e.created,
        src_addr: raw_addr(src_addr),
        dst_addr: raw_addr(dst_addr),
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        flags,
        tcp_state: e.state.code(),
        wscale: e.window.wscale,
        net_id: e.net_id,
        _pad2: [0; 2],
        map_expires: e.map_expires,
        packets: e.packets,
        bytes: e.bytes,
        fwd: FwdCache::EMPTY,
        td_end: e.window.end,
        td_maxwin: e.window.max_win,
        // Whatever a later layout adds (the upgrade test's build) stays as the datapath
        // leaves a new entry.
        ..CtEntry::default()
    }
}

/// A datapath entry as compared: its route cache is the fast path's business.
pub fn comparable(e: &CtEntry) -> CtEntry {
    CtEntry {
        fwd: FwdCache::EMPTY,
        ..*e
    }
}

pub fn bind_key(k: &BindKey) -> NatBindKey {
    NatBindKey {
        int_addr: raw_addr(k.int_addr),
        ext_addr: raw_addr(k.ext_addr),
        int_port: k.int_port.to_be(),
        proto: k.proto,
        _pad: 0,
    }
}

pub fn binding(b: &Binding) -> NatBinding {
    NatBinding {
        ext_port: b.ext_port.to_be(),
        flows: b.flows,
        expires: b.expires,
    }
}

pub fn claim_key(k: &ClaimKey) -> NatClaimKey {
    NatClaimKey {
        ext_addr: raw_addr(k.ext_addr),
        ext_port: k.ext_port.to_be(),
        proto: k.proto,
        _pad: 0,
    }
}

pub fn claim(c: &Claim) -> NatClaim {
    NatClaim {
        owner: NatClaim::owner_of(raw_addr(c.owner.0), c.owner.1.to_be(), c.owner_net),
        expires: c.expires,
        closed_until: c.closed_until,
    }
}

pub fn frag_key(k: &MFragKey) -> FragKey {
    FragKey {
        src_addr: raw_addr(k.src),
        dst_addr: raw_addr(k.dst),
        id: k.id.to_be(),
        proto: k.proto,
        _pad: 0,
    }
}

pub fn frag(r: &FragRecord) -> FragEntry {
    FragEntry {
        src_addr: raw_addr(r.src),
        dst_addr: raw_addr(r.dst),
        expires: r.expires,
        _pad: 0,
    }
}

/// Each entry of `m`, its key converted by `key` and its value by `value`.
fn mapped<'a, K: 'a, V: 'a, K2, V2, C: FromIterator<(K2, V2)>>(
    m: impl IntoIterator<Item = (&'a K, &'a V)>,
    key: impl Fn(&K) -> K2,
    value: impl Fn(&V) -> V2,
) -> C {
    m.into_iter().map(|(k, v)| (key(k), value(v))).collect()
}

/// The model's maps in the datapath's layout, to compare with a [`Dump`] of the datapath
/// (whose conntrack entries must go through [`comparable`] first).
pub fn dp_dump(m: &Model) -> Dump {
    Dump {
        maps: Snapshot {
            main: mapped(&m.ct.main, ct_key, ct_entry),
            inbound: mapped(&m.ct.inbound, ct_key, ct_entry),
            bindings: mapped(&m.bindings, bind_key, binding),
            claims: mapped(&m.claims, claim_key, claim),
        },
        frags: mapped(&m.frags, frag_key, frag),
    }
}

/// The conntrack and NAT maps as the model keeps them.
pub struct ModelMaps {
    pub main: BTreeMap<Tuple, Entry>,
    pub inbound: BTreeMap<Tuple, Entry>,
    pub bindings: BTreeMap<BindKey, Binding>,
    pub claims: BTreeMap<ClaimKey, Claim>,
}

/// The datapath's conntrack and NAT maps as the model keeps them.
pub fn model_maps(s: &Snapshot) -> ModelMaps {
    ModelMaps {
        main: mapped(&s.main, tuple, model_entry),
        inbound: mapped(&s.inbound, tuple, model_entry),
        bindings: mapped(&s.bindings, model_bind_key, model_binding),
        claims: mapped(&s.claims, model_claim_key, model_claim),
    }
}

/// The datapath's fragment records as the model keeps them.
pub fn model_frags(frags: &HashMap<FragKey, FragEntry>) -> BTreeMap<MFragKey, FragRecord> {
    mapped(frags, model_frag_key, model_frag)
}

fn model_frag_key(k: &FragKey) -> MFragKey {
    MFragKey {
        src: addr_of(k.src_addr),
        dst: addr_of(k.dst_addr),
        id: u16::from_be(k.id),
        proto: k.proto,
    }
}

fn model_frag(r: &FragEntry) -> FragRecord {
    FragRecord {
        src: addr_of(r.src_addr),
        dst: addr_of(r.dst_addr),
        expires: r.expires,
    }
}

/// The model's settings as the config map holds them (the clock fields are the caller's).
pub fn dp_config(c: &Config, clock: &DpConfig) -> DpConfig {
    c.timeouts.write_to(DpConfig {
        port_min: c.port_min,
        port_max: c.port_max,
        filtering: if c.endpoint_independent {
            FILTERING_ENDPOINT_INDEPENDENT
        } else {
            FILTERING_ADDRESS_AND_PORT_DEPENDENT
        },
        fast_path: u8::from(c.fast_path),
        _pad: [0; 2],
        ..*clock
    })
}

/// The model's entries and mappings from a datapath snapshot, for the invariants (the
/// multi-CPU phase has no model to compare with).
pub fn model_entry(e: &CtEntry) -> Entry {
    use crate::model::{EntryFlags, tcp};
    let has = |bit: u16| e.flags & bit != 0;
    Entry {
        expires: e.expires,
        created: e.created,
        new_src: has(CT_F_REWRITE_SRC)
            .then(|| (netfast::maps::addr_of(e.src_addr), u16::from_be(e.src_port))),
        new_dst: has(CT_F_REWRITE_DST)
            .then(|| (netfast::maps::addr_of(e.dst_addr), u16::from_be(e.dst_port))),
        flags: EntryFlags {
            reply: has(CT_F_REPLY),
            seen_reply: has(CT_F_SEEN_REPLY),
            fin_orig: has(CT_F_FIN_ORIG),
            fin_reply: has(CT_F_FIN_REPLY),
            masq_src: has(CT_F_MASQ_SRC),
            masq_dst: has(CT_F_MASQ_DST),
            released: has(CT_F_RELEASED),
            inward: has(CT_F_INWARD),
            redirect: has(CT_F_REDIRECT),
            published: has(CT_F_PUBLISHED),
            from_inside: has(CT_F_FROM_INSIDE),
            td_seen: has(CT_F_TD_SEEN),
            two_mappings: has(CT_F_TWO_MAPPINGS),
            await_reply: has(CT_F_AWAIT_REPLY),
        },
        state: tcp::State::from_code(e.tcp_state),
        window: tcp::Window {
            seen: has(CT_F_TD_SEEN),
            end: e.td_end,
            max_win: e.td_maxwin,
            wscale: e.wscale,
        },
        net_id: e.net_id,
        map_expires: e.map_expires,
        packets: e.packets,
        bytes: e.bytes,
    }
}

pub fn model_bind_key(k: &NatBindKey) -> BindKey {
    BindKey {
        int_addr: netfast::maps::addr_of(k.int_addr),
        ext_addr: netfast::maps::addr_of(k.ext_addr),
        int_port: u16::from_be(k.int_port),
        proto: k.proto,
    }
}

pub fn model_binding(b: &NatBinding) -> Binding {
    Binding {
        ext_port: u16::from_be(b.ext_port),
        flows: b.flows,
        expires: b.expires,
    }
}

pub fn model_claim_key(k: &NatClaimKey) -> ClaimKey {
    ClaimKey {
        ext_addr: netfast::maps::addr_of(k.ext_addr),
        ext_port: u16::from_be(k.ext_port),
        proto: k.proto,
    }
}

pub fn model_claim(c: &NatClaim) -> Claim {
    Claim {
        owner: (
            netfast::maps::addr_of(c.int_addr()),
            u16::from_be(c.int_port()),
        ),
        owner_net: c.net_id(),
        expires: c.expires,
        closed_until: c.closed_until,
    }
}
