//! Bounds-checked access to packet bytes, and parsing of the headers NAT needs.
//!
//! Every read and write goes through [`ptr_at`], whose check against `data_end` is what the
//! verifier needs before it allows the access. Multi-byte fields are read and written
//! unaligned (the IPv4 header sits at offset 14) and kept in network byte order.

use core::{mem::size_of, ptr};

use aya_ebpf::programs::TcContext;
use netfast_common::{
    DropReason,
    conntrack::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Segment, WSCALE_MAX, WSCALE_NONE},
};
// The headers' layouts come from network-types: the Ethernet header is read as its EthHdr,
// and the other headers' lengths are its types' sizes. The IPv4, TCP, UDP and ICMP headers
// are read as byte arrays of those sizes, at fixed offsets: loaded as an Ipv4Hdr, the
// program was refused by the verifier (`R3 !read_ok`, a register read on a path where LLVM
// had not written it); TCP's flags are needed as one byte, which network-types gives only
// bit by bit; an ICMP error's embedded L4 header is only 8 bytes long.
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const ETH_HLEN: usize = EthHdr::LEN;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Offsets within the IPv4 header.
pub const IP_CSUM: usize = 10;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
/// Linear bytes every packet needs: Ethernet, an IPv4 header without options, a TCP header
/// without options (UDP and ICMP need less).
const COMMON_LINEAR: usize = ETH_HLEN + Ipv4Hdr::LEN + TcpHdr::LEN;
/// Linear bytes an ICMP error needs: Ethernet, an IPv4 header with options, an ICMP header,
/// and an embedded IPv4 header with options and 20 bytes of its L4 header.
pub const ICMP_ERROR_LINEAR: usize = ETH_HLEN + 60 + 8 + 60 + 20;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;
const TCP_SYN: u8 = 0x02;

/// Which end of a packet a rewrite changes: its source or its destination.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    /// This end's address in an IPv4 header.
    #[inline(always)]
    pub const fn ip_addr_off(self) -> usize {
        match self {
            Side::Src => IP_SRC,
            Side::Dst => IP_DST,
        }
    }

    /// This end's port in a TCP or UDP header.
    #[inline(always)]
    pub const fn port_off(self) -> usize {
        match self {
            Side::Src => 0,
            Side::Dst => 2,
        }
    }
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    // The verifier needs this check before any access, even where the offset is known good.
    if start + off + size_of::<T>() > ctx.data_end() {
        return Err(DropReason::Malformed);
    }
    Ok((start + off) as *mut T)
}

/// A header of `N` bytes at `off`, checked once; fields are then read at constant offsets
/// inside it. (A one-byte read checked on its own can fail verification: LLVM turns
/// `p + 1 > end` into `p >= end`, from which the verifier learns no range.)
#[inline(always)]
pub fn header<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], DropReason> {
    load::<[u8; N]>(ctx, off)
}

#[inline(always)]
pub fn be16(h: &[u8], at: usize) -> u16 {
    // Raw (network order) value, as the packet holds it.
    u16::from_ne_bytes([h[at], h[at + 1]])
}

#[inline(always)]
pub fn be32(h: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: in bounds (checked by ptr_at); packet bytes have no alignment.
    Ok(unsafe { ptr::read_unaligned(p) })
}

#[inline(always)]
pub fn store<T: Copy>(ctx: &TcContext, off: usize, v: T) -> Result<(), DropReason> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: as in `load`; TC programs may write packet data directly.
    unsafe { ptr::write_unaligned(p, v) };
    Ok(())
}

/// Makes the headers directly accessible when the skb keeps some of them outside its linear
/// area (GRO, some drivers). A no-op for the usual packet: pulling more than the headers
/// would copy payload out of a GSO packet's pages on every packet.
#[inline(always)]
pub fn linearize_headers(ctx: &TcContext) {
    linearize(ctx, COMMON_LINEAR);
}

/// Makes the first `want` bytes (or the whole packet, if shorter) directly accessible.
#[inline(always)]
pub fn linearize(ctx: &TcContext, want: usize) {
    let len = ctx.len() as usize;
    let want = if len < want { len } else { want };
    if ctx.data() + want > ctx.data_end() {
        // Failure leaves the packet as it was; parsing then reports what it cannot reach.
        let _ = ctx.pull_data(want as u32);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// A whole datagram.
    None,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: addresses only.
    Later,
}

/// An IPv4 header, fields in network byte order.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    /// Offset of the L4 header in the frame. A u32, not a usize: LLVM stores a usize it knows
    /// to be small as two 32-bit halves and reloads it whole, which loses the verifier the
    /// bounds it needs before the offset meets a packet pointer.
    l4_off: u32,
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub frag: Frag,
    /// The IPv4 total length, host byte order: where the packet ends, whatever padding the
    /// frame carries after it.
    pub tot_len: u16,
}

