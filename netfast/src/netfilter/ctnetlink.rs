//! The kernel's connection tracking table over netlink (ctnetlink), for networks a fallback
//! backend serves: their flows live there, not in the eBPF dataplane's map.
//!
//! Only what `netfast conntrack` and the loader need: a dump of the IPv4 table (narrowed by
//! the kernel where it can, [`DumpFilter`]), its events, and the deletion of an entry by its
//! original tuple.

use std::{io, mem::size_of, net::Ipv4Addr};

use super::nfnetlink::{
    NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, Socket, attrs, be16, be32, be64, io_err, nla,
};
use crate::{
    error::{Error, Result},
    maps::{Flow, Tuple},
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
/// `IPS_SEEN_REPLY` in CTA_STATUS.
const IPS_SEEN_REPLY: u32 = 1 << 1;

/// One direction of a kernel conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP echo identifier, type and code.
    pub icmp: Option<(u16, u8, u8)>,
}

impl Default for KTuple {
    fn default() -> Self {
        KTuple {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            sport: 0,
            dport: 0,
            icmp: None,
        }
    }
}

/// A kernel conntrack entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KEntry {
    pub original: KTuple,
    pub reply: KTuple,
    pub timeout: u32,
    pub status: u32,
    pub tcp_state: Option<u8>,
    /// Packets and bytes per direction, when `nf_conntrack_acct` is on.
    pub counters: Option<[(u64, u64); 2]>,
}

/// Conntrack's name of TCP state `s` (`CTA_PROTOINFO_TCP_STATE`).
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

impl KEntry {
    /// The entry in the form `netfast conntrack list` prints the dataplane's flows.
    pub fn flow(&self, network_id: u16) -> Flow {
        let tuple = |t: &KTuple, c: Option<(u64, u64)>| Tuple {
            src: t.src,
            dst: t.dst,
            sport: if t.icmp.is_some() { 0 } else { t.sport },
            dport: if t.icmp.is_some() { 0 } else { t.dport },
            id: t.icmp.map(|(id, _, _)| id),
            packets: c.map(|c| c.0),
            bytes: c.map(|c| c.1),
        };
        Flow::from_parts(
            self.original.proto,
            self.tcp_state.map(tcp_state_name),
            self.timeout,
            self.status & IPS_SEEN_REPLY == 0,
            network_id,
            tuple(&self.original, self.counters.map(|c| c[0])),
            tuple(&self.reply, self.counters.map(|c| c[1])),
        )
    }
}

fn parse_tuple(buf: &[u8]) -> KTuple {
    let mut t = KTuple::default();
    let mut icmp = (None, 0u8, 0u8);
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_IP_V4_SRC => t.src = Ipv4Addr::from(be32(p)),
                        CTA_IP_V4_DST => t.dst = Ipv4Addr::from(be32(p)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM => t.proto = p.first().copied().unwrap_or(0),
                        CTA_PROTO_SRC_PORT => t.sport = be16(p),
                        CTA_PROTO_DST_PORT => t.dport = be16(p),
                        CTA_PROTO_ICMP_ID => icmp.0 = Some(be16(p)),
                        CTA_PROTO_ICMP_TYPE => icmp.1 = p.first().copied().unwrap_or(0),
                        CTA_PROTO_ICMP_CODE => icmp.2 = p.first().copied().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t.icmp = icmp.0.map(|id| (id, icmp.1, icmp.2));
    t
}

fn parse_counters(buf: &[u8]) -> (u64, u64) {
    let mut c = (0, 0);
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_COUNTERS_PACKETS => c.0 = be64(p),
            CTA_COUNTERS_BYTES => c.1 = be64(p),
            _ => {}
        }
    }
    c
}

/// An entry from the attributes of a ctnetlink message (after its nfgenmsg).
fn parse_entry(buf: &[u8]) -> KEntry {
    let mut e = KEntry::default();
    let mut counters = [None, None];
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_ORIG => e.original = parse_tuple(p),
            CTA_TUPLE_REPLY => e.reply = parse_tuple(p),
            CTA_STATUS => e.status = be32(p),
            CTA_TIMEOUT => e.timeout = be32(p),
            CTA_PROTOINFO => {
                for (ty, p) in attrs(p) {
                    if ty == CTA_PROTOINFO_TCP {
                        for (ty, p) in attrs(p) {
                            if ty == CTA_PROTOINFO_TCP_STATE {
                                e.tcp_state = p.first().copied();
                            }
                        }
                    }
                }
            }
            CTA_COUNTERS_ORIG => counters[0] = Some(parse_counters(p)),
            CTA_COUNTERS_REPLY => counters[1] = Some(parse_counters(p)),
            _ => {}
        }
    }
    if let [Some(a), Some(b)] = counters {
        e.counters = Some([a, b]);
    }
    e
}

