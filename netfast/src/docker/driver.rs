//! What each call of the protocol does, in netfast's terms, through the loader's API (its lock,
//! its checks, its rollbacks): the same operations as the command line's.

use std::{cell::RefCell, collections::HashSet, net::Ipv4Addr};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{
    api::{
        self, Capabilities, CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest,
        EndpointInfoResponse, EndpointInterface, EndpointRequest, InterfaceName, JoinRequest,
        JoinResponse, Manifest, NetworkRequest, PortBinding,
    },
    ports::{self, HostPorts},
};
use crate::{
    error::{Error, Result},
    loader::{
        Loader,
        docker::{DockerEndpoint, default_bridge_name, default_network_name, parse_mac},
        model::{BackendChoice, NetworkSpec, State},
        publish::{Ports, Proto, PublishSpec},
        sockets,
        validate::{self, Invalid},
    },
};

/// One call from Docker, its request decoded.
#[derive(Debug)]
pub enum Call {
    Activate,
    GetCapabilities,
    CreateNetwork(CreateNetworkRequest),
    DeleteNetwork(NetworkRequest),
    CreateEndpoint(CreateEndpointRequest),
    DeleteEndpoint(EndpointRequest),
    EndpointOperInfo(EndpointRequest),
    Join(JoinRequest),
    Leave(EndpointRequest),
    ProgramExternalConnectivity(JoinRequest),
    RevokeExternalConnectivity(EndpointRequest),
    /// Node discovery (swarm): nothing for a local driver to do.
    DiscoverNew,
    DiscoverDelete,
    /// Not Docker's: the networks netfast serves for Docker networks that dockerd no longer
    /// lists (their delete died before it recorded its intent) are deleted as Docker's
    /// DeleteNetwork would have.
    Forgotten(Vec<String>),
}

impl Call {
    /// The URL paths Docker posts to, each with how its body decodes.
    pub const PATHS: [&'static str; 13] = [
        "/Plugin.Activate",
        "/NetworkDriver.GetCapabilities",
        "/NetworkDriver.CreateNetwork",
        "/NetworkDriver.DeleteNetwork",
        "/NetworkDriver.CreateEndpoint",
        "/NetworkDriver.DeleteEndpoint",
        "/NetworkDriver.EndpointOperInfo",
        "/NetworkDriver.Join",
        "/NetworkDriver.Leave",
        "/NetworkDriver.ProgramExternalConnectivity",
        "/NetworkDriver.RevokeExternalConnectivity",
        "/NetworkDriver.DiscoverNew",
        "/NetworkDriver.DiscoverDelete",
    ];

    /// Decodes the body posted to `path` (one of [`Call::PATHS`]); an empty body or `null`
    /// is an empty request.
    pub fn decode(path: &str, body: &[u8]) -> std::result::Result<Call, String> {
        fn req<T: serde::de::DeserializeOwned + Default>(
            body: &[u8],
        ) -> std::result::Result<T, String> {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() || text == "null" {
                return Ok(T::default());
            }
            serde_json::from_str(text).map_err(|e| format!("the request is not valid JSON: {e}"))
        }
        Ok(match path {
            "/Plugin.Activate" => Call::Activate,
            "/NetworkDriver.GetCapabilities" => Call::GetCapabilities,
            "/NetworkDriver.CreateNetwork" => Call::CreateNetwork(req(body)?),
            "/NetworkDriver.DeleteNetwork" => Call::DeleteNetwork(req(body)?),
            "/NetworkDriver.CreateEndpoint" => Call::CreateEndpoint(req(body)?),
            "/NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(req(body)?),
            "/NetworkDriver.EndpointOperInfo" => Call::EndpointOperInfo(req(body)?),
            "/NetworkDriver.Join" => Call::Join(req(body)?),
            "/NetworkDriver.Leave" => Call::Leave(req(body)?),
            "/NetworkDriver.ProgramExternalConnectivity" => {
                Call::ProgramExternalConnectivity(req(body)?)
            }
            "/NetworkDriver.RevokeExternalConnectivity" => {
                Call::RevokeExternalConnectivity(req(body)?)
            }
            "/NetworkDriver.DiscoverNew" => Call::DiscoverNew,
            "/NetworkDriver.DiscoverDelete" => Call::DiscoverDelete,
            other => return Err(format!("no method {other}")),
        })
    }

