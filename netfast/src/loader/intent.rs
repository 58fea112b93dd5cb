//! Crash safety. A command that changes the host writes what it is about to change (an
//! [`Intent`], `intent.json` beside the state) before its first change, and removes it once
//! the state that follows is saved. A command killed in between leaves it behind; the next
//! command that changes anything (or `down`) reads it first and converges: what the dead
//! command was creating is removed again unless the state has it, what it was removing is
//! removed for good ([`crate::loader::Loader::lock`]).
//!
//! Every link netfast creates also carries a [`Mark`] in its alias (IFLA_IFALIAS): netfast,
//! the host's key, and what it belongs to. From the marks alone, `down` and the next command
//! recognise netfast's links (and the namespaces behind its veths) even when neither the
//! state nor an intent knows them, and `network ls` reports them as drift.

use serde::{Deserialize, Serialize};

use super::{
    docker::DockerEndpoint,
    model::{Container, Network, State},
    publish::Publication,
};

/// What a command is about to change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The command, as a user types it (after `netfast`), for messages.
    pub command: String,
    /// What it creates: removed again after a crash unless the state has it.
    #[serde(default)]
    pub create: Vec<Object>,
    /// What it removes: removed for good after a crash.
    #[serde(default)]
    pub remove: Vec<Object>,
    /// IPv4 forwarding was off when the command began, and the command turns it on (a
    /// `network create`): after a crash, it goes off again unless a network is left that
    /// needs it. A field, not an [`Object`]: a netfast that predates it still reads the
    /// intent (it ignores the field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ip_forward_was_off: bool,
}

/// One thing an [`Intent`] creates or removes, with everything needed to remove it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Object {
    Network(Network),
    Container(Container),
    Publication(Publication),
    /// A Docker endpoint: the container record of its veth pair, and Docker's record of it.
    /// Its namespace is Docker's: undoing it removes the veth pair and the fast path's entry,
    /// never a namespace.
    DockerEndpoint {
        container: Container,
        endpoint: DockerEndpoint,
    },
    /// The host-wide settings (`config`): after a crash, the state's are put back.
    Settings,
    /// Everything netfast made in the host (`down`).
    Everything,
}

impl Intent {
    pub fn creating(command: impl Into<String>, o: Object) -> Intent {
        Intent {
            command: command.into(),
            create: vec![o],
            remove: Vec::new(),
            ip_forward_was_off: false,
        }
    }

    pub fn removing(command: impl Into<String>, o: Object) -> Intent {
        Intent {
            command: command.into(),
            create: Vec::new(),
            remove: vec![o],
            ip_forward_was_off: false,
        }
    }

    /// Its networks, containers and publications as a state, to check their names as a
    /// state's are checked.
    pub fn as_state(&self) -> State {
        let mut s = State::default();
        for o in self.create.iter().chain(&self.remove) {
            match o {
                Object::Network(n) => s.networks.push(n.clone()),
                Object::Container(c) => s.containers.push(c.clone()),
                Object::Publication(p) => s.publications.push(p.clone()),
                Object::DockerEndpoint {
                    container,
                    endpoint,
                } => {
                    s.containers.push(container.clone());
                    s.docker.endpoints.push(endpoint.clone());
                }
                Object::Settings | Object::Everything => {}
            }
        }
        s
    }
}

/// What a link netfast created belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The bridge of a network.
    Network(String),
    /// The veth of a container (both ends: `eth0` in the container's namespace too).
    Container(String),
}

/// netfast's mark on a link it created: `netfast <host key> network|container <name>` in its
/// alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub host: String,
    pub owner: Owner,
}

impl Mark {
    pub fn network(host: &str, name: &str) -> String {
        format!("netfast {host} network {name}")
    }

    pub fn container(host: &str, name: &str) -> String {
        format!("netfast {host} container {name}")
    }

    /// The mark in a link's alias, if it is one.
    pub fn parse(alias: &str) -> Option<Mark> {
        let mut words = alias.split(' ');
        if words.next()? != "netfast" {
            return None;
        }
        let host = words.next()?.to_owned();
        let kind = words.next()?;
        let name = words.next()?.to_owned();
        if words.next().is_some() || super::validate::object_name("name", &name).is_err() {
            return None;
        }
        let owner = match kind {
            "network" => Owner::Network(name),
            "container" => Owner::Container(name),
            _ => return None,
        };
        Some(Mark { host, owner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarding flag is written only when set, and an intent without it (written by a
    /// netfast that predates it) reads as unset: intents stay readable both ways.
    #[test]
    fn the_forwarding_flag_is_optional_both_ways() {
        let mut i = Intent::creating("network create web", Object::Settings);
        let plain = serde_json::to_value(&i).expect("serializes");
        assert!(plain.get("ip_forward_was_off").is_none(), "{plain}");
        let back: Intent = serde_json::from_value(plain).expect("reads back");
        assert!(!back.ip_forward_was_off);
        i.ip_forward_was_off = true;
        let flagged = serde_json::to_value(&i).expect("serializes");
        assert_eq!(flagged["ip_forward_was_off"], true);
        let back: Intent = serde_json::from_value(flagged).expect("reads back");
        assert_eq!(back, i);
    }

    #[test]
    fn marks_read_back_and_nothing_else_is_one() {
        let m = Mark::parse(&Mark::container("netns-42", "web1")).expect("a mark");
        assert_eq!(m.host, "netns-42");
        assert_eq!(m.owner, Owner::Container("web1".into()));
        assert_eq!(
            Mark::parse(&Mark::network("netns-42", "web")).map(|m| m.owner),
            Some(Owner::Network("web".into()))
        );
        for alias in [
            "",
            "uplink to the lab",
            "netfast netns-42 network",
            "netfast netns-42 volume x",
            "netfast netns-42 container ../etc",
            "netfast netns-42 network web extra",
        ] {
            assert_eq!(Mark::parse(alias), None, "{alias:?}");
        }
    }

    #[test]
    fn an_intent_round_trips_through_json() {
        let i = Intent::creating(
            "container create c1 --network web",
            Object::Container(Container {
                name: "c1".into(),
                network: "web".into(),
                ip: "172.18.0.2".parse().unwrap(),
                veth: "nfv00000001".into(),
                netns_cookie: Some(4096),
            }),
        );
        let back: Intent = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(back, i);
        assert_eq!(back.as_state().containers.len(), 1);
    }

    #[test]
    fn a_docker_endpoints_intent_leaves_its_namespace_to_docker() {
        let container = Container {
            name: "docker-e1e1e1e1e1e1".into(),
            network: "web".into(),
            ip: "172.18.0.5".parse().unwrap(),
            veth: "nfv00000002".into(),
            netns_cookie: None,
        };
        let i = Intent::creating(
            "docker-plugin (CreateEndpoint e1e1e1e1e1e1)",
            Object::DockerEndpoint {
                container: container.clone(),
                endpoint: DockerEndpoint {
                    id: "e1".repeat(32),
                    network_id: "e0".repeat(32),
                    container: container.name.clone(),
                    peer: "nfd00000002".into(),
                    mac: "02:42:ac:12:00:05".into(),
                    sandbox: None,
                },
            },
        );
        let back: Intent = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(back, i);
        // As a state: the container, owned by Docker (its removal deletes no namespace).
        let s = back.as_state();
        assert_eq!(s.containers, vec![container.clone()]);
        assert!(s.docker.owns_container(&container.name));
    }
}
