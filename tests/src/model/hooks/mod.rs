//! What each program does with a packet, rule by rule, in the order the programs apply
//! them. A rule that drops names its reason; everything not dropped goes on (`NEXT`) to the
//! host's stack, translated or not, unless the fast path forwards it (`REDIRECT`).

mod bridge;
mod uplink;

use std::net::Ipv4Addr;

use netfast::common::{
    DropReason, Hook,
    stats::Event,
    verdict::{NEXT, REDIRECT, SHOT},
};

use super::{
    Entry, Model, Network, PROTO_ICMP, Tuple,
    conntrack::{Pkt, Touched},
    frame::{self, Expected, Frag, Ip},
    nat::Choice,
    route::{self, Route},
};

/// What the datapath did with the packet, as far as the model may look at it: only to
/// learn its random choices.
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    pub verdict: i32,
    pub frame: &'a [u8],
    pub drop: Option<DropReason>,
    /// The external port the datapath's maps bind an internal endpoint to now: where a
    /// packet was dropped after its mapping was made, the choice shows only there.
    pub bound: super::nat::Bound<'a>,
}

impl Observed<'_> {
    /// The port the datapath put at `at` in its output, or that it gave up (`exhausted`).
    pub fn choice(&self, at: usize, exhausted: DropReason) -> Choice {
        if self.verdict == SHOT {
            return if self.drop == Some(exhausted) {
                Choice::Exhausted
            } else {
                Choice::Unknown
            };
        }
        frame::u16_at(self.frame, at).map_or(Choice::Unknown, Choice::Port)
    }
}

/// What the model says a program does with a packet.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub verdict: i32,
    pub drop: Option<DropReason>,
    /// The frame out (not looked at for a drop).
    pub frame: Expected,
    /// Random choices of the datapath the rules do not allow.
    pub violations: Vec<String>,
    /// The keys the step read or wrote.
    pub touched: Touched,
}

/// The state a packet's run carries through the rules.
struct Run<'a> {
    ifindex: u32,
    f: &'a [u8],
    obs: Observed<'a>,
    out: Expected,
    touched: Touched,
    violations: Vec<String>,
}

/// A packet on its run once its flow is keyed: the run's state and the packet as the flow
/// tables judge it, which the rules of a flow pass along together.
struct Cx<'r, 'a> {
    run: &'r mut Run<'a>,
    p: Pkt<'r>,
}

/// What a rule decides: the program's verdict (`NEXT`, `REDIRECT`), or the reason it drops
/// the packet.
type Verdict = Result<i32, DropReason>;

/// The L4 offset of the port (or ICMP identifier) a source rewrite changes.
fn src_port_at(ip: &Ip) -> usize {
    ip.l4 + if ip.proto == PROTO_ICMP { 4 } else { 0 }
}

impl Model {
    /// Runs the program of `hook` on `frame`, as it arrives on device `ifindex`.
    pub fn packet(&mut self, hook: Hook, ifindex: u32, f: &[u8], obs: Observed<'_>) -> Prediction {
        *self.counters.hooks.entry(hook as u32).or_default() += 1;
        let mut run = Run {
            ifindex,
            f,
            obs,
            out: Expected::of(f),
            touched: Touched::default(),
            violations: Vec::new(),
        };
        let result = match hook {
            Hook::BridgeIngress => self.bridge_ingress(&mut run),
            Hook::BridgeEgress => Ok(NEXT),
            Hook::UplinkIngress => self.uplink(&mut run, false),
            Hook::UplinkEgress => self.uplink(&mut run, true),
        };
        let (verdict, drop) = match result {
            Ok(v) => (v, None),
            Err(reason) => {
                self.counters.drop(reason);
                (SHOT, Some(reason))
            }
        };
        Prediction {
            verdict,
            drop,
            frame: run.out,
            violations: run.violations,
            touched: run.touched,
        }
    }

    /// Containers of one network never reach those of another (Docker's isolation),
    /// judged by the bridge the packet came in on.
    fn isolated(&self, run: &Run<'_>, ip: &Ip) -> Verdict {
        match self.topo.network_of(ip.dst) {
            Some(to) if to.bridge != run.ifindex => Err(DropReason::InterNetwork),
            _ => Ok(NEXT),
        }
    }

