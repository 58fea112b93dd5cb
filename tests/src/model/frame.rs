//! A frame as the model reads it, and the frame the model expects out of a program.
//!
//! Parsing follows what the programs can see: an Ethernet header of 14 bytes, then IPv4.
//! Every edit is made to a copy of the input, with the checksums it touches updated by
//! RFC 1624 arithmetic and their offsets remembered: a checksum is compared modulo 0xffff
//! (0x0000 and 0xffff are one value to one's complement arithmetic), except UDP's, where 0
//! means "none" and a computed 0 is sent as 0xffff.

use std::net::Ipv4Addr;

use super::tcp::{self, Segment, WSCALE_MAX, WSCALE_NONE};

pub const ETH_HLEN: usize = 14;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Where a packet stands among the fragments of its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: addresses only.
    Later,
}

/// The IPv4 header, as the programs read it.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    /// Offset of the L4 header in the frame (14 + IHL × 4).
    pub l4: usize,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub ttl: u8,
    pub frag: Frag,
    /// The total length the header claims (not checked against the frame).
    pub tot_len: u16,
}

impl Ip {
    /// L4 bytes the header claims: total length less the IPv4 header.
    pub fn l4_len(&self) -> u16 {
        self.tot_len.saturating_sub((self.l4 - ETH_HLEN) as u16)
    }
}

/// What the IPv4 parse makes of a frame.
#[derive(Clone, Copy, Debug)]
pub enum Parsed {
    /// Not IPv4 (ARP, IPv6, …): every program lets it pass.
    NotIpv4,
    /// A header claims more than the frame holds, or an IPv4 header that cannot be one.
    Malformed,
    Ipv4(Ip),
}

pub fn u16_at(f: &[u8], at: usize) -> Option<u16> {
    f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

pub fn addr_at(f: &[u8], at: usize) -> Option<Ipv4Addr> {
    f.get(at..at + 4)
        .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// The Ethernet type must say IPv4; the fixed header must be in the frame; version 4 and an
/// IHL of at least 5. Options are skipped; the total length is read, not trusted.
pub fn ipv4(f: &[u8]) -> Parsed {
    let Some(ethertype) = u16_at(f, 12) else {
        return Parsed::Malformed;
    };
    if ethertype != 0x0800 {
        return Parsed::NotIpv4;
    }
    let Some(h) = f.get(ETH_HLEN..ETH_HLEN + 20) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]);
    let frag = if frag_off & 0x1fff != 0 {
        Frag::Later
    } else if frag_off & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    Parsed::Ipv4(Ip {
        l4: ETH_HLEN + ihl,
        proto: h[9],
        src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        id: u16::from_be_bytes([h[4], h[5]]),
        ttl: h[8],
        frag,
        tot_len: u16::from_be_bytes([h[2], h[3]]),
    })
}

/// What the L4 header makes of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or ICMP echo. ICMP echo keys its identifier as a port: a request as the
    /// source port (destination 0), a reply as the destination port (source 0).
    Flow {
        sport: u16,
        dport: u16,
        tcp_flags: u8,
    },
    /// Destination unreachable, time exceeded or parameter problem.
    IcmpError,
    /// Another protocol or ICMP type, or a later fragment.
    Other,
}

/// The L4 header: TCP needs its 20 fixed bytes in the frame, UDP and ICMP 8; `None` when
/// the frame is too short (a malformed packet).
pub fn l4(f: &[u8], ip: &Ip) -> Option<L4> {
    if ip.frag == Frag::Later {
        return Some(L4::Other);
    }
    match ip.proto {
        PROTO_TCP => {
            let h = f.get(ip.l4..ip.l4 + 20)?;
            Some(L4::Flow {
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: h[13],
            })
        }
        PROTO_UDP => {
            let h = f.get(ip.l4..ip.l4 + 8)?;
            Some(L4::Flow {
                sport: u16::from_be_bytes([h[0], h[1]]),
                dport: u16::from_be_bytes([h[2], h[3]]),
                tcp_flags: 0,
            })
        }
        PROTO_ICMP => icmp(f, ip.l4),
        _ => Some(L4::Other),
    }
}

