//! ICMP errors about translated flows (RFC 5508). Destination unreachable (fragmentation
//! needed among them), time exceeded and parameter problem quote the start of the packet
//! that caused them; that packet crossed the NAT translated, so the error comes back with
//! the translation undone, as a reply to the quoted packet would be: in the quoted header
//! (on the opposite sides, since it went the other way), in the outer header (a new
//! source whoever sent it; an error from a router outside keeps the router's address), and
//! in every checksum — the quoted L4 checksum only where the quote holds it.

use netfast::common::DropReason;

use super::{
    Model, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Tuple,
    conntrack::{Table, Touched},
    frame::{self, Csum, Expected, L4, replace16, replace32, u16_at},
};

/// Length of the ICMP error header before the quoted packet.
const ICMP_HLEN: usize = 8;

impl Model {
    /// Translates an ICMP error about a tracked flow into `out`; false when it is about
    /// none (it may be for the host itself: the caller decides). `at_bridge`: a
    /// container's error, at the ingress of that bridge (its ifindex), where a flow serves
    /// only the bridge's network (an error about another network's flow is dropped) and,
    /// with the fast path off, only a hairpin's error is translated (the others go to the
    /// stack as sent; the uplink's egress translates them after routing).
    pub fn translate_error(
        &mut self,
        touched: &mut Touched,
        f: &[u8],
        ip: &frame::Ip,
        (from_inside, at_bridge): (bool, Option<u32>),
        out: &mut Expected,
    ) -> Result<bool, DropReason> {
        // Where the IPv4 packet ends: a frame's padding is not the message's.
        let ip_end = frame::ETH_HLEN + usize::from(ip.tot_len);
        let inner = ip.l4 + ICMP_HLEN;
        let h = f.get(inner..inner + 20).ok_or(DropReason::Malformed)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return Ok(false);
        }
        let proto = h[9];
        let src = std::net::Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = std::net::Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        let l4 = inner + ihl;
        // The quoted ports (or echo identifier) must lie inside the message.
        if l4 + 8 > ip_end {
            return Ok(false);
        }
        let (sport, dport) = match proto {
            PROTO_TCP | PROTO_UDP => {
                let p = f.get(l4..l4 + 4).ok_or(DropReason::Malformed)?;
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )
            }
            PROTO_ICMP => match frame::icmp(f, l4).ok_or(DropReason::Malformed)? {
                L4::Flow { sport, dport, .. } => (sport, dport),
                _ => return Ok(false),
            },
            _ => return Ok(false),
        };
        // A reply to the quoted packet would be keyed so.
        let key = Tuple::new(dst, src, dport, sport, proto);
        let Some(e) = self
            .lookup(touched, Table::Main, &key, from_inside)
            .or_else(|| self.lookup(touched, Table::Inbound, &key, from_inside))
        else {
            return Ok(false);
        };
        // An error goes to the source of the packet it quotes: one addressed elsewhere is
        // about no flow of ours.
        if ip.dst != key.dst {
            return Ok(false);
        }
        if let Some(bridge) = at_bridge {
            if self
                .topo
                .network_of(key.src)
                .is_none_or(|n| n.bridge != bridge)
            {
                return Err(DropReason::InterNetwork);
            }
            if !self.config.fast_path && !e.flags.redirect {
                return Ok(false);
            }
        }
        self.counters.rule("icmp error translated");
        let q = Quote {
            icmp: ip.l4,
            inner,
            l4,
            ip_end,
            proto,
        };
        // The outer header: a new destination always (it is the quote's source); a new
        // source whoever sent the error (a container or the host: the quoted packet went
        // inwards), while the sender's address stays where only the destination changes (a
        // router outside).
        if let Some((addr, port)) = e.new_dst {
            q.rewrite(out, true, addr, port);
            out.set_ip_addr(false, addr);
        }
        if let Some((addr, port)) = e.new_src {
            q.rewrite(out, false, addr, port);
            out.set_ip_addr(true, addr);
        }
        Ok(true)
    }
}

/// Where the parts of an ICMP error are.
struct Quote {
    /// The ICMP header.
    icmp: usize,
    /// The quoted IPv4 header.
    inner: usize,
    /// The quoted L4 header.
    l4: usize,
    /// The end of the outer IPv4 packet.
    ip_end: usize,
    proto: u8,
}

impl Quote {
    /// Rewrites the quoted packet's source (`src_side`) or destination address and port,
    /// its IPv4 and L4 checksums, and the ICMP checksum for every word that changed.
    fn rewrite(&self, out: &mut Expected, src_side: bool, addr: std::net::Ipv4Addr, port: u16) {
        let icmp_csum_at = self.icmp + 2;
        let csum = out.get16(icmp_csum_at);
        let mut icmp = IcmpCsum { out, csum };
        let new_addr = u32::from_be_bytes(addr.octets());

        let addr_at = self.inner + if src_side { 12 } else { 16 };
        let old_addr = icmp.out.get32(addr_at);
        icmp.out.set32(addr_at, new_addr);
        icmp.csum = replace32(icmp.csum, old_addr, new_addr);
        icmp.fix_csum(self.inner + 10, Csum::OnesComplement, |old| {
            replace32(old, old_addr, new_addr)
        });

        match self.proto {
            PROTO_TCP | PROTO_UDP => {
                let port_at = if src_side { self.l4 } else { self.l4 + 2 };
                let old_port = icmp.set16(port_at, port);
                let csum_at = self.l4 + if self.proto == PROTO_TCP { 16 } else { 6 };
                if csum_at + 2 <= self.ip_end && u16_at(&icmp.out.bytes, csum_at).is_some() {
                    if self.proto == PROTO_UDP {
                        icmp.fix_csum(csum_at, Csum::Udp, |old| {
                            let a = frame::udp_fix(old, replace32(old, old_addr, new_addr));
                            frame::udp_fix(a, replace16(a, old_port, port))
                        });
                    } else {
                        icmp.fix_csum(csum_at, Csum::OnesComplement, |old| {
                            replace16(replace32(old, old_addr, new_addr), old_port, port)
                        });
                    }
                }
            }
            _ => {
                // A quoted ICMP echo: its identifier and its own checksum.
                let old_id = icmp.set16(self.l4 + 4, port);
                icmp.fix_csum(self.l4 + 2, Csum::OnesComplement, |old| {
                    replace16(old, old_id, port)
                });
            }
        }
        icmp.out.set16(icmp_csum_at, icmp.csum);
        icmp.out.touched(icmp_csum_at, Csum::OnesComplement);
    }
}

/// The quoted packet being rewritten, and the ICMP checksum that follows every word of it
/// that changes.
struct IcmpCsum<'a> {
    out: &'a mut Expected,
    csum: u16,
}

impl IcmpCsum<'_> {
    /// Writes `new` at `at`; returns what was there.
    fn set16(&mut self, at: usize, new: u16) -> u16 {
        let old = self.out.get16(at);
        self.out.set16(at, new);
        self.csum = replace16(self.csum, old, new);
        old
    }

    /// Updates the checksum field at `at` (of the `kind` given) with `update`.
    fn fix_csum(&mut self, at: usize, kind: Csum, update: impl FnOnce(u16) -> u16) {
        let old = self.out.get16(at);
        self.set16(at, update(old));
        self.out.touched(at, kind);
    }
}
