//! Forwarding packets ourselves, past the host's routing and netfilter: the fast path, and
//! hairpin (whose translated source the host's input path would drop as a martian).
//!
//! The route is found *before* the packet is translated ([`route`]), so that a packet that
//! cannot be forwarded here is handed to the host's stack untouched; [`forward`] then does
//! what a router does (TTL, MACs) and redirects.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    conntrack::{CtEntry, FWD_F_UPLINK},
    maps::FORWARDED_TC_INDEX,
    stats::Event,
};

use crate::{
    csum,
    maps::{NETFAST_ENDPOINTS, NETFAST_UPLINKS},
    nat::ifindex,
    parse::{ETH_HLEN, Ipv4, load, store},
    stats,
};

const AF_INET: u8 = 2;
/// Offsets in the IPv4 header.
const IP_TTL: usize = 8;
const IP_CSUM: usize = 10;

/// A packet's addresses after translation, whether it must be forwarded here whatever
/// happens (a hairpinned packet: the host's stack would drop it), and the time.
#[derive(Clone, Copy)]
pub struct Hop {
    pub src: u32,
    pub dst: u32,
    pub must: bool,
    pub now: u32,
}

impl Hop {
    /// A packet the host's stack may take instead, where the fast path cannot forward it.
    #[inline(always)]
    pub const fn may(src: u32, dst: u32, now: u32) -> Hop {
        Hop {
            src,
            dst,
            must: false,
            now,
        }
    }

    /// A packet that must be forwarded here whatever happens (hairpinned: the host's stack
    /// would drop it).
    #[inline(always)]
    pub const fn must(src: u32, dst: u32, now: u32) -> Hop {
        Hop {
            must: true,
            ..Hop::may(src, dst, now)
        }
    }
}

/// Where a packet goes next. A plain struct, filled in by [`route`] through a pointer: an
/// enum returned from a BPF function is copied whole, undefined payload bytes included,
/// which the verifier refuses.
#[derive(Clone, Copy)]
pub struct Route {
    pub kind: u32,
    /// The device to redirect to.
    pub ifindex: u32,
    /// The frame's new destination and source MACs ([`PEER`] and [`NEIGH`]).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// 1: `ifindex` is an uplink of ours, whose egress program need not look at the packet.
    pub to_uplink: u32,
}

/// No route here: the host's stack handles the packet.
pub const NONE: u32 = 0;
/// A container of ours: straight into its namespace (`bpf_redirect_peer`).
pub const PEER: u32 = 1;
/// Out of `ifindex` to a resolved neighbour (`bpf_redirect`).
pub const NEIGH: u32 = 2;
/// Out of `ifindex`, the neighbour to be resolved by the kernel (`bpf_redirect_neigh`).
pub const RESOLVE: u32 = 3;

impl Route {
    pub const NONE: Route = Route {
        kind: NONE,
        ifindex: 0,
        dmac: [0; 6],
        smac: [0; 6],
        to_uplink: 0,
    };
}

/// Finds the route of a packet from `hop.src` to `hop.dst` (its addresses after
/// translation) into `out`. False when the host's stack must handle the packet: a TTL about
/// to expire (the stack sends the ICMP error), no route, a packet over the MTU.
/// A hairpinned packet (`hop.must`) cannot go to the stack: it is routed whatever its TTL
/// and size.
// Its own BPF function: the FIB request alone takes 64 bytes of stack.
#[inline(never)]
pub fn route(ctx: &TcContext, ip: &Ipv4, hop: &Hop, out: &mut Route) -> bool {
    let Hop { src, dst, must, .. } = *hop;
    if !forwardable(ctx, ip, must) {
        return false;
    }
    // SAFETY: map values are plain data, copied at once.
    if let Some(ep) = unsafe { NETFAST_ENDPOINTS.get(dst) } {
        // A whole packet larger than the container's MTU: the host's stack fragments it or
        // says "fragmentation needed"; the veth would drop it without a word.
        if !must && !gso(ctx) && ep.mtu != 0 && ip_len(ctx) > ep.mtu {
            return false;
        }
        *out = Route {
            kind: PEER,
            ifindex: ep.ifindex,
            dmac: ep.mac,
            smac: ep.gw_mac,
            to_uplink: 0,
        };
        return true;
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    // A GSO packet is segmented later to the route's MTU: check the MTU only for others.
    params.__bindgen_anon_1.tot_len = if must || gso(ctx) { 0 } else { ip_len(ctx) };
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the context and a parameter block on our stack, with its size.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let kind = if ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        NEIGH
    } else if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        RESOLVE
    } else {
        return false;
    };
    // Out of one of our uplinks: the packet is marked, so that the uplink's egress program
    // lets it pass (it is translated already; taken for the host's own, it would be
    // translated twice).
    // SAFETY: map values are plain data.
    let uplink = unsafe { NETFAST_UPLINKS.get(params.ifindex) }.is_some();
    *out = Route {
        kind,
        ifindex: params.ifindex,
        dmac: params.dmac,
        smac: params.smac,
        to_uplink: u32::from(uplink),
    };
    true
}