impl Ipv4 {
    /// Offset of the L4 header in the frame. Always below 128 (14 + at most 60); the mask
    /// says so to the verifier, which sees no bounds on a value read back from memory (a
    /// BPF function gets `Ipv4` by reference) and then refuses to add it to a packet pointer.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.l4_off & 0x7f) as usize
    }

    /// Bytes of L4 header and payload the IPv4 header says the packet carries.
    #[inline(always)]
    pub fn l4_len(&self) -> u16 {
        self.tot_len.saturating_sub((self.l4() - ETH_HLEN) as u16)
    }
}

/// The IPv4 header of an Ethernet frame, or `None` for anything else (ARP, IPv6, …).
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Option<Ipv4>, DropReason> {
    let eth: EthHdr = load(ctx, 0)?;
    if eth.ether_type != ETH_P_IP_BE {
        return Ok(None);
    }
    // Bytes, not an Ipv4Hdr: see the note at the top.
    let h = header::<{ Ipv4Hdr::LEN }>(ctx, ETH_HLEN)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(DropReason::Malformed);
    }
    if ihl > Ipv4Hdr::LEN {
        // Options: the L4 header lies further in.
        linearize(ctx, ETH_HLEN + ihl + 20);
    }
    let frag_off = u16::from_be(be16(&h, 6));
    let frag = if frag_off & 0x1fff != 0 {
        Frag::Later
    } else if frag_off & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    Ok(Some(Ipv4 {
        l4_off: (ETH_HLEN + ihl) as u32,
        proto: h[9],
        src: be32(&h, IP_SRC),
        dst: be32(&h, IP_DST),
        id: be16(&h, 4),
        frag,
        tot_len: u16::from_be(be16(&h, 2)),
    }))
}

/// What the L4 header makes of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4Kind {
    /// TCP, UDP or ICMP echo: `sport`, `dport` and `tcp_flags` say the rest.
    Flow,
    /// An ICMP error (destination unreachable, time exceeded, parameter problem).
    IcmpError,
    /// Anything else: another protocol or ICMP type, or a later fragment.
    Other,
}

