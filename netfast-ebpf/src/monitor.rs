//! Drop events for `netfast monitor --drops`: a packet a program drops is written to the
//! monitor's ring with its reason, hook and addresses, while its CPU has budget left this
//! second; past the budget (a flood) it is only counted (`monitor_suppressed`), so that the
//! ring keeps room and the packet path pays one per-CPU counter for the rest.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use netfast_common::{
    DropReason, Hook,
    conntrack::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    monitor::{DROP_EVENTS_PER_CPU_PER_SECOND, DropEvent},
    stats::Event,
};

use crate::maps::{NETFAST_DROP_EVENTS, NETFAST_MONITOR_BUDGET};

const NS_PER_SEC: u64 = 1_000_000_000;

/// Whether this CPU may write one more event in the second `second`.
#[inline(always)]
fn spend(second: u64) -> bool {
    let Some(b) = NETFAST_MONITOR_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU map value, touched by this CPU only while the program runs.
    let b = unsafe { &mut *b };
    if b.second != second {
        b.second = second;
        b.used = 0;
    }
    if b.used >= DROP_EVENTS_PER_CPU_PER_SECOND {
        return false;
    }
    b.used += 1;
    true
}

/// Tells `netfast monitor` that `hook` dropped the packet for `reason`.
// Its own BPF function: drops are the rare path, and its frame stays out of the entry
// points'.
#[inline(never)]
pub fn dropped(ctx: &TcContext, hook: Hook, reason: DropReason) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !spend(now / NS_PER_SEC) {
        crate::stats::count_event(Event::MonitorSuppressed, ctx.len());
        return;
    }
    let Some(mut slot) = NETFAST_DROP_EVENTS.reserve::<DropEvent>(0) else {
        crate::stats::count_event(Event::MonitorSuppressed, ctx.len());
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: a reserved ring slot the size of a DropEvent, ours until submitted; written
    // field by field (the whole event built first would take stack).
    unsafe {
        (*ev).ktime_ns = now;
        (*ev).ifindex = (*ctx.skb.skb).ifindex;
        (*ev).len = ctx.len();
        (*ev).reason = reason as u8;
        (*ev).hook = hook as u8;
        (*ev)._pad = 0;
        (*ev).src_addr = 0;
        (*ev).dst_addr = 0;
        (*ev).src_port = 0;
        (*ev).dst_port = 0;
        (*ev).proto = 0;
    }
    // The headers are read again with bpf_skb_load_bytes: whatever the drop left unparsed
    // (or malformed), a read past the packet only fails.
    if ctx.load::<u16>(12).ok() == Some(0x0800u16.to_be())
        && let Ok(ip) = ctx.load::<[u8; 20]>(14)
    {
        let proto = ip[9];
        // SAFETY: as above.
        unsafe {
            (*ev).proto = proto;
            (*ev).src_addr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
            (*ev).dst_addr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        }
        let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        let l4 = 14 + usize::from(ip[0] & 0x0f) * 4;
        if first
            && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP)
            && let Ok(h) = ctx.load::<[u8; 8]>(l4)
        {
            let (sport, dport) = if proto == PROTO_ICMP {
                // Type, code, checksum, then the identifier (echo).
                (u16::from_ne_bytes([h[4], h[5]]), 0)
            } else {
                (
                    u16::from_ne_bytes([h[0], h[1]]),
                    u16::from_ne_bytes([h[2], h[3]]),
                )
            };
            // SAFETY: as above.
            unsafe {
                (*ev).src_port = sport;
                (*ev).dst_port = dport;
            }
        }
    }
    slot.submit(0);
}
