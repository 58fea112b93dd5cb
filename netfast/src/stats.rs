//! Reading the per-CPU counters of the dataplane.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use netfast_common::{
    DropReason, Hook, Traffic, maps,
    stats::{drop_slot, hook_slot},
};
use serde::Serialize;

use crate::error::{Error, Result};

/// Counters summed over every CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub hooks: Vec<HookStats>,
    pub drops: Vec<DropStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookStats {
    pub hook: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropStats {
    pub reason: &'static str,
    pub description: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl Stats {
    pub fn hook(&self, hook: Hook) -> Traffic {
        self.hooks
            .iter()
            .find(|h| h.hook == hook.name())
            .map(|h| Traffic {
                packets: h.packets,
                bytes: h.bytes,
            })
            .unwrap_or_default()
    }

    pub fn dropped(&self, reason: DropReason) -> Traffic {
        self.drops
            .iter()
            .find(|d| d.reason == reason.name())
            .map(|d| Traffic {
                packets: d.packets,
                bytes: d.bytes,
            })
            .unwrap_or_default()
    }
}

fn sum_slot(map: &PerCpuArray<&MapData, Traffic>, slot: u32) -> Result<Traffic> {
    let values = map.get(&slot, 0).map_err(|e| Error::map(maps::STATS, e))?;
    let mut total = Traffic::default();
    for v in values.iter() {
        total.add(v);
    }
    Ok(total)
}

/// Sums the stats map over all CPUs.
pub fn read(map: &PerCpuArray<&MapData, Traffic>) -> Result<Stats> {
    let mut stats = Stats::default();
    for hook in Hook::ALL {
        let t = sum_slot(map, hook_slot(hook))?;
        stats.hooks.push(HookStats {
            hook: hook.name(),
            packets: t.packets,
            bytes: t.bytes,
        });
    }
    for reason in DropReason::ALL {
        let t = sum_slot(map, drop_slot(reason))?;
        stats.drops.push(DropStats {
            reason: reason.name(),
            description: reason.describe(),
            packets: t.packets,
            bytes: t.bytes,
        });
    }
    Ok(stats)
}

/// Sums the stats map of a loaded object.
pub fn of(ebpf: &Ebpf) -> Result<Stats> {
    let map = ebpf
        .map(maps::STATS)
        .ok_or(Error::MissingMap(maps::STATS))?;
    let map = PerCpuArray::try_from(map).map_err(|e| Error::map(maps::STATS, e))?;
    read(&map)
}
