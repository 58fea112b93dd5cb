//! Masquerade mappings: claiming an external port for an internal endpoint (atomically,
//! across CPUs), binding the endpoint to it, searching the port range, and keeping a
//! mapping alive, released and retaken with its flows.

use core::mem::size_of;

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{
    bindings::__sk_buff,
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    cty::{c_long, c_void},
    helpers::{
        bpf_get_prandom_u32, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    config::NetInfo,
    conntrack::{CT_F_RELEASED, CtEntry, CtKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    maps::NAT_PORT_TRIES,
    nat::{
        NatBindKey, NatBinding, NatClaim, NatClaimKey, mapping_keys, mapping_slack, port_candidate,
    },
};

use crate::outcome::Outcome;
use crate::{
    conntrack,
    maps::{NETFAST_NAT_BIND, NETFAST_NAT_CLAIM},
};

/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN: u32 = 10;

/// How many times a compare-and-exchange is retried before the packet gives up (another
/// CPU changed the word each time: a burst of new flows of one endpoint).
const CAS_TRIES: u32 = 4;

/// One compare-and-exchange of an 8-byte aligned word of a map value.
#[inline(always)]
fn cas(word: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: callers pass a map value pointer to an 8-byte aligned u64 (a binding, or a
    // claim's owner), valid for this program run.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, old, new)
            .1
    }
}

/// The current word at `word`, read whole: one aligned 8-byte load, which BPF makes at once
/// (an atomic load instruction needs cpu v4).
#[inline(always)]
pub(super) fn load_word(word: *const u64) -> u64 {
    // SAFETY: as for `cas`.
    unsafe { core::ptr::read_volatile(word) }
}

/// The external port of a live mapping for this internal endpoint, counted as used by one
/// more flow and kept alive until at least `until`; `Outcome::NONE` when it has none
/// (`NatMappingFailed` when other CPUs changed it every time).
// Its own BPF function (as every step of the mapping machinery): the callers' verification
// then meets one answer, not every path through it.
#[inline(never)]
pub(super) fn reuse_mapping(bk: &NatBindKey, net_id: u16, now: u32, until: u32) -> Outcome {
    Outcome::from(try_reuse_mapping(bk, net_id, now, until))
}

#[inline(always)]
fn try_reuse_mapping(
    bk: &NatBindKey,
    net_id: u16,
    now: u32,
    until: u32,
) -> Result<u32, DropReason> {
    let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(bk) else {
        return Ok(Outcome::NONE);
    };
    let word = binding.cast::<u64>();
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        if b.expires < now {
            return Ok(Outcome::NONE);
        }
        let ck = NatClaimKey::new(bk.ext_addr, b.ext_port, bk.proto);
        // The port must still be this endpoint's (its claim may have been evicted: then it
        // is claimed again, unless another endpoint took it meanwhile).
        if !hold_claim(&ck, bk, net_id, until) {
            return Ok(Outcome::NONE);
        }
        let new = NatBinding {
            ext_port: b.ext_port,
            flows: b.flows.saturating_add(1),
            expires: if b.expires < until { until } else { b.expires },
        };
        if cas(word, old, new.word()) {
            return Ok(u32::from(b.ext_port));
        }
    }
    Err(DropReason::NatMappingFailed)
}

/// Makes `ck` again for `owner`, whose live mapping lost it to the LRU: the flows that
/// closed are not known. False where another endpoint made it first.
#[inline(always)]
fn claim_again(ck: &NatClaimKey, owner: u64, until: u32) -> bool {
    let again = NatClaim {
        closed_until: NatClaim::CLOSED_UNKNOWN,
        ..NatClaim::new(owner, until)
    };
    NETFAST_NAT_CLAIM
        .insert(ck, &again, BPF_NOEXIST as u64)
        .is_ok()
}

/// Makes sure `ck` is claimed by the endpoint of `bk` (claiming it again if the LRU evicted
/// the claim), with an expiry of at least `until`; false if another endpoint holds it.
#[inline(always)]
fn hold_claim(ck: &NatClaimKey, bk: &NatBindKey, net_id: u16, until: u32) -> bool {
    let owner = NatClaim::owner_of(bk.int_addr, bk.int_port, net_id);
    let claim = match NETFAST_NAT_CLAIM.get_ptr_mut(ck) {
        Some(c) => c,
        None => return claim_again(ck, owner, until),
    };
    // SAFETY: a map value pointer, valid for this program run.
    let c = unsafe { &mut *claim };
    if !c.owned_by(bk.int_addr, bk.int_port) {
        return false;
    }
    // As the holder in `claim_port`: the expiry raised with an atomic instruction (a full
    // barrier), then the owner word read again. Another endpoint that took the claim over
    // meanwhile (its holder's binding had just expired) either sees the raise and gives it
    // back, or has taken it, and this endpoint then does not go on with the port.
    // SAFETY: `expires` and `owner` are aligned words of the same map value.
    unsafe {
        let expires = &raw mut c.expires;
        let e = core::ptr::read_volatile(expires);
        atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(expires, if e < until { until } else { e });
    }
    NatClaim::new(load_word((&raw const c.owner).cast::<u64>()), 0)
        .owned_by(bk.int_addr, bk.int_port)
}

/// `claim_port`'s answers: the port is not the endpoint's; it is, claimed now (free, taken
/// over, or its own expired claim retaken); it is, the endpoint's own live claim retaken
/// (its binding evicted while flows may still use the port).
const NOT_CLAIMED: u32 = 0;
const CLAIMED: u32 = 1;
const RETAKEN_LIVE: u32 = 2;

/// In `PortSearch::found`, beside the port: it was `RETAKEN_LIVE`. (Above the port's 16
/// bits and `Outcome::NONE`'s bit.)
const FOUND_LIVE: u32 = 1 << 20;

/// Claims `ck` for the search's endpoint (`s.owner`): atomically when free; when its holder
/// has expired and holds no live binding to it, by one compare-and-exchange of the owner
/// word; when its holder is this very endpoint (its binding expired or evicted), by raising
/// its expiry.
///
/// The last two can meet on two CPUs: the holder retaking its own expired claim while
/// another endpoint takes it over. Each writes its own word with an atomic instruction (a
/// full barrier), then reads the other's: the holder, after raising the expiry, gives up if
/// the owner word no longer names it; the taker, after its exchange, gives the claim back
/// if the expiry has been raised meanwhile, and raises it itself with a compare-and-exchange
/// from the expired value, then reads the owner word again. Of the two, at most one goes on
/// with the port.
// The search record's fields are read where they are used: passed as arguments, they
// would be spilled across the map helpers, and this frame ends the bridge's deepest chain.
#[inline(never)]
fn claim_port(ck: &NatClaimKey, s: &PortSearch) -> u32 {
    let claim = NatClaim::new(s.owner, s.until);
    if NETFAST_NAT_CLAIM
        .insert(ck, &claim, BPF_NOEXIST as u64)
        .is_ok()
    {
        return CLAIMED;
    }
    let Some(held) = NETFAST_NAT_CLAIM.get_ptr_mut(ck) else {
        return NOT_CLAIMED;
    };
    // SAFETY: a map value pointer, valid for this program run; `owner` is its first word,
    // 8-byte aligned.
    let h = unsafe { &mut *held };
    let word = (&raw mut h.owner).cast::<u64>();
    let was = load_word(word);
    if was == s.owner {
        // SAFETY: `expires` is an aligned u32 of the same map value.
        let live = unsafe {
            let expires = &raw mut h.expires;
            let e = core::ptr::read_volatile(expires);
            atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(
                expires,
                if e < s.until { s.until } else { e },
            );
            e >= s.now
        };
        // Taken over by another endpoint before the expiry was raised: theirs.
        if load_word(word) != s.owner {
            return NOT_CLAIMED;
        }
        if live {
            return RETAKEN_LIVE;
        }
        // Its last mapping is over, and so are the closed flows the claim kept a record of
        // (its expiry outlived them): the new mapping keeps its own, as after a takeover.
        forget_closed(h);
        return CLAIMED;
    }
    if h.expires >= s.now {
        return NOT_CLAIMED;
    }
    // Expired by its hint; the holder's binding has the last word.
    let old = NatClaim::new(was, 0);
    let bk = NatBindKey {
        int_addr: old.int_addr(),
        ext_addr: s.bk.ext_addr,
        int_port: old.int_port(),
        proto: ck.proto,
        _pad: 0,
    };
    if let Some(b) = NETFAST_NAT_BIND.get_ptr(&bk) {
        let b = NatBinding::from_word(load_word(b.cast::<u64>()));
        if b.expires >= s.now && b.ext_port == ck.ext_port {
            return NOT_CLAIMED;
        }
    }
    // Of two CPUs taking it over at once, one wins.
    if !cas(word, was, s.owner) {
        return NOT_CLAIMED;
    }
    // The expiry raised with a compare-and-exchange from the expired value: it fails where
    // the holder retook the claim meanwhile (raised the expiry), and then the claim is given
    // back. Written with a plain store after the check, the expiry would let the holder take
    // the claim back from us in between (it still looks expired): both would bind the port.
    // SAFETY: `expires` is an aligned u32 of the same map value.
    let raised = unsafe {
        let expires = &raw mut h.expires;
        let e = core::ptr::read_volatile(expires);
        e < s.now
            && atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                expires, e, s.until,
            )
            .1
    };
    if !raised {
        let _ = cas(word, s.owner, was);
        return NOT_CLAIMED;
    }
    // Taken from us by another CPU before the expiry was raised: theirs.
    if load_word(word) != s.owner {
        return NOT_CLAIMED;
    }
    // Ours. What the last holder knew of its closed flows (or did not know) was of a mapping
    // that is over; this one keeps its own record.
    forget_closed(h);
    CLAIMED
}

