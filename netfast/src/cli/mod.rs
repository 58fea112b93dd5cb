//! Argument parsing and dispatch. anyhow lives here, at the binary's edge.

mod agent;
mod apply;
mod config;
mod conntrack;
mod container;
mod docker_plugin;
mod doctor;
mod logger;
mod monitor;
mod network;
mod object;
mod publish;
mod stats;
mod upgrade;

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

    /// Say more on stderr: -v adds debug messages, -vv trace. Without it, NETFAST_LOG
    /// (off, error, warn, info, debug, trace) sets the level [default: info: warnings, and
    /// notes of what a command did besides its output].
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bridge networks: create, remove, list.
    #[command(subcommand)]
    Network(network::Command),
    /// Containers (named network namespaces on a network): create, remove, list.
    #[command(subcommand)]
    Container(container::Command),
    /// Converge the host to a TOML file of [dataplane], [[network]], [[container]] and
    /// [[publish]] tables.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: std::path::PathBuf,
        #[command(flatten)]
        out: Changes,
    },
    /// Publish a container's port on the host (`docker run -p` syntax); `publish ls` lists.
    Publish(publish::PublishArgs),
    /// Stop publishing: NET and the SPEC it was published with.
    Unpublish {
        network: String,
        spec: String,
        #[command(flatten)]
        out: Changes,
    },
    /// Remove everything netfast created in this host namespace, and nothing else: what the
    /// state knows, what an interrupted command left, and every link marked as netfast's.
    Down {
        #[command(flatten)]
        out: Changes,
    },
    /// Show or change the host-wide dataplane settings (timeouts, port range, filtering).
    ///
    /// The timeouts also reach networks on the nftables/iptables backends, as conntrack
    /// timeout policies (nftables: TCP and UDP); the other settings are the eBPF dataplane's.
    Config(config::ConfigArgs),
    /// The flows the dataplane tracks (like `conntrack -L/-E/-C/-D/-F`, with its filters);
    /// for networks on the nftables/iptables backends, the kernel's conntrack entries of their
    /// subnets.
    #[command(subcommand)]
    Conntrack(conntrack::Command),
    /// Packets and bytes per hook and per network, and a counter per drop reason.
    ///
    /// A network on the eBPF dataplane counts the packets it translated each way (tx: from
    /// its containers, rx: to them); one on the nftables/iptables backends, the packets the
    /// kernel forwarded out of and into its bridge. Those backends count their drops under
    /// the eBPF dataplane's reasons; per-hook and fast-path counters are the dataplane's.
    Stats {
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Diagnose this host: eBPF support, forwarding, netfilter modules, and rules that meet
    /// netfast's traffic (FORWARD DROP, Docker, double NAT), a line per check.
    ///
    /// Each check is PASS, WARN or FAIL, with what was found and the exact fix. Nothing
    /// changes unless --fix is given. Root is needed to read everything; what could not be
    /// read says so.
    #[command(after_help = "Exit status: 0 unless a check FAILs, then 1.")]
    Doctor {
        /// Print the checks as a JSON array.
        #[arg(long)]
        json: bool,
        /// Apply the safe fixes (mount bpffs, load modules, set sysctls; in the machine's
        /// root network namespace also /etc/modules-load.d/netfast.conf and
        /// /etc/sysctl.d/90-netfast.conf so that they last), then check again. Rules,
        /// policies and other programs' tables are left for you to change.
        #[arg(long)]
        fix: bool,
    },
    /// Run on, keeping the dataplane and the fallback rules true to the host as it changes,
    /// and serve Prometheus metrics.
    ///
    /// One agent per host namespace (a second is refused). It follows rtnetlink: ports
    /// published on every address follow the host's addresses; masquerade follows the
    /// uplink's address (flows of an address that is gone end, as with MASQUERADE); a bridge
    /// or uplink deleted and made again gets the programs back and the maps re-keyed; the
    /// nftables/iptables rules are written again when they go missing. What it cannot
    /// repair it logs as drift; what a netfast command killed half-way left, it completes.
    /// It removes expired conntrack entries and NAT mappings (reclaiming what the LRU would
    /// only push out under pressure). Restarting it loses no flow: everything it keeps is the
    /// kernel's and the state's. It stops by itself when `netfast upgrade` installed another
    /// build's programs. `netfast doctor` says when none runs.
    #[command(
        after_help = "Metrics (--metrics): per-hook packets and bytes, per-network tx/rx, \
                      drops by reason and hook, conntrack entries against capacity, external \
                      ports in use per uplink address, fast-path forwards and fallbacks, what \
                      the agent repaired and reclaimed: `netfast_..._total` counters and \
                      gauges, in the Prometheus text format."
    )]
    Agent(agent::AgentArgs),
    /// Live events of the eBPF dataplane: dropped packets (reason, hook, addresses) and
    /// flows opening and ending (both, unless one is asked for); with `--log`, the
    /// programs' debug records.
    Monitor(monitor::MonitorArgs),
    /// Serve Docker's network driver protocol, so that `docker network create -d netfast`
    /// makes netfast networks and `docker run -p` netfast publications.
    ///
    /// Runs until SIGTERM or SIGINT; what it made outlives it (the dataplane keeps running
    /// and a plugin started later takes over). Docker's networks, endpoints and ports are
    /// netfast's own records: `network ls`, `container ls` (an endpoint is container
    /// `docker-<first 12 characters of its ID>`, whose namespace is Docker's), `publish ls`, `conntrack` and
    /// `stats` show them. Network options: `docker network create -d netfast -o
    /// uplink=IFNAME [-o backend=auto|ebpf|nftables|iptables] [-o masquerade=false] [-o
    /// name=NAME] [-o bridge=IFNAME] --subnet CIDR NAME`. dockerd needs "iptables": false.
    DockerPlugin(docker_plugin::PluginArgs),
    /// Replace the running eBPF programs with this netfast's, in place, keeping every map,
    /// flow and published port.
    ///
    /// Every link (TCX on the bridges and uplinks, the cgroup socket hooks) switches to the
    /// new programs atomically; maps whose layout changed are copied into the new layout. A
    /// killed upgrade is finished by the next one; a downgrade across a layout change is
    /// refused. Other commands refuse to attach programs while another build's run.
    Upgrade {
        /// Say what would change, change nothing.
        #[arg(long)]
        check: bool,
        /// Print the report as JSON.
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
    logger::init(cli.verbose)?;
    if let Some(name) = &cli.netns {
        // Before any other thread starts: threads inherit the namespace of their creator.
        netfast::netns::enter(name).with_context(|| format!("--netns {name}"))?;
    }
    match cli.command {
        Command::Network(c) => network::run(c),
        Command::Container(c) => container::run(c),
        Command::Apply { file, out } => apply::apply(file, out),
        Command::Publish(args) => publish::run(args),
        Command::Unpublish { network, spec, out } => publish::unpublish(network, spec, out),
        Command::Down { out } => apply::down(out),
        Command::Config(args) => config::run(args),
        Command::Conntrack(c) => conntrack::run(c),
        Command::Stats { json } => stats::run(json),
        Command::Doctor { json, fix } => doctor::run(json, fix),
        Command::Upgrade { check, json } => upgrade::run(check, json),
        Command::Object => object::run(),
        Command::DockerPlugin(args) => docker_plugin::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Monitor(args) => monitor::run(args),
    }
}

