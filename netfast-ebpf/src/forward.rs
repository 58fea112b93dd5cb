//! Forwarding a translated packet ourselves: a FIB lookup for its (new) destination, then a
//! redirect to that neighbour, past the host's input and routing path.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use netfast_common::DropReason;

use crate::{
    nat::ifindex,
    parse::{ETH_HLEN, IP_DST, IP_SRC, load},
};

const AF_INET: u8 = 2;

/// Redirects the packet (already translated) to the neighbour its destination routes to.
#[inline(always)]
pub fn redirect(ctx: &TcContext, proto: u8) -> Result<i32, DropReason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = (ctx.len() as u16).saturating_sub(ETH_HLEN as u16);
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_3.ipv4_src = load(ctx, ETH_HLEN + IP_SRC)?;
    params.__bindgen_anon_4.ipv4_dst = load(ctx, ETH_HLEN + IP_DST)?;
    // SAFETY: the context and a parameter block on our stack, with its size.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && ret != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Err(DropReason::NoRoute);
    }
    // The neighbour subsystem fills in both MACs (and resolves the neighbour if it must).
    // SAFETY: a helper taking an ifindex and no parameters.
    let ret = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
    if ret as i32 == TC_ACT_REDIRECT {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::NoRoute)
    }
}
