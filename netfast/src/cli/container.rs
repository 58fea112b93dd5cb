//! `netfast container create|rm|ls`.

use std::net::Ipv4Addr;

use clap::Subcommand;
use netfast::loader::{Loader, model::ContainerSpec};

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
    },
    /// Remove a container: its namespace and its veth pair.
    Rm { name: String },
    /// List containers, with what the kernel lacks of them ("drift"), and what an interrupted
    /// command left that the state does not know.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    match command {
        Command::Create { name, network, ip } => {
            super::print_lines(loader.container_create(&ContainerSpec { name, network, ip })?);
        }
        Command::Rm { name } => super::print_lines(loader.container_rm(&name)?),
        Command::Ls { json } => {
            let cts = loader.container_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cts)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<14} {:<15} {:<12} DRIFT",
                "NAME", "NETWORK", "IP", "VETH"
            );
            for c in cts {
                println!(
                    "{:<20} {:<14} {:<15} {:<12} {}",
                    c.name,
                    c.network,
                    c.ip.to_string(),
                    c.veth,
                    if c.drift.is_empty() {
                        "-".into()
                    } else {
                        c.drift.join("; ")
                    }
                );
            }
        }
    }
    Ok(())
}
