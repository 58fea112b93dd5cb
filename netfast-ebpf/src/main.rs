//! netfast's TC programs. One entry point per attach point; each is a thin wrapper that turns
//! the `Result` of its `try_*` function into a TC verdict, counting every drop by reason.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{bindings, macros::classifier, programs::TcContext};
use netfast_common::{
    DropReason, Hook,
    verdict::{NEXT, SHOT},
};

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
    let result = try_pass(&ctx, Hook::BridgeIngress);
    verdict(&ctx, result)
}

/// Bridge, egress: frames the host stack sends into the bridge, towards containers.
#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    let result = try_pass(&ctx, Hook::BridgeEgress);
    verdict(&ctx, result)
}

/// Uplink, ingress: frames arriving from the outside.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    let result = try_pass(&ctx, Hook::UplinkIngress);
    verdict(&ctx, result)
}

/// Uplink, egress: frames leaving for the outside.
#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    let result = try_pass(&ctx, Hook::UplinkEgress);
    verdict(&ctx, result)
}

#[inline(always)]
fn try_pass(ctx: &TcContext, hook: Hook) -> Result<i32, DropReason> {
    stats::count_hook(ctx, hook);
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
