//! netfast's TC programs. One entry point per attach point; each is a thin wrapper that turns
//! the `Result` of its `try_*` function into a TC verdict, counting every drop by reason.
#![no_std]
#![no_main]
// Atomic adds on map values (conntrack counters); the eBPF crate builds with nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod csum;
mod icmp;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{bindings, macros::classifier, programs::TcContext};
use netfast_common::{
    DropReason, Hook,
    config::FILTERING_ENDPOINT_INDEPENDENT,
    conntrack::{CT_F_INWARD, CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtKey},
    verdict::{NEXT, SHOT},
};

use crate::parse::{Frag, L4};

const _: () = assert!(NEXT == bindings::TC_ACT_UNSPEC && SHOT == bindings::TC_ACT_SHOT);

#[inline(always)]
fn verdict(ctx: &TcContext, result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            stats::count_drop(ctx, reason);
            SHOT
        }
    }
}

/// Bridge, ingress: frames from containers that the bridge hands up to the host stack.
#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::BridgeIngress);
    NEXT
}

/// Bridge, egress: frames the host stack sends into the bridge, towards containers.
#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::BridgeEgress);
    NEXT
}

/// Uplink, ingress: from the outside. Replies to masqueraded flows get their destination
/// translated back to the container before the host routes them.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::UplinkIngress);
    let result = try_uplink(&ctx, false);
    verdict(&ctx, result)
}

/// Uplink, egress: to the outside. Packets from masqueraded networks get the uplink's
/// address as their source.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::UplinkEgress);
    let result = try_uplink(&ctx, true);
    verdict(&ctx, result)
}

/// Whether a packet that cannot be translated comes from a masqueraded network on its way
/// out: then it must be dropped rather than leak a container address.
#[inline(always)]
fn leaking(ctx: &TcContext, egress: bool, src: u32) -> bool {
    egress && nat::masq_network(src, nat::ifindex(ctx)).is_some()
}

#[inline(always)]
fn try_uplink(ctx: &TcContext, egress: bool) -> Result<i32, DropReason> {
    parse::linearize_headers(ctx);
    let Some(ip) = parse::ipv4(ctx)? else {
        return Ok(NEXT);
    };
    let now = conntrack::now();
    if ip.frag == Frag::Later {
        if nat::later_fragment(ctx, &ip, now)? {
            return Ok(NEXT);
        }
        return if leaking(ctx, egress, ip.src) {
            Err(DropReason::FragmentWithoutFirst)
        } else {
            Ok(NEXT)
        };
    }
    let (sport, dport, tcp_flags) = match parse::l4(ctx, &ip)? {
        L4::Flow {
            sport,
            dport,
            tcp_flags,
        } => (sport, dport, tcp_flags),
        L4::IcmpError => {
            if icmp::translate_error(ctx, &ip, now)? {
                return Ok(NEXT);
            }
            return if leaking(ctx, egress, ip.src) {
                Err(DropReason::IcmpErrorWithoutFlow)
            } else {
                Ok(NEXT)
            };
        }
        L4::Other => {
            return if leaking(ctx, egress, ip.src) {
                Err(DropReason::UnsupportedProtocol)
            } else {
                Ok(NEXT)
            };
        }
    };
    let key = CtKey::new(ip.src, ip.dst, sport, dport, ip.proto);
    let cfg = conntrack::config();
    if let Some(entry) = conntrack::lookup(&key, now) {
        conntrack::track(&key, entry, ctx.len(), tcp_flags, now, &cfg);
        // SAFETY: a live map value pointer from `lookup`; copied before the packet changes.
        let e = unsafe { *entry };
        if e.flags & (CT_F_REWRITE_SRC | CT_F_REWRITE_DST) != 0 {
            nat::apply(ctx, &ip, &key, &e, now)?;
            stats::count_network(ctx, e.net_id, e.flags & CT_F_INWARD != 0);
        }
        return Ok(NEXT);
    }
    if egress {
        if let Some(net) = nat::masq_network(ip.src, nat::ifindex(ctx)) {
            nat::snat_new_flow(ctx, &ip, &key, tcp_flags, &net, &cfg, now)?;
        }
    } else if cfg.filtering == FILTERING_ENDPOINT_INDEPENDENT {
        nat::eif_new_flow(ctx, &ip, &key, tcp_flags, &cfg, now)?;
    }
    Ok(NEXT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
