//! Connection tracking in the datapath: lookups where an expired entry counts as absent,
//! per-packet bookkeeping (counters, TCP state, timeouts, mapping lifetime), and inserting a
//! flow's two entries as a pair.

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_cxchg, atomic_or, atomic_xadd};

use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    config::DpConfig,
    conntrack::{
        CT_EVENT_NEW, CT_EVENT_UPDATE, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_INWARD, CT_F_MASQ_DST,
        CT_F_MASQ_SRC, CT_F_RELEASED, CT_F_REPLY, CT_F_SEEN_REPLY, CT_F_SHARED, CT_F_TD_SEEN,
        CT_F_TWO_MAPPINGS, CtEntry, CtEvent, CtKey, NewEntry, PROTO_TCP, Segment, TcpFlags,
        TcpState, WSCALE_UNKNOWN, agreed_wscale, closed_timeout as closed, restarts, rst_in_window,
        segment_in_window, sent, tcp_next, timeout,
    },
    nat::NatClaimKey,
};

use crate::outcome::Outcome;
use crate::{
    maps::{NETFAST_CONFIG, NETFAST_CT, NETFAST_CT_EVENTS, NETFAST_CT_INBOUND, NETFAST_NAT_CLAIM},
    nat,
    parse::{self, Pkt},
};

/// CLOCK_MONOTONIC seconds, the clock every `expires` field uses: from jiffies once the
/// loader has calibrated them (a load the verifier inlines, where the clock helpers cost
/// tens of nanoseconds a packet), else from the coarse clock.
#[inline(always)]
pub fn now() -> u32 {
    let Some(cfg) = NETFAST_CONFIG.get(0) else {
        // SAFETY: a helper without arguments.
        return (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32;
    };
    let secs = if cfg.clock_hz != 0 {
        // SAFETY: a helper without arguments.
        let j = unsafe { bpf_jiffies64() };
        cfg.clock_m0
            .wrapping_add((j.wrapping_sub(cfg.clock_j0) / u64::from(cfg.clock_hz)) as u32)
    } else {
        // SAFETY: as above.
        (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
    };
    secs.wrapping_add(cfg.clock_advance)
}

/// Records jiffies and CLOCK_MONOTONIC, read together, for the loader (`netfast_clock`).
#[inline(always)]
pub fn sample_clock() {
    if let Some(s) = crate::maps::NETFAST_CLOCK.get_ptr_mut(0) {
        // SAFETY: the array's only value; helpers without arguments.
        unsafe {
            (*s).jiffies = bpf_jiffies64();
            (*s).mono_ns = bpf_ktime_get_ns();
        }
    }
}

/// The port range masquerade picks from (host byte order), read in place.
#[inline(always)]
pub fn port_range() -> (u16, u16) {
    match NETFAST_CONFIG.get(0) {
        Some(cfg) if cfg.tcp_established != 0 => (cfg.port_min, cfg.port_max),
        _ => (DpConfig::DEFAULT_PORT_MIN, DpConfig::DEFAULT_PORT_MAX),
    }
}

/// The idle timeout of a flow of `proto` in `state`, read from the settings in place (a copy
/// of them would cost the caller's stack frame 48 bytes).
#[inline(always)]
pub fn timeout_of(proto: u8, state: TcpState) -> u32 {
    match NETFAST_CONFIG.get(0) {
        Some(cfg) if cfg.tcp_established != 0 => timeout(cfg, proto, state),
        _ => timeout(&DpConfig::default(), proto, state),
    }
}

/// The longest a closed TCP flow (TIME_WAIT or CLOSE) lives without a packet, from one read
/// of the settings.
#[inline(always)]
pub fn closed_timeout() -> u32 {
    match NETFAST_CONFIG.get(0) {
        Some(cfg) if cfg.tcp_established != 0 => closed(cfg),
        _ => closed(&DpConfig::default()),
    }
}

/// Whether the fast path is on (the default until the loader writes the settings). Read in
/// place: a copy of the settings would cost the caller's stack frame 28 bytes.
#[inline(always)]
pub fn fast_path() -> bool {
    match NETFAST_CONFIG.get(0) {
        Some(cfg) if cfg.tcp_established != 0 => cfg.fast_path != 0,
        _ => DpConfig::default().fast_path != 0,
    }
}

/// Whether inbound filtering is endpoint-independent.
#[inline(always)]
pub fn endpoint_independent() -> bool {
    NETFAST_CONFIG
        .get(0)
        .is_some_and(|cfg| cfg.filtering == netfast_common::config::FILTERING_ENDPOINT_INDEPENDENT)
}

/// Which table a flow's entries are in (both are always in one).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Table {
    /// Every flow opened from inside, or answered (`maps::NETFAST_CT`).
    Main,
    /// Flows opened from outside, not answered yet (`maps::NETFAST_CT_INBOUND`).
    Inbound,
}

/// The entry for `key` in `table`.
#[inline(always)]
fn entry_in(table: Table, key: &CtKey) -> Option<*mut CtEntry> {
    match table {
        Table::Main => NETFAST_CT.get_ptr_mut(key),
        Table::Inbound => NETFAST_CT_INBOUND.get_ptr_mut(key),
    }
}

/// Where a packet comes from, for the entries that serve only one side (see
/// `CT_F_FROM_INSIDE`): a container or the host on its way out, or the outside.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Inside,
    Outside,
}