/// Whether we may forward the packet rather than the stack: not when its TTL is about to
/// expire (the stack sends the ICMP error) — unless it `must` be forwarded here. Fragments
/// are forwarded like whole packets: handed to the stack, they would meet its FORWARD chain.
#[inline(always)]
fn forwardable(ctx: &TcContext, _ip: &Ipv4, must: bool) -> bool {
    let Ok(ttl) = load::<u8>(ctx, ETH_HLEN + IP_TTL) else {
        return false;
    };
    must || ttl > 1
}

/// A GSO packet: the kernel segments it to the route's MTU later.
#[inline(always)]
fn gso(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the context the kernel passed in.
    (unsafe { (*ctx.skb.skb).gso_segs }) > 1
}

/// The packet's IPv4 length (saturated: a GSO packet may be longer than 64 KiB).
#[inline(always)]
fn ip_len(ctx: &TcContext) -> u16 {
    let len = ctx.len().saturating_sub(ETH_HLEN as u32);
    if len > 0xffff { 0xffff } else { len as u16 }
}

/// The route of a tracked flow's packet: from the entry's cache while it is fresh and the
/// packet no larger than the cached route is known to carry, else looked up ([`route`])
/// and cached for the rest of this second and the next. A route the kernel has yet to
/// resolve a neighbour for is not cached. Route and neighbour changes thus reach a flow
/// within two seconds, as they reach a socket's cached route at its next check.
///
/// Two CPUs refreshing the cache of one entry at once may interleave their writes; both
/// write what the FIB said that second.
#[inline(always)]
pub fn route_cached(
    ctx: &TcContext,
    ip: &Ipv4,
    hop: &Hop,
    entry: *mut CtEntry,
    out: &mut Route,
) -> bool {
    // SAFETY: a live conntrack value pointer, valid for this program run.
    let c = unsafe { &mut (*entry).fwd };
    let big = !hop.must && !gso(ctx);
    let len = ip_len(ctx);
    if c.kind != 0 && c.expires >= hop.now && (!big || len <= c.max_len) {
        if !forwardable(ctx, ip, hop.must) {
            return false;
        }
        *out = Route {
            kind: u32::from(c.kind),
            ifindex: c.ifindex,
            dmac: c.dmac,
            smac: c.smac,
            to_uplink: u32::from(c.flags & FWD_F_UPLINK),
        };
        return true;
    }
    if !route(ctx, ip, hop, out) {
        return false;
    }
    if out.kind == PEER || out.kind == NEIGH {
        let same = c.kind as u32 == out.kind
            && c.ifindex == out.ifindex
            && c.dmac == out.dmac
            && c.smac == out.smac;
        let known = if same { c.max_len } else { 0 };
        c.expires = 0;
        c.flags = if out.to_uplink != 0 { FWD_F_UPLINK } else { 0 };
        c.kind = out.kind as u8;
        c.ifindex = out.ifindex;
        c.dmac = out.dmac;
        c.smac = out.smac;
        // A GSO packet proved nothing about the MTU; a whole one of `len` bytes fits.
        c.max_len = if big && len > known { len } else { known };
        c.expires = hop.now + 1;
    }
    true
}

/// Decrements the TTL (and the header checksum with it), as the router we stand in for.
#[inline(always)]
fn hop(ctx: &TcContext) -> Result<(), DropReason> {
    let word: u16 = load(ctx, ETH_HLEN + IP_TTL)?;
    let ttl = word.to_ne_bytes();
    if ttl[0] <= 1 {
        // Only a hairpinned packet gets here so: it is delivered, not expired.
        return Ok(());
    }
    let new = u16::from_ne_bytes([ttl[0].wrapping_sub(1), ttl[1]]);
    store(ctx, ETH_HLEN + IP_TTL, new)?;
    let check: u16 = load(ctx, ETH_HLEN + IP_CSUM)?;
    store(ctx, ETH_HLEN + IP_CSUM, csum::replace16(check, word, new))
}

/// Sends the (translated) packet along `route`.
#[inline(always)]
pub fn forward(ctx: &TcContext, route: &Route) -> Result<i32, DropReason> {
    hop(ctx)?;
    if route.kind == PEER || route.kind == NEIGH {
        store(ctx, 0, route.dmac)?;
        store(ctx, 6, route.smac)?;
    }
    if route.to_uplink != 0 {
        // SAFETY: a field of the context TC programs may write.
        unsafe { (*ctx.skb.skb).tc_index |= FORWARDED_TC_INDEX };
    }
    // SAFETY: helpers taking an ifindex and flags (and no parameter block).
    let ret = unsafe {
        match route.kind {
            PEER => bpf_redirect_peer(route.ifindex, 0),
            NEIGH => bpf_redirect(route.ifindex, 0),
            _ => bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0),
        }
    };
    if ret as i32 == TC_ACT_REDIRECT {
        stats::count_event(Event::FastPath, ctx.len());
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::NoRoute)
    }
}

/// Counts a packet the fast path had to leave to the stack.
#[inline(always)]
pub fn fallback(ctx: &TcContext) {
    stats::count_event(Event::FastPathFallback, ctx.len());
}
