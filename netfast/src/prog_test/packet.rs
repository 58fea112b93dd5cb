//! Building test frames with etherparse, and reading frames back with every checksum verified
//! by an RFC 1071 implementation that shares no code with the programs under test.

use std::{fmt::Write as _, net::Ipv4Addr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// MAC of a container's `eth0` in test frames.
pub const CONTAINER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// MAC of the bridge (the containers' gateway) in test frames.
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// MAC of the uplink in test frames.
pub const UPLINK_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x01];
/// MAC of the outside router in test frames.
pub const OUTSIDE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x02];

const ETH_HLEN: usize = 14;
const DEFAULT_TTL: u8 = 64;

/// An IPv4 address and a port (or ICMP identifier).
pub type Endpoint = (Ipv4Addr, u16);

/// TCP flags of a test segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

impl TcpFlags {
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    pub const PSH_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: true,
    };
    pub const FIN_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
        psh: false,
    };
    pub const RST: TcpFlags = TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
        psh: false,
    };
}

/// Source and destination MACs of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Macs {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

impl Macs {
    /// The MACs of a frame going back the other way.
    pub const fn reversed(self) -> Macs {
        Macs {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// A container sending to its gateway.
pub const FROM_CONTAINER: Macs = Macs {
    src: CONTAINER_MAC,
    dst: BRIDGE_MAC,
};
/// The host sending out of its uplink.
pub const TO_OUTSIDE: Macs = Macs {
    src: UPLINK_MAC,
    dst: OUTSIDE_MAC,
};
/// The outside sending to the host's uplink.
pub const FROM_OUTSIDE: Macs = TO_OUTSIDE.reversed();
/// The host sending into the bridge, towards a container.
pub const TO_CONTAINER: Macs = FROM_CONTAINER.reversed();

/// A TCP segment in an Ethernet frame, with correct checksums.
pub fn tcp(
    macs: Macs,
    src: Endpoint,
    dst: Endpoint,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.src, macs.dst)
        .ipv4(src.0.octets(), dst.0.octets(), DEFAULT_TTL)
        .tcp(src.1, dst.1, seq, 64240);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(ack);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    if flags.psh {
        b = b.psh();
    }
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload)
        .expect("writing to a Vec cannot fail");
    frame
}

/// A UDP datagram in an Ethernet frame, with correct checksums.
pub fn udp(macs: Macs, src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.src, macs.dst)
        .ipv4(src.0.octets(), dst.0.octets(), DEFAULT_TTL)
        .udp(src.1, dst.1);
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload)
        .expect("writing to a Vec cannot fail");
    frame
}

/// An ICMP echo request (`reply == false`) or reply with identifier `id`.
pub fn icmp_echo(
    macs: Macs,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    reply: bool,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b =
        PacketBuilder::ethernet2(macs.src, macs.dst).ipv4(src.octets(), dst.octets(), DEFAULT_TTL);
    let b = if reply {
        b.icmpv4_echo_reply(id, seq)
    } else {
        b.icmpv4_echo_request(id, seq)
    };
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload)
        .expect("writing to a Vec cannot fail");
    frame
}

/// The frame as a router forwards it: TTL one less, the header checksum recomputed.
pub fn routed(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[ETH_HLEN + 8] -= 1;
    f[ETH_HLEN + 10] = 0;
    f[ETH_HLEN + 11] = 0;
    let ihl = usize::from(f[ETH_HLEN] & 0x0f) * 4;
    let sum = !fold(ones_complement_sum(0, &f[ETH_HLEN..ETH_HLEN + ihl]));
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The frame with its Ethernet addresses replaced (what a redirect to a neighbour writes).
pub fn with_macs(frame: &[u8], macs: Macs) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&macs.dst);
    f[6..12].copy_from_slice(&macs.src);
    f
}

/// The IP packet inside an Ethernet frame (what an ICMP error quotes).
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[ETH_HLEN..]
}

