//! Published ports in the dataplane: their DNAT entries and allow lists, put in all or
//! nothing, taken out with their flows, and pruned of what a killed `publish` left.

use netfast_common::{
    conntrack::{CtKey, PROTO_TCP, PROTO_UDP, TcpState},
    nat::NatClaimKey,
};

use super::Dataplane;
use crate::{error::Result, maps, netfilter::sockdiag::Connection};

impl Dataplane {
    /// Removes the DNAT and allow-list entries that none of `owned` (the state's eBPF
    /// publications) accounts for: what a `publish` killed before it saved its state left.
    /// An allow-list rule id is then never handed out while entries with it exist.
    pub fn prune_publications(
        &mut self,
        owned: &[&crate::loader::publish::Publication],
    ) -> Result<usize> {
        let keys: Vec<_> = owned.iter().flat_map(|p| pub_keys(p)).collect();
        let mut pruned = 0;
        for (key, _) in maps::published(&self.ebpf)? {
            if !keys.contains(&key) {
                maps::unpublish(&mut self.ebpf, &key)?;
                pruned += 1;
            }
        }
        for (rule, net) in maps::allow_entries(&self.ebpf)? {
            if !owned
                .iter()
                .any(|p| p.rule == rule && p.allow.contains(&net))
            {
                maps::disallow(&mut self.ebpf, rule, net)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Puts a publication in the dataplane: one entry per host port, and its allow-list. All
    /// or nothing: what it added is taken out again if a step fails.
    pub fn publish(&mut self, p: &crate::loader::publish::Publication, net_id: u16) -> Result<()> {
        let done = self.publish_steps(p, net_id);
        if done.is_err() {
            for key in pub_keys(p) {
                let _ = maps::unpublish(&mut self.ebpf, &key);
            }
            for net in &p.allow {
                let _ = maps::disallow(&mut self.ebpf, p.rule, *net);
            }
        }
        done
    }

    fn publish_steps(
        &mut self,
        p: &crate::loader::publish::Publication,
        net_id: u16,
    ) -> Result<()> {
        use netfast_common::publish::{PubKey, PubTarget};
        for net in &p.allow {
            maps::allow(&mut self.ebpf, p.rule, *net)?;
        }
        for (host_port, container_port) in p.host_ports.iter().zip(p.container_ports.iter()) {
            let key = PubKey {
                addr: p.host_ip.map_or(0, maps::raw_addr),
                port: host_port.to_be(),
                proto: p.proto.number(),
                _pad: 0,
            };
            let target = PubTarget {
                addr: maps::raw_addr(p.container_ip),
                port: container_port.to_be(),
                net_id,
                rule: p.rule,
            };
            maps::publish(&mut self.ebpf, &key, &target)?;
        }
        Ok(())
    }

    /// Takes a publication out of the dataplane, with the flows opened through it: calls
    /// `ending` with the container's end and its peer of each TCP one while their flows still
    /// translate (see [`crate::netfilter::sockdiag`]), waits for the RST of each connection
    /// it ended to cross its flow, then ends the flows; returns how many.
    ///
    /// Its host ports equal to their container port are first held for a while on the
    /// network's external address (`subnet`'s), for no container ([`maps::hold_port`]): a
    /// container's packet from the port it served (a UDP server's, whose socket serves every
    /// client and cannot be ended) opens a flow of its own, masqueraded from another port,
    /// which the client of the publication does not take for it.
    pub fn unpublish(
        &mut self,
        p: &crate::loader::publish::Publication,
        subnet: ipnet::Ipv4Net,
        ending: impl FnOnce(&[Connection]) -> Vec<Connection>,
    ) -> Result<usize> {
        use netfast_common::publish::PubKey;
        for host_port in p.host_ports.iter() {
            let key = PubKey {
                addr: p.host_ip.map_or(0, maps::raw_addr),
                port: host_port.to_be(),
                proto: p.proto.number(),
                _pad: 0,
            };
            maps::unpublish(&mut self.ebpf, &key)?;
        }
        for net in &p.allow {
            maps::disallow(&mut self.ebpf, p.rule, *net)?;
        }
        // Flows through the port end with it, and only those: the client's direction is to
        // the published port (on its address, or — for a publication on every address — on
        // one that no publication of its own claims), the server's comes from the container.
        let proto = p.proto.number();
        let exact: std::collections::HashSet<(u32, u16)> = maps::published(&self.ebpf)?
            .into_iter()
            .filter(|(k, _)| k.addr != 0 && k.proto == proto)
            .map(|(k, _)| (k.addr, k.port))
            .collect();
        let name = p.proto.to_string();
        let through = |f: &maps::Flow| {
            let to = f.original.dst;
            f.protocol == name
                && p.host_ports.iter().any(|hp| hp == f.original.dport)
                && f.reply.src == p.container_ip
                && match p.host_ip {
                    Some(ip) => to == ip,
                    None => !exact.contains(&(maps::raw_addr(to), f.original.dport.to_be())),
                }
        };
        let now = maps::monotonic_now();
        if let Err(e) = self.hold_ports(p, subnet, now) {
            log::warn!(
                "could not keep the ports of {} from masquerade for a while: {}",
                p.spec,
                crate::error::report(&e)
            );
        }
        let deleted = maps::delete_flows_after(&mut self.ebpf, now, through, |ebpf, flows| {
            let connections: Vec<Connection> = flows
                .iter()
                .filter(|f| f.proto() == PROTO_TCP)
                .map(|f| {
                    Connection::of_reply(f.reply.src, f.reply.sport, f.reply.dst, f.reply.dport)
                })
                .collect();
            let ended = ending(&connections);
            // Each aborted socket's RST crosses its flow to the client (usually in the softirq
            // SOCK_DESTROY raises, before it returns): the flows end once it has.
            crate::netfilter::sockdiag::wait_for_resets(&ended, |c| {
                let key = CtKey::new(
                    maps::raw_addr(*c.local.ip()),
                    maps::raw_addr(*c.remote.ip()),
                    c.local.port().to_be(),
                    c.remote.port().to_be(),
                    PROTO_TCP,
                );
                let state = maps::tcp_state(ebpf, &key)?;
                Ok(state.is_none_or(|s| s == TcpState::Close as u8))
            });
            Ok(())
        })?;
        Ok(deleted.flows)
    }

    /// Keeps the host ports of `p` that equal their container port (those a container's
    /// masquerade mapping could take, keeping its own port) from being mapped to a container
    /// for a while, on the external address of network `subnet` if `p` was published there.
    fn hold_ports(
        &mut self,
        p: &crate::loader::publish::Publication,
        subnet: ipnet::Ipv4Net,
        now: u32,
    ) -> Result<()> {
        let Some(info) = maps::network_info(&self.ebpf, subnet.network(), subnet.prefix_len())?
        else {
            return Ok(());
        };
        if info.ext_addr == 0
            || p.host_ip
                .is_some_and(|ip| maps::raw_addr(ip) != info.ext_addr)
        {
            return Ok(());
        }
        let cfg = maps::read_config(&self.ebpf)?;
        let proto = p.proto.number();
        let hold = if proto == PROTO_UDP {
            cfg.udp
        } else {
            cfg.tcp_transitory
        };
        for (hp, cp) in p.host_ports.iter().zip(p.container_ports.iter()) {
            if hp != cp {
                continue;
            }
            let key = NatClaimKey::new(info.ext_addr, hp.to_be(), proto);
            if !maps::hold_port(&mut self.ebpf, &key, now, now.saturating_add(hold))? {
                log::debug!("port {hp} stays with the container mapping that holds it");
            }
        }
        Ok(())
    }

    /// The host's own IPv4 addresses, where ports published on every address are reachable.
    pub fn set_host_addrs(&mut self, addrs: &[std::net::Ipv4Addr]) -> Result<()> {
        maps::set_host_addrs(&mut self.ebpf, addrs)
    }
}

/// The DNAT map keys of a publication: one per host port.
fn pub_keys(p: &crate::loader::publish::Publication) -> Vec<netfast_common::publish::PubKey> {
    p.host_ports
        .iter()
        .map(|port| netfast_common::publish::PubKey {
            addr: p.host_ip.map_or(0, maps::raw_addr),
            port: port.to_be(),
            proto: p.proto.number(),
            _pad: 0,
        })
        .collect()
}
