//! Masquerade: deciding which packets are translated, claiming external ports, rewriting
//! headers, and carrying a datagram's translation over to its later fragments.

use core::mem::size_of;

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{
    bindings::__sk_buff,
    bindings::{
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    cty::{c_long, c_void},
    helpers::{
        bpf_get_prandom_u32, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    config::{NET_F_MASQUERADE, NetInfo},
    conntrack::{
        CT_F_AWAIT_REPLY, CT_F_FROM_INSIDE, CT_F_INWARD, CT_F_MASQ_DST, CT_F_MASQ_SRC,
        CT_F_REDIRECT, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CT_F_TWO_MAPPINGS, CtEntry, CtKey,
        PROTO_ICMP, PROTO_TCP, PROTO_UDP, TcpFlags, TcpState, tcp_next,
    },
    maps::{FRAGMENT_TIMEOUT, NAT_PORT_TRIES},
    nat::{
        FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey, mapping_keys,
        mapping_slack, port_candidate,
    },
};

use crate::outcome::Outcome;
use crate::{
    conntrack, csum,
    maps::{NETFAST_FRAGS, NETFAST_NAT_BIND, NETFAST_NAT_CLAIM, NETFAST_NETWORKS},
    parse::{
        ETH_HLEN, Frag, IP_CSUM, IP_DST, IP_SRC, Ipv4, Pkt, load, port_offsets, ptr_at, store,
    },
    stats,
};

/// `TCP_LISTEN` in the kernel's TCP states.
const TCP_LISTEN: u32 = 10;

/// The ifindex of the device the hook runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer the kernel passed in; ifindex is a readable field.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The masqueraded network `src` belongs to, when the packet is leaving through that
/// network's uplink: only then is it translated.
#[inline(always)]
pub fn masq_network(src: u32, ifindex: u32) -> Option<NetInfo> {
    let net = NETFAST_NETWORKS.get(Key::new(32, src))?;
    if net.flags & NET_F_MASQUERADE != 0 && net.uplink_ifindex == ifindex {
        Some(*net)
    } else {
        None
    }
}

/// Rewrites the source (`src_side`) or destination address in the IPv4 header and its
/// checksum only; returns the old address.
#[inline(always)]
pub fn rewrite_l3(ctx: &TcContext, src_side: bool, addr: u32) -> Result<u32, DropReason> {
    let addr_off = ETH_HLEN + if src_side { IP_SRC } else { IP_DST };
    let old: u32 = load(ctx, addr_off)?;
    if old != addr {
        store(ctx, addr_off, addr)?;
        let check: u16 = load(ctx, ETH_HLEN + IP_CSUM)?;
        store(ctx, ETH_HLEN + IP_CSUM, csum::replace32(check, old, addr))?;
    }
    Ok(old)
}

/// Rewrites the source (`src_side`) or destination address and port of the packet, with
/// every checksum; a later fragment gets its address only.
#[inline(always)]
fn rewrite_side(
    ctx: &TcContext,
    ip: &Ipv4,
    src_side: bool,
    addr: u32,
    port: u16,
) -> Result<(), DropReason> {
    let old_addr = rewrite_l3(ctx, src_side, addr)?;
    if ip.frag == Frag::Later {
        return Ok(());
    }
    let (port_at, csum_off) = port_offsets(ip.proto, src_side);
    // The ports and the ICMP identifier are all in the first 8 bytes of the L4 header:
    // check those once, then reach the field inside them (a 2-byte field checked on its own
    // at a variable offset gets split into byte loads the verifier cannot bound).
    let h = ptr_at::<[u8; 8]>(ctx, ip.l4())?;
    // SAFETY: `h` is in bounds (checked by ptr_at) and port_at + 1 < 8.
    let old_port = unsafe { u16::from_ne_bytes([(*h)[port_at], (*h)[port_at + 1]]) };
    if old_port != port {
        let bytes = port.to_ne_bytes();
        // SAFETY: as above.
        unsafe {
            (*h)[port_at] = bytes[0];
            (*h)[port_at + 1] = bytes[1];
        }
    }
    let csum_off = ip.l4() + csum_off;
    // The checksum helpers come last: they invalidate every packet pointer.
    if old_addr != addr && ip.proto != PROTO_ICMP {
        csum::l4_addr(ctx, ip.proto, csum_off, old_addr, addr)?;
    }
    if old_port != port {
        csum::l4_word(ctx, ip.proto, csum_off, old_port, port)?;
    }
    Ok(())
}

/// Applies an entry's rewrites to the packet keyed `key`, and records a first fragment's
/// translation for the fragments that follow.
// Its own BPF function: both the per-packet path and the flow openers call it, and inlined
// it would make both stack frames too large for the two to nest.
#[inline(never)]
pub fn apply(ctx: &TcContext, ip: &Ipv4, key: &CtKey, e: &CtEntry, now: u32) -> Outcome {
    Outcome::from(try_apply(ctx, ip, key, e, now))
}

#[inline(always)]
fn try_apply(
    ctx: &TcContext,
    ip: &Ipv4,
    key: &CtKey,
    e: &CtEntry,
    now: u32,
) -> Result<u32, DropReason> {
    if e.flags & CT_F_REWRITE_SRC != 0 {
        rewrite_side(ctx, ip, true, e.src_addr, e.src_port)?;
    }
    if e.flags & CT_F_REWRITE_DST != 0 {
        rewrite_side(ctx, ip, false, e.dst_addr, e.dst_port)?;
    }
    if ip.frag == Frag::First {
        let t = e.translated(key);
        let fk = FragKey {
            src_addr: ip.src,
            dst_addr: ip.dst,
            id: ip.id,
            proto: ip.proto,
            _pad: 0,
        };
        let entry = FragEntry {
            src_addr: t.src_addr,
            dst_addr: t.dst_addr,
            expires: now + FRAGMENT_TIMEOUT,
            _pad: 0,
        };
        // A lost record only costs the later fragments, which are then counted as drops.
        let _ = NETFAST_FRAGS.insert(fk, entry, BPF_ANY as u64);
    }
    Ok(1)
}

/// Gives a later fragment the addresses its first fragment got, wherever the first one was
/// translated; returns the fragment's new (source, destination), or `None` when no first
/// fragment of its datagram was translated. A translated fragment is keyed differently, so
/// no hook translates it twice.
#[inline(always)]
pub fn later_fragment(
    ctx: &TcContext,
    ip: &Ipv4,
    now: u32,
) -> Result<Option<(u32, u32)>, DropReason> {
    let key = FragKey {
        src_addr: ip.src,
        dst_addr: ip.dst,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(entry) = NETFAST_FRAGS.get_ptr(&key) else {
        return Ok(None);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let entry = unsafe { *entry };
    if entry.expires < now {
        return Ok(None);
    }
    rewrite_l3(ctx, true, entry.src_addr)?;
    rewrite_l3(ctx, false, entry.dst_addr)?;
    Ok(Some((entry.src_addr, entry.dst_addr)))
}

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
fn load_word(word: *const u64) -> u64 {
    // SAFETY: as for `cas`.
    unsafe { core::ptr::read_volatile(word) }
}

/// The external port of a live mapping for this internal endpoint, counted as used by one
/// more flow and kept alive until at least `until`; `Outcome::NONE` when it has none
/// (`NatMappingFailed` when other CPUs changed it every time).
// Its own BPF function (as every step of the mapping machinery): the callers' verification
// then meets one answer, not every path through it.
#[inline(never)]
fn reuse_mapping(bk: &NatBindKey, net_id: u16, now: u32, until: u32) -> Outcome {
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
        let ck = NatClaimKey {
            ext_addr: bk.ext_addr,
            ext_port: b.ext_port,
            proto: bk.proto,
            _pad: 0,
        };
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

/// Makes sure `ck` is claimed by the endpoint of `bk` (claiming it again if the LRU evicted
/// the claim), with an expiry of at least `until`; false if another endpoint holds it.
#[inline(always)]
fn hold_claim(ck: &NatClaimKey, bk: &NatBindKey, net_id: u16, until: u32) -> bool {
    let owner = NatClaim::owner_of(bk.int_addr, bk.int_port, net_id);
    let claim = match NETFAST_NAT_CLAIM.get_ptr_mut(ck) {
        Some(c) => c,
        None => {
            let fresh = NatClaim {
                owner,
                expires: until,
                _pad: 0,
            };
            return NETFAST_NAT_CLAIM
                .insert(ck, &fresh, BPF_NOEXIST as u64)
                .is_ok();
        }
    };
    // SAFETY: a map value pointer, valid for this program run.
    let c = unsafe { &mut *claim };
    if !c.owned_by(bk.int_addr, bk.int_port) {
        return false;
    }
    // The claim's expiry is a hint (the binding decides whether the mapping lives): a race
    // between two raises costs nothing.
    if c.expires < until {
        c.expires = until;
    }
    true
}

/// Claims `ck` for the endpoint `owner`: atomically when free; when its holder has expired
/// and holds no live binding to it, by one compare-and-exchange of the owner word; when its
/// holder is this very endpoint (its binding expired or evicted), by raising its expiry.
///
/// The last two can meet on two CPUs: the holder retaking its own expired claim while
/// another endpoint takes it over. Each writes its own word with an atomic instruction (a
/// full barrier), then reads the other's: the holder, after raising the expiry, gives up if
/// the owner word no longer names it; the taker, after its exchange, gives the claim back
/// if the expiry has been raised meanwhile. Of the two, at most one goes on with the port.
#[inline(never)]
fn claim_port(ck: &NatClaimKey, owner: u64, ext_addr: u32, until: u32, now: u32) -> bool {
    let claim = NatClaim {
        owner,
        expires: until,
        _pad: 0,
    };
    if NETFAST_NAT_CLAIM
        .insert(ck, &claim, BPF_NOEXIST as u64)
        .is_ok()
    {
        return true;
    }
    let Some(held) = NETFAST_NAT_CLAIM.get_ptr_mut(ck) else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this program run; `owner` is its first word,
    // 8-byte aligned.
    let h = unsafe { &mut *held };
    let word = (&raw mut h.owner).cast::<u64>();
    let was = load_word(word);
    if was == owner {
        // SAFETY: `expires` is an aligned u32 of the same map value.
        unsafe {
            let expires = &raw mut h.expires;
            let e = core::ptr::read_volatile(expires);
            atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(
                expires,
                if e < until { until } else { e },
            );
        }
        // Taken over by another endpoint before the expiry was raised: theirs.
        return load_word(word) == owner;
    }
    if h.expires >= now {
        return false;
    }
    // Expired by its hint; the holder's binding has the last word.
    let old = NatClaim {
        owner: was,
        expires: 0,
        _pad: 0,
    };
    let bk = NatBindKey {
        int_addr: old.int_addr(),
        ext_addr,
        int_port: old.int_port(),
        proto: ck.proto,
        _pad: 0,
    };
    if let Some(b) = NETFAST_NAT_BIND.get_ptr(&bk) {
        let b = NatBinding::from_word(load_word(b.cast::<u64>()));
        if b.expires >= now && b.ext_port == ck.ext_port {
            return false;
        }
    }
    // Of two CPUs taking it over at once, one wins.
    if !cas(word, was, owner) {
        return false;
    }
    // Its holder retook it meanwhile (raised the expiry): given back.
    // SAFETY: `expires` is an aligned u32 of the same map value.
    if unsafe { core::ptr::read_volatile(&raw const h.expires) } >= now {
        let _ = cas(word, owner, was);
        return false;
    }
    if h.expires < until {
        h.expires = until;
    }
    true
}

/// Binds the endpoint `bk` to `port`, which it has just claimed: one flow, alive until
/// `until`. Where another CPU bound the endpoint meanwhile, its live binding wins and is
/// reused (the claim made here then expires unused); an expired one is replaced.
#[inline(never)]
fn bind(bk: &NatBindKey, port: u16, now: u32, until: u32) -> Outcome {
    Outcome::from(try_bind(bk, port, now, until))
}

#[inline(always)]
fn try_bind(bk: &NatBindKey, port: u16, now: u32, until: u32) -> Result<u32, DropReason> {
    let fresh = NatBinding {
        ext_port: port,
        flows: 1,
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
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        let new = if b.expires >= now {
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

/// Whether the host itself uses `(ext_addr, port)` towards `remote`: a TCP connection with
/// exactly that tuple (with `listeners`, a listening socket on the port too), or a UDP
/// socket bound to the port. Masquerade must not take such a port, or the remote would see
/// two conversations as one (iptables avoids it because host flows share its conntrack
/// table; here the kernel's socket tables are asked instead); nor may an inbound packet
/// for such a socket be taken for a container's mapping.
// Its own BPF function: the socket tuple takes stack, and this runs for new flows only.
#[inline(never)]
fn host_uses(
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
    bind(bk, search.found as u16, now, until)
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
    let ck = NatClaimKey {
        ext_addr: s.bk.ext_addr,
        ext_port: port,
        proto: s.bk.proto,
        _pad: 0,
    };
    if !claim_port(&ck, s.owner, s.bk.ext_addr, s.until, s.now) {
        return 0;
    }
    s.found = u32::from(port);
    1
}

/// Keeps the mapping of a flow alive until `until`; returns the new high-water mark. A
/// binding the LRU evicted while the flow lived is made again.
#[inline(never)]
pub fn extend_mapping(key: &CtKey, entry: &CtEntry, until: u32) -> u32 {
    keep_mapping(key, entry, until, 0)
}

/// A TCP flow of the mapping that closed (and released it) has reopened: as
/// `extend_mapping`, and the mapping has one flow more again, as for a new flow.
#[inline(never)]
pub fn retake_mapping(key: &CtKey, entry: &CtEntry, until: u32) -> u32 {
    keep_mapping(key, entry, until, 1)
}

#[inline(always)]
fn keep_mapping(key: &CtKey, entry: &CtEntry, until: u32, more: u16) -> u32 {
    let (bk, ck) = mapping_keys(key, entry);
    match NETFAST_NAT_BIND.get_ptr_mut(&bk) {
        Some(binding) => {
            let word = binding.cast::<u64>();
            for _ in 0..CAS_TRIES {
                let old = load_word(word);
                let b = NatBinding::from_word(old);
                if b.ext_port != ck.ext_port || (b.expires >= until && more == 0) {
                    break;
                }
                let new = NatBinding {
                    ext_port: b.ext_port,
                    flows: b.flows.saturating_add(more),
                    expires: if b.expires < until { until } else { b.expires },
                };
                if cas(word, old, new.word()) {
                    break;
                }
            }
        }
        None => {
            let again = NatBinding {
                ext_port: ck.ext_port,
                flows: 1,
                expires: until,
            };
            let _ = NETFAST_NAT_BIND.insert(&bk, &again, BPF_NOEXIST as u64);
        }
    }
    if let Some(claim) = NETFAST_NAT_CLAIM.get_ptr_mut(&ck) {
        // SAFETY: a map value pointer, valid for this program run.
        let c = unsafe { &mut *claim };
        if c.owned_by(bk.int_addr, bk.int_port) && c.expires < until {
            c.expires = until;
        }
    }
    until
}

/// A TCP flow of the mapping has closed: one flow fewer; when it was the last, the mapping
/// lives only as long as this flow's entries (`until`).
#[inline(never)]
pub fn release_mapping(key: &CtKey, entry: &mut CtEntry, until: u32) {
    let (bk, ck) = mapping_keys(key, entry);
    let Some(binding) = NETFAST_NAT_BIND.get_ptr_mut(&bk) else {
        return;
    };
    let until = until + mapping_slack(until.saturating_sub(conntrack::now()));
    let word = binding.cast::<u64>();
    for _ in 0..CAS_TRIES {
        let old = load_word(word);
        let b = NatBinding::from_word(old);
        if b.ext_port != ck.ext_port {
            return;
        }
        let flows = b.flows.saturating_sub(1);
        let new = NatBinding {
            ext_port: b.ext_port,
            flows,
            expires: if flows == 0 { until } else { b.expires },
        };
        if cas(word, old, new.word()) {
            if flows == 0 {
                if let Some(claim) = NETFAST_NAT_CLAIM.get_ptr_mut(&ck) {
                    // SAFETY: a map value pointer, valid for this program run. A hint only.
                    let c = unsafe { &mut *claim };
                    if c.owned_by(bk.int_addr, bk.int_port) {
                        c.expires = until;
                    }
                }
                entry.map_expires = until;
            }
            return;
        }
    }
}

/// Translates the packet that opened a flow: the flow's original entry is still in this
/// CPU's scratch pair. (The openers leave it to their caller, so that `apply` and the
/// openers' stack frames never nest.)
#[inline(always)]
pub fn apply_opened(ctx: &TcContext, p: &Pkt) -> Result<(), DropReason> {
    let pair = conntrack::scratch()?;
    apply(ctx, &p.ip, &p.key, &pair.orig, p.now).get()?;
    stats::count_network(ctx, pair.orig.net_id, pair.orig.flags & CT_F_INWARD != 0);
    Ok(())
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

/// The first packet of a flow from a masqueraded network leaving through its uplink: map
/// its source endpoint (endpoint-independent), track the flow, translate the packet.
// Its own BPF function: a new flow's entries would not fit the caller's stack frame.
#[inline(never)]
pub fn snat_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo, ext_port: u16) -> Outcome {
    Outcome::from(try_snat_new_flow(ctx, p, net, ext_port))
}

#[inline(always)]
fn try_snat_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    net: &NetInfo,
    ext_port: u16,
) -> Result<u32, DropReason> {
    let (key, now) = (&p.key, p.now);
    let (state, expires, until) = new_flow_times(p)?;
    let pair = conntrack::scratch()?;
    pair.orig.open(
        CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_FROM_INSIDE,
        (net.ext_addr, ext_port),
        (0, 0),
        state,
        net.id,
        now,
        expires,
        until,
        ctx.len(),
    );
    // The replies of a container's flow go to the container; those of a host flow (see
    // `host_new_flow`) to the host.
    let reply_flags = if net.id == HOST_FLOWS { 0 } else { CT_F_INWARD };
    conntrack::complete_pair(ctx, p, reply_flags).get()?;

    // A flow that fails to open leaves its mapping counted one flow too many: it then lives
    // to its expiry, never shorter than a flow that uses it.
    opened(ctx, conntrack::insert_pair(key, now, false, false))
}

/// The state a masqueraded flow opened by `p` starts in, when its entries expire, and until
/// when its mapping lives: what the mapping is claimed with (see `mapping`) before the flow
/// opens (a TCP RST opens none: it would leak a container's address).
#[inline(always)]
pub fn new_flow_times(p: &Pkt) -> Result<(TcpState, u32, u32), DropReason> {
    let tcp = TcpFlags::from_byte(p.tcp_flags);
    let state = if p.key.proto == PROTO_TCP {
        if tcp.rst {
            return Err(DropReason::TcpRstWithoutFlow);
        }
        tcp_next(TcpState::None, tcp, false, 0).0
    } else {
        TcpState::None
    };
    let t = conntrack::timeout_of(p.key.proto, state);
    let expires = p.now + t;
    Ok((state, expires, expires + mapping_slack(t)))
}

/// The network id of the host's own flows (no network has it: ids start at 1).
pub const HOST_FLOWS: u16 = 0;

/// The live mapping that holds the external `(addr, port)` for `proto`: its claim (whose
/// owner's binding is alive and leads to this very port), or `None`.
#[inline(always)]
pub fn live_claim(addr: u32, port: u16, proto: u8, now: u32) -> Option<NatClaim> {
    let ck = NatClaimKey {
        ext_addr: addr,
        ext_port: port,
        proto,
        _pad: 0,
    };
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

/// A container sends to an external endpoint of its own host that a live masquerade
/// mapping holds — another container's, or its own (RFC 4787 REQ-9, hairpinning): the
/// packet goes to that mapping's owner, from the sender's own external endpoint, so that the
/// receiver sees what an outside peer would (ICE between containers of one host depends on
/// it). Between networks the receiver's filtering applies: with address-and-port-dependent
/// filtering, the way opens only once the receiver has sent to the sender's external
/// endpoint. Returns 0 when no live mapping holds the destination (or the packet cannot
/// open a flow), 1 when the packet goes on, `FILTERED` when it waits.
#[inline(never)]
pub fn mapping_hairpin_new_flow(ctx: &TcContext, p: &Pkt, net: &NetInfo, ext_port: u16) -> Outcome {
    Outcome::from(try_mapping_hairpin_new_flow(ctx, p, net, ext_port))
}

/// `mapping_hairpin_new_flow`: the flow is open, the packet waits for the receiver's.
pub const FILTERED: u32 = 2;

#[inline(always)]
fn try_mapping_hairpin_new_flow(
    ctx: &TcContext,
    p: &Pkt,
    net: &NetInfo,
    ext_port: u16,
) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);
    let Some(claim) = live_claim(key.dst_addr, key.dst_port, key.proto, now) else {
        return Ok(0);
    };
    let tcp = TcpFlags::from_byte(tcp_flags);
    let state = match key.proto {
        PROTO_TCP if tcp.syn && !tcp.ack && !tcp.rst => tcp_next(TcpState::None, tcp, false, 0).0,
        PROTO_TCP => return Ok(0),
        _ => TcpState::None,
    };
    let t = conntrack::timeout_of(key.proto, state);
    let expires = now + t;
    let until = expires + mapping_slack(t);
    // The receiver's mapping, one flow more; then the sender's own.
    let receiver = NatBindKey {
        int_addr: claim.int_addr(),
        ext_addr: key.dst_addr,
        int_port: claim.int_port(),
        proto: key.proto,
        _pad: 0,
    };
    if reuse_mapping(&receiver, claim.net_id(), now, until).value()? != u32::from(key.dst_port) {
        return Ok(0);
    }
    // Within a network, containers reach each other on their bridge anyway: a hairpin
    // between them is not filtered (RFC 5780's hairpinning test sends from a second port of
    // the same host). Across networks, the receiver's filtering applies as it would to an
    // outside peer, so that hairpinning opens no way around the networks' isolation.
    let same_network = claim.net_id() == net.id;
    let wait = !same_network && !conntrack::endpoint_independent();
    let pair = conntrack::scratch()?;
    pair.orig.open(
        CT_F_REWRITE_SRC
            | CT_F_REWRITE_DST
            | CT_F_MASQ_SRC
            | CT_F_INWARD
            | CT_F_REDIRECT
            | CT_F_FROM_INSIDE
            | CT_F_TWO_MAPPINGS
            | if wait { CT_F_AWAIT_REPLY } else { 0 },
        (net.ext_addr, ext_port),
        (claim.int_addr(), claim.int_port()),
        state,
        net.id,
        now,
        expires,
        until,
        ctx.len(),
    );
    conntrack::complete_pair(
        ctx,
        p,
        CT_F_INWARD | CT_F_REDIRECT | CT_F_FROM_INSIDE | CT_F_TWO_MAPPINGS,
    )
    .get()?;

    // The receiver's packets leave through the receiver's own mapping (the mirror of the
    // original's would name the sender's), and cross the receiver's bridge.
    pair.reply.flags = (pair.reply.flags & !CT_F_MASQ_DST) | CT_F_MASQ_SRC;
    pair.reply.net_id = claim.net_id();
    opened(ctx, conntrack::insert_pair(key, now, false, false))?;
    Ok(if wait { FILTERED } else { 1 })
}

/// What an opener returns once `insert_pair` has answered: 1 when the scratch pair's
/// original entry is the flow's (new, joined or repaired), for the caller to translate with.
#[inline(always)]
pub fn opened(ctx: &TcContext, o: Outcome) -> Result<u32, DropReason> {
    match o.value()? {
        conntrack::CLASH => Err(DropReason::CtInsertFailed),
        conntrack::REPAIRED => {
            stats::count_event(ctx, netfast_common::stats::Event::CtRepaired);
            Ok(1)
        }
        conntrack::INSERTED_INBOUND => {
            stats::count_event(ctx, netfast_common::stats::Event::InboundOpened);
            Ok(1)
        }
        _ => Ok(1),
    }
}

/// Endpoint-independent filtering: the first packet from outside to a mapped external port,
/// from an endpoint the internal one never contacted, opens a flow to it. TCP only on SYN.
/// False when the packet is not for a live mapping.
#[inline(never)]
pub fn eif_new_flow(ctx: &TcContext, p: &Pkt) -> Outcome {
    Outcome::from(try_eif_new_flow(ctx, p))
}

#[inline(always)]
fn try_eif_new_flow(ctx: &TcContext, p: &Pkt) -> Result<u32, DropReason> {
    let (key, tcp_flags, now) = (&p.key, p.tcp_flags, p.now);

    let tcp = TcpFlags::from_byte(tcp_flags);
    match key.proto {
        PROTO_UDP => {}
        PROTO_TCP if tcp.syn && !tcp.ack && !tcp.rst => {}
        _ => return Ok(0),
    }
    let ck = NatClaimKey {
        ext_addr: key.dst_addr,
        ext_port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    let Some(claim) = NETFAST_NAT_CLAIM.get_ptr(&ck) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let claim = unsafe { *claim };
    let bk = NatBindKey {
        int_addr: claim.int_addr(),
        ext_addr: key.dst_addr,
        int_port: claim.int_port(),
        proto: key.proto,
        _pad: 0,
    };
    // Checked before anything changes: the mapping must be alive, and this very port's.
    let Some(binding) = NETFAST_NAT_BIND.get_ptr(&bk) else {
        return Ok(0);
    };
    let b = NatBinding::from_word(load_word(binding.cast::<u64>()));
    if b.expires < now || b.ext_port != key.dst_port {
        return Ok(0);
    }
    // A packet for one of the host's own sockets (a service listening on the port, say) is
    // the host's, whatever mapping shares the port.
    if host_uses(
        ctx,
        key.proto,
        &(key.src_addr, key.src_port),
        &(key.dst_addr, key.dst_port),
        true,
    ) {
        return Ok(0);
    }
    let state = if key.proto == PROTO_TCP {
        tcp_next(TcpState::None, tcp, false, 0).0
    } else {
        TcpState::None
    };
    let t = conntrack::timeout_of(key.proto, state);
    let expires = now + t;
    let until = expires + mapping_slack(t);
    if reuse_mapping(&bk, claim.net_id(), now, until).value()? != u32::from(key.dst_port) {
        return Ok(0);
    }
    let pair = conntrack::scratch()?;
    pair.orig.open(
        CT_F_REWRITE_DST | CT_F_MASQ_DST | CT_F_INWARD,
        (0, 0),
        (claim.int_addr(), claim.int_port()),
        state,
        claim.net_id(),
        now,
        expires,
        until,
        ctx.len(),
    );
    conntrack::complete_pair(ctx, p, CT_F_FROM_INSIDE).get()?;

    opened(ctx, conntrack::insert_pair(key, now, false, true))
}
