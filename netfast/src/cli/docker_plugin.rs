//! `netfast docker-plugin`: serves Docker's remote network driver protocol.

use std::path::{Path, PathBuf};

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
    /// Do not ask dockerd for its networks: a network Docker has forgotten stays until
    /// `netfast network rm` removes it.
    #[arg(long, conflicts_with = "docker_socket")]
    keep_unlisted_networks: bool,
}

impl PluginArgs {
    /// The dockerd to ask for its networks, if any. The default one is the daemon that
    /// finds plugins in the default directory; beside another plugin socket it may be
    /// another daemon's, whose list would delete networks this one still has.
    fn dockerd(&self) -> Option<PathBuf> {
        if self.keep_unlisted_networks {
            return None;
        }
        self.docker_socket.clone().or_else(|| {
            (self.socket == Path::new(netfast::docker::DEFAULT_SOCKET))
                .then(|| PathBuf::from(netfast::docker::dockerd::DEFAULT_API_SOCKET))
        })
    }
}

pub fn run(args: PluginArgs) -> anyhow::Result<()> {
    netfast::docker::serve(&args.socket, args.dockerd().as_deref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::PluginArgs;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: PluginArgs,
    }

    fn dockerd(argv: &[&str]) -> Option<String> {
        let line = Line::try_parse_from([&["docker-plugin"], argv].concat()).expect("parses");
        line.args.dockerd().map(|p| p.display().to_string())
    }

    #[test]
    fn dockerd_is_asked_where_it_is_known_to_be_the_plugins() {
        assert_eq!(dockerd(&[]).as_deref(), Some("/var/run/docker.sock"));
        assert_eq!(dockerd(&["--socket", "/tmp/p.sock"]), None);
        assert_eq!(
            dockerd(&["--socket", "/tmp/p.sock", "--docker-socket", "/tmp/d.sock"]).as_deref(),
            Some("/tmp/d.sock")
        );
        assert_eq!(dockerd(&["--keep-unlisted-networks"]), None);
        assert!(
            Line::try_parse_from([
                "docker-plugin",
                "--keep-unlisted-networks",
                "--docker-socket",
                "/tmp/d.sock"
            ])
            .is_err(),
            "asking dockerd and not asking it at once"
        );
    }
}
