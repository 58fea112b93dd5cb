//! Running events on the datapath and the model side by side, and comparing: each packet's
//! verdict, drop reason and frame out, the map entries the step touched; now and then, and
//! at the end, every map entry, every counter, and the model's invariants.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use netfast::{
    common::{
        Hook,
        conntrack::{CtEntry, CtKey},
        nat::{NatBindKey, NatClaimKey},
        verdict::SHOT,
    },
    prog_test::packet,
};

use super::{
    build,
    convert::{self, binding, claim, model_binding, model_claim},
    dp::{Datapath, EPOCH},
    event::{Body, Event, From, Pkt},
    topology::{self, BRIDGE_MAC, GATEWAY_MAC},
};
use crate::model::{
    self, Config, FragKey, HostSocket, Model, PubTarget,
    conntrack::{Table, Touched},
    frame,
    hooks::Observed,
    invariants,
    route::Lookup,
};

/// Where the datapath and the model part.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// The event at which it showed.
    pub step: usize,
    /// What differs: `verdict`, `drop`, `frame`, `checksum`, `state`, `choice`, `counters`,
    /// `invariant`; or what must never happen did (`leak`).
    pub kind: &'static str,
    pub detail: String,
    /// For `invariant`: the promises broken.
    pub broken: Vec<invariants::Broken>,
    /// For a packet's mismatch: the program, the device, the frame in.
    pub at: Option<(Hook, u32, Vec<u8>)>,
    /// An entry was evicted in the episode before it showed.
    pub evicted: bool,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} ({}): {}", self.step, self.kind, self.detail)
    }
}

/// A frame a hook saw, and what it put out, for the pcap of a failing sequence.
#[derive(Clone, Debug)]
pub struct Captured {
    pub step: usize,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub output: Option<Vec<u8>>,
}

pub struct Runner {
    pub dp: Datapath,
    pub model: Model,
    /// Hook runs so far.
    pub packets: u64,
    /// Full comparisons every this many events (and at the end).
    pub check_every: usize,
    /// Frames kept for a pcap (only when replaying a sequence to write it out).
    pub capture: Option<Vec<Captured>>,
    /// Every comparison's progress line, for a reader of a report (replays of fixtures).
    pub log: Option<Vec<String>>,
    /// An entry was evicted in this episode (flows may have lost a half).
    pub evicted: bool,
    /// Port claims evicted in this episode under live mappings.
    pub lost_claims: BTreeSet<model::ClaimKey>,
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

impl Runner {
    pub fn new(dp: Datapath) -> Runner {
        let model = Model::new(EPOCH, Config::default(), Default::default());
        Runner {
            dp,
            model,
            packets: 0,
            check_every: 64,
            capture: None,
            log: None,
            evicted: false,
            lost_claims: BTreeSet::new(),
        }
    }

    /// Runs a whole sequence from a fresh state; the first mismatch, if any.
    pub fn replay(&mut self, events: &[Event]) -> Result<(), Mismatch> {
        for (i, e) in events.iter().enumerate() {
            self.apply(i, e)?;
            if i % self.check_every == self.check_every - 1 {
                self.checkpoint(i)?;
            }
        }
        self.checkpoint(events.len().saturating_sub(1))
    }

    fn setup(&mut self, n2_masquerade: bool, endpoints: &[Ipv4Addr]) {
        let host = &self.dp.host;
        let networks = vec![host.network(0, true), host.network(1, n2_masquerade)];
        let eps = endpoints
            .iter()
            .filter_map(|a| {
                topology::CONTAINERS
                    .iter()
                    .position(|cs| cs.contains(a))
                    .map(|i| (*a, host.endpoint(i, *a)))
            })
            .collect();
        let topo = host.topology(&networks, &eps);
        self.model = Model::new(EPOCH, Config::default(), topo);
        self.evicted = false;
        self.lost_claims.clear();
        self.dp.reset(&self.model);
    }