/// Starts the claim's record of closed flows afresh (a new mapping on it).
#[inline(always)]
fn forget_closed(h: &mut NatClaim) {
    // SAFETY: `closed_until` is an aligned u32 of a live map value.
    unsafe {
        atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(
            &raw mut h.closed_until,
            NatClaim::CLOSED_NONE,
        )
    };
}

/// Binds the endpoint `bk` to `port`, which it has just claimed: `flows` flows (one, or
/// not known), alive until `until`. Where another CPU bound the endpoint meanwhile, its
/// live binding wins and is reused (the claim made here then expires unused); an expired one is replaced, and so is
/// a live one whose port another endpoint has claimed since (its claim was evicted): the
/// endpoint's flows on that port go on, its new ones never join them there.
#[inline(never)]
fn bind(bk: &NatBindKey, port: u16, flows: u16, now: u32, until: u32) -> Outcome {
    Outcome::from(try_bind(bk, port, flows, now, until))
}

#[inline(always)]
fn try_bind(
    bk: &NatBindKey,
    port: u16,
    flows: u16,
    now: u32,
    until: u32,
) -> Result<u32, DropReason> {
    let fresh = NatBinding {
        ext_port: port,
        flows,
        expires: until,
    };
    if NETFAST_NAT_BIND
        .insert(bk, &fresh, BPF_NOEXIST as u64)
        .is_ok()
    {
        return Ok(u32::from(port));
    }
    let binding = NETFAST_NAT_BIND
        .get_ptr_mut(bk)
        .ok_or(DropReason::NatMappingFailed)?;
    let word = binding.cast::<u64>();
    let taken = taken_port(bk, NatBinding::from_word(load_word(word)).ext_port);
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        let new = if b.expires >= now && Some(b.ext_port) != taken {
            NatBinding {
                ext_port: b.ext_port,
                flows: b.flows.saturating_add(1),
                expires: if b.expires < until { until } else { b.expires },
            }
        } else {
            fresh
        };
        if cas(word, old, new.word()) {
            return Ok(u32::from(new.ext_port));
        }
    }
    Err(DropReason::NatMappingFailed)
}

