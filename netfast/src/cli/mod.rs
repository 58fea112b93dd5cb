//! Argument parsing and dispatch. anyhow lives here, at the binary's edge.

mod conntrack;
mod object;
mod stats;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netfast",
    version,
    about = "eBPF NAT and forwarding dataplane for Linux bridge networks"
)]
struct Cli {
    /// Treat this network namespace (from `ip netns list`) as the host.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The flows the dataplane tracks (like `conntrack -L/-E/-F`).
    #[command(subcommand)]
    Conntrack(conntrack::Command),
    /// Packets and bytes per hook and per network, and a counter per drop reason.
    Stats {
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// List the programs and maps of the embedded eBPF object.
    Object,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netfast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(name) = &cli.netns {
        // Before any other thread starts: threads inherit the namespace of their creator.
        netfast::netns::enter(name).with_context(|| format!("--netns {name}"))?;
    }
    match cli.command {
        Command::Conntrack(c) => conntrack::run(c),
        Command::Stats { json } => stats::run(json),
        Command::Object => object::run(),
    }
}
