//! The fuzzer's events: what happens to the host, one at a time. A packet names its
//! addresses either as they are or by what they refer to in the state at the moment it is
//! sent ("the other half of this flow", "the external port of this endpoint's mapping"),
//! so that a sequence replays with the same meaning when the datapath picks other random
//! ports, or when shrinking has removed the packets before it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{BindKey, Config, HostSocket, Model, PubKey, Tuple};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// The episode's host: whether network 2 masquerades (else it is routed), and which
    /// containers the fast path can hand packets to directly.
    Setup {
        n2_masquerade: bool,
        endpoints: Vec<Ipv4Addr>,
    },
    /// New settings (`netfast config`).
    Config(Config),
    /// Time passes (seconds).
    Advance(u32),
    Publish {
        key: PubKey,
        to: (Ipv4Addr, u16),
        net: u16,
        /// The allow-list's rule (0: anyone) and its prefixes.
        rule: u32,
        allow: Vec<Ipv4Net>,
    },
    /// The publication goes; with `end_flows`, its flows with it (as `netfast unpublish`).
    Unpublish { key: PubKey, end_flows: bool },
    /// One of the host's own sockets opens or closes.
    Socket { sock: HostSocket, open: bool },
    /// The LRU evicts one entry of a flow (the table is full of others): the flow must be
    /// repaired from its other half, or its next packet must open it again.
    Evict {
        table: crate::model::conntrack::Table,
        key: TupleRef,
    },
    /// The LRU evicts the binding of the masquerade mapping of a flow (the bindings table is
    /// full of others) while the flow lives: the flow's next packet makes it again, not
    /// knowing how many flows use it. With `claim`, the mapping's port claim instead: the
    /// next packet claims it again, unless another endpoint took the port meanwhile.
    EvictMapping {
        key: TupleRef,
        #[serde(default)]
        claim: bool,
    },
    /// A packet enters.
    Send { from: From, pkt: Pkt },
}

/// Where a packet enters the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum From {
    /// From a container, on the bridge of network `net` (0 or 1): the bridge's ingress;
    /// if the packet goes on and the host would route it out of the uplink, the uplink's
    /// egress, as routed.
    Container { net: usize },
    /// From the outside: the uplink's ingress.
    Outside,
    /// From the host's own sockets: the uplink's egress.
    Host,
    /// The host's stack towards a container of network `net`: the bridge's egress.
    ToContainer { net: usize },
}

/// A packet: its tuple, what it carries, and what is odd about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pkt {
    pub tuple: TupleRef,
    pub body: Body,
    pub ttl: u8,
    pub id: u16,
    /// 32-bit words of IPv4 options (NOPs).
    pub options: u8,
    pub frag: FragSpec,
    /// Applied in order to the built frame.
    pub mangle: Vec<Mangle>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Body {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        win: u16,
        /// A window scale option (and an MSS before it).
        wscale: Option<u8>,
        payload: u16,
    },
    Udp {
        payload: u16,
    },
    /// ICMP echo: a request's identifier is the tuple's source port, a reply's its
    /// destination port.
    Echo {
        reply: bool,
        seq: u16,
        payload: u16,
    },
    /// An ICMP error quoting a packet of `quote.tuple`.
    Error {
        icmp_type: u8,
        code: u8,
        quote: Box<Quote>,
    },
    /// Another ICMP message (a timestamp request, say).
    IcmpOther {
        icmp_type: u8,
    },
    /// Another protocol.
    Proto {
        proto: u8,
        payload: u16,
    },
}

/// The packet an ICMP error quotes, and how many bytes of it (0: all).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quote {
    pub tuple: TupleRef,
    pub body: Body,
    pub len: u16,
}

/// Which part of its datagram a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FragSpec {
    Whole,
    /// The first fragment, carrying `len` bytes of the datagram's L4 part.
    First {
        len: u16,
    },
    /// A later fragment: `len` bytes from `offset` (multiples of 8).
    Later {
        offset: u16,
        len: u16,
        more: bool,
    },
}

/// What is wrong with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mangle {
    /// The frame cut to this many bytes — no shorter than BPF_PROG_TEST_RUN takes: an
    /// Ethernet header, and the fixed IPv4 (or IPv6) header when the Ethernet type says so
    /// (the kernel refuses shorter ones before any program runs).
    Truncate(u16),
    /// The IHL nibble (the header checksum kept right).
    Ihl(u8),
    Version(u8),
    /// The IPv4 total length (the header checksum kept right).
    TotLen(u16),
    /// The TCP flags byte (the checksum kept right).
    TcpFlags(u8),
    /// The TCP data offset nibble (the checksum kept right).
    Doff(u8),
    ZeroUdpChecksum,
    BadL4Checksum,
    BadIpChecksum,
    EtherType(u16),
    /// Bytes after the packet (a frame's padding).
    Pad(u16),
}

/// A tuple, as given or by reference to the state when the packet is sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TupleRef {
    Lit(Tuple),
    /// The key of the other entry of the flow whose entry is keyed `of` (`hint` if the
    /// model has no such entry).
    Peer {
        of: Box<TupleRef>,
        hint: Tuple,
    },
    Reversed(Box<TupleRef>),
    /// `tuple` with the port of its source (`src`) or destination replaced by the external
    /// port of the mapping of the internal endpoint `int` on that side's address (`hint`
    /// if it has none).
    Mapped {
        tuple: Tuple,
        src: bool,
        int: (Ipv4Addr, u16),
        hint: u16,
    },
}