/// `port` (network byte order) if another endpoint than `bk`'s holds its claim.
#[inline(always)]
fn taken_port(bk: &NatBindKey, port: u16) -> Option<u16> {
    let ck = NatClaimKey::new(bk.ext_addr, port, bk.proto);
    // SAFETY: a map value pointer, valid for this program run.
    let c = NETFAST_NAT_CLAIM.get_ptr(&ck)?;
    (!unsafe { (*c).owned_by(bk.int_addr, bk.int_port) }).then_some(port)
}

/// Whether the host itself uses `(ext_addr, port)` towards `remote`: a TCP connection with
/// exactly that tuple (with `listeners`, a listening socket on the port too), or a UDP
/// socket bound to the port. Masquerade must not take such a port, or the remote would see
/// two conversations as one (iptables avoids it because host flows share its conntrack
/// table; here the kernel's socket tables are asked instead); nor may an inbound packet
/// for such a socket be taken for a container's mapping.
// Its own BPF function: the socket tuple takes stack, and this runs for new flows only.
#[inline(never)]
pub(super) fn host_uses(
    ctx: &TcContext,
    proto: u8,
    remote: &(u32, u16),
    local: &(u32, u16),
    listeners: bool,
) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: remote.0,
                daddr: local.0,
                sport: remote.1,
                dport: local.1,
            },
        },
    };
    let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as i64 as u64;
    // SAFETY: the helpers take the context, a tuple on our stack, its size, and flags.
    let sk = unsafe {
        match proto {
            PROTO_TCP => bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut tuple, size, netns, 0),
            PROTO_UDP => bpf_sk_lookup_udp(ctx.skb.skb.cast(), &mut tuple, size, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // A listening socket only matched for lack of a connection: the tuple itself is free.
    // SAFETY: a non-null socket from the lookup, released below on every path.
    let used = proto == PROTO_UDP || listeners || unsafe { (*sk).state } != TCP_LISTEN;
    // SAFETY: the socket the lookup returned.
    unsafe { bpf_sk_release(sk.cast()) };
    used
}

/// A new mapping: the original port when free, else a walk through the configured range.
#[inline(always)]
fn new_mapping(
    ctx: &TcContext,
    bk: &NatBindKey,
    remote: (u32, u16),
    net_id: u16,
    now: u32,
    until: u32,
) -> Result<u16, DropReason> {
    let (port_min, port_max) = conntrack::port_range();
    let mut search = PortSearch {
        skb: ctx.skb.skb,
        bk: *bk,
        remote_addr: remote.0,
        remote_port: remote.1,
        original: u16::from_be(bk.int_port),
        port_min,
        port_max,
        // SAFETY: a helper without arguments.
        random: unsafe { bpf_get_prandom_u32() },
        owner: NatClaim::owner_of(bk.int_addr, bk.int_port, net_id),
        now,
        until,
        found: Outcome::NONE,
    };
    // One `bpf_loop` step per candidate port: the verifier checks a step once, where a loop
    // of NAT_PORT_TRIES steps written out would be checked step by step, for every way the
    // program reaches it.
    // SAFETY: the helper calls `port_step` with our search record, at most NAT_PORT_TRIES
    // times, on this CPU, before it returns.
    unsafe {
        bpf_loop(
            NAT_PORT_TRIES,
            port_step as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    if search.found == Outcome::NONE {
        return Err(DropReason::NatPortExhausted);
    }
    // The endpoint's own live claim, retaken: its binding was evicted while flows may use
    // the port, how many is not known.
    let flows = if search.found & FOUND_LIVE != 0 {
        NatBinding::FLOWS_UNKNOWN
    } else {
        1
    };
    bind(bk, search.found as u16, flows, now, until)
        .value()
        .map(|p| p as u16)
}

/// The search for a free external port, as `port_step` reads and writes it.
#[repr(C)]
struct PortSearch {
    /// The packet's context (the socket lookups need it).
    skb: *mut __sk_buff,
    bk: NatBindKey,
    remote_addr: u32,
    remote_port: u16,
    /// The internal port, host byte order: the first candidate.
    original: u16,
    port_min: u16,
    port_max: u16,
    random: u32,
    owner: u64,
    now: u32,
    until: u32,
    /// The port claimed (network byte order), or `Outcome::NONE`.
    found: u32,
}

/// One candidate of the port search: claimed if neither the host nor a publication uses
/// it and nobody holds it; returns 1 (stop) once a port is claimed.
#[inline(never)]
extern "C" fn port_step(attempt: u32, data: *mut c_void) -> c_long {
    // SAFETY: `bpf_loop` passes back the search record `new_mapping` gave it.
    let s = unsafe { &mut *data.cast::<PortSearch>() };
    let port = port_candidate(attempt, s.original, s.random, s.port_min, s.port_max);
    if port == 0 && s.bk.proto != PROTO_ICMP {
        return 0;
    }
    let port = port.to_be();
    let ctx = TcContext::new(s.skb);
    // Not a port the host uses itself, nor one it publishes.
    if host_uses(
        &ctx,
        s.bk.proto,
        &(s.remote_addr, s.remote_port),
        &(s.bk.ext_addr, port),
        false,
    ) || crate::publish::published(s.bk.ext_addr, port, s.bk.proto).is_some()
    {
        return 0;
    }
    let ck = NatClaimKey::new(s.bk.ext_addr, port, s.bk.proto);
    match claim_port(&ck, s) {
        NOT_CLAIMED => return 0,
        RETAKEN_LIVE => s.found = u32::from(port) | FOUND_LIVE,
        _ => s.found = u32::from(port),
    }
    1
}

/// Keeps the mapping of a flow alive until `until`; returns the new high-water mark. A
/// binding or a claim the LRU evicted while the flow lived is made again. `open`: the
/// caller read the flow open (its close not subtracted from the mapping); a mapping that
/// counts no open flow then was released by another CPU since, after the caller's read,
/// and `until`, reckoned from the state the flow left, is not given (the flow's entry's
/// `map_expires` is returned, unchanged).
#[inline(never)]
pub fn extend_mapping(key: &CtKey, entry: &CtEntry, until: u32, open: bool) -> u32 {
    keep_mapping(key, entry, until, 0, open)
}

/// A TCP flow of the mapping that closed (and released it) has reopened: as
/// `extend_mapping`, and the mapping has one flow more again, as for a new flow.
#[inline(never)]
pub fn retake_mapping(key: &CtKey, entry: &CtEntry, until: u32) -> u32 {
    keep_mapping(key, entry, until, 1, false)
}

#[inline(always)]
fn keep_mapping(key: &CtKey, entry: &CtEntry, until: u32, more: u16, open: bool) -> u32 {
    let (bk, ck) = mapping_keys(key, entry);
    // A claim the LRU evicted while the mapping lives is made again here, or the port would
    // look free to the next endpoint that wants it. (Taken meanwhile: the taker's.)
    let claim = match NETFAST_NAT_CLAIM.get_ptr_mut(&ck) {
        // SAFETY: a map value pointer, valid for this program run.
        Some(c) => unsafe { (*c).owned_by(bk.int_addr, bk.int_port) }.then_some(c),
        None => {
            let owner = NatClaim::owner_of(bk.int_addr, bk.int_port, entry.net_id);
            claim_again(&ck, owner, until);
            owned_claim(&ck, &bk)
        }
    };
    if entry.flags & CT_F_RELEASED != 0
        && let Some(c) = claim
    {
        note_closed(c, until);
    }
    let mut given = until;
    match NETFAST_NAT_BIND.get_ptr_mut(&bk) {
        Some(binding) => {
            let word = binding.cast::<u64>();
            for _ in 0..CAS_TRIES {
                let old = load_word(word);
                let b = NatBinding::from_word(old);
                given = until & stale_mask(open, b.flows);
                if b.ext_port != ck.ext_port || (b.expires >= given && more == 0) {
                    break;
                }
                let new = NatBinding {
                    ext_port: b.ext_port,
                    flows: b.flows.saturating_add(more),
                    expires: if b.expires < given { given } else { b.expires },
                };
                if cas(word, old, new.word()) {
                    break;
                }
            }
        }
        None => {
            // Made again for a live flow: how many others use the mapping is not known.
            let again = NatBinding {
                ext_port: ck.ext_port,
                flows: NatBinding::FLOWS_UNKNOWN,
                expires: until,
            };
            let _ = NETFAST_NAT_BIND.insert(&bk, &again, BPF_NOEXIST as u64);
        }
    }
    if let Some(c) = claim {
        // SAFETY: a map value pointer, valid for this program run.
        let c = unsafe { &mut *c };
        if c.expires < given {
            c.expires = given;
        }
    }
    given
}

/// 0 where a caller that read its flow `open` finds the mapping counting no open flow
/// (`flows`): another CPU has released it since the caller's read, and the time the
/// caller reckoned from the state the flow left is not given; all ones otherwise.
// Arithmetic rather than a branch: in the loop of `keep_mapping`, an early exit multiplied
// the paths the verifier walks through every caller (some 60k instructions more in
// `uplink_ingress`, against some 30k for this).
#[inline(always)]
fn stale_mask(open: bool, flows: u16) -> u32 {
    // 1 for any flows in 1..=u16::MAX, 0 for none.
    let counted = (u32::from(flows) + 0xffff) >> 16;
    let keep = counted | (u32::from(open) ^ 1);
    0u32.wrapping_sub(keep)
}

/// A TCP flow of the mapping has closed; its entries, and the mapping for them, live until
/// `until` (a slack included). One flow fewer; the claim remembers `until` among the closed
/// flows' (`closed_until`), and the flow's entries know it: a later packet of the closed
/// flow extends the mapping again. True when it was the last flow: the mapping then lives
/// until `until`, and the caller makes it outlive the closed flows (`outlive_closed`).
#[inline(never)]
pub fn release_mapping(key: &CtKey, entry: &mut CtEntry, until: u32) -> bool {
    let (bk, ck) = mapping_keys(key, entry);
    let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(&bk) else {
        return false;
    };
    // Before the count goes down: the CPU that takes it to zero reads it after.
    if let Some(c) = owned_claim(&ck, &bk) {
        note_closed(c, until);
    }
    let word = binding.cast::<u64>();
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        if b.ext_port != ck.ext_port {
            return false;
        }
        let flows = NatBinding::closed_one(b.flows);
        let new = NatBinding {
            ext_port: b.ext_port,
            flows,
            expires: if flows == 0 { until } else { b.expires },
        };
        if cas(word, old, new.word()) {
            entry.map_expires = until;
            return flows == 0;
        }
    }
    false
}

/// The claim `ck`, if it is still the endpoint's (of `bk`).
#[inline(always)]
fn owned_claim(ck: &NatClaimKey, bk: &NatBindKey) -> Option<*mut NatClaim> {
    NETFAST_NAT_CLAIM
        .get_ptr_mut(ck)
        // SAFETY: a map value pointer, valid for this program run.
        .filter(|c| unsafe { (**c).owned_by(bk.int_addr, bk.int_port) })
}

/// Raises the `closed_until` of `claim` to `until`. A claim that does not know its closed
/// flows stays so (`NatClaim::closed`); where other CPUs keep changing the word, it is made
/// not to know: a store of the largest value, which no raise can undo.
#[inline(always)]
fn note_closed(claim: *mut NatClaim, until: u32) {
    // SAFETY: a map value pointer, valid for this program run; `closed_until` is an aligned
    // u32 of it.
    let word = unsafe { &raw mut (*claim).closed_until };
    for _ in 0..CAS_TRIES {
        // SAFETY: as above.
        let was = unsafe { core::ptr::read_volatile(word) };
        if NatClaim::closed(was) >= until
            || unsafe {
                atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    word, was, until,
                )
                .1
            }
        {
            return;
        }
    }
    // SAFETY: as above.
    unsafe { atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(word, NatClaim::CLOSED_UNKNOWN) };
}

/// The last flow of the mapping of `key` has closed (now), its own entries living until
/// `until`: the mapping lives as long as the flows that closed before it may, as its claim
/// remembers them (`closed_until`: the expiries their entries were given, which settings
/// lowered since do not shorten). Where the claim does not know (`CLOSED_UNKNOWN`, or no
/// claim), as long as any closed flow can live from now: the longest closed state's
/// timeout and its slack.
// Its own BPF function, beside `release_mapping` rather than in it: the bridge's deepest
// call chain ends there, at the verifier's 512 bytes.
#[inline(never)]
pub fn outlive_closed(key: &CtKey, entry: &CtEntry, until: u32, now: u32) {
    let t = conntrack::closed_timeout();
    let bound = now + t + mapping_slack(t);
    let (bk, ck) = mapping_keys(key, entry);
    let claim = owned_claim(&ck, &bk);
    // SAFETY: a map value pointer, valid for this program run.
    let closed = claim.map_or(NatClaim::CLOSED_UNKNOWN, |c| {
        NatClaim::closed(unsafe { core::ptr::read_volatile(&raw const (*c).closed_until) })
    });
    let keep = if closed == NatClaim::CLOSED_UNKNOWN {
        bound
    } else {
        closed
    };
    if keep <= until {
        if let Some(c) = claim {
            // SAFETY: as above. A hint only.
            unsafe { (*c).expires = until };
        }
        return;
    }
    if let Some(c) = claim {
        // SAFETY: as above. A hint only.
        unsafe { (*c).expires = keep };
    }
    let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(&bk) else {
        return;
    };
    let word = binding.cast::<u64>();
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        if b.ext_port != ck.ext_port || b.expires >= keep {
            return;
        }
        let new = NatBinding { expires: keep, ..b };
        if cas(word, old, new.word()) {
            return;
        }
    }
}

