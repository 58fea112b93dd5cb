//! Address allocation inside a network's subnet.

use std::net::Ipv4Addr;

use super::{
    model::{Network, State},
    validate::Invalid,
};

/// The lowest host address of `net` that is neither its gateway, nor used by a container,
/// nor in `also_taken` (addresses seen in use on an adopted bridge).
pub fn next_free(
    net: &Network,
    state: &State,
    also_taken: &[Ipv4Addr],
) -> Result<Ipv4Addr, Invalid> {
    let used = |ip: Ipv4Addr| {
        ip == net.gateway
            || also_taken.contains(&ip)
            || state
                .containers
                .iter()
                .any(|c| c.network == net.name && c.ip == ip)
    };
    let first = u32::from(net.subnet.network()) + 1;
    let last = u32::from(net.subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used(*ip))
        .ok_or_else(|| {
            Invalid(format!(
                "network `{}` ({}) has no free address left; remove a container or use a larger subnet",
                net.name, net.subnet
            ))
        })
}

/// The lowest network id (1..max) not in use.
pub fn next_network_id(state: &State, max: u16) -> Result<u16, Invalid> {
    (1..max)
        .find(|id| state.networks.iter().all(|n| n.id != *id))
        .ok_or_else(|| {
            Invalid(format!(
                "this host already has the {} networks netfast supports",
                max - 1
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::model::Container;

    fn net(subnet: &str, gw: &str) -> Network {
        crate::loader::model::fixtures::network("n", subnet, gw)
    }

    fn with(ips: &[&str]) -> State {
        State {
            dataplane: Default::default(),
            networks: vec![],
            containers: ips
                .iter()
                .enumerate()
                .map(|(i, ip)| Container {
                    name: format!("c{i}"),
                    network: "n".into(),
                    ip: ip.parse().unwrap(),
                    veth: String::new(),
                    netns_cookie: None,
                })
                .collect(),
            publications: vec![],
            docker: Default::default(),
        }
    }

    /// `next_free` on `n`, with containers at `used` and `seen` in use on the bridge.
    fn free(n: &Network, used: &[&str], seen: &[&str]) -> Result<Ipv4Addr, Invalid> {
        let seen: Vec<Ipv4Addr> = seen.iter().map(|a| a.parse().unwrap()).collect();
        next_free(n, &with(used), &seen)
    }

    /// A case of `next_free`: its name, the network, the containers' addresses, the addresses
    /// seen on the bridge, and the address it gives.
    type Case<'a> = (&'a str, &'a Network, &'a [&'a str], &'a [&'a str], &'a str);

    #[test]
    fn skips_network_gateway_and_used_addresses() {
        let n = net("172.18.0.0/24", "172.18.0.1");
        // A gateway in the middle is skipped, and holes are reused.
        let mid = net("10.0.0.0/29", "10.0.0.3");
        let cases: [Case<'_>; 5] = [
            ("nothing used", &n, &[], &[], "172.18.0.2"),
            (
                "containers",
                &n,
                &["172.18.0.2", "172.18.0.3"],
                &[],
                "172.18.0.4",
            ),
            (
                "a container and seen",
                &n,
                &["172.18.0.2"],
                &["172.18.0.3"],
                "172.18.0.4",
            ),
            (
                "gateway in the middle",
                &mid,
                &["10.0.0.1", "10.0.0.2"],
                &[],
                "10.0.0.4",
            ),
            ("a hole", &mid, &["10.0.0.2"], &[], "10.0.0.1"),
        ];
        for (case, n, used, seen, given) in cases {
            let got = free(n, used, seen).unwrap();
            assert_eq!(got, given.parse::<Ipv4Addr>().unwrap(), "{case}");
        }
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_broadcast_is_never_given() {
        let n = net("10.0.0.0/30", "10.0.0.1");
        assert_eq!(
            free(&n, &[], &[]).unwrap(),
            "10.0.0.2".parse::<Ipv4Addr>().unwrap()
        );
        let e = free(&n, &["10.0.0.2"], &[]).unwrap_err();
        assert!(e.0.contains("no free address"), "{e}");
    }

    #[test]
    fn network_ids_fill_holes() {
        let mut s = State::default();
        assert_eq!(next_network_id(&s, 256).unwrap(), 1);
        s.networks.push(net("10.0.0.0/24", "10.0.0.1"));
        assert_eq!(next_network_id(&s, 256).unwrap(), 2);
        assert!(next_network_id(&s, 2).is_err());
    }
}
