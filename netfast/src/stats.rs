//! Reading the per-CPU counters of the dataplane.

use aya::{
    Ebpf,
    maps::{LpmTrie, MapData, PerCpuArray},
};
use netfast_common::{
    DropReason, Hook, Traffic,
    config::NetInfo,
    maps,
    stats::{drop_slot, hook_slot},
};
use serde::Serialize;

use crate::error::{Error, Result};

/// Counters summed over every CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub hooks: Vec<HookStats>,
    /// Packets the fast path forwarded, and those it left to the host's stack.
    pub events: Vec<EventStats>,
    pub drops: Vec<DropStats>,
    /// The drops of each hook, by reason (those it dropped any packet for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hook_drops: Vec<HookDropStats>,
    pub networks: Vec<NetworkStats>,
    /// The clock the programs read (absent without an eBPF dataplane).
    pub clock: Option<crate::clock::ClockSource>,
}

/// [`Traffic`] as the JSON output spells it, inline in the row that counts it.
#[derive(Serialize)]
#[serde(remote = "Traffic")]
struct TrafficFields {
    packets: u64,
    bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventStats {
    pub event: &'static str,
    #[serde(flatten, with = "TrafficFields")]
    pub traffic: Traffic,
}

/// Translated traffic of one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkStats {
    pub id: u16,
    /// The network's name (from the state; empty when not known).
    pub name: String,
    /// `a.b.c.d/n`.
    pub subnet: String,
    /// Leaving the containers (masqueraded towards the outside).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Coming to the containers.
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookStats {
    pub hook: &'static str,
    #[serde(flatten, with = "TrafficFields")]
    pub traffic: Traffic,
}

/// What one hook dropped for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookDropStats {
    pub hook: &'static str,
    pub reason: &'static str,
    #[serde(flatten, with = "TrafficFields")]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropStats {
    pub reason: &'static str,
    pub description: &'static str,
    #[serde(flatten, with = "TrafficFields")]
    pub traffic: Traffic,
}

impl Stats {
    pub fn hook(&self, hook: Hook) -> Traffic {
        self.hooks
            .iter()
            .find(|h| h.hook == hook.name())
            .map(|h| h.traffic)
            .unwrap_or_default()
    }

    pub fn event(&self, event: netfast_common::stats::Event) -> Traffic {
        self.events
            .iter()
            .find(|e| e.event == event.name())
            .map(|e| e.traffic)
            .unwrap_or_default()
    }

    pub fn dropped(&self, reason: DropReason) -> Traffic {
        self.drops
            .iter()
            .find(|d| d.reason == reason.name())
            .map(|d| d.traffic)
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
            traffic: t,
        });
    }
    for event in netfast_common::stats::Event::ALL {
        let t = sum_slot(map, netfast_common::stats::event_slot(event))?;
        stats.events.push(EventStats {
            event: event.name(),
            traffic: t,
        });
    }
    for reason in DropReason::ALL {
        let t = sum_slot(map, drop_slot(reason))?;
        stats.drops.push(DropStats {
            reason: reason.name(),
            description: reason.describe(),
            traffic: t,
        });
    }
    Ok(stats)
}

/// Sums the stats maps of a loaded object, with a line per network it knows.
pub fn of(ebpf: &Ebpf) -> Result<Stats> {
    let map = ebpf
        .map(maps::STATS)
        .ok_or(Error::MissingMap(maps::STATS))?;
    let map = PerCpuArray::try_from(map).map_err(|e| Error::map(maps::STATS, e))?;
    let mut stats = read(&map)?;
    let hook_drops = ebpf
        .map(maps::HOOK_DROPS)
        .ok_or(Error::MissingMap(maps::HOOK_DROPS))?;
    let hook_drops =
        PerCpuArray::try_from(hook_drops).map_err(|e| Error::map(maps::HOOK_DROPS, e))?;
    for hook in Hook::ALL {
        for reason in DropReason::ALL {
            let t = sum_slot(
                &hook_drops,
                netfast_common::stats::hook_drop_slot(hook, reason),
            )?;
            if t.packets > 0 {
                stats.hook_drops.push(HookDropStats {
                    hook: hook.name(),
                    reason: reason.name(),
                    traffic: t,
                });
            }
        }
    }
    let nets = ebpf
        .map(maps::NETWORKS)
        .ok_or(Error::MissingMap(maps::NETWORKS))?;
    let nets: LpmTrie<&MapData, u32, NetInfo> =
        LpmTrie::try_from(nets).map_err(|e| Error::map(maps::NETWORKS, e))?;
    let per_net = ebpf
        .map(maps::NET_STATS)
        .ok_or(Error::MissingMap(maps::NET_STATS))?;
    let per_net = PerCpuArray::try_from(per_net).map_err(|e| Error::map(maps::NET_STATS, e))?;
    for item in &nets {
        let (key, info) = item.map_err(|e| Error::map(maps::NETWORKS, e))?;
        let tx = sum_slot(&per_net, u32::from(info.id) * 2)?;
        let rx = sum_slot(&per_net, u32::from(info.id) * 2 + 1)?;
        stats.networks.push(NetworkStats {
            id: info.id,
            name: String::new(),
            subnet: format!("{}/{}", crate::maps::addr_of(key.data()), key.prefix_len()),
            tx_packets: tx.packets,
            tx_bytes: tx.bytes,
            rx_packets: rx.packets,
            rx_bytes: rx.bytes,
        });
    }
    stats.networks.sort_by_key(|n| n.id);
    stats.clock = Some(crate::clock::ClockSource::of(&crate::maps::read_config(
        ebpf,
    )?));
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_is_spelt_inline_in_each_row() {
        let traffic = Traffic {
            packets: 3,
            bytes: 180,
        };
        let row = DropStats {
            reason: "spoofed_source",
            description: "d",
            traffic,
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({
                "reason": "spoofed_source", "description": "d", "packets": 3, "bytes": 180
            })
        );
        let row = HookStats {
            hook: "bridge_ingress",
            traffic,
        };
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"hook":"bridge_ingress","packets":3,"bytes":180}"#
        );
    }
}