    /// The Docker network the call is about, if it is about one.
    pub fn network_id(&self) -> Option<&str> {
        match self {
            Call::CreateNetwork(r) => Some(&r.network_id),
            Call::DeleteNetwork(r) => Some(&r.network_id),
            Call::CreateEndpoint(r) => Some(&r.network_id),
            Call::DeleteEndpoint(r)
            | Call::EndpointOperInfo(r)
            | Call::Leave(r)
            | Call::RevokeExternalConnectivity(r) => Some(&r.network_id),
            Call::Join(r) | Call::ProgramExternalConnectivity(r) => Some(&r.network_id),
            Call::Activate
            | Call::GetCapabilities
            | Call::DiscoverNew
            | Call::DiscoverDelete
            | Call::Forgotten(_) => None,
        }
    }

    /// How the log names it: the method and the IDs it is about (12 characters, as Docker
    /// shows them).
    pub fn describe(&self) -> String {
        let short = |id: &str| id.chars().take(12).collect::<String>();
        let ep = |n: &str, e: &str| format!("network {} endpoint {}", short(n), short(e));
        match self {
            Call::Activate => "Plugin.Activate".into(),
            Call::GetCapabilities => "GetCapabilities".into(),
            Call::CreateNetwork(r) => format!("CreateNetwork {}", short(&r.network_id)),
            Call::DeleteNetwork(r) => format!("DeleteNetwork {}", short(&r.network_id)),
            Call::CreateEndpoint(r) => {
                format!("CreateEndpoint {}", ep(&r.network_id, &r.endpoint_id))
            }
            Call::DeleteEndpoint(r) => {
                format!("DeleteEndpoint {}", ep(&r.network_id, &r.endpoint_id))
            }
            Call::EndpointOperInfo(r) => {
                format!("EndpointOperInfo {}", ep(&r.network_id, &r.endpoint_id))
            }
            Call::Join(r) => format!("Join {}", ep(&r.network_id, &r.endpoint_id)),
            Call::Leave(r) => format!("Leave {}", ep(&r.network_id, &r.endpoint_id)),
            Call::ProgramExternalConnectivity(r) => format!(
                "ProgramExternalConnectivity {}",
                ep(&r.network_id, &r.endpoint_id)
            ),
            Call::RevokeExternalConnectivity(r) => format!(
                "RevokeExternalConnectivity {}",
                ep(&r.network_id, &r.endpoint_id)
            ),
            Call::DiscoverNew => "DiscoverNew".into(),
            Call::DiscoverDelete => "DiscoverDelete".into(),
            Call::Forgotten(ids) => format!(
                "Docker network{} {} gone from dockerd's list",
                if ids.len() == 1 { "" } else { "s" },
                ids.iter()
                    .map(|id| short(id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// What netfast answers a call with, and what it did (for the log).
pub struct Answer {
    pub body: Value,
    pub done: Vec<String>,
}

impl Answer {
    /// Docker's `{"Err": …}`, logged.
    pub fn error(err: &str) -> Answer {
        Answer {
            body: serde_json::to_value(api::ErrorResponse {
                err: err.to_owned(),
            })
            .expect("answers serialize"),
            done: vec![format!("error: {err}")],
        }
    }
}

fn answer(body: impl Serialize, done: Vec<crate::loader::Change>) -> Result<Answer> {
    Ok(Answer {
        body: serde_json::to_value(body).expect("answers serialize"),
        done: crate::loader::change::lines(&done),
    })
}

/// The driver: the loader of the host namespace it serves.
pub struct Driver {
    loader: Loader,
    /// The Docker networks Docker has named in a call since the driver started: it has
    /// them, whatever a list of dockerd's said before (a create it retried across the
    /// plugin's restart), and [`Call::Forgotten`] leaves them alone.
    named: RefCell<HashSet<String>>,
}

impl Driver {
    pub fn new() -> Result<Self> {
        Ok(Driver {
            loader: Loader::new()?,
            named: RefCell::default(),
        })
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Carries out `call`; an error becomes Docker's `{"Err": …}`.
    pub fn handle(&self, call: Call) -> Answer {
        if let Some(id) = call.network_id() {
            self.named.borrow_mut().insert(id.to_owned());
        }
        let result = match call {
            Call::Activate => answer(
                Manifest {
                    implements: vec!["NetworkDriver"],
                },
                vec![],
            ),
            Call::GetCapabilities => answer(
                Capabilities {
                    scope: "local",
                    connectivity_scope: "local",
                },
                vec![],
            ),
            Call::CreateNetwork(r) => self.create_network(&r),
            Call::DeleteNetwork(r) => self
                .loader
                .docker_network_rm(&r.network_id)
                .and_then(|done| answer(json!({}), done)),
            Call::CreateEndpoint(r) => self.create_endpoint(&r),
            Call::DeleteEndpoint(r) => self
                .loader
                .docker_endpoint_rm(&r.endpoint_id)
                .and_then(|done| answer(json!({}), done)),
            Call::EndpointOperInfo(r) => self.endpoint_info(&r),
            Call::Join(r) => self.join(&r),
            Call::Leave(r) => self
                .loader
                .docker_endpoint_leave(&r.endpoint_id)
                .and_then(|()| answer(json!({}), vec![])),
            Call::ProgramExternalConnectivity(r) => self.publish(&r),
            Call::RevokeExternalConnectivity(r) => self.unpublish(&r),
            Call::DiscoverNew | Call::DiscoverDelete => answer(json!({}), vec![]),
            Call::Forgotten(ids) => self.forget(&ids),
        };
        result.unwrap_or_else(|e| Answer::error(&crate::error::report(&e)))
    }

    fn create_network(&self, r: &CreateNetworkRequest) -> Result<Answer> {
        let spec = network_spec(r, || self.default_uplink())?;
        let done = self.loader.docker_network_create(&spec, &r.network_id)?;
        answer(json!({}), done)
    }

    /// Deletes the networks of Docker networks `ids`, each as its DeleteNetwork would, but
    /// for those Docker has named since the driver started (kept, said so); one that fails
    /// (logged) stops nothing.
    fn forget(&self, ids: &[String]) -> Result<Answer> {
        let mut done = Vec::new();
        for id in ids {
            if self.named.borrow().contains(id) {
                done.push(format!(
                    "Docker network {id}, not in dockerd's list, was named by Docker since the \
                     plugin started: kept"
                ));
                continue;
            }
            match self.loader.docker_network_rm(id) {
                Ok(d) => done.extend(crate::loader::change::lines(&d)),
                Err(e) => done.push(format!(
                    "error: Docker network {id}: {}",
                    crate::error::report(&e)
                )),
            }
        }
        Ok(Answer {
            body: json!({}),
            done,
        })
    }

    /// The Docker networks netfast serves (by their IDs), as its state has them now.
    pub fn served_networks(&self) -> Result<Vec<String>> {
        let state = self.loader.state()?;
        Ok(state.docker.networks.iter().map(|d| d.id.clone()).collect())
    }

    /// The interface of the host's default route: where its traffic leaves.
    fn default_uplink(&self) -> Result<String> {
        let nl = self.loader.netlink().host()?;
        let oif = nl
            .routes()?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif);
        let link = match oif {
            Some(index) => nl.links()?.into_iter().find(|l| l.index == index),
            None => None,
        };
        link.map(|l| l.name).ok_or_else(|| {
            Error::Settings(format!(
                "{} has no default route to take the uplink from; pass the interface towards \
                 the outside: docker network create -d netfast -o uplink=IFNAME … (see `ip route`)",
                self.loader.host.describe()
            ))
        })
    }

    fn create_endpoint(&self, r: &CreateEndpointRequest) -> Result<Answer> {
        let iface = r.interface.clone().unwrap_or_default();
        let address = iface.address.split('/').next().unwrap_or_default();
        let ip: Ipv4Addr = address.parse().map_err(|_| {
            Error::Settings(if iface.address.is_empty() {
                format!(
                    "Docker gave endpoint {} no IPv4 address; a netfast network needs one from \
                     Docker's IPAM (is it an IPv6-only network?)",
                    r.endpoint_id
                )
            } else {
                format!(
                    "Docker gave endpoint {} the address {:?}, not an IPv4 address",
                    r.endpoint_id, iface.address
                )
            })
        })?;
        let mac = if iface.mac_address.is_empty() {
            None
        } else {
            Some(parse_mac(&iface.mac_address)?)
        };
        let (ep, done) =
            self.loader
                .docker_endpoint_create(&r.network_id, &r.endpoint_id, ip, mac)?;
        // Docker learns the MAC from us only when it chose none (it refuses a change).
        let interface = mac.is_none().then(|| EndpointInterface {
            mac_address: ep.mac.clone(),
            ..Default::default()
        });
        answer(CreateEndpointResponse { interface }, done)
    }

    fn join(&self, r: &JoinRequest) -> Result<Answer> {
        let (ep, network) = self
            .loader
            .docker_endpoint_join(&r.endpoint_id, &r.sandbox_key)?;
        answer(
            JoinResponse {
                interface_name: InterfaceName {
                    src_name: ep.peer.clone(),
                    dst_prefix: "eth".into(),
                },
                gateway: network.gateway.to_string(),
                disable_gateway_service: false,
            },
            vec![crate::loader::Change::DockerEndpointJoined {
                container: ep.container.clone(),
                sandbox: r.sandbox_key.clone(),
                peer: ep.peer.clone(),
                gateway: network.gateway,
            }],
        )
    }

    fn endpoint_info(&self, r: &EndpointRequest) -> Result<Answer> {
        let state = self.loader.state()?;
        let mut value = Map::new();
        if let Some((ep, network)) = endpoint(&state, &r.endpoint_id) {
            let c = state.container(&ep.container).expect("a live endpoint");
            value.insert("netfast.container".into(), json!(c.name));
            value.insert("netfast.network".into(), json!(network));
            value.insert("netfast.veth".into(), json!(c.veth));
            let published: Vec<&str> = state
                .publications
                .iter()
                .filter(|p| p.container == c.name)
                .map(|p| p.spec.as_str())
                .collect();
            value.insert("netfast.published".into(), json!(published));
        }
        answer(EndpointInfoResponse { value }, vec![])
    }

    /// `-p` bindings become publications of the endpoint's container; what is already
    /// published for it (Docker asking again) stays. All or nothing.
    fn publish(&self, r: &JoinRequest) -> Result<Answer> {
        let bindings: Vec<PortBinding> = match r.options.get(api::PORT_MAP) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Error::Settings(format!("Docker's port bindings are not as expected: {e}"))
            })?,
        };
        if bindings.is_empty() {
            return answer(json!({}), vec![]);
        }
        let state = self.loader.state()?;
        let (ep, network) = endpoint(&state, &r.endpoint_id).ok_or_else(|| {
            Error::Settings(format!(
                "netfast has no endpoint {}; remove the container and start it again",
                r.endpoint_id
            ))
        })?;
        let wanted = ports::wanted(&bindings)?;
        // Ports a socket of the host holds, in each range a binding picks from.
        let mut busy: HashSet<(u8, u16)> = HashSet::new();
        for w in &wanted {
            if let HostPorts::AnyOf(first, last) = w.host {
                for l in sockets::listeners(w.proto, Ports { first, last }) {
                    busy.insert((w.proto.number(), l.port));
                }
            }
        }
        let bound = ports::choose(&wanted, |proto, ip, port| {
            !busy.contains(&(proto.number(), port)) && !published(&state, proto, ip, port)
        })?;
        let mut made: Vec<String> = Vec::new();
        let mut done = Vec::new();
        for spec in ports::specs(&bound, &ep.container) {
            let canonical = spec.parse::<PublishSpec>()?.to_string();
            if state
                .publications
                .iter()
                .any(|p| p.network == network && p.spec == canonical)
            {
                continue;
            }
            match self.loader.publish(&network, &spec, &[]) {
                Ok(lines) => {
                    done.extend(lines);
                    made.push(spec);
                }
                Err(e) => {
                    for spec in made.iter().rev() {
                        if let Err(u) = self.loader.unpublish(&network, spec) {
                            log::error!("undoing {spec}: {}", crate::error::report(&u));
                        }
                    }
                    return Err(e);
                }
            }
        }
        answer(json!({}), done)
    }

    /// Ends the publications of the endpoint's container.
    fn unpublish(&self, r: &EndpointRequest) -> Result<Answer> {
        let state = self.loader.state()?;
        let mut done = Vec::new();
        if let Some((ep, _)) = endpoint(&state, &r.endpoint_id) {
            for p in state
                .publications
                .iter()
                .filter(|p| p.container == ep.container)
            {
                done.extend(self.loader.unpublish(&p.network, &p.spec)?);
            }
        }
        answer(json!({}), done)
    }
}

/// Endpoint `id` and its netfast network's name, when both exist.
fn endpoint(state: &State, id: &str) -> Option<(DockerEndpoint, String)> {
    let ep = state.docker.endpoint(id)?;
    let c = state.container(&ep.container)?;
    Some((ep.clone(), c.network.clone()))
}

/// Whether a publication holds host port `port`/`proto` on `ip` (or on every address).
fn published(state: &State, proto: Proto, ip: Option<Ipv4Addr>, port: u16) -> bool {
    state.publications.iter().any(|p| {
        p.proto == proto
            && (p.host_ip.is_none() || ip.is_none() || p.host_ip == ip)
            && p.host_ports.overlaps(&Ports {
                first: port,
                last: port,
            })
    })
}

/// The options `docker network create -d netfast -o KEY=VALUE` takes.
const OPTIONS_HELP: &str = "uplink=IFNAME (the interface towards the outside; default: the one \
     of the default route), backend=auto|ebpf|nftables|iptables, masquerade=true|false, \
     name=NAME (the netfast network's name), bridge=IFNAME";

/// The netfast network Docker's request asks for: its subnet and gateway from Docker's IPAM,
/// the rest from `-o` options. `default_uplink` is asked only when no uplink is given.
pub fn network_spec(
    r: &CreateNetworkRequest,
    default_uplink: impl FnOnce() -> Result<String>,
) -> Result<NetworkSpec> {
    validate_flag(&r.options, api::ENABLE_IPV6, |on| {
        on.then(|| "netfast networks are IPv4 only: create the network without --ipv6".to_owned())
    })?;
    validate_flag(&r.options, api::INTERNAL, |on| {
        on.then(|| {
            "netfast networks reach the outside through their uplink: --internal is not \
             supported (create it with Docker's bridge driver)"
                .to_owned()
        })
    })?;
    let generic = match r.options.get(api::GENERIC_OPTIONS) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Invalid(format!("Docker's driver options are not a map: {other}")).into());
        }
    };
    let mut spec = NetworkSpec {
        name: default_network_name(&r.network_id),
        subnet: "0.0.0.0/0".parse().expect("a CIDR"),
        gateway: None,
        bridge: Some(default_bridge_name(&r.network_id)),
        uplink: String::new(),
        adopt: false,
        masquerade: true,
        backend: BackendChoice::Auto,
    };
    let mut uplink = None;
    let mut named_bridge = false;
    for (key, value) in &generic {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        let bad = |what: &str| Invalid(format!("-o {key}={text}: {what}"));
        match key.as_str() {
            "uplink" => {
                validate::interface_name("uplink", &text)?;
                uplink = Some(text);
            }
            "backend" => {
                spec.backend = <BackendChoice as clap::ValueEnum>::from_str(&text, true)
                    .map_err(|_| bad("not one of auto, ebpf, nftables, iptables"))?;
            }
            "masquerade" => {
                spec.masquerade = match text.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(bad("give true or false").into()),
                };
            }
            "name" => {
                validate::object_name("network", &text)?;
                spec.name = text;
            }
            "bridge" => {
                validate::interface_name("bridge", &text)?;
                spec.bridge = Some(text);
                named_bridge = true;
            }
            _ => {
                return Err(Invalid(format!(
                    "netfast has no option -o {key}; it takes {OPTIONS_HELP}"
                ))
                .into());
            }
        }
    }
    // A network named by -o name gets the command line's default bridge name, nf-NAME.
    if generic.contains_key("name") && !named_bridge {
        spec.bridge = None;
    }
    let pool = match r.ipv4_data.as_slice() {
        [one] => one,
        [] => {
            return Err(Invalid(
                "Docker gave no IPv4 subnet; create the network with --subnet (netfast networks are IPv4)"
                    .into(),
            )
            .into());
        }
        many => {
            return Err(Invalid(format!(
                "Docker gave {} IPv4 subnets; a netfast network has one: give a single --subnet",
                many.len()
            ))
            .into());
        }
    };
    spec.subnet = pool.pool.parse().map_err(|_| {
        Invalid(format!(
            "Docker's pool {:?} is not an IPv4 subnet",
            pool.pool
        ))
    })?;
    validate::check_subnet(&spec.subnet)?;
    if !pool.gateway.is_empty() {
        let gw = pool.gateway.split('/').next().unwrap_or_default();
        spec.gateway = Some(gw.parse().map_err(|_| {
            Invalid(format!(
                "Docker's gateway {:?} is not an IPv4 address",
                pool.gateway
            ))
        })?);
    }
    spec.uplink = match uplink {
        Some(u) => u,
        None => default_uplink()?,
    };
    Ok(spec)
}

