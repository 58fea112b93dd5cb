//! Building a packet's frame from its description, with correct lengths and checksums
//! (by RFC 1071, with the packet tests' sum: independently of the model and the programs),
//! then making it as wrong as the description says.

use netfast::prog_test::packet::{fold, ones_complement_sum as sum};

use super::event::{Body, FragSpec, Mangle, Pkt};
use crate::model::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Tuple};

const ETH_HLEN: usize = 14;

/// The RFC 1071 checksum of a sum from [`sum`].
fn finish(acc: u32) -> u16 {
    !fold(acc)
}

fn pseudo(t: &Tuple, proto: u8, len: usize) -> u32 {
    let mut acc = sum(0, &t.src.octets());
    acc = sum(acc, &t.dst.octets());
    acc + u32::from(proto) + len as u32
}

fn payload(n: u16) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}

/// The L4 part of the datagram (header and payload), with its checksum, and its protocol.
fn l4(body: &Body, t: &Tuple, quote: Option<&[u8]>) -> (Vec<u8>, u8) {
    match body {
        Body::Tcp {
            flags,
            seq,
            ack,
            win,
            wscale,
            payload: n,
        } => {
            let opts: Vec<u8> = match wscale {
                Some(w) => vec![2, 4, 0x05, 0xb4, 1, 3, 3, *w],
                None => Vec::new(),
            };
            let hlen = 20 + opts.len();
            let mut h = Vec::with_capacity(hlen + usize::from(*n));
            h.extend_from_slice(&t.sport.to_be_bytes());
            h.extend_from_slice(&t.dport.to_be_bytes());
            h.extend_from_slice(&seq.to_be_bytes());
            h.extend_from_slice(&ack.to_be_bytes());
            h.push(((hlen / 4) as u8) << 4);
            h.push(*flags);
            h.extend_from_slice(&win.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(&opts);
            h.extend_from_slice(&payload(*n));
            let c = finish(sum(pseudo(t, PROTO_TCP, h.len()), &h));
            h[16..18].copy_from_slice(&c.to_be_bytes());
            (h, PROTO_TCP)
        }
        Body::Udp { payload: n } => {
            let len = 8 + usize::from(*n);
            let mut h = Vec::with_capacity(len);
            h.extend_from_slice(&t.sport.to_be_bytes());
            h.extend_from_slice(&t.dport.to_be_bytes());
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&payload(*n));
            let c = finish(sum(pseudo(t, PROTO_UDP, h.len()), &h));
            let c = if c == 0 { 0xffff } else { c };
            h[6..8].copy_from_slice(&c.to_be_bytes());
            (h, PROTO_UDP)
        }
        Body::Echo {
            reply,
            seq,
            payload: n,
        } => {
            let id = if *reply { t.dport } else { t.sport };
            let mut h = vec![if *reply { 0 } else { 8 }, 0, 0, 0];
            h.extend_from_slice(&id.to_be_bytes());
            h.extend_from_slice(&seq.to_be_bytes());
            h.extend_from_slice(&payload(*n));
            let c = finish(sum(0, &h));
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (h, PROTO_ICMP)
        }
        Body::Error {
            icmp_type, code, ..
        } => {
            let mut h = vec![*icmp_type, *code, 0, 0, 0, 0, 0, 0];
            if *icmp_type == 3 && *code == 4 {
                h[6..8].copy_from_slice(&1400u16.to_be_bytes());
            }
            h.extend_from_slice(quote.unwrap_or(&[]));
            let c = finish(sum(0, &h));
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (h, PROTO_ICMP)
        }
        Body::IcmpOther { icmp_type } => {
            let mut h = vec![*icmp_type, 0, 0, 0, 0, 1, 0, 1];
            h.extend_from_slice(&[0; 12]);
            let c = finish(sum(0, &h));
            h[2..4].copy_from_slice(&c.to_be_bytes());
            (h, PROTO_ICMP)
        }
        Body::Proto { proto, payload: n } => (payload(*n), *proto),
    }
}

