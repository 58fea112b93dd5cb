//! The host changing under the flows: time passing past their timeouts, publications
//! coming and going, the host's own sockets.

use std::net::Ipv4Addr;

use super::{Gen, PUBLISHED_PORTS, TARGET_PORTS, all_containers};
use crate::fuzz::{
    event::Event,
    topology::{EXT, EXT2, GW1},
};
use crate::model::{HostSocket, Model, PROTO_TCP, PROTO_UDP, PubKey};

impl Gen {
    /// Time passes: a little, or past a timeout the flows have.
    pub(super) fn advance(&mut self, m: &Model) -> Event {
        let t = &m.config.timeouts;
        let r = &mut self.rng;
        let secs = match r.below(10) {
            0..=4 => r.range(1, 5) as u32,
            5 | 6 => *r.pick(&[11, 31, 61, 121]),
            7 | 8 => {
                let to = *r.pick(&[t.tcp_close, t.udp, t.icmp, t.tcp_transitory]);
                to + *r.pick(&[0, 1, 2, to / 8 + 2])
            }
            _ => t.tcp_established + *r.pick(&[1, t.tcp_established / 8 + 2]),
        };
        Event::Advance(secs)
    }

    pub(super) fn publish(&mut self) -> Event {
        let r = &mut self.rng;
        let (net, target) = *r.pick(&all_containers());
        let proto = if r.chance(500) { PROTO_TCP } else { PROTO_UDP };
        let addr = match r.below(20) {
            0..=9 => None,
            10..=14 => Some(EXT),
            15..=17 => Some(EXT2),
            18 => Some(Ipv4Addr::LOCALHOST),
            _ => Some(GW1),
        };
        let (rule, allow) = if r.chance(300) {
            let rule = self.next_rule;
            self.next_rule += 1;
            let nets = match r.below(3) {
                0 => vec!["192.0.2.0/25".parse().expect("a prefix")],
                1 => vec![
                    "192.0.2.200/32".parse().expect("a prefix"),
                    "203.0.113.0/24".parse().expect("a prefix"),
                ],
                _ => vec!["172.18.0.0/24".parse().expect("a prefix")],
            };
            (rule, nets)
        } else {
            (0, Vec::new())
        };
        Event::Publish {
            key: PubKey {
                addr,
                port: *r.pick(&PUBLISHED_PORTS),
                proto,
            },
            to: (target, *r.pick(&TARGET_PORTS)),
            net: net as u16 + 1,
            rule,
            allow,
        }
    }

    pub(super) fn unpublish(&mut self, m: &Model) -> Event {
        let keys: Vec<_> = m.publications.keys().copied().collect();
        Event::Unpublish {
            key: *self.rng.pick(&keys),
            end_flows: self.rng.chance(700),
        }
    }

    /// The host opens a socket (a UDP socket bound to an external port — now and then one a
    /// mapping holds — or a TCP listener), or closes one.
    pub(super) fn socket(&mut self, m: &Model) -> Event {
        if !m.host_sockets.is_empty() && self.rng.chance(400) {
            let socks: Vec<_> = m.host_sockets.iter().copied().collect();
            return Event::Socket {
                sock: *self.rng.pick(&socks),
                open: false,
            };
        }
        let proto = if self.rng.chance(600) {
            PROTO_UDP
        } else {
            PROTO_TCP
        };
        let mapped: Vec<u16> = m
            .bindings
            .iter()
            .filter(|(k, _)| k.proto == proto && k.ext_addr == EXT)
            .map(|(_, b)| b.ext_port)
            .collect();
        let port = if !mapped.is_empty() && self.rng.chance(400) {
            *self.rng.pick(&mapped)
        } else {
            *self.rng.pick(&[40000, 40001, 40003, 1025, 53, 61000])
        };
        Event::Socket {
            sock: HostSocket {
                proto,
                addr: EXT,
                port,
            },
            open: true,
        }
    }
}
