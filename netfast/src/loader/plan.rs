//! `netfast apply`: the changes that take the host from its state to a declared one.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    ipam,
    model::{ContainerSpec, DataplaneConfig, NetworkSpec, State},
    publish::{self, PublishDecl, PublishSpec},
    validate::{self, Invalid},
};

/// An apply file: `[dataplane]`, `[[network]]` and `[[container]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyFile {
    /// Settings for the host's dataplane; the defaults when absent.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkSpec>,
    #[serde(default, rename = "container")]
    pub containers: Vec<ContainerSpec>,
    #[serde(default, rename = "publish")]
    pub publications: Vec<PublishDecl>,
}

impl ApplyFile {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        toml::from_str(text).map_err(|e| Invalid(format!("the apply file is not valid: {e}")))
    }
}

/// One change, in the order [`plan`] gives them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "of", rename_all = "snake_case")]
pub enum Action {
    Unpublish { network: String, spec: String },
    RemoveContainer(String),
    RemoveNetwork(String),
    Configure(DataplaneConfig),
    CreateNetwork(NetworkSpec),
    CreateContainer(ContainerSpec),
    Publish(PublishDecl),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Unpublish { network, spec } => write!(f, "- publish {network} {spec}"),
            Action::Publish(d) => write!(f, "+ publish {} {}", d.network, d.spec),
            Action::RemoveContainer(n) => write!(f, "- container {n}"),
            Action::RemoveNetwork(n) => write!(f, "- network {n}"),
            Action::Configure(c) => write!(
                f,
                "~ dataplane: ct-max {}, filtering {:?}, ports {}, timeouts {:?}",
                c.ct_max, c.filtering, c.port_range, c.timeouts
            ),
            Action::CreateNetwork(s) => {
                write!(f, "+ network {} {} uplink {}", s.name, s.subnet, s.uplink)?;
                match s.backend.named() {
                    Some(b) => write!(f, " backend {b}"),
                    None => Ok(()),
                }
            }
            Action::CreateContainer(s) => match s.ip {
                Some(ip) => write!(f, "+ container {} on {} at {ip}", s.name, s.network),
                None => write!(f, "+ container {} on {}", s.name, s.network),
            },
        }
    }
}

/// The changes from `state` to `desired`: containers and networks that go or change are
/// removed first (a network's containers with it), then settings, then networks and
/// containers are created in file order. The whole end state is validated first, so that a
/// file that cannot be reached changes nothing.
pub fn plan(desired: &ApplyFile, state: &State) -> Result<Vec<Action>, Invalid> {
    for (i, n) in desired.networks.iter().enumerate() {
        if desired.networks[..i].iter().any(|m| m.name == n.name) {
            return Err(Invalid(format!(
                "the apply file declares network `{}` twice",
                n.name
            )));
        }
    }
    for (i, c) in desired.containers.iter().enumerate() {
        if desired.containers[..i].iter().any(|d| d.name == c.name) {
            return Err(Invalid(format!(
                "the apply file declares container `{}` twice",
                c.name
            )));
        }
        if !desired.networks.iter().any(|n| n.name == c.network) {
            return Err(Invalid(format!(
                "container `{}` is on network `{}`, which the apply file does not declare",
                c.name, c.network
            )));
        }
    }
    validate::dataplane(&desired.dataplane)?;
    // What the file declares of Docker's: the first such network, else the first container.
    let docker_networks = desired
        .networks
        .iter()
        .filter(|n| state.docker.owns_network(&n.name))
        .map(|n| ("network", &n.name, "serves a Docker network"));
    let docker_containers = desired
        .containers
        .iter()
        .filter(|c| state.docker.owns_container(&c.name))
        .map(|c| ("container", &c.name, "is a Docker endpoint"));
    if let Some((kind, name, is)) = docker_networks.chain(docker_containers).next() {
        return Err(Invalid(format!(
            "{kind} `{name}` {is} (made through `netfast docker-plugin`): Docker changes it, not \
             an apply file; give the file's {kind} another name"
        )));
    }

    // Docker's networks, and everything on them, are Docker's to change: a file leaves them.
    let docker_network = |name: &str| state.docker.owns_network(name);
    let kept_network = |name: &str| {
        let current = state.network(name);
        docker_network(name)
            || desired
                .networks
                .iter()
                .any(|d| d.name == name && current.is_some_and(|c| c.satisfies(d)))
    };
    let mut actions = Vec::new();
    let mut removed_containers = Vec::new();
    // A container that stays keeps its publications; one that goes or changes loses them.
    let kept_container = |name: &str| {
        state.container(name).is_some_and(|c| {
            kept_network(&c.network)
                && desired
                    .containers
                    .iter()
                    .any(|d| d.name == c.name && c.satisfies(d))
        })
    };
    let mut kept_publications = Vec::new();
    for p in &state.publications {
        let keep = docker_network(&p.network)
            || (kept_network(&p.network)
                && (kept_container(&p.container) || state.container(&p.container).is_none())
                && desired.publications.iter().any(|d| p.declared_as(d)));
        if keep {
            kept_publications.push(p.spec.clone());
        } else {
            actions.push(Action::Unpublish {
                network: p.network.clone(),
                spec: p.spec.clone(),
            });
        }
    }
    for c in &state.containers {
        let keep = docker_network(&c.network)
            || (kept_network(&c.network)
                && desired
                    .containers
                    .iter()
                    .any(|d| d.name == c.name && c.satisfies(d)));
        if !keep {
            actions.push(Action::RemoveContainer(c.name.clone()));
            removed_containers.push(c.name.clone());
        }
    }
    for n in &state.networks {
        if !kept_network(&n.name) {
            actions.push(Action::RemoveNetwork(n.name.clone()));
        }
    }
    if desired.dataplane != state.dataplane {
        actions.push(Action::Configure(desired.dataplane.clone()));
    }
    for d in &desired.networks {
        if !kept_network(&d.name) {
            actions.push(Action::CreateNetwork(d.clone()));
        }
    }
    for d in &desired.containers {
        if state.container(&d.name).is_none() || removed_containers.contains(&d.name) {
            actions.push(Action::CreateContainer(d.clone()));
        }
    }
    for d in &desired.publications {
        let canonical = d.spec.parse::<PublishSpec>()?.to_string();
        let kept = state.publications.iter().any(|p| {
            p.network == d.network && p.spec == canonical && kept_publications.contains(&p.spec)
        });
        if !kept {
            actions.push(Action::Publish(d.clone()));
        }
    }
    simulate(&actions, state)?;
    Ok(actions)
}

