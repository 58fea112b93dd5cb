//! Packets beside the flows' plain next ones: ICMP errors about flows that exist and do
//! not, fragments in and out of order, traffic off the beaten track, and packets made
//! wrong in every way the parsers must survive.

use std::net::Ipv4Addr;

use super::{CONTAINER_PORTS, Gen, SYN, all_containers};
use crate::fuzz::{
    event::{Body, Event, FragSpec, From, Mangle, Pkt, Quote, TupleRef},
    topology::{EXT, REMOTES, ROUTERS},
};
use crate::model::{Model, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Tuple};

impl Gen {
    /// An ICMP error about a packet of a tracked flow as it left translated (from its
    /// destination or a router on the way), or about a packet no flow sent.
    pub(super) fn icmp_error(&mut self, m: &Model) -> Event {
        let (icmp_type, code) = *self.rng.pick(&[(3, 3), (3, 1), (3, 4), (11, 0), (12, 0)]);
        let len = *self.rng.pick(&[28, 28, 0, 24]);
        let picked = self.pick_entry(m);
        let (quote_ref, quoted, from) = match picked {
            Some((key, e)) if self.rng.chance(850) => {
                // Packets of `e` left as `e.translated(key)`; the error about one travels
                // back the way the flow's other entry serves.
                let quoted = e.translated(&key);
                let peer_key = e.peer_key(&key);
                let peer =
                    m.ct.main
                        .get(&peer_key)
                        .or_else(|| m.ct.inbound.get(&peer_key));
                let from = match peer {
                    Some(p) => Self::side_of(&peer_key, p),
                    None => From::Outside,
                };
                let r = TupleRef::Reversed(Box::new(TupleRef::Peer {
                    of: Box::new(Self::ref_of(m, &key, &e)),
                    hint: peer_key,
                }));
                (r, quoted, from)
            }
            _ => {
                let (_, c) = *self.rng.pick(&all_containers());
                let proto = self.proto();
                let t = Tuple::new(
                    *self.rng.pick(&[EXT, c]),
                    *self.rng.pick(&REMOTES),
                    *self.rng.pick(&CONTAINER_PORTS),
                    if proto == PROTO_ICMP { 0 } else { 80 },
                    proto,
                );
                (TupleRef::Lit(t), t, From::Outside)
            }
        };
        let quote_body = match quoted.proto {
            PROTO_TCP => Body::Tcp {
                flags: SYN,
                seq: self.rng.u32(),
                ack: 0,
                win: 64240,
                wscale: None,
                payload: 0,
            },
            PROTO_UDP => Body::Udp {
                payload: self.rng.range(0, 40) as u16,
            },
            _ => Body::Echo {
                reply: quoted.sport == 0 && quoted.dport != 0,
                seq: 1,
                payload: 8,
            },
        };
        // From the quoted packet's destination (the outer addresses follow the quote), or
        // from a router on its way.
        let outer = if from == From::Outside && self.rng.chance(400) {
            TupleRef::Lit(Tuple::new(
                *self.rng.pick(&ROUTERS),
                quoted.src,
                0,
                0,
                PROTO_ICMP,
            ))
        } else {
            TupleRef::Reversed(Box::new(quote_ref.clone()))
        };
        let body = Body::Error {
            icmp_type,
            code,
            quote: Box::new(Quote {
                tuple: quote_ref,
                body: quote_body,
                len,
            }),
        };
        let mut pkt = Pkt::new(outer, body);
        pkt.id = self.rng.u16();
        Event::Send { from, pkt }
    }