    pub fn apply(&mut self, step: usize, e: &Event) -> Result<(), Mismatch> {
        match e {
            Event::Setup {
                n2_masquerade,
                endpoints,
            } => self.setup(*n2_masquerade, endpoints),
            Event::Config(c) => {
                self.model.config = *c;
                self.dp.write_config(c, self.model.now);
            }
            Event::Advance(secs) => {
                self.model.now += secs;
                self.dp.write_config(&self.model.config, self.model.now);
            }
            Event::Publish {
                key,
                to,
                net,
                rule,
                allow,
            } => {
                let target = PubTarget {
                    addr: to.0,
                    port: to.1,
                    net_id: *net,
                    rule: *rule,
                };
                if *rule != 0 {
                    for n in allow {
                        self.dp.allow(*rule, *n);
                    }
                    self.model.allow.insert(*rule, allow.clone());
                }
                self.dp.publish(key, &target);
                self.model.publications.insert(*key, target);
            }
            Event::Unpublish { key, end_flows } => {
                if let Some(t) = self.model.publications.remove(key) {
                    self.dp.unpublish(key);
                    if t.rule != 0 {
                        for n in self.model.allow.remove(&t.rule).unwrap_or_default() {
                            self.dp.disallow(t.rule, n);
                        }
                    }
                    if *end_flows {
                        self.end_flows_of(key);
                    }
                }
            }
            Event::Socket { sock, open } => {
                if *open {
                    if self.dp.open_socket(sock) {
                        self.model.host_sockets.insert(*sock);
                    }
                } else {
                    self.dp.close_socket(sock);
                    self.model.host_sockets.remove(sock);
                }
            }
            Event::Evict { table, key } => {
                let k = key.resolve(&self.model);
                self.evicted = true;
                self.model.ct.of_mut(*table).remove(&k);
                self.dp.remove_ct(*table, &convert::ct_key(&k));
            }
            Event::EvictMapping { key, claim } => {
                let k = key.resolve(&self.model);
                let entry = self
                    .model
                    .ct
                    .main
                    .get(&k)
                    .or_else(|| self.model.ct.inbound.get(&k));
                if let Some(e) = entry.copied()
                    && e.flags.masq_src
                {
                    let (bk, ck) = model::nat::mapping_keys(&k, &e);
                    if *claim {
                        self.lost_claims.insert(ck);
                        self.model.claims.remove(&ck);
                        self.dp.remove_claim(&convert::claim_key(&ck));
                    } else {
                        self.model.bindings.remove(&bk);
                        self.dp.remove_binding(&convert::bind_key(&bk));
                    }
                }
            }
            Event::Send { from, pkt } => self.send(step, *from, pkt)?,
        }
        Ok(())
    }

    /// `netfast unpublish` ends the flows opened through the publication, from outside
    /// (DNAT) and from containers (hairpin): every entry that came of it, judged by the
    /// entry itself — an original whose destination is the published address and port, a
    /// reply that restores them as its source. (An entry that has since been taken by
    /// another flow is that flow's, and stays.)
    fn end_flows_of(&mut self, key: &model::PubKey) {
        let host_addrs = self.model.topo.host_addrs.clone();
        let published_at = |addr: Ipv4Addr, port: u16| {
            port == key.port && key.addr.map_or(host_addrs.contains(&addr), |a| a == addr)
        };
        let mut doomed = Vec::new();
        for table in [Table::Main, Table::Inbound] {
            for (k, e) in self.model.ct.of(table) {
                let through = e.flags.published
                    && k.proto == key.proto
                    && if e.flags.reply {
                        e.new_src.is_some_and(|(a, p)| published_at(a, p))
                    } else {
                        published_at(k.dst, k.dport)
                    };
                if through {
                    doomed.push((table, *k));
                }
            }
        }
        for (table, k) in doomed {
            self.model.ct.of_mut(table).remove(&k);
            self.dp.remove_ct(table, &convert::ct_key(&k));
        }
    }

    /// The frame of a packet entering from `from`, with the MACs of that side.
    fn frame_of(&self, from: From, pkt: &Pkt) -> (Vec<u8>, model::Tuple) {
        let t = pkt.tuple.resolve(&self.model);
        let quoted = match &pkt.body {
            Body::Error { quote, .. } => Some(quote.tuple.resolve(&self.model)),
            _ => None,
        };
        let uplink_mac = self.dp.host.uplink_mac;
        let (dst, src) = match from {
            From::Container { .. } => (BRIDGE_MAC, mac_of(t.src)),
            From::Outside => (uplink_mac, GATEWAY_MAC),
            From::Host => (GATEWAY_MAC, uplink_mac),
            From::ToContainer { .. } => (mac_of(t.dst), BRIDGE_MAC),
        };
        (build::frame(pkt, &t, quoted.as_ref(), dst, src), t)
    }

