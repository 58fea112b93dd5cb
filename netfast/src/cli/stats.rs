//! `netfast stats`: packets and bytes per hook and per network, and a counter per drop reason.

use netfast::{
    Dataplane,
    host::Host,
    loader::{Loader, model::Backend},
    stats::Stats,
};

pub fn run(json: bool) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    let host: &Host = &loader.host;
    // Held while the dataplane is read: no `down` removes it meanwhile.
    let reading = loader.read()?;
    let state = reading.state.clone();
    let mut stats = match Dataplane::open_existing(host)? {
        Some(dp) => dp.stats()?,
        None if state.networks.iter().any(|n| n.backend != Backend::Ebpf) => Stats::default(),
        None => anyhow::bail!(
            "no dataplane in {} (create a network first)",
            host.describe()
        ),
    };
    // Networks on the nftables/iptables backends count their traffic and drops in netfast's
    // rules.
    netfast::backend::add_fallback_counters(&state, &mut stats)?;
    for n in &mut stats.networks {
        if let Some(net) = state.networks.iter().find(|s| s.id == n.id) {
            n.name.clone_from(&net.name);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    if stats.hooks.is_empty() {
        println!("(no eBPF dataplane here: the per-hook and fast-path counters are its own)");
    } else {
        println!("{:<18} {:>12} {:>14}", "HOOK", "PACKETS", "BYTES");
        for h in &stats.hooks {
            println!(
                "{:<18} {:>12} {:>14}",
                h.hook, h.traffic.packets, h.traffic.bytes
            );
        }
        for e in &stats.events {
            println!(
                "{:<18} {:>12} {:>14}",
                e.event, e.traffic.packets, e.traffic.bytes
            );
        }
        if let Some(clock) = &stats.clock {
            println!("clock: {}", clock.describe());
        }
    }
    println!();
    println!(
        "{:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
        "NETWORK", "SUBNET", "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES"
    );
    for n in &stats.networks {
        let name = if n.name.is_empty() {
            format!("#{}", n.id)
        } else {
            n.name.clone()
        };
        println!(
            "{:<16} {:<18} {:>10} {:>12} {:>10} {:>12}",
            name, n.subnet, n.tx_packets, n.tx_bytes, n.rx_packets, n.rx_bytes
        );
    }
    println!();
    println!("{:<24} {:>10}  WHY", "DROP", "PACKETS");
    for d in &stats.drops {
        println!(
            "{:<24} {:>10}  {}",
            d.reason, d.traffic.packets, d.description
        );
    }
    Ok(())
}
