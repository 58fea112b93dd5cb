//! Random but plausible events: containers in two networks opening flows to servers, to
//! each other and to the host's published ports; the flows going on both ways through the
//! hooks they would cross (handshakes, data, closes, resets — in window and blind);
//! clients of published ports; the host's own sockets; ICMP errors about flows that exist
//! and do not; fragments in and out of order; time passing past every timeout; publications
//! and settings changing; and packets made wrong in every way the parsers must survive.
//! The generator looks at the model's state to pick what to continue, never at the
//! datapath's.

mod host;
mod wrong;

use std::{collections::VecDeque, net::Ipv4Addr};

use super::{
    event::{Body, Event, From, Pkt, TupleRef},
    rng::Rng,
    topology::{CONTAINERS, EXT, EXT2, GW1, GW2, REMOTES},
};
use crate::model::{
    Config, Entry, Model, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Timeouts, Tuple, conntrack::Table, tcp,
};

const CONTAINER_PORTS: [u16; 8] = [40000, 40001, 40002, 80, 53, 1024, 5000, 12345];
const SERVER_PORTS: [u16; 5] = [80, 443, 53, 40000, 8080];
const CLIENT_PORTS: [u16; 5] = [55555, 40000, 1234, 8080, 1024];
const PUBLISHED_PORTS: [u16; 5] = [8080, 8081, 40000, 53, 5000];
const TARGET_PORTS: [u16; 4] = [80, 53, 5000, 40000];
const ICMP_IDS: [u16; 5] = [1, 2, 40000, 0, 1024];

/// TCP flag bytes.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;

pub struct Gen {
    rng: Rng,
    /// Events decided together (a datagram's fragments), sent one after another.
    pending: VecDeque<Event>,
    next_rule: u32,
}

fn all_containers() -> Vec<(usize, Ipv4Addr)> {
    CONTAINERS
        .iter()
        .enumerate()
        .flat_map(|(i, cs)| cs.iter().map(move |a| (i, *a)))
        .collect()
}