/// What the L4 header makes of a packet: its kind and, for a flow's packet, its ports (ICMP:
/// the identifier, see `CtKey`), network byte order, and for TCP its flags (all 0 for the
/// other kinds). A struct, not an enum with fields: the fields of an enum's other variants
/// are undefined, and LLVM may then store a register that nothing wrote, which the verifier
/// refuses (`R4 !read_ok`) as soon as the code around it changes.
#[derive(Clone, Copy)]
pub struct L4 {
    pub kind: L4Kind,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

impl L4 {
    pub const OTHER: L4 = L4 {
        kind: L4Kind::Other,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    pub const ICMP_ERROR: L4 = L4 {
        kind: L4Kind::IcmpError,
        ..L4::OTHER
    };

    pub const fn flow(sport: u16, dport: u16, tcp_flags: u8) -> L4 {
        L4 {
            kind: L4Kind::Flow,
            sport,
            dport,
            tcp_flags,
        }
    }
}

#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> Result<L4, DropReason> {
    if ip.frag == Frag::Later {
        return Ok(L4::OTHER);
    }
    match ip.proto {
        PROTO_TCP => {
            let h = header::<20>(ctx, ip.l4())?;
            Ok(L4::flow(be16(&h, 0), be16(&h, 2), h[13]))
        }
        PROTO_UDP => {
            let h = header::<{ UdpHdr::LEN }>(ctx, ip.l4())?;
            Ok(L4::flow(be16(&h, 0), be16(&h, 2), 0))
        }
        PROTO_ICMP => icmp(ctx, ip.l4()),
        _ => Ok(L4::OTHER),
    }
}

/// Classifies the ICMP message at `off`.
#[inline(always)]
pub fn icmp(ctx: &TcContext, off: usize) -> Result<L4, DropReason> {
    let h = header::<8>(ctx, off)?;
    match h[0] {
        ICMP_ECHO_REQUEST => Ok(L4::flow(be16(&h, 4), 0, 0)),
        ICMP_ECHO_REPLY => Ok(L4::flow(0, be16(&h, 4), 0)),
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM => Ok(L4::ICMP_ERROR),
        _ => Ok(L4::OTHER),
    }
}

/// Where, from the start of the L4 header, the port (TCP/UDP) or identifier (ICMP echo) a
/// rewrite changes is, and the checksum that covers it.
#[inline(always)]
pub fn port_offsets(proto: u8, side: Side) -> (usize, usize) {
    match proto {
        PROTO_TCP => (side.port_off(), 16),
        PROTO_UDP => (side.port_off(), 6),
        // ICMP echo: one identifier field, whichever side is rewritten.
        _ => (4, 2),
    }
}

/// What window tracking reads of the TCP segment of `p`: read when a flow's packet is
/// tracked, rather than carried in every `Pkt` (it would cost the hooks' stack frames).
#[inline(always)]
pub fn segment(ctx: &TcContext, p: &Pkt) -> Result<Segment, DropReason> {
    let h = header::<20>(ctx, p.ip.l4())?;
    let doff = u16::from(h[12] >> 4) * 4;
    if doff < 20 {
        return Err(DropReason::Malformed);
    }
    Ok(Segment {
        seq: u32::from_be(be32(&h, 4)),
        ack: u32::from_be(be32(&h, 8)),
        win: u16::from_be(be16(&h, 14)),
        len: p.ip.l4_len().saturating_sub(doff),
        wscale: if p.tcp_flags & TCP_SYN != 0 {
            syn_wscale(ctx, p.ip.l4(), usize::from(doff))
        } else {
            WSCALE_NONE
        },
    })
}

/// The TCP options a SYN may carry (doff 15: 40 bytes after the fixed header).
const TCP_OPTIONS_MAX: usize = 40;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_WINDOW: u8 = 3;

/// The window scale option of a SYN whose header (options included) is `doff` bytes at
/// `off`: 0..=14, or `WSCALE_NONE` without one (or with options the packet does not hold).
// Its own BPF function: SYNs are few, and the walk over the options stays out of the
// callers' stack frames and their verification.
#[inline(never)]
fn syn_wscale(ctx: &TcContext, off: usize, doff: usize) -> u8 {
    // Below 128 (14 + at most 60), said again for the verifier: a BPF function's arguments
    // come without their caller's bounds.
    let base = (off & 0x7f) + 20;
    let n = doff.saturating_sub(20);
    linearize(ctx, base + TCP_OPTIONS_MAX);
    // Option by option: a SYN carries a handful (Linux: MSS, SACK, timestamps, NOP, window
    // scale), so a dozen steps find the option where any stack puts it.
    let mut i = 0usize;
    for _ in 0..TCP_OPTION_STEPS {
        if i >= n || i >= TCP_OPTIONS_MAX {
            break;
        }
        // Kind, length and the first value byte, checked together.
        let Ok(h) = header::<3>(ctx, base + i) else {
            break;
        };
        match h[0] {
            TCPOPT_EOL => break,
            TCPOPT_NOP => i += 1,
            TCPOPT_WINDOW if h[1] == 3 && i + 3 <= n => {
                return if h[2] > WSCALE_MAX { WSCALE_MAX } else { h[2] };
            }
            _ if h[1] < 2 => break,
            _ => i += usize::from(h[1]),
        }
    }
    WSCALE_NONE
}

/// Options `syn_wscale` steps over at most before it gives up (and the flow's windows are
/// judged unscaled).
const TCP_OPTION_STEPS: usize = 12;

/// This CPU's `Pkt`, filled in for the packet at hand (see `maps::NETFAST_PKT`).
#[inline(always)]
pub fn pkt(
    ip: &Ipv4,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    now: u32,
) -> Result<&'static Pkt, DropReason> {
    let p = crate::maps::NETFAST_PKT
        .get_ptr_mut(0)
        .ok_or(DropReason::Malformed)?;
    // SAFETY: a per-CPU map value, used by this program run only.
    let p = unsafe { &mut *p };
    p.ip = *ip;
    p.key = netfast_common::conntrack::CtKey::new(ip.src, ip.dst, sport, dport, ip.proto);
    p.tcp_flags = tcp_flags;
    p.now = now;
    Ok(p)
}

/// What every step needs to know of a packet with ports, gathered once. Passed by reference
/// to the BPF functions that open flows (a BPF call takes at most five arguments); kept in a
/// per-CPU map rather than on the stack (see `pkt`): the verifier allows 512 bytes of stack
/// down a chain of calls, and the paths that open a flow are deep.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub ip: Ipv4,
    pub key: netfast_common::conntrack::CtKey,
    pub tcp_flags: u8,
    pub now: u32,
}
