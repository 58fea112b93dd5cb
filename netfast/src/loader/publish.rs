//! Published ports: `docker run -p` syntax, validation, and what they need in the dataplane.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{model::State, validate::Invalid};

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => netfast_common::conntrack::PROTO_TCP,
            Proto::Udp => netfast_common::conntrack::PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An inclusive port range; a single port is `(p, p)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn overlaps(&self, other: &Ports) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn ports(text: &str, whole: &str) -> Result<Ports, Invalid> {
    let bad = || {
        Invalid(format!(
            "`{text}` in `{whole}` is not a port or a range like 5000-5010 (ports 1 to 65535)"
        ))
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let first: u16 = a.parse().map_err(|_| bad())?;
    let last: u16 = b.parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(Ports { first, last })
}

/// `[HOST_IP:]HOST_PORT[-END]:CONTAINER[:PORT[-END]][/tcp|/udp]`, as `docker run -p` takes
/// it, with CONTAINER a container's name or address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishSpec {
    /// `None`: every address of the host (also 0.0.0.0 in the spec).
    pub host_ip: Option<Ipv4Addr>,
    pub host_ports: Ports,
    pub container: String,
    pub container_ports: Ports,
    pub proto: Proto,
}

/// The most ports one publication may cover.
pub const MAX_RANGE: u32 = 4096;

impl FromStr for PublishSpec {
    type Err = Invalid;

    fn from_str(whole: &str) -> Result<Self, Invalid> {
        let (body, proto) = match whole.rsplit_once('/') {
            Some((b, "tcp")) => (b, Proto::Tcp),
            Some((b, "udp")) => (b, Proto::Udp),
            Some((_, p)) => {
                return Err(Invalid(format!(
                    "`{p}` in `{whole}` is not a protocol; use /tcp or /udp"
                )));
            }
            None => (whole, Proto::Tcp),
        };
        let parts: Vec<&str> = body.split(':').collect();
        let (host_ip, rest) = match parts.as_slice() {
            [first, rest @ ..] if rest.len() >= 2 && first.parse::<Ipv4Addr>().is_ok() => {
                (first.parse::<Ipv4Addr>().ok(), rest)
            }
            all => (None, all),
        };
        let (host_ports, container, container_ports) = match rest {
            [hp, c] => (ports(hp, whole)?, *c, None),
            [hp, c, cp] => (ports(hp, whole)?, *c, Some(ports(cp, whole)?)),
            _ => {
                return Err(Invalid(format!(
                    "`{whole}` is not [HOST_IP:]HOST_PORT[-END]:CONTAINER[:PORT[-END]][/tcp|/udp], \
                     e.g. 8080:web:80 or 0.0.0.0:5000-5010:ct2:5000-5010/udp"
                )));
            }
        };
        let container_ports = container_ports.unwrap_or(host_ports);
        if container.is_empty() {
            return Err(Invalid(format!("`{whole}` names no container")));
        }
        if host_ports.len() != container_ports.len() {
            return Err(Invalid(format!(
                "`{whole}` maps {} host ports to {} container ports; ranges map one to one",
                host_ports.len(),
                container_ports.len()
            )));
        }
        if host_ports.len() > MAX_RANGE {
            return Err(Invalid(format!(
                "`{whole}` covers {} ports; publish at most {MAX_RANGE} at once",
                host_ports.len()
            )));
        }
        Ok(PublishSpec {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_ports,
            container: container.to_owned(),
            container_ports,
            proto,
        })
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}:{}:{}/{}",
            HostIp(self.host_ip),
            self.host_ports,
            self.container,
            self.container_ports,
            self.proto
        )
    }
}

/// The host address a port is published on as Docker writes it before the port: `IP:`, or
/// nothing for every address.
pub(crate) struct HostIp(pub Option<Ipv4Addr>);

impl fmt::Display for HostIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}:"),
            None => Ok(()),
        }
    }
}

/// A publication as the state keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub network: String,
    /// The spec in its canonical form (`[IP:]PORTS:CONTAINER:PORTS/PROTO`).
    pub spec: String,
    pub host_ip: Option<Ipv4Addr>,
    pub host_ports: Ports,
    /// The container's name, or its address when published by address.
    pub container: String,
    pub container_ip: Ipv4Addr,
    pub container_ports: Ports,
    pub proto: Proto,
    /// Who may connect; anyone when empty.
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
    /// The allow-list id in the dataplane (0 when `allow` is empty).
    #[serde(default)]
    pub rule: u32,
}

/// A publication as an apply file declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishDecl {
    pub network: String,
    pub spec: String,
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
}

impl Publication {
    pub fn declared_as(&self, d: &PublishDecl) -> bool {
        self.network == d.network
            && d.spec
                .parse::<PublishSpec>()
                .is_ok_and(|s| s.to_string() == self.spec)
            && self.allow == allow_list(&d.allow)
    }
}

/// An allow list as stored and matched: each CIDR as its network (`192.0.2.5/24` is
/// `192.0.2.0/24`, as iptables reads it).
pub fn allow_list(allow: &[Ipv4Net]) -> Vec<Ipv4Net> {
    allow.iter().map(Ipv4Net::trunc).collect()
}

/// Checks a new publication against the state; returns it, resolved, with a fresh rule id.
pub fn validate(
    network: &str,
    spec: &PublishSpec,
    allow: &[Ipv4Net],
    state: &State,
) -> Result<Publication, Invalid> {
    let net = state.known_network(network)?;
    let container_ip = match state.container(&spec.container) {
        Some(c) if c.network == network => c.ip,
        Some(c) => {
            return Err(Invalid(format!(
                "container `{}` is on network `{}`, not `{network}`",
                spec.container, c.network
            )));
        }
        None => match spec.container.parse::<Ipv4Addr>() {
            Ok(ip) if ip == net.subnet.network() || ip == net.subnet.broadcast() => {
                return Err(Invalid(format!(
                    "{ip} is the {} address of network `{network}` ({}), not a container's; \
                     publish to a container's address or name (see `netfast container ls`)",
                    if ip == net.subnet.network() {
                        "network"
                    } else {
                        "broadcast"
                    },
                    net.subnet
                )));
            }
            Ok(ip) if net.subnet.contains(&ip) && ip != net.gateway => ip,
            Ok(ip) => {
                return Err(Invalid(format!(
                    "{ip} is not a container address of network `{network}` ({})",
                    net.subnet
                )));
            }
            Err(_) => {
                return Err(Invalid(format!(
                    "no container named `{}` on network `{network}` (see `netfast container ls`)",
                    spec.container
                )));
            }
        },
    };
    let canonical = spec.to_string();
    for p in &state.publications {
        let same_addr = p.host_ip.is_none() || spec.host_ip.is_none() || p.host_ip == spec.host_ip;
        if p.proto == spec.proto && same_addr && p.host_ports.overlaps(&spec.host_ports) {
            return Err(Invalid(format!(
                "host port{} {}/{} {} already published by `{}` on network `{}`; unpublish it first",
                if spec.host_ports.len() > 1 { "s" } else { "" },
                spec.host_ports,
                spec.proto,
                if p.spec == canonical {
                    "is"
                } else {
                    "overlaps what is"
                },
                p.spec,
                p.network
            )));
        }
    }
    let rule = if allow.is_empty() {
        0
    } else {
        (1..=u32::MAX)
            .find(|r| state.publications.iter().all(|p| p.rule != *r))
            .unwrap_or(1)
    };
    Ok(Publication {
        network: network.to_owned(),
        spec: canonical,
        host_ip: spec.host_ip,
        host_ports: spec.host_ports,
        container: spec.container.clone(),
        container_ip,
        container_ports: spec.container_ports,
        proto: spec.proto,
        allow: allow_list(allow),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PublishSpec {
        s.parse().unwrap_or_else(|e: Invalid| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<PublishSpec>().unwrap_err().0
    }

    #[test]
    fn docker_syntax_parses() {
        let s = spec("8080:ct1:80");
        assert_eq!(
            (
                s.host_ip,
                s.host_ports,
                s.container.as_str(),
                s.container_ports,
                s.proto
            ),
            (
                None,
                Ports {
                    first: 8080,
                    last: 8080
                },
                "ct1",
                Ports {
                    first: 80,
                    last: 80
                },
                Proto::Tcp
            )
        );
        let s = spec("0.0.0.0:5000-5010:ct2:5000-5010/udp");
        assert_eq!(
            (s.host_ip, s.host_ports.len(), s.proto),
            (None, 11, Proto::Udp)
        );
        let s = spec("198.51.100.1:8443:ct1:443");
        assert_eq!(s.host_ip, Some("198.51.100.1".parse().unwrap()));
        let s = spec("9000:ct1");
        assert_eq!(
            s.container_ports,
            Ports {
                first: 9000,
                last: 9000
            }
        );
        // A container given by address; 3 parts with an address first is HOST_IP:PORT:CONTAINER.
        let s = spec("8080:172.18.0.2:80");
        assert_eq!((s.host_ip, s.container.as_str()), (None, "172.18.0.2"));
        let s = spec("10.0.0.1:8080:ct1");
        assert_eq!(
            (s.host_ip, s.container.as_str(), s.container_ports.first),
            (Some("10.0.0.1".parse().unwrap()), "ct1", 8080)
        );
        assert_eq!(spec("0.0.0.0:80:web/tcp").to_string(), "80:web:80/tcp");
        assert_eq!(
            spec("1.2.3.4:5-6:c:7-8/udp").to_string(),
            "1.2.3.4:5-6:c:7-8/udp"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(err("8080").contains("is not [HOST_IP:]"));
        assert!(err("8080:ct1:80/sctp").contains("not a protocol"));
        assert!(err("0:ct1:80").contains("not a port"));
        assert!(err("70000:ct1:80").contains("not a port"));
        assert!(err("5010-5000:ct1").contains("not a port"));
        assert!(err("5000-5010:ct1:80-81").contains("11 host ports to 2 container ports"));
        assert!(err("1-5000:ct1").contains("at most 4096"));
        assert!(err("8080::80").contains("names no container"));
    }

    fn state() -> State {
        crate::loader::model::fixtures::web_with_ct1()
    }

    #[test]
    fn publications_resolve_and_never_overlap() {
        let mut s = state();
        let p = validate("web", &spec("8080:ct1:80"), &[], &s).unwrap();
        assert_eq!((p.container_ip, p.rule), ("172.18.0.2".parse().unwrap(), 0));
        s.publications.push(p);
        let e = validate("web", &spec("8080:ct1:81"), &[], &s)
            .unwrap_err()
            .0;
        assert!(e.contains("already published by `8080:ct1:80/tcp`"), "{e}");
        let e = validate("web", &spec("8000-8100:ct1"), &[], &s)
            .unwrap_err()
            .0;
        assert!(e.contains("overlaps"), "{e}");
        let e = validate("web", &spec("198.51.100.1:8080:ct1:80"), &[], &s)
            .unwrap_err()
            .0;
        assert!(
            e.contains("already published"),
            "an address overlaps every-address: {e}"
        );
        assert!(
            validate("web", &spec("8080:ct1:80/udp"), &[], &s).is_ok(),
            "another protocol is another port"
        );
        let with_allow = validate(
            "web",
            &spec("9090:ct1:80"),
            &["192.0.2.7/24".parse().unwrap()],
            &s,
        )
        .unwrap();
        assert_eq!(
            (with_allow.rule, with_allow.allow[0].to_string().as_str()),
            (1, "192.0.2.0/24")
        );
        assert!(
            validate("web", &spec("9000:172.18.0.9:80"), &[], &s).is_ok(),
            "by address"
        );
        for (target, what) in [("172.18.0.0", "network"), ("172.18.0.255", "broadcast")] {
            let e = validate("web", &spec(&format!("9000:{target}:80")), &[], &s)
                .unwrap_err()
                .0;
            assert!(
                e.contains(&format!("the {what} address of network `web`")),
                "{e}"
            );
        }
        assert!(
            validate("web", &spec("9000:10.0.0.9:80"), &[], &s)
                .unwrap_err()
                .0
                .contains("not a container address")
        );
        assert!(
            validate("web", &spec("9000:nope:80"), &[], &s)
                .unwrap_err()
                .0
                .contains("no container named")
        );
        assert!(
            validate("db", &spec("9000:ct1:80"), &[], &s)
                .unwrap_err()
                .0
                .contains("no network named")
        );
    }
}