/// The kernel's conntrack table in this network namespace, through one netlink socket: a
/// command that reads, deletes and makes several entries asks over the same one.
pub struct Conntrack(Socket);

impl Conntrack {
    pub fn open() -> Result<Conntrack> {
        Ok(Conntrack(Socket::open()?))
    }

    /// Sends one ctnetlink request (`attrs` after the nfgenmsg) and returns every message of
    /// the answer up to NLMSG_DONE or the acknowledgement.
    fn request(&self, msg_type: u16, flags: u16, attrs: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.0
            .request_to(NFNL_SUBSYS_CTNETLINK, msg_type, flags, attrs)
    }

    /// The entry whose original direction is `t` (one hash lookup in the kernel, not a
    /// dump); `None` when there is none.
    pub fn get(&self, t: &KTuple) -> Result<Option<KEntry>> {
        let attrs = nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &encode_tuple(t));
        match self.request(IPCTNL_MSG_CT_GET, NLM_F_ACK, &attrs) {
            Ok(msgs) => Ok(msgs.first().map(|m| parse_entry(m))),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every IPv4 entry of the table.
    pub fn dump(&self) -> Result<Vec<KEntry>> {
        Ok(self
            .request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, &[])?
            .iter()
            .map(|m| parse_entry(m))
            .collect())
    }

    /// The IPv4 entries of the table, selected by the kernel as far as `f` goes
    /// (CTA_FILTER); a kernel without it (before 5.8) refuses or ignores the filter, and
    /// then the whole table comes back: callers filter what they get in any case.
    pub fn dump_matching(&self, f: &DumpFilter) -> Result<Vec<KEntry>> {
        let attrs = filter_attrs(f);
        if attrs.is_empty() {
            return self.dump();
        }
        match self.request(IPCTNL_MSG_CT_GET, NLM_F_DUMP, &attrs) {
            Ok(msgs) => Ok(msgs.iter().map(|m| parse_entry(m)).collect()),
            Err(_) => self.dump(),
        }
    }

    /// Makes an entry whose original direction is `t`, untranslated (its reply is `t`
    /// turned round), that lives `timeout` seconds unless its packets refresh it; false when
    /// an entry holds either direction already.
    pub fn create_untranslated(&self, t: &KTuple, timeout: u32) -> Result<bool> {
        let reply = KTuple {
            src: t.dst,
            dst: t.src,
            sport: t.dport,
            dport: t.sport,
            ..*t
        };
        let attrs = [
            nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &encode_tuple(t)),
            nla(CTA_TUPLE_REPLY | NLA_F_NESTED, &encode_tuple(&reply)),
            nla(CTA_TIMEOUT, &timeout.to_be_bytes()),
        ]
        .concat();
        let flags = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
        match self.request(IPCTNL_MSG_CT_NEW, flags, &attrs) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the entry whose original direction is `t`; false if it was already gone.
    pub fn delete(&self, t: &KTuple) -> Result<bool> {
        let attrs = nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &encode_tuple(t));
        match self.request(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, &attrs) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The errno the kernel answered a request with.
fn errno(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// `CTA_FILTER` (Linux 5.8): the attributes of the original tuple a dump must match.
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_F_IP_SRC: u32 = 1 << 0;
const CTA_FILTER_F_IP_DST: u32 = 1 << 1;
const CTA_FILTER_F_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_F_PROTO_SRC_PORT: u32 = 1 << 4;
const CTA_FILTER_F_PROTO_DST_PORT: u32 = 1 << 5;

/// What the kernel can select in a dump itself: exact values of the original tuple (ports
/// only with TCP or UDP). A CIDR, the reply tuple, "either tuple" or a TCP state it cannot
/// select: callers filter the dump as well, so this only makes it smaller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpFilter {
    pub proto: Option<u8>,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// The CTA_TUPLE_ORIG and CTA_FILTER attributes of a dump request for `f` (none when it
/// selects nothing).
fn filter_attrs(f: &DumpFilter) -> Vec<u8> {
    let mut flags = 0;
    // Each value given becomes an attribute in `into` and a bit of the filter's flags.
    let mut put = |into: &mut Vec<u8>, kind: u16, value: &[u8], flag: u32| {
        into.extend(nla(kind, value));
        flags |= flag;
    };
    let mut ip = Vec::new();
    if let Some(a) = f.src {
        put(&mut ip, CTA_IP_V4_SRC, &a.octets(), CTA_FILTER_F_IP_SRC);
    }
    if let Some(a) = f.dst {
        put(&mut ip, CTA_IP_V4_DST, &a.octets(), CTA_FILTER_F_IP_DST);
    }
    let mut proto = Vec::new();
    if let Some(p) = f.proto {
        put(&mut proto, CTA_PROTO_NUM, &[p], CTA_FILTER_F_PROTO_NUM);
        // The kernel reads ports only for a protocol that has them.
        if p == 6 || p == 17 {
            if let Some(port) = f.sport {
                let flag = CTA_FILTER_F_PROTO_SRC_PORT;
                put(&mut proto, CTA_PROTO_SRC_PORT, &port.to_be_bytes(), flag);
            }
            if let Some(port) = f.dport {
                let flag = CTA_FILTER_F_PROTO_DST_PORT;
                put(&mut proto, CTA_PROTO_DST_PORT, &port.to_be_bytes(), flag);
            }
        }
    }
    if flags == 0 {
        return Vec::new();
    }
    let mut tuple = Vec::new();
    if !ip.is_empty() {
        tuple.extend(nla(CTA_TUPLE_IP | NLA_F_NESTED, &ip));
    }
    if !proto.is_empty() {
        tuple.extend(nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto));
    }
    [
        nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple),
        nla(
            CTA_FILTER | NLA_F_NESTED,
            &nla(CTA_FILTER_ORIG_FLAGS, &flags.to_ne_bytes()),
        ),
    ]
    .concat()
}

