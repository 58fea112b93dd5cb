//! `netfast container create|rm|ls`.

use std::net::Ipv4Addr;

use clap::Subcommand;
use netfast::loader::{Loader, model::ContainerSpec, status::ContainerStatus};

use super::{Changes, Listing, Removal, drift_column};

#[derive(Subcommand)]
pub enum Command {
    /// Create a container: a named network namespace (see `ip netns`) with `eth0` on the
    /// network's bridge, an address, `lo` up and a default route via the gateway.
    Create {
        name: String,
        #[arg(long)]
        network: String,
        /// Its address [default: the next free one of the subnet].
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        #[command(flatten)]
        out: Changes,
    },
    /// Remove a container: its namespace and its veth pair.
    Rm(Removal),
    /// List containers, with their namespaces, what the kernel lacks of them ("drift"), and
    /// what an interrupted command left that the state does not know.
    ///
    /// A container Docker made through `netfast docker-plugin` is `docker-<endpoint ID>`,
    /// whose namespace is Docker's sandbox (`docker inspect -f '{{.NetworkSettings.SandboxKey}}'`).
    Ls(Listing),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    match command {
        Command::Create {
            name,
            network,
            ip,
            out,
        } => out.print(&loader.container_create(&ContainerSpec { name, network, ip })?)?,
        Command::Rm(rm) => rm.out.print(&loader.container_rm(&rm.name)?)?,
        Command::Ls(ls) => ls.print(&loader.container_status()?, print_table)?,
    }
    Ok(())
}

fn print_table(cts: &[ContainerStatus]) {
    println!(
        "{:<20} {:<14} {:<15} {:<12} {:<24} DRIFT",
        "NAME", "NETWORK", "IP", "VETH", "NETNS"
    );
    for c in cts {
        // A Docker endpoint's namespace is Docker's sandbox, while it runs.
        let netns = match (&c.netns, &c.docker_endpoint) {
            (Some(ns), _) => ns.clone(),
            (None, Some(_)) => "(docker, not running)".into(),
            (None, None) => "-".into(),
        };
        println!(
            "{:<20} {:<14} {:<15} {:<12} {:<24} {}",
            c.name,
            c.network,
            c.ip.to_string(),
            c.veth,
            netns,
            drift_column(&c.drift)
        );
    }
}