/// The live entry for `key`, if it serves packets from `origin` (see
/// `CT_F_FROM_INSIDE`). An entry past its expiry counts as absent — unless the other
/// direction of its flow is alive and is still its own other half (a stream that only flows
/// one way refreshes one side; an entry whose peer key now holds another flow is dead). A
/// live entry whose peer key holds another flow is dead too, and removed (see `trusted`).
#[inline(always)]
pub fn lookup(key: &CtKey, now: u32, origin: Origin) -> Option<*mut CtEntry> {
    lookup_in(Table::Main, key, now, origin)
}

/// As `lookup`, among the inbound flows not answered yet.
#[inline(always)]
pub fn lookup_inbound(key: &CtKey, now: u32, origin: Origin) -> Option<*mut CtEntry> {
    lookup_in(Table::Inbound, key, now, origin)
}

#[inline(always)]
fn lookup_in(table: Table, key: &CtKey, now: u32, origin: Origin) -> Option<*mut CtEntry> {
    let entry = entry_in(table, key)?;
    // SAFETY: a map value pointer, valid for this program run.
    let e = unsafe { &mut *entry };
    if !e.serves(origin == Origin::Inside) {
        return None;
    }
    if e.expires >= now {
        return trusted(table, key, entry);
    }
    revive(key, entry, now, table)
}

/// The live `entry` (keyed `key`) if its other entry points back at it, or is missing (the
/// LRU evicted it; the repair paths make it again). Where the other entry's key now holds
/// another flow — the LRU evicted it and a new flow took its tuple — `entry` is what is left
/// of the old flow: used, it would translate packets as the old flow's, towards a tuple of
/// the new one. It is removed, and the packet goes on as one of no known flow. The lookup
/// of the other entry also tells the LRU that it is in use: a flow that only flows one way
/// would otherwise leave it cold, to be evicted first under pressure.
// Its own BPF function: inlined into every lookup, it led LLVM to spill a register it had
// not written in `bridge_ingress`, which the verifier refuses (`R4 !read_ok`).
#[inline(never)]
fn trusted(table: Table, key: &CtKey, entry: *mut CtEntry) -> Option<*mut CtEntry> {
    // SAFETY: a map value pointer, valid for this program run.
    let peer_key = unsafe { (*entry).peer_key(key) };
    let Some(peer) = entry_in(table, &peer_key) else {
        remember_peer(key, None);
        return Some(entry);
    };
    // SAFETY: as above.
    let q = unsafe { &*peer };
    if q.peer_key(&peer_key) == *key {
        remember_peer(key, Some(q));
        return Some(entry);
    }
    remove_stale(table, key);
    None
}

/// What `lookup` saw of the other entry of the flow it last found on this CPU, for the
/// window check of the same packet (`window`), which would otherwise look that entry up a
/// second time: the key of the entry found, and of its other entry only the fields the check
/// reads (`flags`, `td_end`, `td_maxwin`; the rest of `peer` is not kept). `present` 0: the
/// flow had no other entry. Kept in a per-CPU map (`maps::NETFAST_PEER`): a BPF function
/// cannot hand a map value pointer back through its callers without LLVM spilling registers
/// the verifier refuses.
pub struct PeerSeen {
    pub for_key: CtKey,
    pub present: u32,
    pub peer: CtEntry,
}

/// Records what `lookup` saw of the other entry of the flow it found at `key`.
#[inline(always)]
fn remember_peer(key: &CtKey, peer: Option<&CtEntry>) {
    // Only TCP has a window to check.
    if key.proto != PROTO_TCP {
        return;
    }
    let Some(r) = crate::maps::NETFAST_PEER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU map value, used by this program run only.
    let r = unsafe { &mut *r };
    r.for_key = *key;
    match peer {
        Some(q) => {
            r.present = 1;
            r.peer.flags = q.flags;
            r.peer.td_end = q.td_end;
            r.peer.td_maxwin = q.td_maxwin;
        }
        None => r.present = 0,
    }
}

/// The other entry of the flow of `e` (keyed `key`) as the window check reads it: as
/// `lookup` saw it for this packet, else looked up. `None`: the flow has none.
#[inline(always)]
fn window_peer(key: &CtKey, e: &CtEntry, table: Table) -> Option<*const CtEntry> {
    if let Some(r) = crate::maps::NETFAST_PEER.get_ptr(0) {
        // SAFETY: a per-CPU map value, used by this program run only.
        let r = unsafe { &*r };
        if r.for_key == *key {
            return (r.present != 0).then_some(&raw const r.peer);
        }
    }
    entry_in(table, &e.peer_key(key)).map(<*mut CtEntry>::cast_const)
}

