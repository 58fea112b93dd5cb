//! `docker run -p` bindings as netfast publications.
//!
//! Docker hands the driver one binding per container port: `-p 8080:80` is host port 8080 to
//! 80; `-p 5000-5001:5000-5001/udp` is two bindings; `-p 80` (no host port) asks for any free
//! port, and `-p 8000-8010:80` for any one of 8000 to 8010. netfast picks the free port (the
//! first one no publication holds and no socket of the host listens on; Docker's own range,
//! 49153-65535, when any will do) and joins bindings that follow each other into one ranged
//! publication, as `netfast publish 5000-5001:CT:5000-5001/udp` would make it.

use std::net::Ipv4Addr;

use super::api::PortBinding;
use crate::loader::{
    publish::{Ports, Proto},
    validate::Invalid,
};

/// The ports Docker picks from for `-p 80` (its portallocator's range).
pub const ANY_PORT: (u16, u16) = (49153, 65535);

/// The host ports a binding asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPorts {
    Exactly(u16),
    /// Any one free port of the range.
    AnyOf(u16, u16),
}

/// One binding, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub proto: Proto,
    /// `None`: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host: HostPorts,
    pub container_port: u16,
}

/// One binding with its host port chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub proto: Proto,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// Checks Docker's bindings: TCP or UDP, an IPv4 host address (or none), ports in range.
pub fn wanted(bindings: &[PortBinding]) -> Result<Vec<Wanted>, Invalid> {
    bindings.iter().map(one).collect()
}

fn one(b: &PortBinding) -> Result<Wanted, Invalid> {
    let proto = match b.proto {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => {
            return Err(Invalid(format!(
                "-p …:{}/sctp: netfast publishes TCP and UDP ports only",
                b.port
            )));
        }
        n => {
            return Err(Invalid(format!(
                "-p …:{}: IP protocol {n} cannot be published (TCP and UDP only)",
                b.port
            )));
        }
    };
    let host_ip = match b.host_ip.as_str() {
        "" => None,
        text => match text.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => None,
            Ok(std::net::IpAddr::V4(ip)) => Some(ip),
            Ok(std::net::IpAddr::V6(ip)) => {
                return Err(Invalid(format!(
                    "-p [{ip}]:{}: netfast publishes on IPv4 addresses only; give an IPv4 host \
                     address or none",
                    b.host_port
                )));
            }
            Err(_) => {
                return Err(Invalid(format!(
                    "-p {text}:…: `{text}` is not an IP address"
                )));
            }
        },
    };
    if b.port == 0 {
        return Err(Invalid(
            "a -p binding without a container port; give one (e.g. -p 8080:80)".into(),
        ));
    }
    let host = match (b.host_port, b.host_port_end) {
        (0, _) => HostPorts::AnyOf(ANY_PORT.0, ANY_PORT.1),
        (p, end) if end > p => HostPorts::AnyOf(p, end),
        (p, _) => HostPorts::Exactly(p),
    };
    Ok(Wanted {
        proto,
        host_ip,
        host,
        container_port: b.port,
    })
}

/// Chooses the host port of each binding: its own, or the first of its range that `free`
/// says is free and no earlier binding took.
pub fn choose(
    wanted: &[Wanted],
    mut free: impl FnMut(Proto, Option<Ipv4Addr>, u16) -> bool,
) -> Result<Vec<Bound>, Invalid> {
    let mut bound: Vec<Bound> = Vec::new();
    for w in wanted {
        let taken = |bound: &[Bound], port: u16| {
            bound.iter().any(|b| {
                b.proto == w.proto
                    && b.host_port == port
                    && (b.host_ip.is_none() || w.host_ip.is_none() || b.host_ip == w.host_ip)
            })
        };
        let host_port = match w.host {
            HostPorts::Exactly(p) => p,
            HostPorts::AnyOf(first, last) => (first..=last)
                .find(|p| !taken(&bound, *p) && free(w.proto, w.host_ip, *p))
                .ok_or_else(|| {
                    Invalid(format!(
                        "no free host port in {first}-{last}/{} for container port {}",
                        w.proto, w.container_port
                    ))
                })?,
        };
        bound.push(Bound {
            proto: w.proto,
            host_ip: w.host_ip,
            host_port,
            container_port: w.container_port,
        });
    }
    Ok(bound)
}

