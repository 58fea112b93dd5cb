//! Checksums. IPv4 header checksums are updated here by RFC 1624 arithmetic (no helper
//! call; the IP header is never offloaded). TCP and UDP checksums go through
//! `bpf_l4_csum_replace`, which knows the skb's checksum state (CHECKSUM_PARTIAL from veth
//! offload, CHECKSUM_COMPLETE) and keeps it consistent.
//!
//! All values are raw 16/32-bit words as read from the packet (network byte order): one's
//! complement sums do not depend on byte order as long as every operand has the same one.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netfast_common::{
    DropReason,
    conntrack::{PROTO_TCP, PROTO_UDP},
};

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word changes from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after a 32-bit word changes.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let c = replace16(check, old as u16, new as u16);
    replace16(c, (old >> 16) as u16, (new >> 16) as u16)
}

/// A UDP checksum after a change, from `check` before it and `replaced`, the result of the
/// ones' complement replacement: a checksum of 0 means "none" and stays 0; a computed 0 is
/// sent as 0xffff.
#[inline(always)]
fn udp(check: u16, replaced: u16) -> u16 {
    if check == 0 {
        0
    } else if replaced == 0 {
        0xffff
    } else {
        replaced
    }
}

/// [`replace32`] for a UDP checksum.
#[inline(always)]
pub fn udp_replace32(check: u16, old: u32, new: u32) -> u16 {
    udp(check, replace32(check, old, new))
}

/// [`replace16`] for a UDP checksum.
#[inline(always)]
pub fn udp_replace16(check: u16, old: u16, new: u16) -> u16 {
    udp(check, replace16(check, old, new))
}

/// Adjusts the TCP/UDP checksum at `csum_off` for an address change (pseudo-header).
#[inline(always)]
pub fn l4_addr(
    ctx: &TcContext,
    proto: u8,
    csum_off: usize,
    old: u32,
    new: u32,
) -> Result<(), DropReason> {
    let flags = match proto {
        PROTO_TCP => BPF_F_PSEUDO_HDR as u64 | 4,
        PROTO_UDP => (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64 | 4,
        _ => return Ok(()),
    };
    ctx.l4_csum_replace(csum_off, u64::from(old), u64::from(new), flags)
        .map_err(|_| DropReason::Malformed)
}

/// Adjusts the L4 checksum at `csum_off` for a change of a 16-bit field it covers (a port,
/// an ICMP identifier).
#[inline(always)]
pub fn l4_word(
    ctx: &TcContext,
    proto: u8,
    csum_off: usize,
    old: u16,
    new: u16,
) -> Result<(), DropReason> {
    let flags = if proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64 | 2
    } else {
        2
    };
    ctx.l4_csum_replace(csum_off, u64::from(old), u64::from(new), flags)
        .map_err(|_| DropReason::Malformed)
}