    fn send(&mut self, step: usize, from: From, pkt: &Pkt) -> Result<(), Mismatch> {
        let (f, _) = self.frame_of(from, pkt);
        let host = &self.dp.host;
        let (uplink, bridges) = (host.uplink, host.bridges);
        match from {
            From::Container { net } => {
                let (verdict, out) = self.hook(step, Hook::BridgeIngress, bridges[net], &f)?;
                // Gone on to the host's stack: routed out of the uplink if that is where it
                // goes, as the host would.
                if verdict != SHOT
                    && verdict != netfast::common::verdict::REDIRECT
                    && self.leaves_by_uplink(&out)
                {
                    let routed = build::routed(&out, GATEWAY_MAC, self.dp.host.uplink_mac);
                    self.hook(step, Hook::UplinkEgress, uplink, &routed)?;
                }
            }
            From::Outside => {
                let (verdict, out) = self.hook(step, Hook::UplinkIngress, uplink, &f)?;
                if verdict != SHOT
                    && verdict != netfast::common::verdict::REDIRECT
                    && let frame::Parsed::Ipv4(ip) = frame::ipv4(&out)
                    && let Some(i) = topology::CONTAINERS
                        .iter()
                        .position(|cs| cs.contains(&ip.dst))
                {
                    self.hook(step, Hook::BridgeEgress, bridges[i], &out)?;
                }
            }
            From::Host => {
                self.hook(step, Hook::UplinkEgress, uplink, &f)?;
            }
            From::ToContainer { net } => {
                self.hook(step, Hook::BridgeEgress, bridges[net], &f)?;
            }
        }
        Ok(())
    }

    /// Whether the host's stack would forward this frame out of the uplink.
    fn leaves_by_uplink(&self, f: &[u8]) -> bool {
        let frame::Parsed::Ipv4(ip) = frame::ipv4(f) else {
            return false;
        };
        if ip.ttl <= 1
            || ip.src.is_unspecified()
            || ip.dst.is_broadcast()
            || ip.dst.is_multicast()
            || ip.dst.is_loopback()
            || f.len() < frame::ETH_HLEN + 20
        {
            return false;
        }
        match self.model.topo.fib.lookup(ip.dst, 0) {
            Lookup::Neigh { dev, .. } | Lookup::Resolve { dev } => dev == self.dp.host.uplink,
            Lookup::None => false,
        }
    }

    /// One program run on both sides, compared.
    fn hook(
        &mut self,
        step: usize,
        hook: Hook,
        ifindex: u32,
        f: &[u8],
    ) -> Result<(i32, Vec<u8>), Mismatch> {
        let (verdict, out, drop) = self.dp.run(hook, ifindex, f);
        self.packets += 1;
        if let Some(c) = &mut self.capture {
            c.push(Captured {
                step,
                hook,
                input: f.to_vec(),
                output: (verdict != SHOT).then(|| out.clone()),
            });
        }
        let dp = &self.dp;
        let bound = |bk: &model::BindKey| {
            dp.binding(&convert::bind_key(bk))
                .map(|b| u16::from_be(b.ext_port))
        };
        let obs = Observed {
            verdict,
            frame: &out,
            drop,
            bound: &bound,
        };
        let pred = self.model.packet(hook, ifindex, f, obs);
        let evicted = self.evicted;
        let mismatch = |kind, detail: String| Mismatch {
            step,
            kind,
            broken: Vec::new(),
            at: Some((hook, ifindex, f.to_vec())),
            evicted,
            detail: format!(
                "{} on ifindex {ifindex}: {detail}\n  frame in:  {}\n  frame out: {}\n  model out: {}",
                hook.name(),
                hex(f),
                if verdict == SHOT {
                    "(dropped)".into()
                } else {
                    hex(&out)
                },
                if pred.verdict == SHOT {
                    "(dropped)".into()
                } else {
                    hex(&pred.frame.bytes)
                }
            ),
        };
        if let Some(v) = pred.violations.first() {
            return Err(mismatch("choice", v.clone()));
        }
        if verdict != pred.verdict || drop != pred.drop {
            return Err(mismatch(
                if verdict == pred.verdict {
                    "drop"
                } else {
                    "verdict"
                },
                format!(
                    "datapath {} {:?}, model {} {:?}",
                    netfast::common::verdict::name(verdict),
                    drop.map(netfast::common::DropReason::name),
                    netfast::common::verdict::name(pred.verdict),
                    pred.drop.map(netfast::common::DropReason::name),
                ),
            ));
        }
        if verdict != SHOT {
            if let Err(e) = frame::matches(&pred.frame, &out) {
                return Err(mismatch("frame", e));
            }
            if packet::decode(f).is_ok()
                && let Err(e) = packet::decode(&out)
            {
                return Err(mismatch(
                    "checksum",
                    format!("a valid frame came out invalid: {e}"),
                ));
            }
        }
        if let Err(e) = self.compare_touched(&pred.touched) {
            return Err(mismatch("state", e));
        }
        if let Some(e) = self.what_must_not_pass(hook, ifindex, verdict, &out) {
            return Err(mismatch("leak", e));
        }
        if let Some(log) = &mut self.log {
            log.push(format!(
                "  {} {} ok",
                hook.name(),
                netfast::common::verdict::name(verdict)
            ));
        }
        Ok((verdict, out))
    }

