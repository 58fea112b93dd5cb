//! What each program does with a packet, rule by rule, in the order the programs apply
//! them. A rule that drops names its reason; everything not dropped goes on (`NEXT`) to the
//! host's stack, translated or not, unless the fast path forwards it (`REDIRECT`).

use std::net::Ipv4Addr;

use netfast::common::{
    DropReason, Hook,
    stats::Event,
    verdict::{NEXT, REDIRECT, SHOT},
};

use super::{
    Entry, EntryFlags, Model, Network, PROTO_ICMP, PROTO_TCP, Tuple,
    conntrack::{Inserted, Pair, Table, Touched, Tracked},
    frame::{self, Expected, Frag, Ip, L4, Parsed},
    mapping_slack,
    nat::{Choice, HOST_FLOWS},
    route::{self, Route},
    tcp,
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
    fn isolated(&self, run: &Run<'_>, ip: &Ip) -> Result<i32, DropReason> {
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
            let fk = super::FragKey {
                src: ip.src,
                dst: ip.dst,
                id: ip.id,
                proto: ip.proto,
            };
            run.touched.frags.insert(fk);
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
        let fk = super::FragKey {
            src: ip.src,
            dst: ip.dst,
            id: ip.id,
            proto: ip.proto,
        };
        run.touched.frags.insert(fk);
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
    fn forward(&mut self, run: &mut Run<'_>, r: &Route) -> Result<i32, DropReason> {
        route::forward(&mut run.out, r);
        self.counters.event(Event::FastPath);
        Ok(REDIRECT)
    }

    /// Forwards a packet translated to `dst` at the bridge: it cannot go to the host's
    /// stack, whose input path would drop a source of the host's own as a martian.
    fn forward_here(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        dst: Ipv4Addr,
    ) -> Result<i32, DropReason> {
        let Some(r) = self.route(run.f, ip, dst, true) else {
            return Err(DropReason::NoRoute);
        };
        self.forward(run, &r)
    }

    /// A later fragment or an ICMP error from a container (`translated` already, when it is
    /// about a flow): no flow of its own, but translated and forwarded like the flow it
    /// belongs to, if any; else isolation decides.
    fn not_a_flow(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        translated: bool,
    ) -> Result<i32, DropReason> {
        if ip.frag == Frag::Later {
            self.source_network(run, ip)?;
            if let Some((_, dst)) = self.later_fragment(run, ip) {
                return self.forward_here(run, ip, dst);
            }
            return self.isolated(run, ip);
        }
        if translated && self.config.fast_path {
            let (_, dst) = Self::current_addrs(run);
            return self.forward_here(run, ip, dst);
        }
        self.isolated(run, ip)
    }

    /// The bridge's ingress: packets from containers.
    fn bridge_ingress(&mut self, run: &mut Run<'_>) -> Result<i32, DropReason> {
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
                // A container's error about a flow of ours (a port unreachable to a client
                // of a published port): translated, then forwarded like the flow's packets.
                self.source_network(run, &ip)?;
                let mut out = std::mem::replace(&mut run.out, Expected::of(&[]));
                let translated = self.translate_error(&mut run.touched, f, &ip, true, &mut out);
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
            return self.established(run, &ip, &key, tcp_flags, &e, table);
        }
        let Some(net) = self.source_network(run, &ip)? else {
            return Ok(NEXT);
        };
        self.new_flow(run, &ip, &key, tcp_flags, &net)
    }

    /// A packet of a tracked flow at the bridge: tracked, translated and forwarded — or,
    /// with the fast path off, left to the uplink's egress after the host has routed it.
    fn established(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
        e: &Entry,
        table: Table,
    ) -> Result<i32, DropReason> {
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
        let tracked = self.track(&mut run.touched, run.f, ip, key, tcp_flags, table)?;
        let e = self.ct.of(table)[key];
        self.apply(run, ip, key, &e);
        if tracked == Tracked::Answered {
            self.promote(&mut run.touched, key);
        }
        self.forward(run, &r)
    }

    /// A container's packet that matched no flow: a hairpin to a published port or to a
    /// mapping, a new masqueraded flow, or the host's stack.
    fn new_flow(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
        net: &Network,
    ) -> Result<i32, DropReason> {
        let f = run.f;
        let can_open = key.proto != PROTO_TCP || tcp::Flags::from_byte(tcp_flags).opens();
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
            let ext_port = self.masquerade_port(run, ip, key, tcp_flags, net, true)?;
            let pair = self.hairpin_new_flow(
                &mut run.touched,
                f,
                ip,
                key,
                tcp_flags,
                &target,
                net,
                ext_port,
            )?;
            self.apply(run, ip, key, &pair.orig);
            return self.forward(run, &r);
        }
        // Another container's external endpoint, or its own: hairpinned. Not an ICMP echo
        // request: it names no external endpoint (its key's destination port is always 0),
        // and to the host's address it is the host's.
        let echo_request = ip.proto == PROTO_ICMP && key.dport == 0;
        if !net.ext_addr.is_unspecified()
            && !echo_request
            && let Some(claim) = self.live_claim(&mut run.touched, ip.dst, key.dport, ip.proto)
        {
            let Some(r) = self.route(f, ip, claim.owner.0, true) else {
                return Err(DropReason::NoRoute);
            };
            if !can_open {
                return Ok(NEXT);
            }
            // An ICMP message has one identifier for both sides: the frame out shows the
            // receiver's, so the sender's mapping is read from the maps.
            let ext_port =
                self.masquerade_port(run, ip, key, tcp_flags, net, ip.proto != PROTO_ICMP)?;
            match self.mapping_hairpin_new_flow(
                &mut run.touched,
                f,
                ip,
                key,
                tcp_flags,
                net,
                ext_port,
            )? {
                None => {}
                Some((_, true)) => return Err(DropReason::NatFiltered),
                Some((pair, false)) => {
                    self.apply(run, ip, key, &pair.orig);
                    return self.forward(run, &r);
                }
            }
        }
        if self.config.fast_path {
            return self.new_masquerade_flow(run, ip, key, tcp_flags, net);
        }
        self.isolated(run, ip)
    }

    /// Whether an entry found at a bridge may serve the packet keyed `key`: its source is of
    /// the network of the bridge the packet came in on.
    fn usable_at_bridge(&self, run: &Run<'_>, key: &Tuple) -> bool {
        self.topo
            .network_of(key.src)
            .is_some_and(|n| n.bridge == run.ifindex)
    }

    /// The fast path opens a masqueraded flow at its first packet, at the bridge: when the
    /// network masquerades and the packet's route leaves through its uplink.
    fn new_masquerade_flow(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
        net: &Network,
    ) -> Result<i32, DropReason> {
        if !net.masquerade {
            return self.isolated(run, ip);
        }
        let Some(r) = self.route(run.f, ip, ip.dst, false) else {
            self.counters.event(Event::FastPathFallback);
            return self.isolated(run, ip);
        };
        if matches!(r, Route::Peer(_)) || r.dev() != net.uplink {
            return self.isolated(run, ip);
        }
        let ext_port = self.masquerade_port(run, ip, key, tcp_flags, net, true)?;
        let pair = self.snat_new_flow(run, ip, key, tcp_flags, net, ext_port)?;
        self.apply(run, ip, key, &pair.orig);
        self.forward(run, &r)
    }

    /// The state a masqueraded flow opened by this packet starts in, when its entries
    /// expire, and until when its mapping lives. A TCP RST opens no flow: it would leak the
    /// container's address.
    fn new_flow_times(
        &self,
        key: &Tuple,
        tcp_flags: u8,
    ) -> Result<(tcp::State, u32, u32), DropReason> {
        let flags = tcp::Flags::from_byte(tcp_flags);
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
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
        net: &Network,
        visible: bool,
    ) -> Result<u16, DropReason> {
        let (_, _, until) = self.new_flow_times(key, tcp_flags)?;
        let choice = if visible {
            run.obs
                .choice(src_port_at(ip), DropReason::NatPortExhausted)
        } else {
            match run
                .obs
                .choice(src_port_at(ip), DropReason::NatPortExhausted)
            {
                Choice::Exhausted => Choice::Exhausted,
                _ => Choice::Unknown,
            }
        };
        let mut violations = Vec::new();
        let ext_port = self.mapping(
            &mut run.touched,
            key,
            net.ext_addr,
            net.id,
            until,
            (choice, run.obs.bound),
            &mut violations,
        );
        run.violations.extend(violations);
        ext_port
    }

    /// The first packet of a masqueraded flow, its mapping made: the flow's pair, the
    /// packet translated by its original entry.
    fn snat_new_flow(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
        net: &Network,
        ext_port: u16,
    ) -> Result<Pair, DropReason> {
        let now = self.now;
        let (state, expires, until) = self.new_flow_times(key, tcp_flags)?;
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
        let mut pair = self.fill_pair(run.f, ip, key, tcp_flags, orig, reply_own)?;
        match self.insert_pair(&mut run.touched, key, &mut pair, false, false) {
            Inserted::Clash => Err(DropReason::CtInsertFailed),
            other => {
                self.count_opened(other);
                Ok(pair)
            }
        }
    }

    /// Endpoint-independent filtering: the first packet from outside to a live mapping's
    /// external port opens a flow to its internal endpoint, from any remote (TCP: only a
    /// SYN), unless a socket of the host owns the port. `Ok(None)`: not for a mapping.
    fn eif_new_flow(
        &mut self,
        run: &mut Run<'_>,
        ip: &Ip,
        key: &Tuple,
        tcp_flags: u8,
    ) -> Result<Option<Pair>, DropReason> {
        let now = self.now;
        let flags = tcp::Flags::from_byte(tcp_flags);
        match key.proto {
            super::PROTO_UDP => {}
            PROTO_TCP if flags.opens() => {}
            _ => return Ok(None),
        }
        let ck = super::ClaimKey {
            ext_addr: key.dst,
            ext_port: key.dport,
            proto: key.proto,
        };
        let Some(claim) = self.claim(&mut run.touched, &ck) else {
            return Ok(None);
        };
        let bk = super::BindKey {
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
        let orig = Entry::opening(
            EntryFlags {
                masq_dst: true,
                inward: true,
                ..EntryFlags::default()
            },
            None,
            Some(claim.owner),
            state,
            claim.owner_net,
            now,
            expires,
            until,
            run.f.len(),
        );
        let reply_own = EntryFlags {
            from_inside: true,
            ..EntryFlags::default()
        };
        let mut pair = self.fill_pair(run.f, ip, key, tcp_flags, orig, reply_own)?;
        self.counters.rule("endpoint-independent flow");
        match self.insert_pair(&mut run.touched, key, &mut pair, false, true) {
            Inserted::Clash => Err(DropReason::CtInsertFailed),
            other => {
                self.count_opened(other);
                Ok(Some(pair))
            }
        }
    }

    /// What must not pass untranslated: on the way out, anything from a masqueraded
    /// network (it would leak a container's address: `reason`); on the way in, anything
    /// straight to a masqueraded container (direct access).
    fn forbidden(
        &self,
        run: &Run<'_>,
        out: bool,
        ip: &Ip,
        reason: DropReason,
    ) -> Result<i32, DropReason> {
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
    fn forward_in(
        &mut self,
        run: &mut Run<'_>,
        out: bool,
        ip: &Ip,
        dst: Ipv4Addr,
    ) -> Result<i32, DropReason> {
        if !out && self.config.fast_path {
            if let Some(r) = self.route(run.f, ip, dst, false) {
                return self.forward(run, &r);
            }
            self.counters.event(Event::FastPathFallback);
        }
        Ok(NEXT)
    }

    /// The masqueraded network `src` belongs to, when the packet leaves through its uplink.
    fn masq_network(&self, src: Ipv4Addr, ifindex: u32) -> Option<Network> {
        self.topo
            .network_of(src)
            .filter(|n| n.masquerade && n.uplink == ifindex)
            .copied()
    }

    /// The uplink: `out` is its egress (to the outside: containers' packets the host
    /// routed, and the host's own), else its ingress (from the outside).
    fn uplink(&mut self, run: &mut Run<'_>, out: bool) -> Result<i32, DropReason> {
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
                    self.translate_error(&mut run.touched, f, &ip, out, &mut out_frame);
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
            let tracked = self.track(&mut run.touched, f, &ip, &key, tcp_flags, table)?;
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
            let ext_port = self.masquerade_port(run, &ip, &key, tcp_flags, &net, true)?;
            let pair = self.snat_new_flow(run, &ip, &key, tcp_flags, &net, ext_port)?;
            self.apply(run, &ip, &key, &pair.orig);
            return Ok(NEXT);
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
            let opened = self.dnat_new_flow(
                &mut run.touched,
                f,
                &ip,
                &key,
                tcp_flags,
                &target,
                choice,
                &mut violations,
            );
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
            && let Some(pair) = self.eif_new_flow(run, &ip, &key, tcp_flags)?
        {
            self.apply(run, &ip, &key, &pair.orig);
            return Ok(NEXT);
        }
        self.forbidden(run, out, &ip, DropReason::DirectAccess)
    }
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