/// An ICMP error (`icmp_type`/`code`, the 4 bytes after the checksum in `rest`: the next-hop
/// MTU for fragmentation-needed, the pointer for parameter problem) quoting `quoted`, the
/// start of the IP packet that caused it.
pub fn icmp_error(
    macs: Macs,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.src, macs.dst)
        .ipv4(src.octets(), dst.octets(), DEFAULT_TTL)
        .icmpv4_raw(icmp_type, code, rest);
    let mut frame = Vec::with_capacity(b.size(quoted.len()));
    b.write(&mut frame, quoted)
        .expect("writing to a Vec cannot fail");
    frame
}

/// An IPv4 packet of protocol `proto` (GRE, SCTP, …) carrying `payload`.
pub fn ip_proto(macs: Macs, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(
        payload.len() as u16,
        DEFAULT_TTL,
        etherparse::IpNumber(proto),
        src.octets(),
        dst.octets(),
    )
    .expect("a small payload fits");
    ip.header_checksum = ip.calc_header_checksum();
    let mut frame = Vec::new();
    frame.extend_from_slice(&macs.dst);
    frame.extend_from_slice(&macs.src);
    frame.extend_from_slice(&[0x08, 0x00]);
    ip.write(&mut frame).expect("writing to a Vec cannot fail");
    frame.extend_from_slice(payload);
    frame
}

/// Splits an unfragmented IPv4 frame into fragments carrying at most `chunk` bytes (a
/// multiple of 8) of its payload each, as a host does for a datagram larger than its MTU.
pub fn fragment(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert!(
        chunk.is_multiple_of(8) && chunk > 0,
        "fragment payloads are multiples of 8 bytes"
    );
    let (mut ip, rest) =
        etherparse::Ipv4Header::from_slice(ip_packet(frame)).expect("an IPv4 frame");
    let payload = &rest[..usize::from(ip.total_len) - ip.header_len()];
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let end = (offset + chunk).min(payload.len());
        ip.identification = id;
        ip.more_fragments = end < payload.len();
        ip.fragment_offset =
            etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset fits");
        ip.set_payload_len(end - offset).expect("payload fits");
        ip.header_checksum = ip.calc_header_checksum();
        let mut f = frame[..ETH_HLEN].to_vec();
        ip.write(&mut f).expect("writing to a Vec cannot fail");
        f.extend_from_slice(&payload[offset..end]);
        out.push(f);
        offset = end;
    }
    out
}

/// RFC 1071 sum of 16-bit big-endian words, not yet complemented.
pub fn ones_complement_sum(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// A [`ones_complement_sum`] folded into 16 bits (its complement is the checksum).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// True when `bytes` (checksum field included) sums to 0xffff: the checksum is right.
fn checksum_ok(acc: u32) -> bool {
    fold(acc) == 0xffff
}

/// What a test needs to know of a frame, read back after verifying its checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
    /// True for any fragment (more-fragments set or a non-zero offset): no L4 header checked.
    pub fragment: bool,
    pub l4: L4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        syn: bool,
        ack: bool,
        fin: bool,
        rst: bool,
        payload_len: usize,
    },
    /// `checksum` is the field as sent: zero means "none".
    Udp {
        src_port: u16,
        dst_port: u16,
        checksum: u16,
        payload_len: usize,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
        ident: Option<u16>,
        bytes: Vec<u8>,
    },
    Other,
}

