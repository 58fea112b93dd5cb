//! Published ports (`-p [HOST_IP:]HOST_PORT:CONTAINER:PORT`): a client from outside reaches
//! the container (DNAT, keeping the client's address); a container of the host reaches it
//! through the host's address (hairpin: DNAT and masquerade at once, forwarded at the
//! bridge). `--allow` lists restrict who may open a flow.

use std::net::Ipv4Addr;

use netfast::common::{DropReason, stats::Event};

use super::{
    EntryFlags, Model, PROTO_TCP, PROTO_UDP, PubKey, PubTarget, Tuple,
    conntrack::{Inserted, Pair, Pkt, Touched},
    nat::Choice,
    tcp,
};

/// Source ports tried for a client whose flow clashes with another's.
pub const CLASH_TRIES: u32 = 8;

impl Model {
    /// The publication of `(addr, port)` for `proto`: one for that address, else one for
    /// every address when `addr` is the host's. Never for 127.0.0.0/8 (only the host's own
    /// sockets reach a port published there), never for other protocols than TCP and UDP.
    pub fn published(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<PubTarget> {
        if (proto != PROTO_TCP && proto != PROTO_UDP) || addr.is_loopback() {
            return None;
        }
        let exact = PubKey {
            addr: Some(addr),
            port,
            proto,
        };
        if let Some(t) = self.publications.get(&exact) {
            return Some(*t);
        }
        if !self.topo.host_addrs.contains(&addr) {
            return None;
        }
        self.publications
            .get(&PubKey {
                addr: None,
                port,
                proto,
            })
            .copied()
    }

    /// Whether `client` may use the publication `target`.
    pub fn allowed(&self, target: &PubTarget, client: Ipv4Addr) -> bool {
        target.rule == 0
            || self
                .allow
                .get(&target.rule)
                .is_some_and(|nets| nets.iter().any(|n| n.contains(&client)))
    }

    /// The state a flow opened by this packet starts in and its timeout; `None` for a TCP
    /// segment that is not a plain SYN (it cannot open a flow).
    pub fn opening_state(&self, p: &Pkt<'_>) -> Option<(tcp::State, u32)> {
        let key = p.key;
        if key.proto != PROTO_TCP {
            return Some((
                tcp::State::None,
                self.config.timeout(key.proto, tcp::State::None),
            ));
        }
        let flags = p.flags();
        if !flags.opens() {
            return None;
        }
        let state = tcp::next(tcp::State::None, flags, false, tcp::Fins::default()).0;
        Some((state, self.config.timeout(key.proto, state)))
    }

    /// A client from outside opens a flow to a published port: its packets get the
    /// container as their destination, the container's replies the published address and
    /// port as their source. A segment that cannot open a flow may still repair one that
    /// lost its original entry; else it is the host's (`Ok(None)`). When the container
    /// already talks to the client's address and port through another publication, the
    /// client's source port is translated too (as Linux does), to a port of the range that
    /// makes the reply tuple unique. Returns the pair whose original entry translates the
    /// packet.
    pub fn dnat_new_flow(
        &mut self,
        touched: &mut Touched,
        p: &Pkt<'_>,
        target: &PubTarget,
        choice: Choice,
        violations: &mut Vec<String>,
    ) -> Result<Option<Pair>, DropReason> {
        let key = p.key;
        let now = self.now;
        let (state, t, repair_only) = match self.opening_state(p) {
            Some((s, t)) => (s, t, false),
            None => (
                tcp::State::Established,
                self.config.timeout(key.proto, tcp::State::Established),
                true,
            ),
        };
        let published = EntryFlags {
            published: true,
            ..EntryFlags::default()
        };
        let to = (target.addr, target.port);
        let mut pair = self.inward_pair(p, published, to, target.net_id, (state, now + t, 0))?;
        match self.insert_pair(touched, key, &mut pair, repair_only, true) {
            Inserted::Absent => return Ok(None),
            Inserted::Clash => {}
            other => {
                self.count_opened(other);
                return Ok(Some(pair));
            }
        }
        // The clash: the client's source port is translated as well.
        self.counters.rule("client port remapped");
        pair.orig.new_src = Some((key.src, 0));
        pair.reply = pair.orig.reply(key, published.inward_reply());
        let (min, max) = (self.config.port_min, self.config.port_max);
        let free = |m: &Model, p: u16| {
            let mut o = pair.orig;
            o.new_src = Some((key.src, p));
            let rk = o.peer_key(key);
            [
                super::conntrack::Table::Main,
                super::conntrack::Table::Inbound,
            ]
            .iter()
            .all(|t| {
                m.ct.of(*t)
                    .get(&rk)
                    .is_none_or(|h| h.expires < now || h.peer_key(&rk) == *key)
            })
        };
        let port = match choice {
            Choice::Port(p) => {
                if !(min.min(max)..=min.max(max)).contains(&p) || !free(self, p) {
                    violations.push(format!(
                        "{key}: the client's source port was remapped to {p}, which is {}",
                        if free(self, p) {
                            "outside the port range"
                        } else {
                            "held by another flow"
                        }
                    ));
                }
                p
            }
            Choice::Exhausted | Choice::Unknown => {
                if !self.exhaustible(CLASH_TRIES, min, max, |p| free(self, p)) {
                    if choice == Choice::Exhausted {
                        violations.push(format!(
                            "{key}: the datapath found no source port for the clashing flow, \
                             but {CLASH_TRIES} candidates from any start in {min}-{max} \
                             include one"
                        ));
                    } else if let Some(p) = (min.min(max)..=min.max(max)).find(|p| free(self, *p)) {
                        // Nothing to learn from: predict the first port that works.
                        pair.orig.new_src = Some((key.src, p));
                        let inserted = self.insert_pair(touched, key, &mut pair, false, true);
                        self.count_opened(inserted);
                        return Ok(Some(pair));
                    }
                }
                return Err(DropReason::CtInsertFailed);
            }
        };
        pair.orig.new_src = Some((key.src, port));
        self.open_pair(touched, key, pair, true).map(Some)
    }

    /// Inserts the pair of a flow a packet opens (`inbound`: from outside, in the table of
    /// unanswered flows) and counts what that did; a clash with another live flow's tuple
    /// drops the packet.
    pub fn open_pair(
        &mut self,
        touched: &mut Touched,
        key: &Tuple,
        mut pair: Pair,
        inbound: bool,
    ) -> Result<Pair, DropReason> {
        match self.insert_pair(touched, key, &mut pair, false, inbound) {
            Inserted::Clash => Err(DropReason::CtInsertFailed),
            other => {
                self.count_opened(other);
                Ok(pair)
            }
        }
    }

    /// The events an opener counts.
    pub fn count_opened(&mut self, inserted: Inserted) {
        match inserted {
            Inserted::Repaired => self.counters.event(Event::CtRepaired),
            Inserted::NewInbound => self.counters.event(Event::InboundOpened),
            _ => {}
        }
    }
}