/// The ICMP message at `off` (8 bytes needed).
pub fn icmp(f: &[u8], off: usize) -> Option<L4> {
    let h = f.get(off..off + 8)?;
    let id = u16::from_be_bytes([h[4], h[5]]);
    Some(match h[0] {
        8 => L4::Flow {
            sport: id,
            dport: 0,
            tcp_flags: 0,
        },
        0 => L4::Flow {
            sport: 0,
            dport: id,
            tcp_flags: 0,
        },
        3 | 11 | 12 => L4::IcmpError,
        _ => L4::Other,
    })
}

/// The TCP segment's sequence, acknowledgement, window, payload length and (for a SYN) its
/// window scale option; `None` when the data offset is below 5 words (malformed).
pub fn segment(f: &[u8], ip: &Ip, tcp_flags: u8) -> Option<Segment> {
    let h = f.get(ip.l4..ip.l4 + 20)?;
    let doff = u16::from(h[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let syn = tcp::Flags::from_byte(tcp_flags).syn;
    Some(Segment {
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        win: u16::from_be_bytes([h[14], h[15]]),
        len: ip.l4_len().saturating_sub(doff),
        wscale: if syn {
            syn_wscale(f, ip.l4 + 20, usize::from(doff) - 20)
        } else {
            WSCALE_NONE
        },
    })
}

/// The window scale option among `n` bytes of options at `base`: the walk looks at a dozen
/// options at most, within the 40 bytes TCP allows, and reads each option's kind, length
/// and first value byte together (an option whose three bytes are not all in the frame ends
/// the walk).
fn syn_wscale(f: &[u8], base: usize, n: usize) -> u8 {
    let mut i = 0usize;
    for _ in 0..12 {
        if i >= n || i >= 40 {
            break;
        }
        let Some(h) = f.get(base + i..base + i + 3) else {
            break;
        };
        match h[0] {
            0 => break,
            1 => i += 1,
            3 if h[1] == 3 && i + 3 <= n => return h[2].min(WSCALE_MAX),
            _ if h[1] < 2 => break,
            _ => i += usize::from(h[1]),
        }
    }
    WSCALE_NONE
}

/// How a checksum field is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// One's complement: 0x0000 and 0xffff are the same value.
    OnesComplement,
    /// UDP: 0 is "no checksum" and must stay 0; otherwise exact.
    Udp,
}

/// One's complement fold of a 32-bit sum to 16 bits (twice covers every carry).
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word of what it covers changes.
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, old as u16, new as u16);
    replace16(c, (old >> 16) as u16, (new >> 16) as u16)
}

/// UDP: no checksum (0) stays none; a computed 0 is sent as 0xffff.
pub fn udp_fix(check_before: u16, after: u16) -> u16 {
    if check_before == 0 {
        0
    } else if after == 0 {
        0xffff
    } else {
        after
    }
}

/// The frame a program is expected to leave: the input with the model's edits.
#[derive(Clone, Debug)]
pub struct Expected {
    pub bytes: Vec<u8>,
    /// Checksum fields the edits touched, by offset.
    pub csums: Vec<(usize, Csum)>,
}

fn a32(a: Ipv4Addr) -> u32 {
    u32::from_be_bytes(a.octets())
}

impl Expected {
    pub fn of(input: &[u8]) -> Self {
        Expected {
            bytes: input.to_vec(),
            csums: Vec::new(),
        }
    }

    pub fn get16(&self, at: usize) -> u16 {
        u16_at(&self.bytes, at).unwrap_or(0)
    }