/// Parses an Ethernet/IPv4 frame and verifies the IPv4 header checksum and, for an
/// unfragmented packet, the TCP, UDP (unless zero) or ICMP checksum.
pub fn decode(frame: &[u8]) -> Result<Decoded, String> {
    let sliced = SlicedPacket::from_ethernet(frame)
        .map_err(|e| format!("not a valid Ethernet frame: {e}"))?;
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err("not an IPv4 packet".into());
    };
    let hdr = ip.header();
    let ihl = usize::from(hdr.ihl()) * 4;
    let ip_bytes = &frame[ETH_HLEN..ETH_HLEN + ihl];
    if !checksum_ok(ones_complement_sum(0, ip_bytes)) {
        return Err(format!(
            "bad IPv4 header checksum {:#06x}",
            hdr.header_checksum()
        ));
    }
    let total_len = usize::from(hdr.total_len());
    if frame.len() < ETH_HLEN + total_len {
        return Err(format!(
            "IPv4 total length {total_len} runs past the frame ({} bytes)",
            frame.len()
        ));
    }
    let l4_bytes = &frame[ETH_HLEN + ihl..ETH_HLEN + total_len];
    let fragment = hdr.more_fragments() || hdr.fragments_offset().value() != 0;
    let protocol = hdr.protocol().0;
    let pseudo = {
        let mut acc = ones_complement_sum(0, &hdr.source());
        acc = ones_complement_sum(acc, &hdr.destination());
        acc += u32::from(protocol);
        acc + l4_bytes.len() as u32
    };
    let eth = sliced
        .link
        .as_ref()
        .and_then(etherparse::LinkSlice::to_header)
        .ok_or("no Ethernet header")?;
    let (src_mac, dst_mac) = match eth {
        etherparse::LinkHeader::Ethernet2(e) => (e.source, e.destination),
        etherparse::LinkHeader::LinuxSll(_) => return Err("not an Ethernet II frame".into()),
    };
    let l4 = if fragment {
        L4::Other
    } else {
        match &sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                if !checksum_ok(ones_complement_sum(pseudo, l4_bytes)) {
                    return Err(format!("bad TCP checksum {:#06x}", t.checksum()));
                }
                L4::Tcp {
                    src_port: t.source_port(),
                    dst_port: t.destination_port(),
                    syn: t.syn(),
                    ack: t.ack(),
                    fin: t.fin(),
                    rst: t.rst(),
                    payload_len: t.payload().len(),
                }
            }
            Some(TransportSlice::Udp(u)) => {
                if u.checksum() != 0 && !checksum_ok(ones_complement_sum(pseudo, l4_bytes)) {
                    return Err(format!("bad UDP checksum {:#06x}", u.checksum()));
                }
                L4::Udp {
                    src_port: u.source_port(),
                    dst_port: u.destination_port(),
                    checksum: u.checksum(),
                    payload_len: u.payload().len(),
                }
            }
            Some(TransportSlice::Icmpv4(i)) => {
                if !checksum_ok(ones_complement_sum(0, l4_bytes)) {
                    return Err(format!("bad ICMP checksum {:#06x}", i.checksum()));
                }
                let ident = match i.icmp_type() {
                    etherparse::Icmpv4Type::EchoRequest(e)
                    | etherparse::Icmpv4Type::EchoReply(e) => Some(e.id),
                    _ => None,
                };
                L4::Icmp {
                    icmp_type: i.type_u8(),
                    code: i.code_u8(),
                    ident,
                    bytes: l4_bytes.to_vec(),
                }
            }
            _ => L4::Other,
        }
    };
    Ok(Decoded {
        src_mac,
        dst_mac,
        src: hdr.source_addr(),
        dst: hdr.destination_addr(),
        ttl: hdr.ttl(),
        protocol,
        fragment,
        l4,
    })
}

/// The packet an ICMP error quotes, read back with its own checksums verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// TCP/UDP ports; for an ICMP echo, the identifier in both.
    pub sport: u16,
    pub dport: u16,
    /// Whether the quoted L4 checksum verifies; `None` when the quote is too short to tell
    /// (or a UDP checksum of zero, meaning none).
    pub l4_checksum_ok: Option<bool>,
}