/// Removes the entry at `key`, the stale half of a flow (see `trusted`), and counts it.
#[inline(always)]
fn remove_stale(table: Table, key: &CtKey) {
    let _ = match table {
        Table::Main => NETFAST_CT.remove(key),
        Table::Inbound => NETFAST_CT_INBOUND.remove(key),
    };
    // The packet is out of reach here: its bytes are not counted.
    crate::stats::count_event(netfast_common::stats::Event::CtStaleHalf, 0);
}

/// An expired entry whose peer lives and points back: the flow lives on.
// Its own BPF function: rare, and it keeps the hot lookup small.
#[inline(never)]
fn revive(key: &CtKey, entry: *mut CtEntry, now: u32, table: Table) -> Option<*mut CtEntry> {
    // SAFETY: a map value pointer, valid for this program run.
    let e = unsafe { &mut *entry };
    let peer = peer_alive(table, key, e, now)?;
    e.expires = peer.expires;
    remember_peer(key, Some(peer));
    Some(entry)
}

/// The other entry of `e`'s flow (`e` keyed `key`), if it lives and still points back at
/// `key`: then the flow lives, whatever `e`'s own expiry says.
#[inline(always)]
fn peer_alive(table: Table, key: &CtKey, e: &CtEntry, now: u32) -> Option<&'static CtEntry> {
    let peer_key = e.peer_key(key);
    // SAFETY: a map value pointer, valid for this program run.
    let p = unsafe { &*entry_in(table, &peer_key)? };
    (p.expires >= now && p.peer_key(&peer_key) == *key).then_some(p)
}

/// Whether the entry `e` (keyed `key`, in the main or the inbound table) belongs to a live
/// flow: it lives, or the rule `lookup` revives it by says its flow does.
#[inline(always)]
fn flow_alive(table: Table, key: &CtKey, e: &CtEntry, now: u32) -> bool {
    e.expires >= now || peer_alive(table, key, e, now).is_some()
}

/// An inbound flow that has been answered — TCP: its handshake completed; UDP, ICMP: the
/// container replied — moves to the main table, where unanswered packets cannot push it
/// out.
// Its own BPF function: once per inbound flow.
#[inline(never)]
pub fn promote(ctx: &TcContext, key: &CtKey, entry: *mut CtEntry, now: u32) {
    // SAFETY: a live map value pointer of the inbound table.
    let e = unsafe { &*entry };
    let peer_key = e.peer_key(key);
    let Some(peer) = NETFAST_CT_INBOUND.get_ptr(&peer_key) else {
        return;
    };
    // Never over a live entry of another flow (its two tuples are this flow's to take only
    // where nothing else lives on them).
    if held_by_another(key, &peer_key, now) || held_by_another(&peer_key, key, now) {
        return;
    }
    if NETFAST_CT.insert(key, e, BPF_ANY as u64).is_err() {
        return;
    }
    // SAFETY: as above.
    if NETFAST_CT
        .insert(&peer_key, unsafe { &*peer }, BPF_ANY as u64)
        .is_err()
    {
        let _ = NETFAST_CT.remove(key);
        return;
    }
    let _ = NETFAST_CT_INBOUND.remove(key);
    let _ = NETFAST_CT_INBOUND.remove(&peer_key);
    crate::stats::count_event(netfast_common::stats::Event::InboundAnswered, ctx.len());
}

/// Whether the main table's entry at `key` belongs to a live flow other than the one whose
/// other entry is keyed `peer_key`.
#[inline(always)]
fn held_by_another(key: &CtKey, peer_key: &CtKey, now: u32) -> bool {
    let Some(held) = NETFAST_CT.get_ptr(key) else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let held = unsafe { &*held };
    held.peer_key(key) != *peer_key && flow_alive(Table::Main, key, held, now)
}

/// A masqueraded flow whose reply entry was evicted while its original one lives: the
/// reply entry is made again from it (the inbound packet `key` is for the external port of
/// a live mapping, whose owner's flow to the packet's source points back at `key`). False
/// when there is no such flow.
// Its own BPF function: only for inbound packets that match nothing else.
#[inline(never)]
pub fn restore_reply(key: &CtKey, now: u32) -> bool {
    let ck = NatClaimKey::new(key.dst_addr, key.dst_port, key.proto);
    let Some(claim) = NETFAST_NAT_CLAIM.get_ptr(&ck) else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let claim = unsafe { *claim };
    let orig_key = CtKey::new(
        claim.int_addr(),
        key.src_addr,
        claim.int_port(),
        key.src_port,
        key.proto,
    );
    let Some(orig) = NETFAST_CT.get_ptr(&orig_key) else {
        return false;
    };
    // SAFETY: as above.
    let orig = unsafe { &*orig };
    if orig.expires < now || !orig.serves(true) || orig.peer_key(&orig_key) != *key {
        return false;
    }
    let mut reply = orig.reply(&orig_key, CT_F_INWARD);
    reply.flags |= orig.flags & CT_F_SHARED;
    reply.flags &= !CT_F_TD_SEEN;
    reply.wscale = WSCALE_UNKNOWN;
    reply.td_end = 0;
    reply.td_maxwin = 0;
    reply.fwd = netfast_common::conntrack::FwdCache::EMPTY;
    NETFAST_CT.insert(key, &reply, BPF_NOEXIST as u64).is_ok()
}