    pub fn set16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn get32(&self, at: usize) -> u32 {
        self.bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn set32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn note(&mut self, at: usize, kind: Csum) {
        if !self.csums.iter().any(|(o, _)| *o == at) {
            self.csums.push((at, kind));
        }
    }

    /// Writes a new source (`src_side`) or destination address into the IPv4 header and
    /// updates its checksum; returns the old one.
    pub fn set_ip_addr(&mut self, src_side: bool, addr: Ipv4Addr) -> Ipv4Addr {
        let at = ETH_HLEN + if src_side { 12 } else { 16 };
        let old = self.get32(at);
        if old != a32(addr) {
            self.set32(at, a32(addr));
            let c = replace32(self.get16(ETH_HLEN + 10), old, a32(addr));
            self.set16(ETH_HLEN + 10, c);
            self.note(ETH_HLEN + 10, Csum::OnesComplement);
        }
        Ipv4Addr::from(old)
    }

    /// Rewrites the source or destination address and port (ICMP: the identifier) of a
    /// packet, with the IPv4 and L4 checksums; a later fragment gets its address only. The
    /// L4 checksum follows the pseudo-header's address (not ICMP's) and the port.
    pub fn rewrite_side(&mut self, ip: &Ip, src_side: bool, addr: Ipv4Addr, port: u16) {
        let old_addr = self.set_ip_addr(src_side, addr);
        if ip.frag == Frag::Later {
            return;
        }
        let (port_at, csum_at) = match ip.proto {
            PROTO_TCP => (if src_side { 0 } else { 2 }, 16),
            PROTO_UDP => (if src_side { 0 } else { 2 }, 6),
            _ => (4, 2),
        };
        let (port_at, csum_at) = (ip.l4 + port_at, ip.l4 + csum_at);
        let old_port = self.get16(port_at);
        if old_port != port {
            self.set16(port_at, port);
        }
        let kind = if ip.proto == PROTO_UDP {
            Csum::Udp
        } else {
            Csum::OnesComplement
        };
        let before = self.get16(csum_at);
        let mut c = before;
        if old_addr != addr && ip.proto != PROTO_ICMP {
            c = replace32(c, a32(old_addr), a32(addr));
        }
        if old_port != port {
            c = replace16(c, old_port, port);
        }
        if c != before || old_addr != addr || old_port != port {
            let c = if kind == Csum::Udp {
                udp_fix(before, c)
            } else {
                c
            };
            self.set16(csum_at, c);
            self.note(csum_at, kind);
        }
    }

    /// What a router does to a packet it forwards: the TTL one less (unless it is 1 or 0:
    /// only a hairpinned packet is forwarded so, and delivered as it is).
    pub fn hop(&mut self) {
        let word = self.get16(ETH_HLEN + 8);
        let ttl = (word >> 8) as u8;
        if ttl <= 1 {
            return;
        }
        let new = word - 0x0100;
        self.set16(ETH_HLEN + 8, new);
        let c = replace16(self.get16(ETH_HLEN + 10), word, new);
        self.set16(ETH_HLEN + 10, c);
        self.note(ETH_HLEN + 10, Csum::OnesComplement);
    }

    pub fn set_macs(&mut self, dst: [u8; 6], src: [u8; 6]) {
        self.bytes[0..6].copy_from_slice(&dst);
        self.bytes[6..12].copy_from_slice(&src);
    }

    /// Marks a checksum field as edited (the ICMP error rewrite updates several).
    pub fn touched(&mut self, at: usize, kind: Csum) {
        self.note(at, kind);
    }
}

/// Whether `got` is the frame `want` describes: every byte equal, checksum fields equal as
/// their kind compares them. `Err` says where they differ.
pub fn matches(want: &Expected, got: &[u8]) -> Result<(), String> {
    if want.bytes.len() != got.len() {
        return Err(format!(
            "length {} expected, {} out",
            want.bytes.len(),
            got.len()
        ));
    }
    let is_csum = |i: usize| {
        want.csums
            .iter()
            .find(|(at, _)| i == *at || i == *at + 1)
            .map(|(at, k)| (*at, *k))
    };
    for i in 0..got.len() {
        if want.bytes[i] == got[i] {
            continue;
        }
        if let Some((at, kind)) = is_csum(i) {
            let w = want.get16(at);
            let g = u16_at(got, at).unwrap_or(0);
            let same = match kind {
                Csum::Udp => w == g,
                Csum::OnesComplement => {
                    w == g || (w == 0 && g == 0xffff) || (w == 0xffff && g == 0)
                }
            };
            if same {
                continue;
            }
            return Err(format!(
                "checksum at byte {at}: {w:#06x} expected, {g:#06x} out"
            ));
        }
        return Err(format!(
            "byte {i}: {:#04x} expected, {:#04x} out",
            want.bytes[i], got[i]
        ));
    }
    Ok(())
}
