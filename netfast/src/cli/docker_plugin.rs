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
    /// dockerd's API socket. At its start the plugin asks dockerd (once it answers) which of
    /// the Docker networks netfast serves it still has, and deletes the others: Docker
    /// forgets a network whose DeleteNetwork failed, and never asks again. Default:
    /// /var/run/docker.sock with the default --socket; with another --socket, dockerd is not
    /// asked unless this names its socket.
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
}

pub fn run(args: PluginArgs) -> anyhow::Result<()> {
    // The default dockerd is the one that finds plugins in the default directory; beside
    // another plugin socket it may be another daemon's, whose list would delete networks
    // this one still has.
    let dockerd = args.docker_socket.or_else(|| {
        (args.socket == std::path::Path::new(netfast::docker::DEFAULT_SOCKET))
            .then(|| PathBuf::from(netfast::docker::dockerd::DEFAULT_API_SOCKET))
    });
    netfast::docker::serve(&args.socket, dockerd.as_deref())?;
    Ok(())
}
