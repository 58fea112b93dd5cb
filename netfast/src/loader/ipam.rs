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
                })
                .collect(),
            publications: vec![],
            docker: Default::default(),
        }
    }

    #[test]
    fn skips_network_gateway_and_used_addresses() {
        let n = net("172.18.0.0/24", "172.18.0.1");
        assert_eq!(
            next_free(&n, &with(&[]), &[]).unwrap(),
            "172.18.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            next_free(&n, &with(&["172.18.0.2", "172.18.0.3"]), &[]).unwrap(),
            "172.18.0.4".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            next_free(&n, &with(&["172.18.0.2"]), &["172.18.0.3".parse().unwrap()]).unwrap(),
            "172.18.0.4".parse::<Ipv4Addr>().unwrap()
        );
        // A gateway in the middle is skipped, and holes are reused.
        let n = net("10.0.0.0/29", "10.0.0.3");
        assert_eq!(
            next_free(&n, &with(&["10.0.0.1", "10.0.0.2"]), &[]).unwrap(),
            "10.0.0.4".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            next_free(&n, &with(&["10.0.0.2"]), &[]).unwrap(),
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_broadcast_is_never_given() {
        let n = net("10.0.0.0/30", "10.0.0.1");
        assert_eq!(
            next_free(&n, &with(&[]), &[]).unwrap(),
            "10.0.0.2".parse::<Ipv4Addr>().unwrap()
        );
        let e = next_free(&n, &with(&["10.0.0.2"]), &[]).unwrap_err();
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