/// `track`: the packet goes on.
pub const TRACKED: u32 = 0;
/// `track`: the packet goes on, and its inbound flow is answered now (see `promote`).
pub const ANSWERED: u32 = 1;

/// Bookkeeping for a packet that matched `entry`: counters, TCP state and window (both
/// entries), the idle timeout, and the lifetime of the flow's masquerade mapping. Refuses a
/// RST outside the flow's window (`TcpRstOutOfWindow`): it changes nothing; another segment
/// outside it is counted and changes nothing else.
#[inline(always)]
pub fn track(ctx: &TcContext, p: &Pkt, entry: *mut CtEntry, table: Table) -> Outcome {
    Outcome(netfast_track(
        ctx.skb.skb,
        core::ptr::from_ref(p),
        entry,
        table as u32,
    ))
}

/// [`track`] as a global BPF function: the verifier checks it once, on its own, rather than
/// once for every path of its callers that reaches it, with their state (it took the
/// uplink's ingress from 499,000 verified instructions to 189,000, the bridge's from 373,000
/// to 176,000). The verifier knows its arguments only by their BTF types: `skb` is the
/// context by its type's name, each other pointer is memory of its type's size that may be
/// null (hence the check), and it returns a plain `u32`. The linker keeps it global only
/// because netfast's build script exports its name (`--export`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netfast_track(
    skb: *mut __sk_buff,
    p: *const Pkt,
    entry: *mut CtEntry,
    table: u32,
) -> u32 {
    if p.is_null() || entry.is_null() {
        return Outcome::from(Err(DropReason::Malformed)).raw();
    }
    let ctx = TcContext::new(skb);
    let table = if table == Table::Inbound as u32 {
        Table::Inbound
    } else {
        Table::Main
    };
    // SAFETY: checked non-null; the caller passes its packet.
    let p = unsafe { &*p };
    Outcome::from(try_track(&ctx, p, entry, table)).raw()
}

#[inline(always)]
fn try_track(
    ctx: &TcContext,
    p: &Pkt,
    entry: *mut CtEntry,
    table: Table,
) -> Result<u32, DropReason> {
    let (key, now, bytes) = (&p.key, p.now, ctx.len());
    // SAFETY: a live map value pointer from `lookup`.
    let e = unsafe { &mut *entry };
    let tcp = key.proto == PROTO_TCP;
    let flags_in = TcpFlags::from_byte(p.tcp_flags);
    let in_window = !tcp || window(ctx, p, entry, table).get()?;
    // SAFETY: the counters are u64 fields of a map value, 8-byte aligned; other CPUs may add
    // to them concurrently, hence atomic adds.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut e.packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut e.bytes, u64::from(bytes));
    }
    if !in_window {
        // Counted, and nothing more: its state, flags and times stay.
        return Ok(TRACKED);
    }
    let reply = e.flags & CT_F_REPLY != 0;
    // The expiry, then the state, each read once: a CPU that moves the flow on writes its
    // state, then its expiry. A packet that read the state before such a move has read
    // the expiry before it too, and its compare-and-exchange of the expiry (`renew`) then
    // fails, rather than give the moved flow (a RST's CLOSE) the time of the state it left.
    // (The CPU keeps these orders on x86; a weaker one needs the load-acquire and
    // store-release forms BPF has had since 6.15, which aya-ebpf 0.2 cannot emit.)
    // SAFETY: fields of a live map value.
    let expires_was = unsafe { core::ptr::read_volatile(&raw const e.expires) };
    let old_state = TcpState::from_u8(unsafe { core::ptr::read_volatile(&raw const e.tcp_state) });
    let was = e.flags;
    let mut flags = was;
    if reply {
        flags |= CT_F_SEEN_REPLY;
    }
    let state = if tcp {
        flags |= CT_F_TD_SEEN;
        let (s, f) = tcp_next(old_state, flags_in, reply, flags);
        flags = f;
        s
    } else {
        old_state
    };
    let t = timeout_of(key.proto, state);
    let expires = now + t;
    let masq = flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0;
    if state != old_state || flags != e.flags {
        // The state only where this packet changed it: the flags may differ because another
        // CPU has just moved the flow on (its FIN, its RST), and the state this packet read
        // would then take that transition back.
        let moved = state != old_state;
        if moved {
            // A state change may shorten the lifetime (RST → CLOSE), so it is written as is.
            move_on(e, state, expires);
        } else {
            renew(e, expires_was, expires);
        }
        write_flags(e, was, flags);
        let peer_key = e.peer_key(key);
        if let Some(peer) = entry_in(table, &peer_key) {
            // SAFETY: a map value pointer, valid for this program run.
            let q = unsafe { &mut *peer };
            // Where the state stays, the other entry keeps its own time (a flow lives while
            // either entry does): written from here, its time could not be checked against
            // a move another CPU made meanwhile.
            if moved {
                move_on(q, state, expires);
            }
            // The flow's flags as this packet has them, but for a FIN another CPU has just
            // seen (the other end's, at the same moment), which only a reopening forgets. A
            // reopening forgets the other side's sequence too: the new connection's starts
            // afresh (see `sent`).
            let q_was = q.flags;
            let keep = if state == TcpState::SynSent {
                !(CT_F_SHARED | CT_F_TD_SEEN)
            } else {
                !CT_F_SHARED | CT_F_FIN_ORIG | CT_F_FIN_REPLY
            };
            write_flags(q, q_was, (q_was & keep) | (flags & CT_F_SHARED));
            // Both SYNs seen: the window shift each side's segments take from now on.
            if tcp && flags_in.syn && reply {
                let own = e.wscale;
                e.wscale = agreed_wscale(own, q.wscale);
                q.wscale = agreed_wscale(q.wscale, own);
            }
            if state != old_state {
                if reply {
                    emit(CT_EVENT_UPDATE, &peer_key, q);
                } else {
                    emit(CT_EVENT_UPDATE, key, e);
                }
            }
        }
        if masq && state != old_state {
            mapping_flows(key, e, table, expires, t);
        }
    } else if expires > expires_was {
        // The other half needs no lookup to stay warm in the LRU: `lookup` looked it up
        // (see `trusted`), for every packet of the flow.
        renew(e, expires_was, expires);
    }
    if masq && expires > e.map_expires {
        let until = expires + netfast_common::nat::mapping_slack(t);
        // The flow as this packet saw it: open, unless its close was subtracted.
        let open = flags & CT_F_RELEASED == 0;
        e.map_expires = nat::extend_mapping(key, e, until, open);
        if e.flags & CT_F_TWO_MAPPINGS != 0 {
            other_mapping(key, e, table, until, open);
        }
    }
    let answered = if tcp {
        state == TcpState::Established
    } else {
        e.flags & CT_F_SEEN_REPLY != 0
    };
    Ok(if table == Table::Inbound && answered {
        ANSWERED
    } else {
        TRACKED
    })
}

