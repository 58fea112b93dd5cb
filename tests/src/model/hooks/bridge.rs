//! The bridge's programs in the model: packets from containers — isolation, flows at the
//! bridge, hairpins and the masqueraded flows the fast path opens there.

use netfast::common::{DropReason, stats::Event, verdict::NEXT};

use super::{Cx, Run, Verdict, src_port_at};
use crate::model::{
    Entry, EntryFlags, Model, Network, PROTO_ICMP, PROTO_TCP, Tuple,
    conntrack::{Pkt, Table, Tracked},
    frame::{self, Expected, Frag, L4, Parsed},
    mapping_slack,
    nat::{Choice, HOST_FLOWS},
    route::Route,
    tcp,
};

impl Model {
    /// The bridge's ingress: packets from containers.
    pub(super) fn bridge_ingress(&mut self, run: &mut Run<'_>) -> Verdict {
        let f = run.f;
        let ip = match frame::ipv4(f) {
            Parsed::NotIpv4 => return Ok(NEXT),
            Parsed::Malformed => return Err(DropReason::Malformed),
            Parsed::Ipv4(ip) => ip,
        };
        // CVE-2020-8558: a container never reaches the host's 127.0.0.0/8.
        if ip.dst.is_loopback() {
            return Err(DropReason::ToHostLoopback);
        }
        if ip.frag == Frag::Later {
            return self.not_a_flow(run, &ip, false);
        }
        let Some(l4) = frame::l4(f, &ip) else {
            return Err(DropReason::Malformed);
        };
        let (sport, dport, tcp_flags) = match l4 {
            L4::Flow {
                sport,
                dport,
                tcp_flags,
            } => (sport, dport, tcp_flags),
            L4::IcmpError => {
                // A container's error about a flow of its network (a port unreachable to
                // a client of a published port): translated and forwarded here like the
                // flow's packets; with the fast path off, left to the stack as sent (the
                // uplink's egress translates it), but for a hairpin's, always forwarded here.
                // An error about another network's flow is dropped.
                self.source_network(run, &ip)?;
                let mut out = std::mem::replace(&mut run.out, Expected::of(&[]));
                let at = Some(run.ifindex);
                let translated =
                    self.translate_error(&mut run.touched, f, &ip, (true, at), &mut out);
                run.out = out;
                let translated = translated?;
                return self.not_a_flow(run, &ip, translated);
            }
            L4::Other => {
                self.source_network(run, &ip)?;
                return self.isolated(run, &ip);
            }
        };
        let key = Tuple::new(ip.src, ip.dst, sport, dport, ip.proto);
        let p = Pkt {
            f,
            ip: &ip,
            key: &key,
            tcp_flags,
        };
        // A flow that leaves from a container (or a container's answer to an inbound flow
        // not answered yet), used only for packets whose source is of this bridge's
        // network: a container cannot step into another network's flows. (Each entry of a
        // hairpin flow carries the network of its own sender.)
        let found = match self.lookup(&mut run.touched, Table::Main, &key, true) {
            Some(e) => Some((e, Table::Main)),
            None => self
                .lookup(&mut run.touched, Table::Inbound, &key, true)
                .map(|e| (e, Table::Inbound)),
        };
        if let Some((e, table)) = found
            && self.usable_at_bridge(run, &key)
        {
            return self.established(&mut Cx { run, p }, &e, table);
        }
        let Some(net) = self.source_network(run, &ip)? else {
            return Ok(NEXT);
        };
        self.new_flow(&mut Cx { run, p }, &net)
    }

    /// A packet of a tracked flow at the bridge: tracked, translated and forwarded — or,
    /// with the fast path off, left to the uplink's egress after the host has routed it.
    pub(super) fn established(&mut self, cx: &mut Cx<'_, '_>, e: &Entry, table: Table) -> Verdict {
        let Cx { run, p } = cx;
        let (ip, key) = (p.ip, p.key);
        if e.flags.await_reply && !e.flags.seen_reply {
            // A hairpin to a mapping whose owner has not answered yet.
            return Err(DropReason::NatFiltered);
        }
        let hairpin = e.flags.redirect;
        if !hairpin && !self.config.fast_path {
            return Ok(NEXT);
        }
        let t = e.translated(key);
        let Some(r) = self.route(run.f, ip, t.dst, hairpin) else {
            if hairpin {
                return Err(DropReason::NoRoute);
            }
            self.counters.event(Event::FastPathFallback);
            return Ok(NEXT);
        };
        let tracked = self.track(&mut run.touched, p, table)?;
        let e = self.ct.of(table)[key];
        self.apply(run, ip, key, &e);
        if tracked == Tracked::Answered {
            self.promote(&mut run.touched, key);
        }
        self.forward(run, &r)
    }

