//! The published-port fixture: a host with network `web` (172.18.0.0/24, masqueraded out of
//! the uplink), two containers made by `netfast container create`, and a web server on port
//! 80 of the first.

use crate::{Background, Netfast, Topology, clients::wait_listening, in_netns};

/// The uplink address and port the tests publish the web server on.
pub const UPLINK_URL: &str = "http://198.51.100.1:8080/";

/// Fields drop in order: the server, then `netfast down`, then the namespaces.
pub struct Web {
    pub server: Background,
    pub nf: Netfast,
    pub topo: Topology,
    /// Namespace of container 0 (`<host>c0`), which runs the web server.
    pub c0: String,
    /// Namespace of container 1 (`<host>c1`).
    pub c1: String,
}

impl Web {
    /// The outside host routes the containers' subnet through the host (a neighbour that
    /// tries to reach a container's address directly).
    pub fn route_subnet_from_outside(&self) {
        self.topo.outside.exec_ok(&[
            "ip",
            "route",
            "add",
            "172.18.0.0/24",
            "via",
            &crate::topology::UPLINK_ADDR.to_string(),
        ]);
    }

    /// The outside fetches container 0's page at the container's own address (after
    /// [`Web::route_subnet_from_outside`]): netfast drops such direct access, so curl does
    /// not connect.
    pub fn assert_direct_access_dropped(&self) {
        let url = format!("http://{}/", crate::topology::container_addr(0));
        assert_eq!(
            crate::clients::curl(self.topo.outside.name(), &url, &[]),
            "000",
            "direct access to {url} from outside"
        );
    }
}

/// Builds the fixture on the eBPF dataplane; `settings` go to `netfast config` before the
/// network is created.
pub fn web(settings: &[&str]) -> Web {
    web_on("ebpf", settings)
}

/// Builds the fixture with network `web` on `backend` (ebpf, nftables or iptables).
pub fn web_on(backend: &str, settings: &[&str]) -> Web {
    let topo = Topology::builder().without_bridge().build();
    let nf = Netfast::new(&topo.host);
    // A small table unless the test sizes it itself.
    let mut config = vec!["config"];
    if !settings.contains(&"--ct-max") {
        config.extend(["--ct-max", "4096"]);
    }
    config.extend_from_slice(settings);
    nf.ok(&config);
    nf.create_network("web", "172.18.0.0/24", &["--backend", backend]);
    let (c0, c1) = (
        format!("{}c0", topo.host.name()),
        format!("{}c1", topo.host.name()),
    );
    nf.ok(&["container", "create", &c0, "--network", "web"]);
    nf.ok(&["container", "create", &c1, "--network", "web"]);
    let server = Background::spawn(&in_netns(&c0, &["python3", "-m", "http.server", "80"]));
    wait_listening(&c0, "tcp", 80, "http.server");
    Web {
        server,
        nf,
        topo,
        c0,
        c1,
    }
}