/// A packet moved the flow to `state`: the entry's state, then its expiry (the order
/// `try_track`'s readers rely on).
#[inline(always)]
fn move_on(e: &mut CtEntry, state: TcpState, expires: u32) {
    // SAFETY: fields of a live map value.
    unsafe {
        core::ptr::write_volatile(&raw mut e.tcp_state, state as u8);
        core::ptr::write_volatile(&raw mut e.expires, expires);
    }
}

/// The entry `e` lives until `expires`, unless its expiry is no longer `was`, the one read
/// before its state: another CPU has moved the flow on since, and its time stands.
#[inline(always)]
fn renew(e: &mut CtEntry, was: u32, expires: u32) {
    // SAFETY: a 4-byte aligned u32 field of a live map value.
    unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut e.expires,
            was,
            expires,
        )
    };
}

/// The flags of the entry `e`, changed from `was` (as read) to `want`, but for
/// `CT_F_RELEASED`, which only `mapping_flows` turns: with atomic instructions, bits set and
/// bits cleared, so that what another CPU turns at the same moment stands. A plain store of
/// the flags read before would take back the mark of a close another CPU has just
/// subtracted from the mapping, and the next packet would subtract it again.
#[inline(always)]
fn write_flags(e: &mut CtEntry, was: u16, want: u16) {
    let set = want & !was & !CT_F_RELEASED;
    let clear = was & !want & !CT_F_RELEASED;
    if set != 0 {
        // SAFETY: the flags word of a live map value (see `flags_word`).
        unsafe {
            atomic_or::<u32, u32, { AtomicOrdering::SeqCst }>(flags_word(e), flags_bits(set))
        };
    }
    if clear != 0 {
        // SAFETY: as above.
        unsafe {
            atomic_and::<u32, u32, { AtomicOrdering::SeqCst }>(flags_word(e), !flags_bits(clear))
        };
    }
}

/// Where `flags` lies in the entry's 32-bit word that holds it (with the TCP state and the
/// window scale): BPF's atomic instructions take 32 or 64 bits.
const FLAGS_AT: usize = core::mem::offset_of!(CtEntry, flags);
const _: () = assert!(
    FLAGS_AT.is_multiple_of(4) && align_of::<CtEntry>() >= 4,
    "CtEntry::flags must start a 32-bit word"
);

/// The 32-bit word that holds the entry's flags.
#[inline(always)]
// Aligned: the entry is, and the word starts at a multiple of 4 (asserted above).
#[allow(clippy::cast_ptr_alignment)]
fn flags_word(e: *mut CtEntry) -> *mut u32 {
    e.cast::<u8>().wrapping_add(FLAGS_AT).cast::<u32>()
}

/// `bits` of `CtEntry::flags` as bits of its word.
#[inline(always)]
const fn flags_bits(bits: u16) -> u32 {
    let v = bits as u32;
    if cfg!(target_endian = "little") {
        v
    } else {
        v << 16
    }
}