    /// A container's packet that matched no flow: a hairpin to a published port or to a
    /// mapping, a new masqueraded flow, or the host's stack.
    pub(super) fn new_flow(&mut self, cx: &mut Cx<'_, '_>, net: &Network) -> Verdict {
        let Pkt { f, ip, key, .. } = cx.p;
        let can_open = key.proto != PROTO_TCP || cx.p.flags().opens();
        if let Some(target) = self.published(ip.dst, key.dport, ip.proto)
            && !net.ext_addr.is_unspecified()
        {
            if !self.allowed(&target, ip.src) {
                return Err(DropReason::NotAllowed);
            }
            let Some(r) = self.route(f, ip, target.addr, true) else {
                return Err(DropReason::NoRoute);
            };
            // A packet that cannot open a flow (a stray ACK) is the host's to answer.
            if !can_open {
                return Ok(NEXT);
            }
            let ext_port = self.masquerade_port(cx, net, true)?;
            let pair = self.hairpin_new_flow(&mut cx.run.touched, &cx.p, &target, net, ext_port)?;
            self.apply(cx.run, ip, key, &pair.orig);
            return self.forward(cx.run, &r);
        }
        // Another container's external endpoint, or its own: hairpinned. Not an ICMP echo
        // request: it names no external endpoint (its key's destination port is always 0),
        // and to the host's address it is the host's.
        let echo_request = ip.proto == PROTO_ICMP && key.dport == 0;
        if !net.ext_addr.is_unspecified()
            && !echo_request
            && let Some(claim) = self.live_claim(&mut cx.run.touched, ip.dst, key.dport, ip.proto)
        {
            let Some(r) = self.route(f, ip, claim.owner.0, true) else {
                return Err(DropReason::NoRoute);
            };
            if !can_open {
                return Ok(NEXT);
            }
            // An ICMP message has one identifier for both sides: the frame out shows the
            // receiver's, so the sender's mapping is read from the maps.
            let ext_port = self.masquerade_port(cx, net, ip.proto != PROTO_ICMP)?;
            match self.mapping_hairpin_new_flow(&mut cx.run.touched, &cx.p, net, ext_port)? {
                None => {}
                Some((_, true)) => return Err(DropReason::NatFiltered),
                Some((pair, false)) => {
                    self.apply(cx.run, ip, key, &pair.orig);
                    return self.forward(cx.run, &r);
                }
            }
        }
        if self.config.fast_path {
            return self.new_masquerade_flow(cx, net);
        }
        self.isolated(cx.run, ip)
    }

    /// Whether an entry found at a bridge may serve the packet keyed `key`: its source is of
    /// the network of the bridge the packet came in on.
    pub(super) fn usable_at_bridge(&self, run: &Run<'_>, key: &Tuple) -> bool {
        self.topo
            .network_of(key.src)
            .is_some_and(|n| n.bridge == run.ifindex)
    }

    /// The fast path opens a masqueraded flow at its first packet, at the bridge: when the
    /// network masquerades and the packet's route leaves through its uplink.
    pub(super) fn new_masquerade_flow(&mut self, cx: &mut Cx<'_, '_>, net: &Network) -> Verdict {
        let ip = cx.p.ip;
        if !net.masquerade {
            return self.isolated(cx.run, ip);
        }
        let Some(r) = self.route(cx.run.f, ip, ip.dst, false) else {
            self.counters.event(Event::FastPathFallback);
            return self.isolated(cx.run, ip);
        };
        if matches!(r, Route::Peer(_)) || r.dev() != net.uplink {
            return self.isolated(cx.run, ip);
        }
        self.snat_new_flow(cx, net)?;
        self.forward(cx.run, &r)
    }

    /// The state a masqueraded flow opened by this packet starts in, when its entries
    /// expire, and until when its mapping lives. A TCP RST opens no flow: it would leak the
    /// container's address.
    pub(super) fn new_flow_times(&self, p: &Pkt<'_>) -> Result<(tcp::State, u32, u32), DropReason> {
        let key = p.key;
        let flags = p.flags();
        let state = if key.proto == PROTO_TCP {
            if flags.rst {
                return Err(DropReason::TcpRstWithoutFlow);
            }
            tcp::next(tcp::State::None, flags, false, tcp::Fins::default()).0
        } else {
            tcp::State::None
        };
        let t = self.config.timeout(key.proto, state);
        let expires = self.now + t;
        Ok((state, expires, expires + mapping_slack(t)))
    }

    /// The external port of the sender's masquerade mapping, for a flow this packet opens:
    /// the live one, or a new one (the datapath's random choice is read from its output,
    /// or, where the output does not show it (`visible`), from its maps).
    fn masquerade_port(
        &mut self,
        cx: &mut Cx<'_, '_>,
        net: &Network,
        visible: bool,
    ) -> Result<u16, DropReason> {
        let Cx { run, p } = cx;
        let (_, _, until) = self.new_flow_times(p)?;
        let choice = if visible {
            run.obs
                .choice(src_port_at(p.ip), DropReason::NatPortExhausted)
        } else {
            match run
                .obs
                .choice(src_port_at(p.ip), DropReason::NatPortExhausted)
            {
                Choice::Exhausted => Choice::Exhausted,
                _ => Choice::Unknown,
            }
        };
        let mut violations = Vec::new();
        let ext_port = self.mapping(
            &mut run.touched,
            p.key,
            net.ext_addr,
            net.id,
            until,
            (choice, run.obs.bound),
            &mut violations,
        );
        run.violations.extend(violations);
        ext_port
    }

    /// The first packet of a masqueraded flow: its sender's mapping (the live one or a new
    /// one), the flow's pair, and the packet translated by its original entry.
    pub(super) fn snat_new_flow(
        &mut self,
        cx: &mut Cx<'_, '_>,
        net: &Network,
    ) -> Result<(), DropReason> {
        let ext_port = self.masquerade_port(cx, net, true)?;
        let Cx { run, p } = cx;
        let now = self.now;
        let (state, expires, until) = self.new_flow_times(p)?;
        let orig = Entry::opening(
            EntryFlags {
                masq_src: true,
                from_inside: true,
                ..EntryFlags::default()
            },
            Some((net.ext_addr, ext_port)),
            None,
            state,
            net.id,
            now,
            expires,
            until,
            run.f.len(),
        );
        // The replies of a container's flow go to a container; a host flow's to the host.
        let reply_own = EntryFlags {
            inward: net.id != HOST_FLOWS,
            ..EntryFlags::default()
        };
        let pair = self.fill_pair(p, orig, reply_own)?;
        let pair = self.open_pair(&mut run.touched, p.key, pair, false)?;
        self.apply(run, p.ip, p.key, &pair.orig);
        Ok(())
    }
}