/// The publication specs (`[IP:]PORTS:CONTAINER:PORTS/PROTO`) of `bound`: bindings whose host
/// and container ports both follow the one before (same protocol and address) join into one
/// range.
pub fn specs(bound: &[Bound], container: &str) -> Vec<String> {
    let mut sorted = bound.to_vec();
    sorted.sort_by_key(|b| (b.proto.number(), b.host_ip, b.host_port));
    sorted.dedup();
    let mut runs: Vec<(Bound, Ports, Ports)> = Vec::new();
    for b in sorted {
        if let Some((first, host, ctr)) = runs.last_mut()
            && first.proto == b.proto
            && first.host_ip == b.host_ip
            && u32::from(host.last) + 1 == u32::from(b.host_port)
            && u32::from(ctr.last) + 1 == u32::from(b.container_port)
        {
            host.last = b.host_port;
            ctr.last = b.container_port;
            continue;
        }
        let single = |p| Ports { first: p, last: p };
        runs.push((b, single(b.host_port), single(b.container_port)));
    }
    runs.into_iter()
        .map(|(b, host, ctr)| {
            format!(
                "{}{host}:{container}:{ctr}/{}",
                b.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default(),
                b.proto
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(proto: u8, host_ip: &str, host: (u16, u16), port: u16) -> PortBinding {
        PortBinding {
            proto,
            ip: "172.30.0.2".into(),
            port,
            host_ip: host_ip.into(),
            host_port: host.0,
            host_port_end: host.1,
        }
    }

    #[test]
    fn fixed_ports_and_ranges_become_publications() {
        let bindings = [
            binding(6, "", (8080, 8080), 80),
            binding(17, "0.0.0.0", (5001, 5001), 5001),
            binding(17, "0.0.0.0", (5000, 0), 5000),
            binding(6, "198.51.100.1", (8443, 8443), 443),
        ];
        let w = wanted(&bindings).unwrap();
        let b = choose(&w, |_, _, _| true).unwrap();
        assert_eq!(
            specs(&b, "docker-0123456789ab"),
            [
                "8080:docker-0123456789ab:80/tcp",
                "198.51.100.1:8443:docker-0123456789ab:443/tcp",
                "5000-5001:docker-0123456789ab:5000-5001/udp",
            ]
        );
        // Every spec is one `netfast publish` takes.
        for s in specs(&b, "ct") {
            assert!(
                s.parse::<crate::loader::publish::PublishSpec>().is_ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn any_port_is_the_first_free_one() {
        let w = wanted(&[
            binding(6, "", (0, 0), 80),
            binding(6, "", (8000, 8010), 81),
            binding(6, "", (8000, 8010), 82),
        ])
        .unwrap();
        assert_eq!(w[0].host, HostPorts::AnyOf(49153, 65535));
        let b = choose(&w, |_, _, p| p != 49153 && p != 8000).unwrap();
        let ports: Vec<u16> = b.iter().map(|b| b.host_port).collect();
        assert_eq!(ports, [49154, 8001, 8002]);
        let e = choose(&w[1..2], |_, _, _| false).unwrap_err();
        assert!(e.0.contains("no free host port in 8000-8010/tcp"), "{e}");
    }

    #[test]
    fn what_netfast_cannot_publish_is_refused_by_name() {
        let cases = [
            (binding(132, "", (9, 9), 9), "sctp"),
            (binding(6, "::", (80, 80), 80), ""),
            (
                binding(6, "2001:db8::1", (80, 80), 80),
                "IPv4 addresses only",
            ),
            (binding(6, "nope", (80, 80), 80), "not an IP address"),
            (binding(6, "", (80, 80), 0), "without a container port"),
        ];
        for (b, want) in cases {
            match wanted(std::slice::from_ref(&b)) {
                Ok(w) if want.is_empty() => assert_eq!(w[0].host_ip, None, "{b:?}"),
                Ok(w) => panic!("{b:?} was taken: {w:?}"),
                Err(e) => assert!(!want.is_empty() && e.0.contains(want), "{b:?}: {e}"),
            }
        }
    }
}
