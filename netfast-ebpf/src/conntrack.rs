//! Connection tracking in the datapath: lookups where an expired entry counts as absent,
//! per-packet bookkeeping (counters, TCP state, timeouts, mapping lifetime), and inserting a
//! flow's two entries as a pair.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use netfast_common::{
    DropReason,
    config::DpConfig,
    conntrack::{
        CT_EVENT_NEW, CT_EVENT_UPDATE, CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_RELEASED, CT_F_REPLY,
        CT_F_SEEN_REPLY, CT_F_SHARED, CtEntry, CtEvent, CtKey, PROTO_TCP, TcpFlags, TcpState,
        tcp_next, timeout,
    },
};

use crate::outcome::Outcome;
use crate::{
    maps::{NETFAST_CONFIG, NETFAST_CT, NETFAST_CT_EVENTS},
    nat,
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

/// The dataplane settings; the defaults until the loader has written them.
#[inline(always)]
pub fn config() -> DpConfig {
    match NETFAST_CONFIG.get(0) {
        Some(cfg) if cfg.tcp_established != 0 => *cfg,
        _ => DpConfig::default(),
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

/// The live entry for `key`. An entry past its expiry counts as absent — unless the other
/// direction of its flow is alive (a stream that only flows one way refreshes one side).
#[inline(always)]
pub fn lookup(key: &CtKey, now: u32) -> Option<*mut CtEntry> {
    let entry = NETFAST_CT.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid for this program run.
    let e = unsafe { &mut *entry };
    if e.expires >= now {
        return Some(entry);
    }
    let peer = NETFAST_CT.get_ptr_mut(e.peer_key(key))?;
    // SAFETY: as above.
    let p = unsafe { &*peer };
    if p.expires >= now {
        e.expires = p.expires;
        Some(entry)
    } else {
        None
    }
}

/// Bookkeeping for a packet that matched `entry`: counters, TCP state (both entries),
/// the idle timeout, and the lifetime of the flow's masquerade mapping.
// Its own BPF function, to keep the callers' stack frames small.
#[inline(never)]
pub fn track(key: &CtKey, entry: *mut CtEntry, bytes: u32, tcp_flags: u8, now: u32) {
    let cfg = &config();
    // SAFETY: a live map value pointer from `lookup`.
    let e = unsafe { &mut *entry };
    // SAFETY: the counters are u64 fields of a map value, 8-byte aligned; other CPUs may add
    // to them concurrently, hence atomic adds (BPF_ATOMIC_ADD; the BPF target has no
    // compare-and-swap, so core's atomic types offer no fetch_add there).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut e.packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut e.bytes, u64::from(bytes));
    }
    let reply = e.flags & CT_F_REPLY != 0;
    let old_state = TcpState::from_u8(e.tcp_state);
    let mut flags = e.flags;
    if reply {
        flags |= CT_F_SEEN_REPLY;
    }
    let state = if key.proto == PROTO_TCP {
        let (s, f) = tcp_next(old_state, TcpFlags::from_byte(tcp_flags), reply, flags);
        flags = f;
        s
    } else {
        old_state
    };
    let t = timeout(cfg, key.proto, state);
    let expires = now + t;
    // The first time a masqueraded TCP flow closes, its mapping has one flow fewer.
    let release = flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0
        && flags & CT_F_RELEASED == 0
        && matches!(state, TcpState::TimeWait | TcpState::Close);
    if release {
        flags |= CT_F_RELEASED;
    }
    if state != old_state || flags != e.flags {
        e.tcp_state = state as u8;
        e.flags = flags;
        // A state change may shorten the lifetime (RST → CLOSE), so it is written as is.
        e.expires = expires;
        let peer_key = e.peer_key(key);
        if let Some(peer) = NETFAST_CT.get_ptr_mut(peer_key) {
            // SAFETY: a map value pointer, valid for this program run.
            let p = unsafe { &mut *peer };
            p.tcp_state = state as u8;
            p.flags = (p.flags & !CT_F_SHARED) | (flags & CT_F_SHARED);
            p.expires = expires;
            if state != old_state {
                if reply {
                    emit(CT_EVENT_UPDATE, &peer_key, p);
                } else {
                    emit(CT_EVENT_UPDATE, key, e);
                }
            }
        }
        if release {
            nat::release_mapping(key, e, expires);
        }
    } else if expires > e.expires {
        e.expires = expires;
    }
    if e.flags & (CT_F_MASQ_SRC | CT_F_MASQ_DST) != 0 && expires > e.map_expires {
        e.map_expires =
            nat::extend_mapping(key, e, expires + netfast_common::nat::mapping_slack(t));
    }
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

/// Inserts a new flow: the reply entry first with `BPF_NOEXIST` (two flows can never share
/// an external tuple), then the original one; the first is removed if the second fails.
#[inline(never)]
pub fn insert_pair(
    orig_key: &CtKey,
    orig: &CtEntry,
    reply_key: &CtKey,
    reply: &CtEntry,
    now: u32,
) -> Outcome {
    Outcome::from(try_insert_pair(orig_key, orig, reply_key, reply, now))
}

#[inline(always)]
fn try_insert_pair(
    orig_key: &CtKey,
    orig: &CtEntry,
    reply_key: &CtKey,
    reply: &CtEntry,
    now: u32,
) -> Result<u32, DropReason> {
    if NETFAST_CT
        .insert(reply_key, reply, BPF_NOEXIST as u64)
        .is_err()
    {
        // Taken: acceptable only when what holds it is a dead flow.
        if lookup(reply_key, now).is_some() {
            return Err(DropReason::CtInsertFailed);
        }
        NETFAST_CT
            .insert(reply_key, reply, BPF_ANY as u64)
            .map_err(|_| DropReason::CtInsertFailed)?;
    }
    if NETFAST_CT.insert(orig_key, orig, BPF_ANY as u64).is_err() {
        let _ = NETFAST_CT.remove(reply_key);
        return Err(DropReason::CtInsertFailed);
    }
    emit(CT_EVENT_NEW, orig_key, orig);
    Ok(1)
}

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
