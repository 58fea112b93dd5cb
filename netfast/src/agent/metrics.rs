//! `/metrics`: the dataplane's counters, the fallback backends' rule counters, how full the
//! tables are, and what the agent did, in the Prometheus text format (prometheus-client's
//! encoder). Counters are read from the maps at each scrape; occupancy is what the agent's
//! last reclaiming pass found (a scan of the conntrack table is too costly for each scrape).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{reclaim::Occupancy, reclaim::Reclaimed, reconcile::REPAIR_KINDS};
use crate::{
    backend, dataplane::Dataplane, error::Result, host::Host, loader::state::Locked, stats::Stats,
};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the agent has done since it started.
#[derive(Clone, Debug, Default)]
pub struct AgentCounters {
    pub passes: u64,
    pub errors: u64,
    pub repairs: BTreeMap<&'static str, u64>,
    pub flows_ended: u64,
    pub reclaimed: Reclaimed,
    /// The last reclaiming pass's findings (none before the first).
    pub occupancy: Option<Occupancy>,
    /// Problems the last pass could not repair, per network.
    pub drift: BTreeMap<String, u64>,
}

pub type Shared = Arc<Mutex<AgentCounters>>;

type Labels = Vec<(&'static str, String)>;

/// One metric family, ready to encode.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            unit: None,
            kind: MetricType::Counter,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            kind: MetricType::Gauge,
            ..Family::counter(name, help)
        }
    }

    fn bytes(mut self) -> Family {
        self.unit = Some(Unit::Bytes);
        self
    }

    fn add(&mut self, labels: &[(&'static str, &str)], v: u64) {
        self.samples.push((
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            v,
        ));
    }

    /// This family with one sample more.
    fn with(mut self, labels: &[(&'static str, &str)], v: u64) -> Family {
        self.add(labels, v);
        self
    }
}

/// Two counter families of the same things, with the same labels: packets, and bytes.
struct Traffic {
    packets: Family,
    bytes: Family,
}

impl Traffic {
    /// `name`: the packets' family; the bytes' is `bytes_name`, with the unit.
    fn new(
        name: &'static str,
        help: &'static str,
        bytes_name: &'static str,
        bytes_help: &'static str,
    ) -> Traffic {
        Traffic {
            packets: Family::counter(name, help),
            bytes: Family::counter(bytes_name, bytes_help).bytes(),
        }
    }

    fn add(&mut self, labels: &[(&'static str, &str)], packets: u64, bytes: u64) {
        self.packets.add(labels, packets);
        self.bytes.add(labels, bytes);
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(
        &self,
        mut encoder: DescriptorEncoder<'_>,
    ) -> std::result::Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut metric = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), f.kind)?;
            for (labels, v) in &f.samples {
                let sample = metric.encode_family(labels)?;
                match f.kind {
                    MetricType::Counter => ConstCounter::new(*v).encode(sample)?,
                    _ => ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// The metrics of `host` now, in the Prometheus text format.
pub fn render(host: &Host, agent: &Shared) -> Result<String> {
    // A shared lock: no `down` removes the dataplane while it is read.
    let reading = Locked::acquire(host, false)?;
    let state = reading.state.clone();
    let ebpf = match Dataplane::open_existing(host)? {
        Some(dp) => Some(dp.stats()?),
        None => None,
    };
    let mut fallback = Stats::default();
    backend::add_fallback_counters(&state, &mut fallback)?;
    drop(reading);
    let counters = agent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let name_of = |id: u16| {
        state
            .networks
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| format!("#{id}"), |n| n.name.clone())
    };
    let mut families = Vec::new();

    let mut hooks = Traffic::new(
        "netfast_hook_packets",
        "Packets each eBPF hook saw (TC on a bridge or an uplink, one direction).",
        "netfast_hook",
        "Bytes each eBPF hook saw.",
    );
    let mut drops = Traffic::new(
        "netfast_dropped_packets",
        "Packets dropped, by reason and hook (hook \"netfilter\": the nftables/iptables \
         backends' rules).",
        "netfast_dropped",
        "Bytes dropped, by reason and hook.",
    );
    let mut fast_forwarded = Family::counter(
        "netfast_fast_path_forwarded_packets",
        "Packets the eBPF fast path forwarded itself, past the host's routing and netfilter.",
    );
    let mut fast_fallback = Family::counter(
        "netfast_fast_path_fallback_packets",
        "Packets the eBPF fast path left to the host's stack (no route or neighbour, TTL, MTU).",
    );
    let mut events = Family::counter(
        "netfast_datapath_events",
        "Other events the eBPF programs count (ct_repaired, inbound_opened, monitor_suppressed, …).",
    );
    if let Some(s) = &ebpf {
        for h in &s.hooks {
            hooks.add(&[("hook", h.hook)], h.traffic.packets, h.traffic.bytes);
        }
        for d in &s.hook_drops {
            drops.add(
                &[("hook", d.hook), ("reason", d.reason)],
                d.traffic.packets,
                d.traffic.bytes,
            );
        }
        for e in &s.events {
            match e.event {
                "fast_path" => fast_forwarded.add(&[], e.traffic.packets),
                "fast_path_fallback" => fast_fallback.add(&[], e.traffic.packets),
                other => events.add(&[("event", other)], e.traffic.packets),
            }
        }
    }
    for d in fallback.drops.iter().filter(|d| d.traffic.packets > 0) {
        drops.add(
            &[("hook", "netfilter"), ("reason", d.reason)],
            d.traffic.packets,
            d.traffic.bytes,
        );
    }
    let mut nets = Traffic::new(
        "netfast_network_packets",
        "Packets of each network: tx leaving its containers, rx coming to them.",
        "netfast_network",
        "Bytes of each network: tx leaving its containers, rx coming to them.",
    );
    let of_networks = ebpf
        .iter()
        .flat_map(|s| s.networks.iter())
        .chain(fallback.networks.iter());
    for n in of_networks {
        let name = name_of(n.id);
        for (dir, p, b) in [
            ("tx", n.tx_packets, n.tx_bytes),
            ("rx", n.rx_packets, n.rx_bytes),
        ] {
            nets.add(&[("network", &name), ("direction", dir)], p, b);
        }
    }
    families.extend([
        hooks.packets,
        hooks.bytes,
        drops.packets,
        drops.bytes,
        nets.packets,
        nets.bytes,
        fast_forwarded,
        fast_fallback,
        events,
    ]);

    if let Some(o) = &counters.occupancy {
        let mut entries = Family::gauge(
            "netfast_conntrack_entries",
            "Live conntrack entries (two per flow) of the eBPF dataplane, by table (main; \
             inbound: flows opened from outside, not answered yet), at the agent's last pass.",
        );
        let mut capacity = Family::gauge(
            "netfast_conntrack_capacity_entries",
            "Entries each conntrack table holds (twice the flows).",
        );
        for (table, n, cap) in [
            ("main", o.main_entries, o.main_capacity),
            ("inbound", o.inbound_entries, o.inbound_capacity),
        ] {
            entries.add(&[("table", table)], n);
            capacity.add(&[("table", table)], cap);
        }
        let mut mappings = Family::gauge(
            "netfast_nat_mappings",
            "Live NAT bindings (internal endpoint to external port) and claims (external \
             port to its owner).",
        );
        mappings.add(&[("kind", "binding")], o.bindings);
        mappings.add(&[("kind", "claim")], o.claims);
        let mapping_capacity = Family::gauge(
            "netfast_nat_capacity_mappings",
            "Bindings, and claims, the NAT tables hold.",
        )
        .with(&[], o.nat_capacity);
        let mut ports = Family::gauge(
            "netfast_nat_ports_in_use",
            "External ports (ICMP: identifiers) held by a live NAT mapping, per uplink address \
             and protocol.",
        );
        for ((addr, proto), n) in &o.ports {
            let proto = match *proto {
                1 => "icmp".to_owned(),
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                p => p.to_string(),
            };
            ports.add(&[("address", &addr.to_string()), ("protocol", &proto)], *n);
        }
        families.extend([entries, capacity, mappings, mapping_capacity, ports]);
    }

    let mut repairs = Family::counter(
        "netfast_agent_repairs",
        "What the agent repaired, by kind (attach: programs attached again; rekey: \
         ifindex-keyed maps; masquerade_address; host_addresses; …).",
    );
    for kind in REPAIR_KINDS {
        repairs.add(
            &[("kind", kind)],
            counters.repairs.get(kind).copied().unwrap_or(0),
        );
    }
    families.push(repairs);
    let mut reclaimed = Family::counter(
        "netfast_agent_reclaimed_entries",
        "Expired entries the agent removed from the eBPF dataplane's maps.",
    );
    reclaimed.add(&[("map", "conntrack")], counters.reclaimed.entries);
    reclaimed.add(&[("map", "nat_binding")], counters.reclaimed.bindings);
    reclaimed.add(&[("map", "nat_claim")], counters.reclaimed.claims);
    families.push(reclaimed);
    // The agent's own totals, one sample each.
    for (name, help, total) in [
        (
            "netfast_agent_ended_flows",
            "Flows the agent ended because the address they were masqueraded to left the uplink.",
            counters.flows_ended,
        ),
        (
            "netfast_agent_passes",
            "Reconciling passes the agent made (on netlink events and periodically).",
            counters.passes,
        ),
        (
            "netfast_agent_errors",
            "Passes that failed (the agent logs why, and tries again).",
            counters.errors,
        ),
    ] {
        families.push(Family::counter(name, help).with(&[], total));
    }
    let mut drift = Family::gauge(
        "netfast_agent_drift_problems",
        "Problems the agent cannot repair, per network (see its log, or `netfast network ls`).",
    );
    for n in &state.networks {
        drift.add(
            &[("network", &n.name)],
            counters.drift.get(&n.name).copied().unwrap_or(0),
        );
    }
    families.push(drift);

    families.retain(|f| !f.samples.is_empty());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .map_err(|_| crate::error::Error::Settings("encoding the metrics failed".into()))?;
    Ok(out)
}