/// The state a plan leads to, each step validated as the real one will be.
pub fn simulate(actions: &[Action], state: &State) -> Result<State, Invalid> {
    use super::model::{Container, Network, default_bridge, veth_name};
    let mut s = state.clone();
    for a in actions {
        match a {
            Action::Unpublish { network, spec } => {
                s.publications
                    .retain(|p| !(&p.network == network && &p.spec == spec));
            }
            Action::Publish(d) => {
                let parsed: PublishSpec = d.spec.parse()?;
                let p = publish::validate(&d.network, &parsed, &d.allow, &s)?;
                s.publications.push(p);
            }
            Action::RemoveContainer(n) => s.containers.retain(|c| &c.name != n),
            Action::RemoveNetwork(n) => s.networks.retain(|m| &m.name != n),
            Action::Configure(c) => s.dataplane = c.clone(),
            Action::CreateNetwork(spec) => {
                let gateway = validate::network(spec, &s)?;
                let id = ipam::next_network_id(&s, netfast_common::maps::MAX_NETWORKS as u16)?;
                s.networks.push(Network {
                    name: spec.name.clone(),
                    id,
                    subnet: spec.subnet,
                    gateway,
                    bridge: spec
                        .bridge
                        .clone()
                        .unwrap_or_else(|| default_bridge(&spec.name)),
                    uplink: spec.uplink.clone(),
                    adopted: spec.adopt,
                    adopted_ports: vec![],
                    masquerade: spec.masquerade,
                    // Resolved when created; the plan only validates.
                    backend: spec.backend.named().unwrap_or_default(),
                    route_localnet: false,
                    hairpin_set: Vec::new(),
                });
            }
            Action::CreateContainer(spec) => {
                validate::container(spec, &s)?;
                let net = s.network(&spec.network).expect("validated").clone();
                let ip = match spec.ip {
                    Some(ip) => ip,
                    None => ipam::next_free(&net, &s, &[])?,
                };
                s.containers.push(Container {
                    name: spec.name.clone(),
                    network: spec.network.clone(),
                    ip,
                    veth: veth_name(&spec.name),
                    netns_cookie: None,
                });
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[dataplane]
ct_max = 1024

[[network]]
name = "web"
subnet = "172.18.0.0/24"
uplink = "eth0"

[[network]]
name = "db"
subnet = "172.19.0.0/24"
gateway = "172.19.0.254"
uplink = "eth0"
masquerade = false

[[container]]
name = "web1"
network = "web"

[[container]]
name = "db1"
network = "db"
ip = "172.19.0.10"

[[publish]]
network = "web"
spec = "8080:web1:80"
allow = ["192.0.2.0/24"]
"#;

    fn applied(file: &ApplyFile, state: &State) -> State {
        simulate(&plan(file, state).unwrap(), state).unwrap()
    }

    #[test]
    fn a_fresh_host_gets_everything_in_order() {
        let file = ApplyFile::parse(FILE).unwrap();
        let actions = plan(&file, &State::default()).unwrap();
        let kinds: Vec<String> = actions
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert!(
            kinds[0].starts_with("~ dataplane: ct-max 1024"),
            "{kinds:?}"
        );
        assert_eq!(
            &kinds[1..],
            [
                "+ network web 172.18.0.0/24 uplink eth0",
                "+ network db 172.19.0.0/24 uplink eth0",
                "+ container web1 on web",
                "+ container db1 on db at 172.19.0.10",
                "+ publish web 8080:web1:80",
            ]
        );
    }

    #[test]
    fn applying_the_same_file_twice_plans_nothing() {
        let file = ApplyFile::parse(FILE).unwrap();
        let s = applied(&file, &State::default());
        assert_eq!(
            s.container("web1").unwrap().ip,
            "172.18.0.2".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(plan(&file, &s).unwrap(), vec![]);
    }

    /// An allow list written with host bits (`192.0.2.5/24`) is stored as its network
    /// (`192.0.2.0/24`): applying the file again must not take the publication down and up
    /// again, which would cut every connection through the port on every run.
    #[test]
    fn an_allow_list_with_host_bits_applied_twice_plans_nothing() {
        let file = ApplyFile::parse(&FILE.replace("192.0.2.0/24", "192.0.2.5/24")).unwrap();
        let s = applied(&file, &State::default());
        assert_eq!(plan(&file, &s).unwrap(), vec![]);
    }

    #[test]
    fn removals_come_first_and_take_their_containers() {
        let file = ApplyFile::parse(FILE).unwrap();
        let s = applied(&file, &State::default());
        // Change web's subnet: web1 goes with it and comes back on the new one.
        let changed = ApplyFile::parse(&FILE.replace("172.18.0.0/24", "10.9.0.0/24")).unwrap();
        let kinds: Vec<String> = plan(&changed, &s)
            .unwrap()
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert_eq!(
            kinds,
            [
                "- publish web 8080:web1:80/tcp",
                "- container web1",
                "- network web",
                "+ network web 10.9.0.0/24 uplink eth0",
                "+ container web1 on web",
                "+ publish web 8080:web1:80",
            ]
        );
        // Drop db from the file: its container first, then the network.
        let web_only = format!(
            "{}[[container]]\nname = \"web1\"\nnetwork = \"web\"\n\n{}",
            &FILE[..FILE.find("[[network]]\nname = \"db\"").unwrap()],
            &FILE[FILE.find("[[publish]]").unwrap()..]
        );
        let fewer = ApplyFile::parse(&web_only).unwrap();
        let kinds: Vec<String> = plan(&fewer, &s)
            .unwrap()
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert_eq!(kinds, ["- container db1", "- network db"]);
    }

    #[test]
    fn docker_networks_and_what_is_on_them_are_left_alone() {
        use crate::loader::docker::{DockerEndpoint, DockerNetwork};
        let file = ApplyFile::parse(FILE).unwrap();
        let mut s = applied(&file, &State::default());
        // Docker's network "db" (in the state, not in the file), with an endpoint and a port.
        let web_only = format!(
            "{}[[container]]\nname = \"web1\"\nnetwork = \"web\"\n\n{}",
            &FILE[..FILE.find("[[network]]\nname = \"db\"").unwrap()],
            &FILE[FILE.find("[[publish]]").unwrap()..]
        );
        let fewer = ApplyFile::parse(&web_only).unwrap();
        let (net_id, ep_id) = ("a".repeat(64), "b".repeat(64));
        s.docker.networks.push(DockerNetwork {
            id: net_id.clone(),
            network: "db".into(),
        });
        s.docker.endpoints.push(DockerEndpoint {
            id: ep_id,
            network_id: net_id,
            container: "db1".into(),
            peer: "nfd00000000".into(),
            mac: "02:42:ac:13:00:0a".into(),
            sandbox: None,
        });
        let p = publish::validate("db", &"5432:db1".parse().unwrap(), &[], &s).unwrap();
        s.publications.push(p);
        assert_eq!(plan(&fewer, &s).unwrap(), vec![]);
        // A file cannot declare Docker's network or endpoint.
        let e = plan(&file, &s).unwrap_err();
        assert_eq!(
            e.0,
            "network `db` serves a Docker network (made through `netfast docker-plugin`): Docker \
             changes it, not an apply file; give the file's network another name"
        );
        let renamed = web_only.replace("name = \"web1\"", "name = \"db1\"");
        let e = plan(&ApplyFile::parse(&renamed).unwrap(), &s).unwrap_err();
        assert_eq!(
            e.0,
            "container `db1` is a Docker endpoint (made through `netfast docker-plugin`): Docker \
             changes it, not an apply file; give the file's container another name"
        );
    }

    #[test]
    fn an_unreachable_file_is_refused_before_any_change() {
        let bad = FILE.replace("172.19.0.0/24", "172.18.0.0/16");
        let e = plan(&ApplyFile::parse(&bad).unwrap(), &State::default()).unwrap_err();
        assert!(e.0.contains("overlaps"), "{e}");
        let bad = FILE.replace("network = \"db\"", "network = \"nope\"");
        assert!(
            plan(&ApplyFile::parse(&bad).unwrap(), &State::default())
                .unwrap_err()
                .0
                .contains("does not declare")
        );
        let bad = FILE.replace("ip = \"172.19.0.10\"", "ip = \"172.19.0.254\"");
        assert!(
            plan(&ApplyFile::parse(&bad).unwrap(), &State::default())
                .unwrap_err()
                .0
                .contains("gateway")
        );
        assert!(
            ApplyFile::parse("[[network]]\nname = 1")
                .unwrap_err()
                .0
                .contains("not valid")
        );
        assert!(
            ApplyFile::parse("[[netwrok]]\nname = \"x\"")
                .unwrap_err()
                .0
                .contains("not valid")
        );
    }
}
