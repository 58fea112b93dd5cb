//! Per-CPU counters: no atomics needed, the loader sums the CPUs.

use aya_ebpf::{maps::PerCpuArray, programs::TcContext};
use netfast_common::{
    DropReason, Hook, Traffic,
    stats::{Event, drop_slot, event_slot, hook_drop_slot, hook_slot},
};

use crate::maps::{NETFAST_HOOK_DROPS, NETFAST_NET_STATS, NETFAST_STATS};

#[inline(always)]
fn count(map: &PerCpuArray<Traffic>, slot: u32, bytes: u32) {
    if let Some(entry) = map.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array value is only ever touched by this CPU while the program runs.
        let entry = unsafe { &mut *entry };
        entry.packets += 1;
        entry.bytes += u64::from(bytes);
    }
}

/// Counts a packet seen by a hook.
#[inline(always)]
pub fn count_hook(ctx: &TcContext, hook: Hook) {
    count(&NETFAST_STATS, hook_slot(hook), ctx.len());
}

/// Counts a packet `hook` dropped for `reason`: per reason, and per hook and reason.
#[inline(always)]
pub fn count_drop(ctx: &TcContext, hook: Hook, reason: DropReason) {
    count(&NETFAST_STATS, drop_slot(reason), ctx.len());
    count(&NETFAST_HOOK_DROPS, hook_drop_slot(hook, reason), ctx.len());
}

/// Counts a translated packet of network `net_id`, towards its containers or away from them.
#[inline(always)]
pub fn count_network(ctx: &TcContext, net_id: u16, to_containers: bool) {
    count(
        &NETFAST_NET_STATS,
        u32::from(net_id) * 2 + u32::from(to_containers),
        ctx.len(),
    );
}

/// Counts an event (see `Event`) of a packet of `bytes` bytes (0 where the packet is out of
/// reach).
#[inline(always)]
pub fn count_event(event: Event, bytes: u32) {
    count(&NETFAST_STATS, event_slot(event), bytes);
}