/// How a command that changes something prints what it changed.
#[derive(clap::Args, Clone, Copy)]
struct Changes {
    /// Print what changed as a JSON array of objects, each with its kind under `change`,
    /// instead of a line per change.
    #[arg(long)]
    json: bool,
}

impl Changes {
    fn print(self, changes: &[netfast::loader::Change]) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(changes)?);
        } else {
            for c in changes {
                println!("{c}");
            }
        }
        Ok(())
    }
}

// `rm NAME`: what to remove, and how to print what changed.
#[derive(clap::Args)]
struct Removal {
    name: String,
    #[command(flatten)]
    out: Changes,
}

// `ls`: a table, or the rows as JSON.
#[derive(clap::Args)]
struct Listing {
    #[arg(long)]
    json: bool,
}

impl Listing {
    /// Prints `rows` as a JSON array with `--json`, else as `table` prints them.
    fn print<T: serde::Serialize>(
        self,
        rows: &[T],
        table: impl FnOnce(&[T]),
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows)?);
        } else {
            table(rows);
        }
        Ok(())
    }
}

/// A table's DRIFT column: what the kernel lacks of a row, `-` for nothing.
fn drift_column(drift: &[String]) -> String {
    if drift.is_empty() {
        "-".into()
    } else {
        drift.join("; ")
    }
}
