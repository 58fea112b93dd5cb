//! The uplink's programs in the model: endpoint-independent filtering, what must not pass
//! untranslated, and the uplink's egress and ingress.

use std::net::Ipv4Addr;

use netfast::common::{DropReason, stats::Event, verdict::NEXT};

use super::{Cx, Run, Verdict};
use crate::model::{
    EntryFlags, Model, Network, PROTO_TCP, Tuple,
    conntrack::{Pair, Pkt, Table, Tracked},
    frame::{self, Expected, Frag, Ip, L4, Parsed},
    mapping_slack,
    nat::HOST_FLOWS,
    tcp,
};

impl Model {
    /// Endpoint-independent filtering: the first packet from outside to a live mapping's
    /// external port opens a flow to its internal endpoint, from any remote (TCP: only a
    /// SYN), unless a socket of the host owns the port. `Ok(None)`: not for a mapping.
    pub(super) fn eif_new_flow(&mut self, cx: &mut Cx<'_, '_>) -> Result<Option<Pair>, DropReason> {
        let Cx { run, p } = cx;
        let key = p.key;
        let now = self.now;
        let flags = p.flags();
        match key.proto {
            crate::model::PROTO_UDP => {}
            PROTO_TCP if flags.opens() => {}
            _ => return Ok(None),
        }
        let ck = crate::model::ClaimKey {
            ext_addr: key.dst,
            ext_port: key.dport,
            proto: key.proto,
        };
        let Some(claim) = self.claim(&mut run.touched, &ck) else {
            return Ok(None);
        };
        let bk = crate::model::BindKey {
            int_addr: claim.owner.0,
            ext_addr: key.dst,
            int_port: claim.owner.1,
            proto: key.proto,
        };
        let Some(b) = self.binding(&mut run.touched, &bk) else {
            return Ok(None);
        };
        if b.expires < now || b.ext_port != key.dport {
            return Ok(None);
        }
        if self.host_uses(key.proto, key.dst, key.dport, true) {
            return Ok(None);
        }
        let state = if key.proto == PROTO_TCP {
            tcp::next(tcp::State::None, flags, false, tcp::Fins::default()).0
        } else {
            tcp::State::None
        };
        let t = self.config.timeout(key.proto, state);
        let expires = now + t;
        let until = expires + mapping_slack(t);
        if self.reuse_mapping(&mut run.touched, &bk, claim.owner_net, until) != Some(key.dport) {
            return Ok(None);
        }
        let to_mapping = EntryFlags {
            masq_dst: true,
            ..EntryFlags::default()
        };
        let times = (state, expires, until);
        let pair = self.inward_pair(p, to_mapping, claim.owner, claim.owner_net, times)?;
        self.counters.rule("endpoint-independent flow");
        self.open_pair(&mut run.touched, key, pair, true).map(Some)
    }

    /// What must not pass untranslated: on the way out, anything from a masqueraded
    /// network (it would leak a container's address: `reason`); on the way in, anything
    /// straight to a masqueraded container (direct access).
    pub(super) fn forbidden(
        &self,
        run: &Run<'_>,
        out: bool,
        ip: &Ip,
        reason: DropReason,
    ) -> Verdict {
        if out {
            if self.masq_network(ip.src, run.ifindex).is_some() {
                return Err(reason);
            }
        } else if self.topo.network_of(ip.dst).is_some_and(|n| n.masquerade) {
            return Err(DropReason::DirectAccess);
        }
        Ok(NEXT)
    }

    /// A packet translated at the uplink without a flow entry of its own (an ICMP error
    /// about a flow, a later fragment): on the way in, the fast path forwards it into its
    /// container like the flow's packets (handed to the host's stack, it would meet the
    /// FORWARD chain Docker leaves at DROP, and path MTU discovery with it); otherwise the
    /// stack routes it.
    pub(super) fn forward_in(
        &mut self,
        run: &mut Run<'_>,
        out: bool,
        ip: &Ip,
        dst: Ipv4Addr,
    ) -> Verdict {
        if !out && self.config.fast_path {
            if let Some(r) = self.route(run.f, ip, dst, false) {
                return self.forward(run, &r);
            }
            self.counters.event(Event::FastPathFallback);
        }
        Ok(NEXT)
    }

    /// The masqueraded network `src` belongs to, when the packet leaves through its uplink.
    pub(super) fn masq_network(&self, src: Ipv4Addr, ifindex: u32) -> Option<Network> {
        self.topo
            .network_of(src)
            .filter(|n| n.masquerade && n.uplink == ifindex)
            .copied()
    }

