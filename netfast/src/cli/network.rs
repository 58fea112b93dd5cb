//! `netfast network create|rm|ls`.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use netfast::loader::{
    Loader,
    model::{BackendChoice, NetworkSpec},
    status::NetworkStatus,
    validate,
};

use super::{Changes, Listing, Removal, drift_column};

#[derive(Subcommand)]
pub enum Command {
    /// Create a network: a bridge with the gateway address, netfast's programs on the bridge
    /// and the uplink (or, with the nftables/iptables backend, netfast's own rules), and
    /// masquerade of the subnet behind the uplink's address.
    Create(Create),
    /// Remove a network (it must have no containers); an adopted bridge is left in place.
    Rm(Removal),
    /// List networks, with what the kernel lacks of them ("drift"), and what an interrupted
    /// command left that the state does not know (networks it was creating, links marked as
    /// netfast's).
    Ls(Listing),
}

#[derive(Args)]
pub struct Create {
    name: String,
    /// The containers' subnet, e.g. 172.18.0.0/24.
    #[arg(long, value_parser = parse_subnet)]
    subnet: Ipv4Net,
    /// The bridge's address and the containers' default route [default: the first
    /// address of the subnet; with --adopt, the bridge's address in the subnet].
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// The bridge's name [default: nf-NAME].
    #[arg(long, value_name = "IFNAME")]
    bridge: Option<String>,
    /// The interface towards the outside; masquerade uses its address.
    #[arg(long, value_name = "IFNAME")]
    uplink: String,
    /// Take over an existing bridge (and the veths already on it) without creating or
    /// deleting it. On the nftables/iptables backends its ports' hairpin mode and its
    /// route_localnet are turned on, and back when netfast lets go of it.
    #[arg(long)]
    adopt: bool,
    /// Route the subnet without translating it.
    #[arg(long)]
    no_masquerade: bool,
    /// What serves the network: the eBPF dataplane, or netfast's own nftables table or
    /// iptables chains for hosts where eBPF cannot be used. `auto` takes the first of
    /// ebpf, nftables, iptables that works here (`netfast doctor` says why one does not).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    #[command(flatten)]
    out: Changes,
}

fn parse_subnet(s: &str) -> Result<Ipv4Net, String> {
    validate::subnet(s).map_err(|e| e.0)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    match command {
        Command::Create(c) => {
            let spec = NetworkSpec {
                name: c.name,
                subnet: c.subnet,
                gateway: c.gateway,
                bridge: c.bridge,
                uplink: c.uplink,
                adopt: c.adopt,
                masquerade: !c.no_masquerade,
                backend: c.backend,
            };
            c.out.print(&loader.network_create(&spec)?)?;
        }
        Command::Rm(rm) => rm.out.print(&loader.network_rm(&rm.name)?)?,
        Command::Ls(ls) => {
            let nets = loader.network_status()?;
            ls.print(&nets, |nets| print_table(&loader, nets))?;
        }
    }
    Ok(())
}

fn print_table(loader: &Loader, nets: &[NetworkStatus]) {
    println!("host: {} (key {})", loader.host.describe(), loader.host.key);
    println!(
        "{:<14} {:<4} {:<18} {:<15} {:<15} {:<10} {:<6} {:<9} {:<5} DRIFT",
        "NAME", "ID", "SUBNET", "GATEWAY", "BRIDGE", "UPLINK", "MASQ", "BACKEND", "CTRS"
    );
    for row in nets {
        let n = &row.network;
        let bridge = if n.adopted {
            format!("{} (adopted)", n.bridge)
        } else {
            n.bridge.clone()
        };
        println!(
            "{:<14} {:<4} {:<18} {:<15} {:<15} {:<10} {:<6} {:<9} {:<5} {}",
            n.name,
            n.id,
            n.subnet.to_string(),
            n.gateway.to_string(),
            bridge,
            n.uplink,
            if n.masquerade { "yes" } else { "no" },
            n.backend.name(),
            row.containers,
            drift_column(&row.drift)
        );
    }
}
