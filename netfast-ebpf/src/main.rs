//! netfast's TC programs. One entry point per attach point; each is a thin wrapper that turns
//! the `Result` of its `try_*` function into a TC verdict, counting every drop by reason.
#![no_std]
#![no_main]
// Atomic adds on map values (conntrack counters); the eBPF crate builds with nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// aya-ebpf's map calls take `impl Borrow<K>`: a key or value passed by reference is read in
// place; passed by value, as this lint would have it, a 80-byte flow entry is copied onto a
// BPF stack frame that has no room to spare.
#![allow(clippy::needless_borrows_for_generic_args)]
// Every step is `#[inline(always)]`: a BPF-to-BPF call costs verifier state and stack. The
// other pedantic findings here (`as` widening casts, `&x as *const _`, `match` for `let else`)
// are style in packet code the verifier accepts as written; they are left to the datapath's
// own changes rather than rewritten with the workspace's lints.
#![allow(
    clippy::inline_always,
    clippy::cast_lossless,
    clippy::borrow_as_ptr,
    clippy::single_match_else,
    clippy::manual_let_else,
    clippy::verbose_bit_mask,
    elided_lifetimes_in_paths
)]

mod bridge;
mod conntrack;
mod csum;
mod dbglog;
mod forward;
mod icmp;
mod maps;
mod monitor;
mod nat;
mod outcome;
mod parse;
mod publish;
mod sock;
mod stats;
mod uplink;

use aya_ebpf::{
    bindings,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use netfast_common::{
    DropReason, Hook,
    verdict::{NEXT, SHOT},
};

const _: () = assert!(NEXT == bindings::TC_ACT_UNSPEC && SHOT == bindings::TC_ACT_SHOT);

#[inline(always)]
fn verdict(ctx: &TcContext, hook: Hook, result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            dbglog::dropped(ctx, hook, reason);
            stats::count_drop(ctx, hook, reason);
            monitor::dropped(ctx, hook, reason);
            SHOT
        }
    }
}

/// Bridge, ingress: frames from containers that the bridge hands up to the host stack.
/// Hairpin flows are translated and forwarded here; networks are kept apart.
#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::BridgeIngress);
    let result = bridge::try_bridge_ingress(&ctx);
    verdict(&ctx, Hook::BridgeIngress, result)
}

/// Bridge, egress: frames the host stack sends into the bridge, towards containers.
#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::BridgeEgress);
    NEXT
}

/// Uplink, ingress: from the outside. Replies to masqueraded flows get their destination
/// translated back to the container, and new flows to published ports the container's
/// address, before the host routes them.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::UplinkIngress);
    let result = uplink::try_uplink(&ctx, uplink::Direction::In);
    verdict(&ctx, Hook::UplinkIngress, result)
}

/// Uplink, egress: to the outside. Packets from masqueraded networks get the uplink's
/// address as their source.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    stats::count_hook(&ctx, Hook::UplinkEgress);
    let result = uplink::try_uplink(&ctx, uplink::Direction::Out);
    verdict(&ctx, Hook::UplinkEgress, result)
}

/// Never attached: the loader runs it (BPF_PROG_TEST_RUN) to read jiffies and
/// CLOCK_MONOTONIC at one instant, and calibrates the other programs' clock from that.
#[classifier]
pub fn netfast_clock(_ctx: TcContext) -> i32 {
    conntrack::sample_clock();
    NEXT
}

/// Socket-level programs return 1: they translate, they never refuse.
const SOCK_CONTINUE: i32 = 1;

/// The root cgroup's socket-address programs: each runs one step of `sock` on the address
/// (`translate`: a published address to its container's; `reverse`: back) and lets the call
/// go on.
macro_rules! sock_addr_programs {
    ($($(#[$doc:meta])* $attach:ident: $name:ident => $step:path;)*) => {$(
        $(#[$doc])*
        #[cgroup_sock_addr($attach)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            $step(&ctx);
            SOCK_CONTINUE
        }
    )*};
}

sock_addr_programs! {
    /// connect(2) over IPv4: the host's own clients of published ports.
    connect4: sock_connect4 => sock::translate;
    /// sendmsg(2) over unconnected IPv4 UDP: as connect4, per datagram.
    sendmsg4: sock_sendmsg4 => sock::translate;
    /// recvmsg(2) over IPv4 UDP: datagrams from the container show the published address
    /// as their source.
    recvmsg4: sock_recvmsg4 => sock::reverse;
    /// getpeername(2) over IPv4: the peer shows as the published address.
    getpeername4: sock_getpeername4 => sock::reverse;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