    /// A UDP datagram (or an echo) in fragments: in order, out of order, or without its
    /// first.
    pub(super) fn fragments(&mut self, m: &Model) -> Event {
        let base = if self.rng.chance(500) {
            self.continue_flow(m)
        } else {
            self.container_opens(m)
        };
        let Event::Send { from, pkt } = base else {
            return base;
        };
        let body = match &pkt.body {
            Body::Tcp { .. } | Body::Udp { .. } => Body::Udp {
                payload: self.rng.range(64, 600) as u16,
            },
            b => b.clone(),
        };
        // Only UDP and echo bodies are fragmented here; a TCP flow's tuple stays as it is
        // (its fragments then carry a UDP datagram of the same ports).
        let id = self.rng.u16();
        let total = match &body {
            Body::Udp { payload } => 8 + payload,
            Body::Echo { payload, .. } => 8 + payload,
            _ => 64,
        };
        let first_len = (self.rng.range(1, u64::from(total / 8).max(1)) as u16) * 8;
        let mk = |frag| Event::Send {
            from,
            pkt: Pkt {
                body: body.clone(),
                id,
                frag,
                ..pkt.clone()
            },
        };
        let first = mk(FragSpec::First { len: first_len });
        let rest = total.saturating_sub(first_len);
        // One or two later fragments (8-byte multiples but for the last).
        let mid = (rest / 2 / 8) * 8;
        let mut later = Vec::new();
        if mid == 0 {
            later.push(mk(FragSpec::Later {
                offset: first_len,
                len: rest,
                more: false,
            }));
        } else {
            later.push(mk(FragSpec::Later {
                offset: first_len,
                len: mid,
                more: true,
            }));
            later.push(mk(FragSpec::Later {
                offset: first_len + mid,
                len: rest - mid,
                more: false,
            }));
        }
        let mut order = match self.rng.below(20) {
            // In order.
            0..=11 => std::iter::once(first).chain(later).collect::<Vec<_>>(),
            // A later fragment before the first.
            12..=16 => {
                let mut v = later;
                v.insert(1.min(v.len()), first);
                v
            }
            // The first never arrives.
            _ => later,
        };
        let head = order.remove(0);
        self.pending.extend(order);
        head
    }

    /// Traffic off the beaten track: a container on another network's bridge, a DHCP
    /// client, the host's stack into a bridge, something that is not IPv4.
    pub(super) fn odd(&mut self, m: &Model) -> Event {
        match self.rng.below(4) {
            0 => {
                let Event::Send { pkt, .. } = self.container_opens(m) else {
                    unreachable!()
                };
                Event::Send {
                    from: From::Container {
                        net: self.rng.below(2) as usize,
                    },
                    pkt,
                }
            }
            1 => Event::Send {
                from: From::Container {
                    net: self.rng.below(2) as usize,
                },
                pkt: Pkt::new(
                    TupleRef::Lit(Tuple::new(
                        Ipv4Addr::UNSPECIFIED,
                        Ipv4Addr::BROADCAST,
                        68,
                        67,
                        PROTO_UDP,
                    )),
                    Body::Udp { payload: 240 },
                ),
            },
            2 => {
                let mut e = self.inbound(m);
                if let Event::Send { from, .. } = &mut e {
                    *from = From::ToContainer {
                        net: self.rng.below(2) as usize,
                    };
                }
                e
            }
            _ => {
                let mut e = self.some_packet(m);
                if let Event::Send { pkt, .. } = &mut e {
                    if self.rng.chance(500) {
                        pkt.body = Body::Proto {
                            proto: *self.rng.pick(&[47, 132, 50]),
                            payload: 40,
                        };
                    } else if self.rng.chance(500) {
                        pkt.body = Body::IcmpOther {
                            icmp_type: *self.rng.pick(&[13, 5, 9]),
                        };
                    } else {
                        pkt.mangle
                            .push(Mangle::EtherType(*self.rng.pick(&[0x0806, 0x86dd])));
                    }
                }
                e
            }
        }
    }

    /// Makes a packet wrong: cut short, a bad header length or version, a total length
    /// that lies, odd TCP flags or data offset, checksums zero or wrong, padding.
    pub(super) fn mangle(&mut self, e: &mut Event) {
        let Event::Send { pkt, .. } = e else {
            return;
        };
        let r = &mut self.rng;
        for _ in 0..r.range(1, 2) {
            let m = match r.below(11) {
                0 => Mangle::Truncate(r.range(14, 80) as u16),
                1 => Mangle::Ihl(r.below(16) as u8),
                2 => Mangle::Version(*r.pick(&[0, 6, 15])),
                3 => Mangle::TotLen(*r.pick(&[0, 20, 27, 40, 1500, 0xffff])),
                4 => Mangle::TcpFlags(r.u16() as u8),
                5 => Mangle::Doff(r.below(16) as u8),
                6 => Mangle::ZeroUdpChecksum,
                7 => Mangle::BadL4Checksum,
                8 => Mangle::BadIpChecksum,
                9 => Mangle::Pad(r.range(1, 64) as u16),
                _ => Mangle::TotLen(r.range(20, 200) as u16),
            };
            pkt.mangle.push(m);
        }
    }
}