    /// What no program may let through, whatever the model says: a masqueraded container's
    /// address leaving the uplink (the bridge's own address, the host's, may: a port
    /// published on it answers from it, as with Docker), anything for 127.0.0.0/8 arriving
    /// from the network.
    fn what_must_not_pass(
        &self,
        hook: Hook,
        ifindex: u32,
        verdict: i32,
        out: &[u8],
    ) -> Option<String> {
        if verdict == SHOT {
            return None;
        }
        let frame::Parsed::Ipv4(ip) = frame::ipv4(out) else {
            return None;
        };
        match hook {
            Hook::UplinkEgress
                if !self.model.topo.host_addrs.contains(&ip.src)
                    && self
                        .model
                        .topo
                        .network_of(ip.src)
                        .is_some_and(|n| n.masquerade && n.uplink == ifindex) =>
            {
                Some(format!(
                    "a masqueraded container's address, {}, left the uplink",
                    ip.src
                ))
            }
            Hook::UplinkIngress if ip.dst.is_loopback() => {
                Some(format!("a packet from the network to {} went on", ip.dst))
            }
            _ => None,
        }
    }

    /// The entries a step touched, in the model and in the maps.
    fn compare_touched(&self, t: &Touched) -> Result<(), String> {
        for (table, k) in &t.ct {
            let want = self.model.ct.of(*table).get(k).map(convert::ct_entry);
            let got = self
                .dp
                .ct(*table, &convert::ct_key(k))
                .map(|e| convert::comparable(&e));
            if want != got {
                return Err(format!(
                    "{table:?} table, {k}:\n    datapath {got:?}\n    model    {want:?}"
                ));
            }
        }
        for k in &t.bindings {
            let model = self.model.bindings.get(k);
            let got = self.dp.binding(&convert::bind_key(k));
            mirrored("binding", k, model, got, binding, model_binding)?;
        }
        for k in &t.claims {
            let model = self.model.claims.get(k);
            let got = self.dp.claim(&convert::claim_key(k));
            mirrored("claim", k, model, got, claim, model_claim)?;
        }
        for k in &t.frags {
            self.compare_frag(k)?;
        }
        Ok(())
    }

    fn compare_frag(&self, k: &FragKey) -> Result<(), String> {
        let want = self.model.frags.get(k).map(convert::frag);
        let got = self.dp.frag(&convert::frag_key(k));
        if want != got {
            return Err(format!(
                "fragment record {k:?}:\n    datapath {got:?}\n    model    {want:?}"
            ));
        }
        Ok(())
    }

    /// Takes the datapath's state as the model's (every map entry, every counter): after a
    /// known defect made them part, so that the episode can go on from what the datapath
    /// did.
    pub fn resync(&mut self) {
        let d = self.dp.dump();
        let maps = convert::model_maps(&d.maps);
        self.model.ct.main = maps.main;
        self.model.ct.inbound = maps.inbound;
        self.model.bindings = maps.bindings;
        self.model.claims = maps.claims;
        self.model.frags = convert::model_frags(&d.frags);
        let c = self.dp.counts();
        self.model.counters.hooks = c.hooks;
        self.model.counters.events = c.events;
        self.model.counters.drops = c.drops;
    }