/// Checks libnetwork's boolean option `key` (true, or "true"): `refuse` says why it cannot be.
fn validate_flag(
    options: &api::Options,
    key: &str,
    refuse: impl FnOnce(bool) -> Option<String>,
) -> Result<()> {
    let on = match options.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    match refuse(on) {
        Some(why) => Err(Error::Settings(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn request(options: Value) -> CreateNetworkRequest {
        serde_json::from_value(json!({
            "NetworkID": ID,
            "Options": options,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.30.0.0/24",
                          "Gateway": "172.30.0.1/24"}],
            "IPv6Data": []
        }))
        .unwrap()
    }

    fn no_default() -> Result<String> {
        Err(Error::Settings("no default route".into()))
    }

    #[test]
    fn a_network_takes_docker_ipam_and_options() {
        let r = request(json!({
            "com.docker.network.enable_ipv6": false,
            "com.docker.network.generic": {"uplink": "up0", "masquerade": "false",
                                           "backend": "nftables"}
        }));
        let spec = network_spec(&r, no_default).unwrap();
        assert_eq!(spec.name, "docker-0123456789ab");
        assert_eq!(spec.bridge.as_deref(), Some("nf-0123456789ab"));
        assert_eq!(spec.subnet.to_string(), "172.30.0.0/24");
        assert_eq!(spec.gateway, Some("172.30.0.1".parse().unwrap()));
        assert_eq!(spec.uplink, "up0");
        assert!(!spec.masquerade);
        assert_eq!(spec.backend, BackendChoice::Nftables);
        let named = request(json!({"com.docker.network.generic": {"name": "web"}}));
        let spec = network_spec(&named, || Ok("eth0".into())).unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.bridge, spec.uplink.as_str()),
            ("web", None, "eth0")
        );
    }

    #[test]
    fn what_netfast_cannot_do_is_refused_with_the_fix() {
        let cases = [
            (
                json!({"com.docker.network.generic": {"uplnk": "eth0"}}),
                "no option -o uplnk",
            ),
            (
                json!({"com.docker.network.generic": {"uplink": "eth0;"}}),
                "not a valid interface name",
            ),
            (
                json!({"com.docker.network.generic": {"uplink": "e", "backend": "bpf"}}),
                "not one of auto",
            ),
            (
                json!({"com.docker.network.generic": {"uplink": "e", "masquerade": "maybe"}}),
                "give true or false",
            ),
            (json!({"com.docker.network.enable_ipv6": true}), "IPv4 only"),
            (json!({"com.docker.network.internal": true}), "--internal"),
            (json!({}), "no default route"),
        ];
        for (options, want) in cases {
            let e = network_spec(&request(options.clone()), no_default).unwrap_err();
            let e = crate::error::report(&e);
            assert!(e.contains(want), "{options}: {e}");
        }
        let mut two = request(json!({"com.docker.network.generic": {"uplink": "e"}}));
        two.ipv4_data.push(two.ipv4_data[0].clone());
        assert!(
            crate::error::report(&network_spec(&two, no_default).unwrap_err())
                .contains("2 IPv4 subnets")
        );
    }

    #[test]
    fn every_path_decodes_and_an_empty_body_is_an_empty_request() {
        for path in Call::PATHS {
            assert!(Call::decode(path, b"").is_ok(), "{path}");
            assert!(Call::decode(path, b"null\n").is_ok(), "{path}");
        }
        assert!(Call::decode("/NetworkDriver.Join", b"{nope").is_err());
        assert!(Call::decode("/NetworkDriver.Nope", b"{}").is_err());
    }
}