    /// The network of a container's packet, which must be the network of the bridge it
    /// came in on (a forged source is dropped: the fast path would carry it past the host's
    /// reverse-path filter). `None` for the unspecified source of a DHCP client.
    fn source_network(&self, run: &Run<'_>, ip: &Ip) -> Result<Option<Network>, DropReason> {
        if ip.src.is_unspecified() {
            return Ok(None);
        }
        match self.topo.network_of(ip.src) {
            Some(net) if net.bridge == run.ifindex => Ok(Some(*net)),
            _ => Err(DropReason::SpoofedSource),
        }
    }

    /// Applies an entry's rewrites to the packet keyed `key`, and records a first
    /// fragment's translation for the fragments that follow.
    fn apply(&mut self, run: &mut Run<'_>, ip: &Ip, key: &Tuple, e: &Entry) {
        if let Some((addr, port)) = e.new_src {
            run.out.rewrite_side(ip, true, addr, port);
        }
        if let Some((addr, port)) = e.new_dst {
            run.out.rewrite_side(ip, false, addr, port);
        }
        if ip.frag == Frag::First {
            let t = e.translated(key);
            let fk = frag_key(run, ip);
            self.frags.insert(
                fk,
                super::FragRecord {
                    src: t.src,
                    dst: t.dst,
                    expires: self.now + super::FRAGMENT_TIMEOUT,
                },
            );
        }
    }

    /// A later fragment gets the addresses its first fragment got, at whichever hook sees
    /// it first (translated, it no longer matches); its new (source, destination), or
    /// `None` when no first fragment of its datagram was translated (in time).
    fn later_fragment(&mut self, run: &mut Run<'_>, ip: &Ip) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let fk = frag_key(run, ip);
        let r = self.frags.get(&fk).copied()?;
        if r.expires < self.now {
            return None;
        }
        run.out.set_ip_addr(true, r.src);
        run.out.set_ip_addr(false, r.dst);
        self.counters.rule("later fragment translated");
        Some((r.src, r.dst))
    }

    /// The addresses the packet carries now (after what the rules wrote).
    fn current_addrs(run: &Run<'_>) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(run.out.get32(frame::ETH_HLEN + 12)),
            Ipv4Addr::from(run.out.get32(frame::ETH_HLEN + 16)),
        )
    }

    /// Sends the packet along a route the fast path found.
    fn forward(&mut self, run: &mut Run<'_>, r: &Route) -> Verdict {
        route::forward(&mut run.out, r);
        self.counters.event(Event::FastPath);
        Ok(REDIRECT)
    }

    /// Forwards a packet translated to `dst` at the bridge: it cannot go to the host's
    /// stack, whose input path would drop a source of the host's own as a martian.
    fn forward_here(&mut self, run: &mut Run<'_>, ip: &Ip, dst: Ipv4Addr) -> Verdict {
        let Some(r) = self.route(run.f, ip, dst, true) else {
            return Err(DropReason::NoRoute);
        };
        self.forward(run, &r)
    }

    /// A later fragment or an ICMP error from a container (`translated` already, when it is
    /// about a flow): no flow of its own, but translated and forwarded like the flow it
    /// belongs to, if any; else isolation decides.
    fn not_a_flow(&mut self, run: &mut Run<'_>, ip: &Ip, translated: bool) -> Verdict {
        if ip.frag == Frag::Later {
            self.source_network(run, ip)?;
            if let Some((_, dst)) = self.later_fragment(run, ip) {
                return self.forward_here(run, ip, dst);
            }
            return self.isolated(run, ip);
        }
        if translated {
            let (_, dst) = Self::current_addrs(run);
            return self.forward_here(run, ip, dst);
        }
        self.isolated(run, ip)
    }
}

/// The key of the datagram `ip` is a fragment of, marked as looked at.
fn frag_key(run: &mut Run<'_>, ip: &Ip) -> super::FragKey {
    let fk = super::FragKey {
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
    };
    run.touched.frags.insert(fk);
    fk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Topology};

    #[test]
    fn a_frame_that_is_not_ipv4_passes_every_hook() {
        let mut m = Model::new(1000, Config::default(), Topology::default());
        let arp = [0u8; 42];
        let mut f = arp.to_vec();
        f[12] = 0x08;
        f[13] = 0x06;
        let obs = Observed {
            verdict: NEXT,
            frame: &f,
            drop: None,
            bound: &|_| None,
        };
        for hook in Hook::ALL {
            let p = m.packet(hook, 1, &f, obs);
            assert_eq!((p.verdict, p.drop), (NEXT, None));
            assert!(frame::matches(&p.frame, &f).is_ok());
        }
    }
}