/// Turns `CT_F_RELEASED` of the entry at `e` on (`on`) or off, with one atomic instruction;
/// whether this call turned it (it was the other way before).
#[inline(always)]
fn turn_released(e: *mut CtEntry, on: bool) -> bool {
    let bit = flags_bits(CT_F_RELEASED);
    // SAFETY: the flags word of a live map value (see `flags_word`).
    let before = unsafe {
        if on {
            atomic_or::<u32, u32, { AtomicOrdering::SeqCst }>(flags_word(e), bit)
        } else {
            atomic_and::<u32, u32, { AtomicOrdering::SeqCst }>(flags_word(e), !bit)
        }
    };
    (before & bit != 0) != on
}

/// A masqueraded TCP flow's state changed (to `e`'s, written to both entries; they expire at
/// `expires`, after `t` seconds). The first time the flow closes, its mapping has one flow
/// fewer (`CT_F_RELEASED`); a SYN that reopens it makes it one of its mapping's flows again,
/// as a new flow would be, and both entries know the mapping lives as long as the flow. A
/// hairpin between two mappings releases and retakes both.
///
/// Two CPUs may see one close (or reopening) at once, a packet each way: the mark is turned
/// on one entry, the original direction's (this one where the other is gone), with one
/// atomic instruction, and only the CPU that turned it counts the change.
// Its own BPF function: one call in `track` where a branch for each case would multiply the
// paths the verifier walks through it.
#[inline(never)]
fn mapping_flows(key: &CtKey, e: &mut CtEntry, table: Table, expires: u32, t: u32) {
    let closed = matches!(
        TcpState::from_u8(e.tcp_state),
        TcpState::TimeWait | TcpState::Close
    );
    if closed == (e.flags & CT_F_RELEASED != 0) {
        return;
    }
    let two = e.flags & CT_F_TWO_MAPPINGS != 0;
    let peer_key = e.peer_key(key);
    let peer = entry_in(table, &peer_key);
    let own = core::ptr::from_mut(e);
    let (judge, other) = match peer {
        Some(p) if e.flags & CT_F_REPLY != 0 => (p, Some(own)),
        _ => (own, peer),
    };
    if !turn_released(judge, closed) {
        return;
    }
    if let Some(o) = other {
        turn_released(o, closed);
    }
    let until = expires + netfast_common::nat::mapping_slack(t);
    if closed {
        let now = expires - t;
        if nat::release_mapping(key, e, until) {
            nat::outlive_closed(key, e, until, now);
        }
        if let Some(peer) = peer {
            // SAFETY: a map value pointer, valid for this program run.
            let q = unsafe { &mut *peer };
            if !two {
                // Both entries know how long the mapping lives now: a packet the other way
                // (an answer to the close) extends it as far as it extends the flow.
                q.map_expires = e.map_expires;
            } else if nat::release_mapping(&peer_key, q, until) {
                nat::outlive_closed(&peer_key, q, until, now);
            }
        }
        return;
    }
    e.map_expires = nat::retake_mapping(key, e, until);
    if let Some(peer) = peer {
        // SAFETY: a map value pointer, valid for this program run.
        let q = unsafe { &mut *peer };
        q.map_expires = if two {
            nat::retake_mapping(&peer_key, q, until)
        } else {
            until
        };
    }
}

/// A hairpin between two mappings: the other entry's mapping is kept alive with this one's.
// Its own BPF function: once per mapping refresh of a rare kind of flow.
#[inline(never)]
fn other_mapping(key: &CtKey, e: &CtEntry, table: Table, until: u32, open: bool) {
    let peer_key = e.peer_key(key);
    if let Some(peer) = entry_in(table, &peer_key) {
        // SAFETY: a map value pointer, valid for this program run.
        let p = unsafe { &mut *peer };
        p.map_expires = nat::extend_mapping(&peer_key, p, until, open);
    }
}

/// TCP window tracking for a segment that matched `entry`: a RST outside the flow's window
/// is refused (`TcpRstOutOfWindow`, and it changes nothing); another segment outside it is
/// `Ok(0)` (it passes, and moves nothing of the flow); otherwise the sender's sequence,
/// window and (on a SYN) window scale are recorded, for the next segments to be judged by. Two CPUs may race here; each writes what one of two segments of the flow said.
// Its own BPF function: its stack frame stays out of `track`'s, under the calls that keep
// a mapping alive.
#[inline(never)]
fn window(ctx: &TcContext, p: &Pkt, entry: *mut CtEntry, table: Table) -> Outcome {
    Outcome::from(try_window(ctx, p, entry, table))
}

#[inline(always)]
fn try_window(
    ctx: &TcContext,
    p: &Pkt,
    entry: *mut CtEntry,
    table: Table,
) -> Result<u32, DropReason> {
    // SAFETY: a live map value pointer from `lookup`.
    let e = unsafe { &mut *entry };
    let flags = TcpFlags::from_byte(p.tcp_flags);
    let seg = parse::segment(ctx, p)?;
    if flags.rst {
        if !rst_believed(&p.key, e, flags, &seg, table) {
            return Err(DropReason::TcpRstOutOfWindow);
        }
    } else if !restarts(
        TcpState::from_u8(e.tcp_state),
        flags,
        e.flags & CT_F_REPLY != 0,
    ) && !segment_believed(&p.key, e, &seg, table)
    {
        // Out of the window: it passes (its endpoint judges it), moving nothing.
        return Ok(0);
    }
    let (td_end, td_maxwin) = sent(e, flags, &seg);
    if e.flags & CT_F_TD_SEEN == 0 || td_end != e.td_end || td_maxwin != e.td_maxwin {
        e.td_end = td_end;
        e.td_maxwin = td_maxwin;
    }
    if flags.syn {
        e.wscale = seg.wscale;
    }
    Ok(1)
}

