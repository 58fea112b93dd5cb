//! The `netfast` command line.

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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(name) = &cli.netns {
        // Before any other thread starts: threads inherit the namespace of their creator.
        netfast::netns::enter(name).with_context(|| format!("--netns {name}"))?;
    }
    match cli.command {
        Command::Object => object(),
    }
}

fn object() -> anyhow::Result<()> {
    let obj =
        aya_obj::Object::parse(netfast::EBPF_OBJECT).context("parsing the embedded object")?;
    println!("eBPF object: {} bytes", netfast::EBPF_OBJECT.len());
    let mut programs: Vec<_> = obj.programs.keys().collect();
    programs.sort();
    for p in programs {
        println!("program {p}");
    }
    let mut maps: Vec<_> = obj.maps.iter().collect();
    maps.sort_by_key(|(name, _)| *name);
    for (name, map) in maps {
        println!(
            "map {name}: type {} key {} value {} max_entries {}",
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries()
        );
    }
    Ok(())
}
