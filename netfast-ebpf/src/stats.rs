//! Per-CPU counters: no atomics needed, the loader sums the CPUs.

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason, Hook,
    stats::{drop_slot, hook_slot},
};

use crate::maps::NETFAST_STATS;

#[inline(always)]
fn count(slot: u32, bytes: u32) {
    if let Some(entry) = NETFAST_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU array value is only ever touched by this CPU while the program runs.
        let entry = unsafe { &mut *entry };
        entry.packets += 1;
        entry.bytes += u64::from(bytes);
    }
}

/// Counts a packet seen by a hook.
#[inline(always)]
pub fn count_hook(ctx: &TcContext, hook: Hook) {
    count(hook_slot(hook), ctx.len());
}

/// Counts a packet dropped for `reason`.
#[inline(always)]
pub fn count_drop(ctx: &TcContext, reason: DropReason) {
    count(drop_slot(reason), ctx.len());
}