    /// The uplink: `out` is its egress (to the outside: containers' packets the host
    /// routed, and the host's own), else its ingress (from the outside).
    pub(super) fn uplink(&mut self, run: &mut Run<'_>, out: bool) -> Verdict {
        let f = run.f;
        let ip = match frame::ipv4(f) {
            Parsed::NotIpv4 => return Ok(NEXT),
            Parsed::Malformed => return Err(DropReason::Malformed),
            Parsed::Ipv4(ip) => ip,
        };
        // moby#45610: nothing from the network reaches the host's loopback addresses.
        if !out && ip.dst.is_loopback() {
            return Err(DropReason::LoopbackFromNetwork);
        }
        if ip.frag == Frag::Later {
            if let Some((_, dst)) = self.later_fragment(run, &ip) {
                return self.forward_in(run, out, &ip, dst);
            }
            return self.forbidden(run, out, &ip, DropReason::FragmentWithoutFirst);
        }
        let (sport, dport, tcp_flags) = match frame::l4(f, &ip) {
            None => return Err(DropReason::Malformed),
            Some(L4::Flow {
                sport,
                dport,
                tcp_flags,
            }) => (sport, dport, tcp_flags),
            Some(L4::IcmpError) => {
                let mut out_frame = std::mem::replace(&mut run.out, Expected::of(&[]));
                let translated =
                    self.translate_error(&mut run.touched, f, &ip, (out, None), &mut out_frame);
                run.out = out_frame;
                if translated? {
                    let (_, dst) = Self::current_addrs(run);
                    return self.forward_in(run, out, &ip, dst);
                }
                return self.forbidden(run, out, &ip, DropReason::IcmpErrorWithoutFlow);
            }
            Some(L4::Other) => {
                return self.forbidden(run, out, &ip, DropReason::UnsupportedProtocol);
            }
        };
        let key = Tuple::new(ip.src, ip.dst, sport, dport, ip.proto);
        let p = Pkt {
            f,
            ip: &ip,
            key: &key,
            tcp_flags,
        };
        let fast_path = self.config.fast_path;
        let mut masq = None;
        let mut target = None;
        let mut found = self
            .lookup(&mut run.touched, Table::Main, &key, out)
            .map(|e| (e, Table::Main));
        if found.is_none() {
            if out {
                masq = self.masq_network(ip.src, run.ifindex);
                if masq.is_some() {
                    found = self
                        .lookup(&mut run.touched, Table::Inbound, &key, true)
                        .map(|e| (e, Table::Inbound));
                }
            } else {
                target = self.published(ip.dst, dport, ip.proto);
                if target.is_some() || self.config.endpoint_independent {
                    found = self
                        .lookup(&mut run.touched, Table::Inbound, &key, false)
                        .map(|e| (e, Table::Inbound));
                }
                // A masqueraded flow that lost its reply entry while its original lives.
                if found.is_none() && target.is_none() && self.restore_reply(&mut run.touched, &key)
                {
                    self.counters.event(Event::CtRepaired);
                    found = self
                        .lookup(&mut run.touched, Table::Main, &key, false)
                        .map(|e| (e, Table::Main));
                }
            }
        }
        // Hairpin flows are the bridge's: a tuple of theirs seen here is another packet.
        if let Some((e, table)) = found
            && !e.flags.redirect
        {
            let mut fast = None;
            if !out && fast_path && e.flags.inward {
                let t = e.translated(&key);
                fast = self.route(f, &ip, t.dst, false);
                if fast.is_none() {
                    self.counters.event(Event::FastPathFallback);
                }
            }
            let tracked = self.track(&mut run.touched, &p, table)?;
            let e = self.ct.of(table)[&key];
            if e.new_src.is_some() || e.new_dst.is_some() {
                self.apply(run, &ip, &key, &e);
            }
            if tracked == Tracked::Answered && self.promote(&mut run.touched, &key) {
                self.counters.rule("inbound flow answered at the uplink");
            }
            return match fast {
                Some(r) => self.forward(run, &r),
                None => Ok(NEXT),
            };
        }
        if out {
            let net = match masq.or_else(|| self.masq_network(ip.src, run.ifindex)) {
                Some(net) => net,
                // The host's own packet, from a port a container's mapping holds: it leaves
                // masqueraded behind its own address, from a port nobody holds.
                None if self.held_by_a_container(&mut run.touched, &key) => {
                    self.counters.rule("host flow remapped");
                    self.counters.event(Event::HostFlowRemapped);
                    Network {
                        id: HOST_FLOWS,
                        subnet: "0.0.0.0/32".parse().expect("a network"),
                        bridge: 0,
                        uplink: run.ifindex,
                        masquerade: false,
                        ext_addr: key.src,
                    }
                }
                None => return Ok(NEXT),
            };
            self.snat_new_flow(&mut Cx { run, p }, &net)?;
            return Ok(NEXT);
        }
        // From outside, a packet of no flow from an address of one of our networks is forged.
        if self.topo.network_of(ip.src).is_some() {
            return Err(DropReason::SpoofedSource);
        }
        if let Some(target) = target.or_else(|| self.published(ip.dst, dport, ip.proto)) {
            if !self.allowed(&target, ip.src) {
                return Err(DropReason::NotAllowed);
            }
            let fast = if fast_path {
                self.route(f, &ip, target.addr, false)
            } else {
                None
            };
            let choice = run.obs.choice(ip.l4, DropReason::CtInsertFailed);
            let mut violations = Vec::new();
            let opened = self.dnat_new_flow(&mut run.touched, &p, &target, choice, &mut violations);
            run.violations.extend(violations);
            // A packet that cannot open a flow (a stray ACK) is the host's to answer.
            if let Some(pair) = opened? {
                self.counters.rule("published port");
                self.apply(run, &ip, &key, &pair.orig);
                if let Some(r) = fast {
                    return self.forward(run, &r);
                }
            }
            return Ok(NEXT);
        }
        if self.config.endpoint_independent
            && let Some(pair) = self.eif_new_flow(&mut Cx { run, p })?
        {
            self.apply(run, &ip, &key, &pair.orig);
            return Ok(NEXT);
        }
        self.forbidden(run, out, &ip, DropReason::DirectAccess)
    }
}