impl TupleRef {
    pub fn resolve(&self, m: &Model) -> Tuple {
        match self {
            TupleRef::Lit(t) => *t,
            TupleRef::Peer { of, hint } => {
                let k = of.resolve(m);
                m.ct.main
                    .get(&k)
                    .or_else(|| m.ct.inbound.get(&k))
                    .map_or(*hint, |e| e.peer_key(&k))
            }
            TupleRef::Reversed(r) => r.resolve(m).reversed(),
            TupleRef::Mapped {
                tuple,
                src,
                int,
                hint,
            } => {
                let ext_addr = if *src { tuple.src } else { tuple.dst };
                let bk = BindKey {
                    int_addr: int.0,
                    ext_addr,
                    int_port: int.1,
                    proto: tuple.proto,
                };
                let port = m.bindings.get(&bk).map_or(*hint, |b| b.ext_port);
                let mut t = *tuple;
                if *src {
                    t.sport = port;
                } else {
                    t.dport = port;
                }
                t
            }
        }
    }
}

impl Pkt {
    /// A plain packet: TTL 64, no options, whole, nothing odd.
    pub fn new(tuple: TupleRef, body: Body) -> Pkt {
        Pkt {
            tuple,
            body,
            ttl: 64,
            id: 1,
            options: 0,
            frag: FragSpec::Whole,
            mangle: Vec::new(),
        }
    }
}

/// A one-line description of an event, for reports and fixtures.
pub fn describe(e: &Event, m: &Model) -> String {
    match e {
        Event::Setup {
            n2_masquerade,
            endpoints,
        } => format!(
            "setup: network 2 {}, fast-path endpoints {endpoints:?}",
            if *n2_masquerade {
                "masqueraded"
            } else {
                "routed"
            }
        ),
        Event::Config(c) => format!("config {c:?}"),
        Event::Advance(s) => format!("clock +{s}s"),
        Event::Publish {
            key,
            to,
            rule,
            allow,
            ..
        } => format!(
            "publish {}:{}/{} -> {}:{} (rule {rule}, allow {allow:?})",
            key.addr.map_or("*".to_string(), |a| a.to_string()),
            key.port,
            key.proto,
            to.0,
            to.1
        ),
        Event::Unpublish { key, end_flows } => format!(
            "unpublish {}:{}/{}{}",
            key.addr.map_or("*".to_string(), |a| a.to_string()),
            key.port,
            key.proto,
            if *end_flows { " and end its flows" } else { "" }
        ),
        Event::Socket { sock, open } => format!(
            "host socket {}:{}/{} {}",
            sock.addr,
            sock.port,
            sock.proto,
            if *open { "opens" } else { "closes" }
        ),
        Event::Evict { table, key } => {
            format!("the LRU evicts {} from the {table:?} table", key.resolve(m))
        }
        Event::EvictMapping { key, claim } => format!(
            "the LRU evicts the {} of the mapping of {}",
            if *claim { "claim" } else { "binding" },
            key.resolve(m)
        ),
        Event::Send { from, pkt } => {
            let t = pkt.tuple.resolve(m);
            let body = match &pkt.body {
                Body::Tcp {
                    flags,
                    seq,
                    ack,
                    payload,
                    ..
                } => {
                    format!(
                        "tcp [{}] seq {seq} ack {ack} len {payload}",
                        tcp_flags(*flags)
                    )
                }
                Body::Udp { payload } => format!("udp len {payload}"),
                Body::Echo { reply, .. } => {
                    if *reply { "echo reply" } else { "echo request" }.to_string()
                }
                Body::Error {
                    icmp_type,
                    code,
                    quote,
                } => format!(
                    "icmp error {icmp_type}/{code} about {}",
                    quote.tuple.resolve(m)
                ),
                Body::IcmpOther { icmp_type } => format!("icmp type {icmp_type}"),
                Body::Proto { proto, .. } => format!("ip proto {proto}"),
            };
            let mut s = format!("{from:?}: {t} {body}");
            if pkt.frag != FragSpec::Whole {
                s.push_str(&format!(" {:?}", pkt.frag));
            }
            if pkt.ttl != 64 {
                s.push_str(&format!(" ttl {}", pkt.ttl));
            }
            if pkt.options != 0 {
                s.push_str(&format!(" +{} option words", pkt.options));
            }
            if !pkt.mangle.is_empty() {
                s.push_str(&format!(" mangled {:?}", pkt.mangle));
            }
            s
        }
    }
}

pub fn tcp_flags(f: u8) -> String {
    let names = [
        (0x02, 'S'),
        (0x10, '.'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ];
    let s: String = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() { "none".into() } else { s }
}

impl HostSocket {
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.addr, self.port, self.proto)
    }
}

impl PubKey {
    pub fn any(port: u16, proto: u8) -> PubKey {
        PubKey {
            addr: None,
            port,
            proto,
        }
    }
}
