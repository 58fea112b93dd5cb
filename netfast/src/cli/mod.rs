//! Argument parsing and dispatch. anyhow lives here, at the binary's edge.

mod object;

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
        Command::Object => object::run(),
    }
}