fn net_of(addr: Ipv4Addr) -> Option<usize> {
    CONTAINERS.iter().position(|cs| cs.contains(&addr))
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            pending: VecDeque::new(),
            next_rule: 1,
        }
    }

    /// The events an episode starts with: its host and settings, and a publication or two.
    pub fn start(&mut self) -> Vec<Event> {
        let r = &mut self.rng;
        let endpoints = all_containers()
            .into_iter()
            .filter(|_| r.chance(500))
            .map(|(_, a)| a)
            .collect();
        let mut events = vec![
            Event::Setup {
                n2_masquerade: r.chance(800),
                endpoints,
            },
            Event::Config(self.config(Config::default())),
        ];
        for _ in 0..self.rng.below(4) {
            events.push(self.publish());
        }
        events
    }

    /// Settings drawn around the defaults: the fast path on or off, filtering, a port range
    /// small enough to run out, short timeouts.
    fn config(&mut self, base: Config) -> Config {
        let r = &mut self.rng;
        let mut c = base;
        c.fast_path = r.chance(700);
        c.endpoint_independent = r.chance(300);
        match r.below(10) {
            0..=5 => (c.port_min, c.port_max) = (1024, 65535),
            6 | 7 => {
                let lo = 40000;
                (c.port_min, c.port_max) = (lo, lo + r.range(1, 8) as u16);
            }
            8 => (c.port_min, c.port_max) = (1024, 1100),
            _ => (c.port_min, c.port_max) = (65530, 65535),
        }
        c.timeouts = if r.chance(300) {
            Timeouts {
                tcp_established: 100,
                tcp_transitory: 20,
                tcp_close: 5,
                udp: 30,
                icmp: 10,
            }
        } else {
            Timeouts::default()
        };
        c
    }

    pub fn next(&mut self, m: &Model) -> Event {
        if let Some(e) = self.pending.pop_front() {
            return e;
        }
        let roll = self.rng.below(1000);
        let mut e = match roll {
            0..=219 => self.container_opens(m),
            220..=549 => self.continue_flow(m),
            550..=639 => self.inbound(m),
            640..=689 => self.host_sends(m),
            690..=749 => self.icmp_error(m),
            750..=789 => self.fragments(m),
            790..=849 => self.advance(m),
            850..=874 => {
                if self.rng.chance(600) || m.publications.is_empty() {
                    self.publish()
                } else {
                    self.unpublish(m)
                }
            }
            875..=884 => Event::Config(self.config(m.config)),
            885..=894 => self.socket(m),
            895..=904 => self.evict(m),
            905..=919 => self.odd(m),
            _ => {
                let mut e = self.some_packet(m);
                self.mangle(&mut e);
                e
            }
        };
        // Now and then a TTL about to expire or IPv4 options, on any packet.
        if let Event::Send { pkt, .. } = &mut e {
            if self.rng.chance(20) {
                pkt.ttl = *self.rng.pick(&[0, 1, 2]);
            }
            if self.rng.chance(20) {
                pkt.options = self.rng.range(1, 10) as u8;
            }
        }
        e
    }

    /// A packet of the host's own: it crosses the uplink's egress only.
    pub fn host_packet(&mut self, m: &Model) -> Event {
        self.pending.clear();
        self.host_sends(m)
    }

    fn some_packet(&mut self, m: &Model) -> Event {
        match self.rng.below(5) {
            0 => self.container_opens(m),
            1 | 2 => self.continue_flow(m),
            3 => self.inbound(m),
            _ => self.icmp_error(m),
        }
    }

    fn proto(&mut self) -> u8 {
        match self.rng.below(100) {
            0..=44 => PROTO_TCP,
            45..=84 => PROTO_UDP,
            _ => PROTO_ICMP,
        }
    }

    /// A packet that opens a flow of `proto` (mostly: a TCP segment is now and then not a
    /// plain SYN).
    fn opening_body(&mut self, proto: u8) -> Body {
        let r = &mut self.rng;
        match proto {
            PROTO_TCP => Body::Tcp {
                flags: match r.below(20) {
                    0 => ACK,
                    1 => SYN | FIN,
                    2 => RST,
                    3 => SYN | ACK,
                    4 => r.u16() as u8,
                    _ => SYN,
                },
                seq: r.u32(),
                ack: 0,
                win: 64240,
                wscale: r.chance(600).then(|| *r.pick(&[0, 7, 14, 15])),
                payload: 0,
            },
            PROTO_UDP => Body::Udp {
                payload: r.range(0, 200) as u16,
            },
            _ => Body::Echo {
                reply: false,
                seq: r.u16(),
                payload: r.range(0, 64) as u16,
            },
        }
    }

    fn container_opens(&mut self, m: &Model) -> Event {
        let (net, src) = *self.rng.pick(&all_containers());
        // Now and then to a live mapping's external endpoint (another container's, or its
        // own): a hairpin to a mapping.
        if !m.bindings.is_empty() && self.rng.chance(120) {
            let bks: Vec<_> = m.bindings.iter().map(|(k, b)| (*k, *b)).collect();
            let (bk, b) = *self.rng.pick(&bks);
            let sport = *self.rng.pick(&CONTAINER_PORTS);
            let t = if bk.proto == PROTO_ICMP {
                Tuple::new(src, bk.ext_addr, sport, 0, bk.proto)
            } else {
                Tuple::new(src, bk.ext_addr, sport, b.ext_port, bk.proto)
            };
            return Event::Send {
                from: From::Container { net },
                pkt: Pkt::new(
                    TupleRef::Mapped {
                        tuple: t,
                        src: false,
                        int: (bk.int_addr, bk.int_port),
                        hint: b.ext_port,
                    },
                    self.opening_body(bk.proto),
                ),
            };
        }
        let proto = self.proto();
        let sport = if proto == PROTO_ICMP {
            *self.rng.pick(&ICMP_IDS)
        } else if self.rng.chance(100) {
            self.rng.range(1, 65535) as u16
        } else {
            *self.rng.pick(&CONTAINER_PORTS)
        };
        let (dst, dport) = match self.rng.below(100) {
            0..=59 => (*self.rng.pick(&REMOTES[..4]), *self.rng.pick(&SERVER_PORTS)),
            60..=74 => (
                *self.rng.pick(&[EXT, EXT, EXT2, GW1, GW2]),
                *self.rng.pick(&PUBLISHED_PORTS),
            ),
            75..=82 => (
                *self.rng.pick(CONTAINERS[1 - net]),
                *self.rng.pick(&TARGET_PORTS),
            ),
            83..=87 => (
                *self.rng.pick(CONTAINERS[net]),
                *self.rng.pick(&TARGET_PORTS),
            ),
            88..=89 => (Ipv4Addr::LOCALHOST, 5432),
            _ => (*self.rng.pick(&REMOTES[4..]), *self.rng.pick(&CLIENT_PORTS)),
        };
        let tuple = if proto == PROTO_ICMP {
            Tuple::new(src, dst, sport, 0, proto)
        } else {
            Tuple::new(src, dst, sport, dport, proto)
        };
        Event::Send {
            from: From::Container { net },
            pkt: Pkt::new(TupleRef::Lit(tuple), self.opening_body(proto)),
        }
    }

    /// How to name an entry's key so that it means the same flow on replay.
    fn ref_of(m: &Model, key: &Tuple, e: &Entry) -> TupleRef {
        if e.flags.reply {
            let orig_key = e.peer_key(key);
            let orig =
                m.ct.main
                    .get(&orig_key)
                    .or_else(|| m.ct.inbound.get(&orig_key));
            return match orig {
                Some(o) if !o.flags.reply => TupleRef::Peer {
                    of: Box::new(Self::ref_of(m, &orig_key, o)),
                    hint: *key,
                },
                _ => TupleRef::Lit(*key),
            };
        }
        // To a mapping's external port (the endpoint-independent case, a hairpin to a
        // mapping): named by the mapping's owner.
        match e.new_dst {
            Some(int) if e.flags.masq_dst || e.flags.two_mappings => TupleRef::Mapped {
                tuple: *key,
                src: false,
                int,
                hint: key.dport,
            },
            _ => TupleRef::Lit(*key),
        }
    }

    /// Where a packet of an entry's direction enters.
    fn side_of(key: &Tuple, e: &Entry) -> From {
        if !e.flags.from_inside {
            From::Outside
        } else if let Some(net) = net_of(key.src) {
            From::Container { net }
        } else {
            From::Host
        }
    }

    fn pick_entry(&mut self, m: &Model) -> Option<(Tuple, Entry)> {
        self.pick_entry_in(m).map(|(k, e, _)| (k, e))
    }

    fn pick_entry_in(&mut self, m: &Model) -> Option<(Tuple, Entry, Table)> {
        let n = m.ct.main.len() + m.ct.inbound.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n as u64) as usize;
        m.ct.main
            .iter()
            .map(|(k, e)| (*k, *e, Table::Main))
            .chain(m.ct.inbound.iter().map(|(k, e)| (*k, *e, Table::Inbound)))
            .nth(i)
    }

    /// One entry of a tracked flow is evicted; now and then a new flow then takes its tuple
    /// and the old flow's other entry sees a packet (see `take_over`).
    fn evict(&mut self, m: &Model) -> Event {
        let Some((key, e, table)) = self.pick_entry_in(m) else {
            return self.container_opens(m);
        };
        // Now and then the mapping of a masqueraded flow instead: its binding or its claim.
        if e.flags.masq_src && self.rng.chance(250) {
            return Event::EvictMapping {
                key: Self::ref_of(m, &key, &e),
                claim: self.rng.chance(500),
            };
        }
        if self.rng.chance(400) {
            self.take_over(m, &key, &e);
        }
        Event::Evict {
            table,
            key: Self::ref_of(m, &key, &e),
        }
    }

    /// Queues, for after the eviction of `e` (keyed `key`): a packet that opens a new flow
    /// whose tuples may include the evicted one, then the old flow's next packet through the
    /// entry that is left. A flow from outside to a port published on every address comes
    /// again from the same client to the host's other address (its container's answers
    /// have the same tuple as the old flow's); any other flow opens again with its old
    /// original tuple (after a republication, or a mapping gone, its answers have another).
    /// Where the new flow took a tuple of the old one, the entry left is a stale half: it
    /// must not translate the old flow's packet towards the new flow (`ct_stale_half`).
    fn take_over(&mut self, m: &Model, key: &Tuple, e: &Entry) {
        let left_key = e.peer_key(key);
        let Some(left) =
            m.ct.main
                .get(&left_key)
                .or_else(|| m.ct.inbound.get(&left_key))
                .copied()
        else {
            return;
        };
        let (orig_key, orig) = if e.flags.reply {
            (left_key, left)
        } else {
            (*key, *e)
        };
        let mut t = orig_key;
        if orig.flags.published && !orig.flags.from_inside && e.flags.reply {
            t.dst = if t.dst == EXT { EXT2 } else { EXT };
        }
        let opening = Event::Send {
            from: Self::side_of(&orig_key, &orig),
            pkt: Pkt::new(TupleRef::Lit(t), self.opening_body(t.proto)),
        };
        let body = match left_key.proto {
            PROTO_TCP => self.tcp_next(&left, None),
            PROTO_UDP => Body::Udp {
                payload: self.rng.range(0, 300) as u16,
            },
            _ => Body::Echo {
                reply: left_key.sport == 0 && left_key.dport != 0,
                seq: self.rng.u16(),
                payload: 8,
            },
        };
        let next = Event::Send {
            from: Self::side_of(&left_key, &left),
            pkt: Pkt::new(TupleRef::Lit(left_key), body),
        };
        self.pending.extend([opening, next]);
    }

    /// The next packet of a tracked flow, in either direction, from where it would come.
    fn continue_flow(&mut self, m: &Model) -> Event {
        let Some((key, e)) = self.pick_entry(m) else {
            return self.container_opens(m);
        };
        let peer =
            m.ct.main
                .get(&e.peer_key(&key))
                .or_else(|| m.ct.inbound.get(&e.peer_key(&key)))
                .copied();
        let body = match key.proto {
            PROTO_TCP => self.tcp_next(&e, peer.as_ref()),
            PROTO_UDP => Body::Udp {
                // Now and then over the MTU (the fast path leaves it to the host).
                payload: if self.rng.chance(30) {
                    self.rng.range(1400, 1700) as u16
                } else {
                    self.rng.range(0, 300) as u16
                },
            },
            _ => Body::Echo {
                reply: key.sport == 0 && key.dport != 0,
                seq: self.rng.u16(),
                payload: self.rng.range(0, 64) as u16,
            },
        };
        Event::Send {
            from: Self::side_of(&key, &e),
            pkt: Pkt::new(Self::ref_of(m, &key, &e), body),
        }
    }

    /// A plausible next segment from the side of entry `e`, given the flow's state: the
    /// handshake's next step, data, a close, a reset in the window or far from it.
    fn tcp_next(&mut self, e: &Entry, peer: Option<&Entry>) -> Body {
        let r = &mut self.rng;
        let reply = e.flags.reply;
        let own_seq = if e.flags.td_seen {
            e.window.end
        } else {
            r.u32()
        };
        let their = peer
            .filter(|p| p.flags.td_seen)
            .map_or(r.u32(), |p| p.window.end);
        let (flags, seq, ack, payload) = match (e.state, reply) {
            (tcp::State::SynSent, true) => match r.below(10) {
                0 => (RST | ACK, 0, their, 0),
                1 => (ACK, own_seq, their, 0),
                _ => (SYN | ACK, r.u32(), their, 0),
            },
            (tcp::State::SynSent | tcp::State::None, false) => {
                if r.chance(500) {
                    (SYN, own_seq.wrapping_sub(1), 0, 0)
                } else {
                    (ACK, own_seq, their, 0)
                }
            }
            (tcp::State::SynRecv, false) => (ACK, own_seq, their, 0),
            (tcp::State::Close | tcp::State::TimeWait, false) if r.chance(300) => {
                (SYN, r.u32(), 0, 0)
            }
            _ => match r.below(20) {
                0..=11 => (ACK | PSH, own_seq, their, r.range(0, 400) as u16),
                12 => (ACK | PSH, own_seq, their, r.range(1400, 1700) as u16),
                13 | 14 => (FIN | ACK, own_seq, their, 0),
                15 => (RST, own_seq.wrapping_add(r.range(0, 1000) as u32), 0, 0),
                16 => (RST | ACK, r.u32(), their, 0),
                17 => (SYN, r.u32(), 0, 0),
                18 => (r.u16() as u8, own_seq, their, 0),
                _ => (ACK, own_seq, their, 0),
            },
        };
        let syn = flags & SYN != 0;
        Body::Tcp {
            flags,
            seq,
            ack,
            win: if r.chance(100) { r.u16() } else { 64240 },
            wscale: (syn && r.chance(600)).then(|| *r.pick(&[0, 2, 7, 14, 15])),
            payload,
        }
    }

    /// A packet from outside that no flow expects: to a published port, to a mapping (the
    /// endpoint-independent case), straight to a container, to the host, to loopback.
    fn inbound(&mut self, m: &Model) -> Event {
        let src = *self.rng.pick(&REMOTES);
        let sport = *self.rng.pick(&CLIENT_PORTS);
        let roll = self.rng.below(100);
        let tuple = if roll < 40 && !m.publications.is_empty() {
            let pubs: Vec<_> = m.publications.keys().copied().collect();
            let k = *self.rng.pick(&pubs);
            let addr = k.addr.unwrap_or(*self.rng.pick(&[EXT, EXT, EXT2]));
            TupleRef::Lit(Tuple::new(src, addr, sport, k.port, k.proto))
        } else if roll < 65 && !m.bindings.is_empty() {
            let bks: Vec<_> = m.bindings.iter().map(|(k, b)| (*k, *b)).collect();
            let (bk, b) = *self.rng.pick(&bks);
            let t = if bk.proto == PROTO_ICMP {
                Tuple::new(src, bk.ext_addr, 0, b.ext_port, bk.proto)
            } else {
                Tuple::new(src, bk.ext_addr, sport, b.ext_port, bk.proto)
            };
            TupleRef::Mapped {
                tuple: t,
                src: false,
                int: (bk.int_addr, bk.int_port),
                hint: b.ext_port,
            }
        } else if roll < 80 {
            let (_, c) = *self.rng.pick(&all_containers());
            let proto = self.proto();
            TupleRef::Lit(Tuple::new(
                src,
                c,
                sport,
                *self.rng.pick(&TARGET_PORTS),
                proto,
            ))
        } else if roll < 92 {
            let proto = self.proto();
            let dport = *self.rng.pick(&[40000, 22, 8080, 61000]);
            TupleRef::Lit(Tuple::new(
                src,
                *self.rng.pick(&[EXT, EXT2]),
                sport,
                dport,
                proto,
            ))
        } else {
            TupleRef::Lit(Tuple::new(src, Ipv4Addr::LOCALHOST, sport, 5432, PROTO_TCP))
        };
        let proto = match &tuple {
            TupleRef::Lit(t) | TupleRef::Mapped { tuple: t, .. } => t.proto,
            _ => PROTO_TCP,
        };
        let mut body = self.opening_body(proto);
        if let (Body::Echo { reply, .. }, TupleRef::Mapped { .. }) = (&mut body, &tuple) {
            // To a mapping, an echo is a reply (its identifier is the mapped one).
            *reply = true;
        }
        Event::Send {
            from: From::Outside,
            pkt: Pkt::new(tuple, body),
        }
    }

    /// The host's own packet out of the uplink, now and then from a port a container's
    /// mapping holds.
    fn host_sends(&mut self, m: &Model) -> Event {
        let dst = *self.rng.pick(&REMOTES[..4]);
        let held: Vec<_> = m
            .bindings
            .iter()
            .filter(|(k, _)| k.ext_addr == EXT && k.proto != PROTO_ICMP)
            .map(|(k, b)| (*k, *b))
            .collect();
        let tuple = if !held.is_empty() && self.rng.chance(500) {
            let (bk, b) = *self.rng.pick(&held);
            TupleRef::Mapped {
                tuple: Tuple::new(
                    EXT,
                    dst,
                    b.ext_port,
                    *self.rng.pick(&SERVER_PORTS),
                    bk.proto,
                ),
                src: true,
                int: (bk.int_addr, bk.int_port),
                hint: b.ext_port,
            }
        } else {
            let proto = self.proto();
            let sport = *self.rng.pick(&CONTAINER_PORTS);
            let src = *self.rng.pick(&[EXT, EXT2]);
            TupleRef::Lit(if proto == PROTO_ICMP {
                Tuple::new(src, dst, sport, 0, proto)
            } else {
                Tuple::new(src, dst, sport, *self.rng.pick(&SERVER_PORTS), proto)
            })
        };
        let proto = match &tuple {
            TupleRef::Lit(t) | TupleRef::Mapped { tuple: t, .. } => t.proto,
            _ => PROTO_UDP,
        };
        Event::Send {
            from: From::Host,
            pkt: Pkt::new(tuple, self.opening_body(proto)),
        }
    }
}