/// The packet quoted by the ICMP error `frame`, after verifying the outer checksums (as
/// [`decode`] does) and the quoted IPv4 header checksum.
pub fn decode_quoted(frame: &[u8]) -> Result<Quoted, String> {
    let outer = decode(frame)?;
    let L4::Icmp { bytes, .. } = &outer.l4 else {
        return Err("not an ICMP message".into());
    };
    let inner = bytes
        .get(8..)
        .ok_or("ICMP message too short to quote a packet")?;
    let ihl = usize::from(inner.first().ok_or("empty quote")? & 0x0f) * 4;
    let ip = inner.get(..ihl).ok_or("quoted IPv4 header cut short")?;
    if !checksum_ok(ones_complement_sum(0, ip)) {
        return Err("bad quoted IPv4 header checksum".into());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &inner[ihl..];
    let whole = inner.len() >= total;
    let l4_full = if whole { &inner[ihl..total] } else { l4 };
    let pseudo = {
        let mut acc = ones_complement_sum(0, &ip[12..20]);
        acc += u32::from(protocol);
        acc + l4_full.len() as u32
    };
    let word = |at: usize| -> Result<u16, String> {
        l4.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "quoted L4 header cut short".to_string())
    };
    let (sport, dport, l4_checksum_ok) = match protocol {
        6 | 17 => {
            let csum = if protocol == 17 {
                word(6).ok()
            } else {
                word(16).ok()
            };
            let ok = match csum {
                Some(0) if protocol == 17 => None,
                Some(_) if whole => Some(checksum_ok(ones_complement_sum(pseudo, l4_full))),
                _ => None,
            };
            (word(0)?, word(2)?, ok)
        }
        1 => {
            let id = word(4)?;
            let ok = whole.then(|| checksum_ok(ones_complement_sum(0, l4_full)));
            (id, id, ok)
        }
        _ => (0, 0, None),
    };
    Ok(Quoted {
        src,
        dst,
        protocol,
        sport,
        dport,
        l4_checksum_ok,
    })
}

/// A frame for a human: what it decodes to (or why it does not), then a hex dump.
pub fn describe(frame: &[u8]) -> String {
    let mut out = match decode(frame) {
        Ok(d) => format!("{d:?}\n"),
        Err(e) => format!("(does not decode: {e})\n"),
    };
    for (i, line) in frame.chunks(16).enumerate() {
        let _ = write!(out, "  {:04x}:", i * 16);
        for b in line {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Endpoint = (Ipv4Addr::new(172, 18, 0, 2), 40000);
    const B: Endpoint = (Ipv4Addr::new(198, 51, 100, 2), 80);

    #[test]
    fn built_frames_decode_with_valid_checksums() {
        let d = decode(&tcp(FROM_CONTAINER, A, B, TcpFlags::SYN, 1, 0, b"")).unwrap();
        assert_eq!((d.src, d.dst), (A.0, B.0));
        assert!(matches!(
            d.l4,
            L4::Tcp {
                src_port: 40000,
                dst_port: 80,
                syn: true,
                ..
            }
        ));
        let d = decode(&udp(FROM_CONTAINER, A, B, b"hello")).unwrap();
        assert!(matches!(d.l4, L4::Udp { payload_len: 5, .. }));
        let d = decode(&icmp_echo(FROM_CONTAINER, A.0, B.0, false, A.1, 1, b"ping")).unwrap();
        assert!(matches!(
            d.l4,
            L4::Icmp {
                icmp_type: 8,
                ident: Some(40000),
                ..
            }
        ));
    }

    #[test]
    fn a_corrupted_checksum_is_caught() {
        let mut f = udp(FROM_CONTAINER, A, B, b"hello");
        f[ETH_HLEN + 12] ^= 1; // source address
        assert!(decode(&f).unwrap_err().contains("IPv4 header checksum"));
        let mut f = tcp(FROM_CONTAINER, A, B, TcpFlags::ACK, 1, 1, b"data");
        let last = f.len() - 1;
        f[last] ^= 0x40; // payload byte
        assert!(decode(&f).unwrap_err().contains("TCP checksum"));
        let mut f = udp(FROM_CONTAINER, A, B, b"hello");
        f[ETH_HLEN + 20] ^= 1; // source port
        assert!(decode(&f).unwrap_err().contains("UDP checksum"));
    }

    #[test]
    fn a_zero_udp_checksum_means_none() {
        let mut f = udp(FROM_CONTAINER, A, B, b"hello");
        f[ETH_HLEN + 26] = 0;
        f[ETH_HLEN + 27] = 0;
        assert!(matches!(
            decode(&f).unwrap().l4,
            L4::Udp { checksum: 0, .. }
        ));
    }
}