/// The masquerade mapping of the source of `key` on the network's external address, counted
/// as used by one more flow: the live one, or a new one. Its external port.
// Its own BPF function: the port search's record stays out of the openers' frames.
#[inline(never)]
pub fn mapping(ctx: &TcContext, key: &CtKey, net: &NetInfo, now: u32, until: u32) -> Outcome {
    Outcome::from(try_mapping(ctx, key, net, now, until))
}

#[inline(always)]
fn try_mapping(
    ctx: &TcContext,
    key: &CtKey,
    net: &NetInfo,
    now: u32,
    until: u32,
) -> Result<u32, DropReason> {
    let bk = NatBindKey {
        int_addr: key.src_addr,
        ext_addr: net.ext_addr,
        int_port: key.src_port,
        proto: key.proto,
        _pad: 0,
    };
    match reuse_mapping(&bk, net.id, now, until).value()? {
        Outcome::NONE => {
            new_mapping(ctx, &bk, (key.dst_addr, key.dst_port), net.id, now, until).map(u32::from)
        }
        port => Ok(port),
    }
}

/// The network id of the host's own flows (no network has it: ids start at 1).
pub const HOST_FLOWS: u16 = 0;

/// The live mapping that holds the external `(addr, port)` for `proto`: its claim (whose
/// owner's binding is alive and leads to this very port), or `None`.
#[inline(always)]
pub fn live_claim(addr: u32, port: u16, proto: u8, now: u32) -> Option<NatClaim> {
    let ck = NatClaimKey::new(addr, port, proto);
    // SAFETY: a map value pointer, valid for this program run.
    let claim = unsafe { *NETFAST_NAT_CLAIM.get_ptr(&ck)? };
    let bk = NatBindKey {
        int_addr: claim.int_addr(),
        ext_addr: addr,
        int_port: claim.int_port(),
        proto,
        _pad: 0,
    };
    let b = NatBinding::from_word(load_word(NETFAST_NAT_BIND.get_ptr(&bk)?.cast::<u64>()));
    (b.expires >= now && b.ext_port == port).then_some(claim)
}

/// Whether a container's live mapping holds the source (address, port) of the host's own
/// packet `key`: then the host's flow must leave from another port, or the remote would see
/// two conversations as one and its answers would reach the container (Linux conntrack
/// remaps the host's clashing flows for the same reason).
#[inline(always)]
pub fn held_by_a_container(key: &CtKey, now: u32) -> bool {
    live_claim(key.src_addr, key.src_port, key.proto, now).is_some_and(|c| c.net_id() != HOST_FLOWS)
}
