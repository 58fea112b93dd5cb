//! `netfast docker-plugin`: serves Docker's remote network driver protocol.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct PluginArgs {
    /// The unix socket to serve. Docker finds plugins by their sockets in
    /// /run/docker/plugins, and names the driver after the file: netfast.sock is
    /// `docker network create -d netfast`.
    #[arg(long, value_name = "PATH", default_value = netfast::docker::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: PluginArgs) -> anyhow::Result<()> {
    netfast::docker::serve(&args.socket)?;
    Ok(())
}
