//! The host's own clients of its published ports. Their packets go through loopback, which
//! TC never sees, so the translation happens at the socket: connect/sendmsg to a published
//! address becomes a connect/send to the container, and getpeername/recvmsg show the
//! published address again (the way Cilium's socket load balancer works).
//!
//! These programs sit on the root cgroup and so see every process of the machine, in every
//! network namespace: they act only in the host namespace their dataplane serves.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use netfast_common::publish::{PubTarget, SockRevNat};

use crate::maps::{NETFAST_HOST, NETFAST_SOCK_REVNAT};
use crate::publish;

/// 127.0.0.1 in network byte order.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// Whether the socket belongs to the host namespace this dataplane serves.
#[inline(always)]
fn in_host(ctx: &SockAddrContext) -> bool {
    let Some(host) = NETFAST_HOST.get(0) else {
        return false;
    };
    // SAFETY: a helper taking the context.
    host.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host.netns_cookie
}

/// The publication a host-local destination names: one for that address, or one for every
/// address when the destination is one of the host's, or 127.0.0.1.
#[inline(always)]
fn published(addr: u32, port: u16, proto: u8) -> Option<PubTarget> {
    publish::lookup(addr, port, proto, || {
        addr == LOOPBACK || publish::host_addr(addr)
    })
}

/// connect4 and sendmsg4: a destination that is a published port becomes its container.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) {
    if !in_host(ctx) {
        return;
    }
    // SAFETY: the context the kernel passed in.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (addr, port, proto) = (sa.user_ip4, sa.user_port as u16, sa.protocol as u8);
    let Some(target) = published(addr, port, proto) else {
        return;
    };
    sa.user_ip4 = target.addr;
    sa.user_port = u32::from(target.port);
    let record = SockRevNat {
        orig_addr: addr,
        orig_port: port,
        _pad: 0,
        target_addr: target.addr,
        target_port: target.port,
        _pad2: 0,
    };
    // SAFETY: a helper taking the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the record getpeername/recvmsg show the container's address: tolerable.
    let _ = NETFAST_SOCK_REVNAT.insert(cookie, record, BPF_ANY as u64);
}

/// getpeername4 and recvmsg4: the container's address shows as the published one again.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) {
    if !in_host(ctx) {
        return;
    }
    // SAFETY: a helper taking the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain-data map value, copied at once.
    let Some(record) = (unsafe { NETFAST_SOCK_REVNAT.get(cookie) }).copied() else {
        return;
    };
    // SAFETY: the context the kernel passed in.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 == record.target_addr && sa.user_port as u16 == record.target_port {
        sa.user_ip4 = record.orig_addr;
        sa.user_port = u32::from(record.orig_port);
    }
}
