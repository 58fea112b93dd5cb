//! Every map of the dataplane. Names and sizes come from `netfast_common::maps`.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netfast_common::{Traffic, maps::STATS_SLOTS};

/// `netfast_common::maps::STATS`: packets and bytes per hook and per drop reason, per CPU.
#[map]
pub static NETFAST_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);
