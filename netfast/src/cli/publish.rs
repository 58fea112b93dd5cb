//! `netfast publish NET SPEC [--allow CIDR]…`, `netfast publish ls`, `netfast unpublish`.

use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use netfast::loader::Loader;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PublishArgs {
    #[command(subcommand)]
    list: Option<List>,
    /// The network of the container.
    #[arg(required = true)]
    network: Option<String>,
    /// `[HOST_IP:]HOST_PORT[-END]:CONTAINER[:PORT[-END]][/tcp|/udp]`, as `docker run -p`
    /// takes it; CONTAINER is a container's name or address, PORT defaults to HOST_PORT,
    /// ranges map one to one, the protocol defaults to tcp, no HOST_IP means every address
    /// of the host (including 127.0.0.1 for its own clients).
    #[arg(required = true, value_name = "SPEC")]
    spec: Option<String>,
    /// Only clients in CIDR may connect (repeatable); others are dropped and counted.
    /// Clients from the network and from containers are checked; the host's own processes
    /// (through 127.0.0.1 or a host address) are not, as with Docker's DOCKER-USER chain.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<Ipv4Net>,
    #[command(flatten)]
    out: super::Changes,
}

#[derive(Subcommand)]
enum List {
    /// List published ports.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    if let Some(List::Ls { json }) = args.list {
        let pubs = loader.publications()?;
        if json {
            println!("{}", serde_json::to_string_pretty(&pubs)?);
            return Ok(());
        }
        println!("{:<12} {:<36} {:<22} ALLOW", "NETWORK", "SPEC", "TARGET");
        for p in pubs {
            let allow = if p.allow.is_empty() {
                "anyone".to_owned()
            } else {
                p.allow
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let target = format!("{}:{}", p.container_ip, p.container_ports);
            println!("{:<12} {:<36} {:<22} {allow}", p.network, p.spec, target);
        }
        return Ok(());
    }
    let (Some(network), Some(spec)) = (args.network, args.spec) else {
        anyhow::bail!("publish needs a network and a spec, e.g. `netfast publish web 8080:ct1:80`");
    };
    args.out
        .print(&loader.publish(&network, &spec, &args.allow)?)
}

pub fn unpublish(network: String, spec: String, out: super::Changes) -> anyhow::Result<()> {
    out.print(&Loader::new()?.unpublish(&network, &spec)?)
}