/// The conntrack event groups: new, updated and destroyed entries.
const NF_NETLINK_CONNTRACK_ALL: u32 = 1 | 2 | 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;

/// What happened to an entry, as `conntrack -E` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

impl EventKind {
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::New => "NEW",
            EventKind::Update => "UPDATE",
            EventKind::Destroy => "DESTROY",
        }
    }
}

/// What an event message of `mtype` with `flags` reports: ctnetlink sends IPCTNL_MSG_CT_NEW
/// with NLM_F_CREATE for a new entry and without it for a change.
fn event_kind(mtype: u16, flags: u16) -> Option<EventKind> {
    if mtype >> 8 != NFNL_SUBSYS_CTNETLINK {
        return None;
    }
    match mtype & 0xff {
        IPCTNL_MSG_CT_DELETE => Some(EventKind::Destroy),
        IPCTNL_MSG_CT_NEW if flags & NLM_F_CREATE != 0 => Some(EventKind::New),
        IPCTNL_MSG_CT_NEW => Some(EventKind::Update),
        _ => None,
    }
}

/// A subscription to the kernel's conntrack events in this network namespace.
pub struct Events(Socket);

impl Events {
    pub fn subscribe() -> Result<Events> {
        let sock = Socket::open()?;
        // SAFETY: binding a socket we own to an address we built.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = NF_NETLINK_CONNTRACK_ALL;
        let rc = unsafe {
            libc::bind(
                sock.fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io_err("subscribing to conntrack events"));
        }
        Ok(Events(sock))
    }

    pub fn fd(&self) -> libc::c_int {
        self.0.fd
    }

    /// The events waiting on the socket (none if nothing is waiting).
    pub fn read(&self) -> Result<Vec<(EventKind, KEntry)>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe {
                libc::recv(
                    self.0.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(out),
                    // The kernel dropped events for want of room: say so and go on.
                    Some(libc::ENOBUFS) => {
                        log::warn!("some kernel conntrack events were lost (ENOBUFS)");
                        Ok(out)
                    }
                    _ => Err(Error::Io {
                        context: "reading conntrack events".into(),
                        source: e,
                    }),
                };
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().expect("4")) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                if mlen < 20 || mlen > rest.len() {
                    break;
                }
                if let Some(kind) = event_kind(mtype, flags) {
                    out.push((kind, parse_entry(&rest[20..mlen])));
                }
                rest = &rest[((mlen + 3) & !3).min(rest.len())..];
            }
        }
    }
}