/// Whether a segment (not a RST) that matched `e` (keyed `key`) falls within its flow's
/// window.
#[inline(always)]
fn segment_believed(key: &CtKey, e: &CtEntry, seg: &Segment, table: Table) -> bool {
    let Some(peer) = window_peer(key, e, table) else {
        // The other half is gone: nothing to judge by.
        return true;
    };
    // SAFETY: a map value pointer, valid for this program run.
    segment_in_window(e, unsafe { &*peer }, seg)
}

/// Whether a RST that matched `e` (keyed `key`) falls within its flow's window.
#[inline(always)]
fn rst_believed(key: &CtKey, e: &CtEntry, flags: TcpFlags, seg: &Segment, table: Table) -> bool {
    let Some(peer) = window_peer(key, e, table) else {
        // The other half is gone: nothing to judge by, and nothing left to protect.
        return true;
    };
    // SAFETY: a map value pointer, valid for this program run.
    rst_in_window(e, unsafe { &*peer }, flags, seg)
}

/// The two entries of a flow being created (see `maps::NETFAST_SCRATCH`).
pub struct Pair {
    pub orig: CtEntry,
    pub reply: CtEntry,
}

/// This CPU's scratch pair.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Pair, DropReason> {
    let p = crate::maps::NETFAST_SCRATCH
        .get_ptr_mut(0)
        .ok_or(DropReason::CtInsertFailed)?;
    // SAFETY: a per-CPU map value, used by this program run only.
    Ok(unsafe { &mut *p })
}

/// Completes a new flow opened by `p` in this CPU's scratch pair, whose original entry the
/// opener has written (`CtEntry::open`): the window of the opening segment in it, and the
/// reply entry with the reply direction's own flags. One constructor for every opener.
// Its own BPF function: every opener calls it, and its frame does not add to theirs.
#[inline(never)]
pub fn complete_pair(ctx: &TcContext, p: &Pkt, reply_flags: u16) -> Outcome {
    Outcome::from(try_complete_pair(ctx, p, reply_flags))
}

#[inline(always)]
fn try_complete_pair(ctx: &TcContext, p: &Pkt, reply_flags: u16) -> Result<u32, DropReason> {
    let pair = scratch()?;
    if p.key.proto == PROTO_TCP {
        let seg = parse::segment(ctx, p)?;
        let flags = TcpFlags::from_byte(p.tcp_flags);
        let (td_end, td_maxwin) = sent(&pair.orig, flags, &seg);
        pair.orig.td_end = td_end;
        pair.orig.td_maxwin = td_maxwin;
        pair.orig.wscale = if flags.syn {
            seg.wscale
        } else {
            WSCALE_UNKNOWN
        };
        pair.orig.flags |= CT_F_TD_SEEN;
    }
    pair.reply = pair.orig.reply(&p.key, reply_flags);
    pair.reply.flags &= !CT_F_TD_SEEN;
    pair.reply.wscale = WSCALE_UNKNOWN;
    pair.reply.td_end = 0;
    pair.reply.td_maxwin = 0;
    Ok(1)
}

/// Starts a new flow of `p` in this CPU's scratch `pair`: its original entry from `orig`,
/// and the reply entry that mirrors it (see `complete_pair`). The caller takes the pair
/// before it builds `orig`, which then never lives across the lookup (on the stack).
#[inline(always)]
pub fn start_pair(
    ctx: &TcContext,
    p: &Pkt,
    pair: &mut Pair,
    orig: &NewEntry,
    reply_flags: u16,
) -> Result<(), DropReason> {
    pair.orig.open(orig);
    complete_pair(ctx, p, reply_flags).get()?;
    Ok(())
}

/// Inserts the flow in this CPU's scratch pair, opened by the packet keyed `orig_key`: the
/// reply entry first with `BPF_NOEXIST` (two flows can never share an external tuple), then
/// the original one; the first is removed if the second fails. Where the reply's tuple is
/// held by a live flow that is this very flow — another CPU opened it a moment ago, or its
/// original entry was evicted and this packet brings it back — the flow is kept (and its
/// original entry restored from the surviving one): the packet goes on as that flow's.
/// `opening`: whether the packet may open a flow (see [`Opening`]). `table`: where a new
/// flow goes (`Table::Inbound` for a flow opened from outside).
#[inline(never)]
pub fn insert_pair(orig_key: &CtKey, now: u32, opening: Opening, table: Table) -> Outcome {
    Outcome::from(try_insert_pair(orig_key, now, opening, table))
}

/// Whether the packet that inserts a flow may open it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// It opens a new flow (or joins, or repairs, the one that holds its tuples).
    New,
    /// It may not open a flow (a TCP segment without SYN), only restore one: `ABSENT` when
    /// there is none.
    RepairOnly,
}