/// The IPv4 header for `len` bytes of payload.
#[allow(clippy::too_many_arguments)]
fn ip_header(
    t: &Tuple,
    proto: u8,
    len: usize,
    ttl: u8,
    id: u16,
    options: u8,
    frag: u16,
) -> Vec<u8> {
    let words = 5 + usize::from(options.min(10));
    let mut h = vec![0u8; words * 4];
    h[0] = 0x40 | words as u8;
    let tot = (words * 4 + len) as u16;
    h[2..4].copy_from_slice(&tot.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&t.src.octets());
    h[16..20].copy_from_slice(&t.dst.octets());
    for b in &mut h[20..] {
        *b = 1; // NOP
    }
    let c = finish(sum(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The IP packet of `body` from `t` (whole: what an ICMP error quotes).
pub fn ip_packet(t: &Tuple, body: &Body) -> Vec<u8> {
    let (data, proto) = l4(body, t, None);
    let mut p = ip_header(t, proto, data.len(), 64, 1, 0, 0);
    p.extend_from_slice(&data);
    p
}

/// The frame of `pkt` with tuple `t` (and for an ICMP error, the quoted tuple), between
/// these MACs.
pub fn frame(
    pkt: &Pkt,
    t: &Tuple,
    quoted: Option<&Tuple>,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Vec<u8> {
    let quote = match (&pkt.body, quoted) {
        (Body::Error { quote, .. }, Some(qt)) => {
            let mut q = ip_packet(qt, &quote.body);
            if quote.len != 0 {
                q.truncate(usize::from(quote.len));
            }
            Some(q)
        }
        _ => None,
    };
    let (data, proto) = l4(&pkt.body, t, quote.as_deref());
    let (part, frag_field) = match pkt.frag {
        FragSpec::Whole => (data, 0u16),
        FragSpec::First { len } => {
            let n = usize::from(len).min(data.len());
            (data[..n].to_vec(), 0x2000)
        }
        FragSpec::Later { offset, len, more } => {
            let start = usize::from(offset).min(data.len());
            let end = (start + usize::from(len)).min(data.len());
            let field = ((offset / 8) & 0x1fff) | if more { 0x2000 } else { 0 };
            (data[start..end].to_vec(), field)
        }
    };
    let mut f = Vec::with_capacity(ETH_HLEN + 60 + part.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip_header(
        t,
        proto,
        part.len(),
        pkt.ttl,
        pkt.id,
        pkt.options,
        frag_field,
    ));
    f.extend_from_slice(&part);
    for m in &pkt.mangle {
        mangle(&mut f, *m);
    }
    let floor = test_run_floor(&f);
    if f.len() < floor {
        f.resize(floor, 0);
    }
    f
}

/// The shortest frame BPF_PROG_TEST_RUN takes: an Ethernet header, and the fixed IPv4 or
/// IPv6 header when the Ethernet type says so (shorter ones are refused before any program
/// runs: the programs never see them).
fn test_run_floor(f: &[u8]) -> usize {
    match f.get(12..14) {
        Some([0x08, 0x00]) => ETH_HLEN + 20,
        Some([0x86, 0xdd]) => ETH_HLEN + 40,
        _ => ETH_HLEN,
    }
}

fn ihl_of(f: &[u8]) -> usize {
    f.get(ETH_HLEN).map_or(20, |b| usize::from(b & 0x0f) * 4)
}

/// Recomputes the IPv4 header checksum over what the header claims (as far as the frame
/// goes).
fn fix_ip_checksum(f: &mut [u8]) {
    let end = (ETH_HLEN + ihl_of(f).max(20)).min(f.len());
    if end < ETH_HLEN + 12 {
        return;
    }
    f[ETH_HLEN + 10] = 0;
    f[ETH_HLEN + 11] = 0;
    let c = finish(sum(0, &f[ETH_HLEN..end]));
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
}

/// Changes the 16-bit word at `at` of a TCP header and keeps its checksum right.
fn tcp_word(f: &mut [u8], l4: usize, at: usize, new: u16) {
    if f.len() < l4 + 20 {
        return;
    }
    let old = u16::from_be_bytes([f[l4 + at], f[l4 + at + 1]]);
    f[l4 + at..l4 + at + 2].copy_from_slice(&new.to_be_bytes());
    let c = u16::from_be_bytes([f[l4 + 16], f[l4 + 17]]);
    let c = crate::model::frame::replace16(c, old, new);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

fn mangle(f: &mut Vec<u8>, m: Mangle) {
    let l4 = ETH_HLEN + ihl_of(f);
    let proto = f.get(ETH_HLEN + 9).copied().unwrap_or(0);
    match m {
        Mangle::Truncate(n) => {
            let floor = test_run_floor(f);
            f.truncate(usize::from(n).max(floor));
        }
        Mangle::Ihl(v) => {
            if let Some(b) = f.get_mut(ETH_HLEN) {
                *b = (*b & 0xf0) | (v & 0x0f);
            }
            fix_ip_checksum(f);
        }
        Mangle::Version(v) => {
            if let Some(b) = f.get_mut(ETH_HLEN) {
                *b = (*b & 0x0f) | (v << 4);
            }
            fix_ip_checksum(f);
        }
        Mangle::TotLen(v) if f.len() >= ETH_HLEN + 4 => {
            f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&v.to_be_bytes());
            fix_ip_checksum(f);
        }
        Mangle::TcpFlags(b) if proto == PROTO_TCP && f.len() >= l4 + 20 => {
            let word = u16::from_be_bytes([f[l4 + 12], f[l4 + 13]]);
            tcp_word(f, l4, 12, (word & 0xff00) | u16::from(b));
        }
        Mangle::Doff(d) if proto == PROTO_TCP && f.len() >= l4 + 20 => {
            let word = u16::from_be_bytes([f[l4 + 12], f[l4 + 13]]);
            tcp_word(f, l4, 12, (word & 0x0fff) | (u16::from(d & 0x0f) << 12));
        }
        Mangle::ZeroUdpChecksum if proto == PROTO_UDP && f.len() >= l4 + 8 => {
            f[l4 + 6] = 0;
            f[l4 + 7] = 0;
        }
        Mangle::BadL4Checksum => {
            let at = match proto {
                PROTO_TCP => l4 + 16,
                PROTO_UDP => l4 + 6,
                _ => l4 + 2,
            };
            if f.len() >= at + 2 {
                f[at] ^= 0x12;
                f[at + 1] ^= 0x34;
            }
        }
        Mangle::BadIpChecksum if f.len() >= ETH_HLEN + 12 => f[ETH_HLEN + 10] ^= 0x5a,
        Mangle::EtherType(v) if f.len() >= ETH_HLEN => f[12..14].copy_from_slice(&v.to_be_bytes()),
        Mangle::Pad(n) => f.extend(std::iter::repeat_n(0xee, usize::from(n))),
        _ => {}
    }
}

/// The frame as the host's stack forwards it out of the uplink: TTL one less, the header
/// checksum updated, the gateway's MAC.
pub fn routed(f: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut out = f.to_vec();
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    let at = ETH_HLEN + 8;
    let old = u16::from_be_bytes([out[at], out[at + 1]]);
    let new = old - 0x0100;
    out[at..at + 2].copy_from_slice(&new.to_be_bytes());
    let c = u16::from_be_bytes([out[ETH_HLEN + 10], out[ETH_HLEN + 11]]);
    let c = crate::model::frame::replace16(c, old, new);
    out[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    out
}