fn encode_tuple(t: &KTuple) -> Vec<u8> {
    let ip = [
        nla(CTA_IP_V4_SRC, &t.src.octets()),
        nla(CTA_IP_V4_DST, &t.dst.octets()),
    ]
    .concat();
    let mut proto = nla(CTA_PROTO_NUM, &[t.proto]);
    if let Some((id, ty, code)) = t.icmp {
        proto.extend(nla(CTA_PROTO_ICMP_ID, &id.to_be_bytes()));
        proto.extend(nla(CTA_PROTO_ICMP_TYPE, &[ty]));
        proto.extend(nla(CTA_PROTO_ICMP_CODE, &[code]));
    } else {
        proto.extend(nla(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes()));
        proto.extend(nla(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes()));
    }
    [
        nla(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
        nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's TCP connection to an outside server.
    fn tcp() -> KTuple {
        KTuple {
            src: "172.18.0.2".parse().unwrap(),
            dst: "198.51.100.2".parse().unwrap(),
            proto: 6,
            sport: 40000,
            dport: 80,
            icmp: None,
        }
    }

    #[test]
    fn events_are_told_apart_by_type_and_create_flag() {
        let ct = |m: u16| (NFNL_SUBSYS_CTNETLINK << 8) | m;
        assert_eq!(
            event_kind(ct(IPCTNL_MSG_CT_NEW), NLM_F_CREATE | 0x200),
            Some(EventKind::New)
        );
        assert_eq!(
            event_kind(ct(IPCTNL_MSG_CT_NEW), 0),
            Some(EventKind::Update)
        );
        assert_eq!(
            event_kind(ct(IPCTNL_MSG_CT_DELETE), 0),
            Some(EventKind::Destroy)
        );
        assert_eq!(event_kind(ct(IPCTNL_MSG_CT_GET), 0), None);
        // Another netfilter subsystem (expectations) is not a flow.
        assert_eq!(event_kind((2 << 8) | IPCTNL_MSG_CT_NEW, NLM_F_CREATE), None);
    }

    #[test]
    fn a_dump_filter_names_exactly_the_attributes_it_sets() {
        assert!(filter_attrs(&DumpFilter::default()).is_empty());
        let f = DumpFilter {
            proto: Some(17),
            dst: Some("198.51.100.1".parse().unwrap()),
            dport: Some(5353),
            ..DumpFilter::default()
        };
        let request = filter_attrs(&f);
        let (mut tuple, mut flags) = (None, None);
        for (ty, p) in attrs(&request) {
            match ty {
                CTA_TUPLE_ORIG => tuple = Some(parse_tuple(p)),
                CTA_FILTER => {
                    for (ty, p) in attrs(p) {
                        assert_eq!(ty, CTA_FILTER_ORIG_FLAGS);
                        flags = Some(u32::from_ne_bytes(p.try_into().unwrap()));
                    }
                }
                other => panic!("attribute {other}"),
            }
        }
        let t = tuple.expect("a tuple");
        assert_eq!((t.proto, t.dst, t.dport), (17, f.dst.unwrap(), 5353));
        assert_eq!(
            flags,
            Some(CTA_FILTER_F_IP_DST | CTA_FILTER_F_PROTO_NUM | CTA_FILTER_F_PROTO_DST_PORT)
        );
        // ICMP has no ports for the kernel to compare: they are left to the caller.
        let icmp = filter_attrs(&DumpFilter {
            proto: Some(1),
            dport: Some(53),
            ..DumpFilter::default()
        });
        assert_eq!(
            icmp,
            filter_attrs(&DumpFilter {
                proto: Some(1),
                ..DumpFilter::default()
            })
        );
    }

    #[test]
    fn an_encoded_tuple_parses_back() {
        let t = tcp();
        assert_eq!(parse_tuple(&encode_tuple(&t)), t);
        let echo = KTuple {
            proto: 1,
            sport: 0,
            dport: 0,
            icmp: Some((77, 8, 0)),
            ..t
        };
        assert_eq!(parse_tuple(&encode_tuple(&echo)), echo);
    }

    #[test]
    fn an_entry_parses_with_state_timeout_and_counters() {
        let t = tcp();
        let r = KTuple {
            src: t.dst,
            dst: "198.51.100.1".parse().unwrap(),
            sport: 80,
            dport: 40000,
            ..t
        };
        let counters = |p: u64, b: u64| {
            [
                nla(CTA_COUNTERS_PACKETS, &p.to_be_bytes()),
                nla(CTA_COUNTERS_BYTES, &b.to_be_bytes()),
            ]
            .concat()
        };
        let msg = [
            nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &encode_tuple(&t)),
            nla(CTA_TUPLE_REPLY | NLA_F_NESTED, &encode_tuple(&r)),
            nla(CTA_STATUS, &(IPS_SEEN_REPLY | 4).to_be_bytes()),
            nla(CTA_TIMEOUT, &431_999_u32.to_be_bytes()),
            nla(
                CTA_PROTOINFO | NLA_F_NESTED,
                &nla(
                    CTA_PROTOINFO_TCP | NLA_F_NESTED,
                    &nla(CTA_PROTOINFO_TCP_STATE, &[3]),
                ),
            ),
            nla(CTA_COUNTERS_ORIG | NLA_F_NESTED, &counters(5, 300)),
            nla(CTA_COUNTERS_REPLY | NLA_F_NESTED, &counters(4, 2000)),
        ]
        .concat();
        let e = parse_entry(&msg);
        assert_eq!((e.original, e.reply), (t, r));
        assert_eq!(e.timeout, 431_999);
        assert_eq!(e.tcp_state, Some(3));
        assert_eq!(e.counters, Some([(5, 300), (4, 2000)]));
        let line = e.flow(1).line();
        assert!(
            line.contains("ESTABLISHED src=172.18.0.2 dst=198.51.100.2 sport=40000 dport=80 packets=5 bytes=300 src=198.51.100.2 dst=198.51.100.1 sport=80 dport=40000"),
            "{line}"
        );
        assert!(!line.contains("UNREPLIED"), "{line}");
    }
}