#[inline(always)]
fn try_insert_pair(
    orig_key: &CtKey,
    now: u32,
    opening: Opening,
    table: Table,
) -> Result<u32, DropReason> {
    let pair = scratch()?;
    let reply_key = pair.orig.peer_key(orig_key);
    // No two flows, in either table, share a reply tuple: a flow from outside may have been
    // answered already (it is in the main table, perhaps without its original entry), and an
    // unanswered flow from outside may hold the reply tuple of a flow from inside.
    match held_by(Table::Main, orig_key, &reply_key, now, opening)? {
        Outcome::NONE => {}
        found => return Ok(found),
    }
    match held_by(Table::Inbound, orig_key, &reply_key, now, opening)? {
        Outcome::NONE => {}
        found => return Ok(found),
    }
    if opening == Opening::RepairOnly {
        return Ok(ABSENT);
    }
    let map = match table {
        Table::Main => &NETFAST_CT,
        Table::Inbound => &NETFAST_CT_INBOUND,
    };
    // Free, or held by a dead flow: take it.
    let flags = if map.get_ptr(&reply_key).is_some() {
        BPF_ANY
    } else {
        BPF_NOEXIST
    };
    if map.insert(&reply_key, &pair.reply, flags as u64).is_err() {
        // Another CPU inserted it in between: its flow or another; judged as above next time.
        return Err(DropReason::CtInsertFailed);
    }
    if map.insert(orig_key, &pair.orig, BPF_ANY as u64).is_err() {
        let _ = map.remove(&reply_key);
        return Err(DropReason::CtInsertFailed);
    }
    emit(CT_EVENT_NEW, orig_key, &pair.orig);
    Ok(match table {
        Table::Main => INSERTED,
        Table::Inbound => INSERTED_INBOUND,
    })
}

/// What holds `reply_key`, the reply tuple of the flow in this CPU's scratch pair (opened by
/// the packet keyed `orig_key`), in `table`: `CLASH` (`ABSENT` when `Opening::RepairOnly`) for
/// another live flow; `JOINED` for this very flow, or `REPAIRED` once its original entry is
/// restored from the surviving one; `Outcome::NONE` when no live flow holds it there. A held entry is dead only if its flow is: a stream that
/// flows one way keeps its original entry alive and lets its reply entry expire.
#[inline(always)]
fn held_by(
    table: Table,
    orig_key: &CtKey,
    reply_key: &CtKey,
    now: u32,
    opening: Opening,
) -> Result<u32, DropReason> {
    let Some(held) = entry_in(table, reply_key) else {
        return Ok(Outcome::NONE);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let held = unsafe { &*held };
    if !flow_alive(table, reply_key, held, now) {
        return Ok(Outcome::NONE);
    }
    if held.peer_key(reply_key) != *orig_key {
        // Another live flow answers on this tuple.
        return Ok(match opening {
            Opening::New => CLASH,
            Opening::RepairOnly => ABSENT,
        });
    }
    // This flow, alive: opened by another CPU, or missing its original entry.
    if entry_in(table, orig_key).is_some() {
        return Ok(JOINED);
    }
    let pair = scratch()?;
    pair.orig.tcp_state = held.tcp_state;
    pair.orig.flags |= held.flags & CT_F_SHARED;
    pair.orig.expires = held.expires;
    let map = match table {
        Table::Main => &NETFAST_CT,
        Table::Inbound => &NETFAST_CT_INBOUND,
    };
    map.insert(orig_key, &pair.orig, BPF_NOEXIST as u64)
        .map_err(|_| DropReason::CtInsertFailed)?;
    Ok(REPAIRED)
}

/// `insert_pair`: a new flow.
pub const INSERTED: u32 = 1;
/// `insert_pair`: the flow existed (another CPU opened it at the same time).
pub const JOINED: u32 = 0;
/// `insert_pair`: the flow existed without its original entry, which is restored.
pub const REPAIRED: u32 = 2;
/// `insert_pair`: another live flow holds the reply's tuple; nothing was inserted.
pub const CLASH: u32 = 3;
/// `insert_pair`, repairing only: no such flow.
pub const ABSENT: u32 = 4;
/// `insert_pair`: a new flow from outside, in the table of unanswered flows.
pub const INSERTED_INBOUND: u32 = 5;

/// Tells `netfast conntrack watch`; silently nothing when the ring is full or unread.
// Its own BPF function: the event is large, and rare.
#[inline(never)]
fn emit(kind: u8, key: &CtKey, entry: &CtEntry) {
    if let Some(mut slot) = NETFAST_CT_EVENTS.reserve::<CtEvent>(0) {
        // Field by field into the ring: a whole event built first would take stack.
        let ev = slot.as_mut_ptr();
        // SAFETY: a reserved ring-buffer slot the size of a CtEvent, ours until submitted.
        unsafe {
            (*ev).key = *key;
            (*ev).entry = *entry;
            (*ev).kind = kind;
            (*ev)._pad = [0; 7];
        }
        slot.submit(0);
    }
}