    /// Everything: every map entry, every counter, and the invariants.
    pub fn checkpoint(&mut self, step: usize) -> Result<(), Mismatch> {
        let evicted = self.evicted;
        let fail = |kind, detail| {
            Err(Mismatch {
                step,
                kind,
                detail,
                broken: Vec::new(),
                at: None,
                evicted,
            })
        };
        let (want, got) = (convert::dp_dump(&self.model), self.dp.dump());
        // The datapath's conntrack entries as the model can know them.
        let ct = |m: &HashMap<CtKey, CtEntry>| -> HashMap<CtKey, CtEntry> {
            m.iter()
                .map(|(k, e)| (*k, convert::comparable(e)))
                .collect()
        };
        let tuple = |k: &CtKey| convert::tuple(k).to_string();
        let bind_key = |k: &NatBindKey| format!("{:?}", convert::model_bind_key(k));
        let claim_key = |k: &NatClaimKey| format!("{:?}", convert::model_claim_key(k));
        let main = first_difference(&want.maps.main, &ct(&got.maps.main), tuple);
        let inbound = first_difference(&want.maps.inbound, &ct(&got.maps.inbound), tuple);
        let bindings = first_difference(&want.maps.bindings, &got.maps.bindings, bind_key);
        let claims = first_difference(&want.maps.claims, &got.maps.claims, claim_key);
        let frags = first_difference(&want.frags, &got.frags, |k| format!("{k:?}"));
        for (what, diff) in [
            ("Main table", main),
            ("Inbound table", inbound),
            ("bindings", bindings),
            ("claims", claims),
            ("fragment records", frags),
        ] {
            if let Some(diff) = diff {
                return fail("state", format!("{what}: {diff}"));
            }
        }
        let counts = self.dp.counts();
        let m = &self.model.counters;
        let nonzero = |c: &std::collections::BTreeMap<u32, u64>| {
            c.iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| (*k, *v))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        for (what, want, got) in [
            ("hooks", nonzero(&m.hooks), counts.hooks.clone()),
            ("events", nonzero(&m.events), counts.events.clone()),
            ("drops", nonzero(&m.drops), counts.drops.clone()),
        ] {
            if want != got {
                return fail(
                    "counters",
                    format!("{what}: datapath {got:?}, model {want:?}"),
                );
            }
        }
        let broken = invariants::check(&invariants::Snapshot {
            now: self.model.now,
            main: &self.model.ct.main,
            inbound: &self.model.ct.inbound,
            bindings: &self.model.bindings,
            claims: &self.model.claims,
            evicted: self.evicted,
            lost_claims: &self.lost_claims,
        });
        if !broken.is_empty() {
            let lines: Vec<String> = broken
                .iter()
                .map(std::string::ToString::to_string)
                .collect();
            return Err(Mismatch {
                step,
                kind: "invariant",
                detail: lines.join("\n  "),
                broken,
                at: None,
                evicted: self.evicted,
            });
        }
        Ok(())
    }
}

/// Compares what the model holds for `what` `k` with the datapath's, in the datapath's
/// layout (`to_dp`); a difference is shown in the model's (`to_model`).
fn mirrored<K: std::fmt::Debug, M: std::fmt::Debug, D: PartialEq>(
    what: &str,
    k: &K,
    model: Option<&M>,
    got: Option<D>,
    to_dp: fn(&M) -> D,
    to_model: fn(&D) -> M,
) -> Result<(), String> {
    if model.map(to_dp) == got {
        return Ok(());
    }
    Err(format!(
        "{what} {k:?}:\n    datapath {:?}\n    model    {model:?}",
        got.as_ref().map(to_model)
    ))
}

fn first_difference<K: std::hash::Hash + Eq + Copy, V: PartialEq + std::fmt::Debug>(
    want: &HashMap<K, V>,
    got: &HashMap<K, V>,
    name: impl Fn(&K) -> String,
) -> Option<String> {
    for (k, w) in want {
        match got.get(k) {
            None => return Some(format!("{} is in the model only: {w:?}", name(k))),
            Some(g) if g != w => {
                return Some(format!(
                    "{}:\n    datapath {g:?}\n    model    {w:?}",
                    name(k)
                ));
            }
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            return Some(format!("{} is in the datapath only: {g:?}", name(k)));
        }
    }
    None
}

/// A host socket as the events name it.
pub fn socket(proto: u8, port: u16) -> HostSocket {
    HostSocket {
        proto,
        addr: topology::EXT,
        port,
    }
}
