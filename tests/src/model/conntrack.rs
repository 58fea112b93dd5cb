//! Connection tracking: a flow is a pair of entries, each keyed by the tuple its packets
//! carry before translation at the hook that sees them; the other entry of a flow is keyed
//! by the translated tuple, reversed. Flows opened from outside (a published port, an
//! endpoint-independent mapping) live in a table of their own until they are answered, so
//! that unanswered packets can only push out their own kind; a flow's two entries are
//! always in one table.

use std::collections::{BTreeMap, BTreeSet};

use netfast::common::{DropReason, stats::Event};

use super::{Endpoint, Entry, EntryFlags, Model, PROTO_TCP, Tuple, frame, nat::Keep, tcp};

/// The packet a flow is judged by: its frame, its IPv4 header, the tuple it is keyed by, and
/// its TCP flags byte.
#[derive(Clone, Copy)]
pub struct Pkt<'a> {
    pub f: &'a [u8],
    pub ip: &'a frame::Ip,
    pub key: &'a Tuple,
    pub tcp_flags: u8,
}

impl Pkt<'_> {
    pub const fn flags(&self) -> tcp::Flags {
        tcp::Flags::from_byte(self.tcp_flags)
    }

    /// The TCP segment's sequence, window and options (`Malformed` when the header is cut).
    pub fn segment(&self) -> Result<tcp::Segment, DropReason> {
        frame::segment(self.f, self.ip, self.tcp_flags).ok_or(DropReason::Malformed)
    }
}

/// Which table an entry is in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Table {
    /// Every flow that was opened from inside, or answered.
    Main,
    /// Flows opened from outside, not answered yet.
    Inbound,
}

#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub main: BTreeMap<Tuple, Entry>,
    pub inbound: BTreeMap<Tuple, Entry>,
}

impl Tables {
    pub fn of(&self, t: Table) -> &BTreeMap<Tuple, Entry> {
        match t {
            Table::Main => &self.main,
            Table::Inbound => &self.inbound,
        }
    }

    pub fn of_mut(&mut self, t: Table) -> &mut BTreeMap<Tuple, Entry> {
        match t {
            Table::Main => &mut self.main,
            Table::Inbound => &mut self.inbound,
        }
    }
}

/// The keys a step read or wrote: the fuzzer compares exactly these with the datapath's
/// maps after each packet (and everything, now and then).
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub ct: BTreeSet<(Table, Tuple)>,
    pub bindings: BTreeSet<super::BindKey>,
    pub claims: BTreeSet<super::ClaimKey>,
    pub frags: BTreeSet<super::FragKey>,
}

/// `k`'s value in one of the model's maps, `k` noted as touched (the fuzzer compares the
/// touched keys with the datapath's maps).
pub fn noted_get<K: Ord + Copy, V: Copy>(
    map: &BTreeMap<K, V>,
    touched: &mut BTreeSet<K>,
    k: &K,
) -> Option<V> {
    touched.insert(*k);
    map.get(k).copied()
}

/// Writes `k` in one of the model's maps, noted as touched.
pub fn noted_put<K: Ord + Copy, V>(
    map: &mut BTreeMap<K, V>,
    touched: &mut BTreeSet<K>,
    k: K,
    v: V,
) {
    touched.insert(k);
    map.insert(k, v);
}

/// What inserting a flow's pair did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A new flow.
    New,
    /// A new flow from outside, in the table of unanswered flows.
    NewInbound,
    /// The flow was there (another packet opened it a moment before).
    Joined,
    /// The flow was there without its original entry, which is made again.
    Repaired,
    /// Another live flow answers on the reply's tuple: nothing inserted.
    Clash,
    /// Repairing only, and there is no such flow.
    Absent,
}

/// A flow being opened: its original entry and its reply.
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    pub orig: Entry,
    pub reply: Entry,
}

/// What `track` tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    Tracked,
    /// An inbound flow is answered now: it moves to the main table.
    Answered,
}

impl Model {
    pub fn ct_get(&mut self, touched: &mut Touched, t: Table, k: &Tuple) -> Option<Entry> {
        touched.ct.insert((t, *k));
        self.ct.of(t).get(k).copied()
    }

    pub fn ct_put(&mut self, touched: &mut Touched, t: Table, k: Tuple, e: Entry) {
        touched.ct.insert((t, k));
        self.ct.of_mut(t).insert(k, e);
    }

    pub fn ct_remove(&mut self, touched: &mut Touched, t: Table, k: &Tuple) {
        touched.ct.insert((t, *k));
        self.ct.of_mut(t).remove(k);
    }

    /// The live entry for `key` in table `t` that serves packets from this side. An entry
    /// past its expiry counts as absent, unless the other entry of its flow is alive and
    /// still points back at it: then the flow lives on (a stream that flows one way
    /// refreshes one side), and the entry takes its peer's expiry. A live entry whose
    /// other entry's key now holds another flow (the LRU evicted that entry, and a new flow
    /// took its tuple) is the stale half of the old flow: it is removed, and the packet goes
    /// on as one of no known flow.
    pub fn lookup(
        &mut self,
        touched: &mut Touched,
        t: Table,
        key: &Tuple,
        from_inside: bool,
    ) -> Option<Entry> {
        let e = self.ct_get(touched, t, key)?;
        if !e.serves(from_inside) {
            return None;
        }
        let peer_key = e.peer_key(key);
        if e.expires >= self.now {
            let stale = self
                .ct_get(touched, t, &peer_key)
                .is_some_and(|p| p.peer_key(&peer_key) != *key);
            if stale {
                self.counters.rule("stale half removed");
                self.counters.event(Event::CtStaleHalf);
                self.ct_remove(touched, t, key);
                return None;
            }
            return Some(e);
        }
        let p = self.ct_get(touched, t, &peer_key)?;
        if p.expires >= self.now && p.peer_key(&peer_key) == *key {
            self.counters.rule("revived");
            let revived = Entry {
                expires: p.expires,
                ..e
            };
            self.ct_put(touched, t, *key, revived);
            Some(revived)
        } else {
            None
        }
    }

    /// Whether the entry `e` at `key` in table `t` belongs to a live flow: it lives, or the
    /// other entry of its flow lives and still points back at it (the rule `lookup` revives
    /// by).
    pub fn flow_alive(&mut self, touched: &mut Touched, t: Table, key: &Tuple, e: &Entry) -> bool {
        if e.expires >= self.now {
            return true;
        }
        let peer_key = e.peer_key(key);
        let now = self.now;
        self.ct_get(touched, t, &peer_key)
            .is_some_and(|p| p.expires >= now && p.peer_key(&peer_key) == *key)
    }

    /// The pair a new flow opened by the packet keyed `key` gets: `orig` as built by its
    /// opener, with the opening segment's sequence and window (TCP), and its reply entry
    /// with the reply direction's own flags (`reply_own`), which knows nothing of its
    /// direction's sequence yet.
    pub fn fill_pair(
        &self,
        p: &Pkt<'_>,
        mut orig: Entry,
        reply_own: EntryFlags,
    ) -> Result<Pair, DropReason> {
        if p.key.proto == PROTO_TCP {
            let seg = p.segment()?;
            let flags = p.flags();
            let (end, max_win) = tcp::sent(&orig.window, flags, &seg);
            orig.window = tcp::Window {
                seen: true,
                end,
                max_win,
                wscale: if flags.syn {
                    seg.wscale
                } else {
                    tcp::WSCALE_UNKNOWN
                },
            };
            orig.flags.td_seen = true;
        }
        let mut reply = orig.reply(p.key, reply_own);
        reply.flags.td_seen = false;
        reply.window = tcp::Window {
            wscale: tcp::WSCALE_UNKNOWN,
            ..tcp::Window::default()
        };
        Ok(Pair { orig, reply })
    }

    /// The pair of a flow from outside that the packet opens to the container endpoint `to`
    /// of network `net_id`: its original entry, with flags `own`, goes to the container, and
    /// its reply entry comes from inside (`EntryFlags::inward_reply`). `times`: the state the
    /// flow starts in, when its entries expire, and until when its mapping lives.
    pub fn inward_pair(
        &self,
        p: &Pkt<'_>,
        own: EntryFlags,
        to: Endpoint,
        net_id: u16,
        (state, expires, until): (tcp::State, u32, u32),
    ) -> Result<Pair, DropReason> {
        let flags = EntryFlags {
            inward: true,
            ..own
        };
        let orig = Entry::opening(
            flags,
            None,
            Some(to),
            state,
            net_id,
            self.now,
            expires,
            until,
            p.f.len(),
        );
        self.fill_pair(p, orig, own.inward_reply())
    }

    /// Inserts the flow opened by the packet keyed `orig_key`: the reply entry is put
    /// first, on a tuple no live flow holds (two flows never share an external tuple), then
    /// the original. Where the reply's tuple is held by a live flow that is this very flow
    /// (opened a moment ago, or missing its original entry), the flow is joined, or its
    /// original entry made again from the survivor. A flow from outside may already be
    /// answered: the main table is asked first. `repair_only`: the packet may not open a
    /// flow (a TCP segment without SYN), only repair one. `pair.orig` ends as the entry the
    /// packet is translated with.
    pub fn insert_pair(
        &mut self,
        touched: &mut Touched,
        orig_key: &Tuple,
        pair: &mut Pair,
        repair_only: bool,
        inbound: bool,
    ) -> Inserted {
        let table = if inbound { Table::Inbound } else { Table::Main };
        let reply_key = pair.orig.peer_key(orig_key);
        // No two flows, in either table, share a reply tuple: a flow from outside may have
        // been answered already (in the main table), and an unanswered flow from outside
        // may hold the reply tuple of a flow from inside.
        for t in [Table::Main, Table::Inbound] {
            let Some(held) = self.ct_get(touched, t, &reply_key) else {
                continue;
            };
            // Dead only if its flow is: a stream that flows one way keeps its original entry
            // alive and lets its reply entry expire, and lives on.
            if !self.flow_alive(touched, t, &reply_key, &held) {
                continue;
            }
            if held.peer_key(&reply_key) != *orig_key {
                self.counters.rule("reply tuple held");
                return if repair_only {
                    Inserted::Absent
                } else {
                    Inserted::Clash
                };
            }
            if self.ct_get(touched, t, orig_key).is_some() {
                self.counters.rule("joined");
                return Inserted::Joined;
            }
            pair.orig.state = held.state;
            pair.orig.flags = pair.orig.flags.or_shared(&held.flags.shared());
            pair.orig.expires = held.expires;
            self.ct_put(touched, t, *orig_key, pair.orig);
            return Inserted::Repaired;
        }
        if repair_only {
            return Inserted::Absent;
        }
        // Free, or held by a dead flow: taken.
        self.ct_put(touched, table, reply_key, pair.reply);
        self.ct_put(touched, table, *orig_key, pair.orig);
        self.flows_opened += 1;
        if inbound {
            Inserted::NewInbound
        } else {
            Inserted::New
        }
    }

    /// Bookkeeping for a packet of `bytes` bytes that matched the entry at `key`: counters,
    /// TCP state and window (both entries), the idle timeout, the mapping's lifetime. A RST
    /// outside the flow's window changes nothing and is dropped.
    pub fn track(
        &mut self,
        touched: &mut Touched,
        p: &Pkt<'_>,
        table: Table,
    ) -> Result<Tracked, DropReason> {
        let key = p.key;
        let now = self.now;
        let Some(mut e) = self.ct_get(touched, table, key) else {
            unreachable!("track of an entry that is not there");
        };
        let tcp = key.proto == PROTO_TCP;
        let flags_in = p.flags();
        let seg = if tcp {
            p.segment()?
        } else {
            tcp::Segment::default()
        };
        let peer_key = e.peer_key(key);
        if tcp && flags_in.rst {
            // The other half is gone: nothing to judge by, and nothing left to protect.
            let believed = match self.ct_get(touched, table, &peer_key) {
                None => true,
                Some(peer) => tcp::rst_believed(&window_of(&e), &window_of(&peer), flags_in, &seg),
            };
            if !believed {
                return Err(DropReason::TcpRstOutOfWindow);
            }
            self.counters.rule("rst believed");
        }
        e.packets += 1;
        e.bytes += p.f.len() as u64;
        // Any other segment out of the window passes, and moves nothing.
        if tcp
            && !flags_in.rst
            && !tcp::restarts(e.state, flags_in, e.flags.reply)
            && let Some(peer) = self.ct_get(touched, table, &peer_key)
            && !tcp::segment_believed(&window_of(&e), &window_of(&peer), &seg)
        {
            self.counters.rule("segment out of window");
            self.ct_put(touched, table, *key, e);
            return Ok(Tracked::Tracked);
        }
        let reply = e.flags.reply;
        let old_state = e.state;
        let old_flags = e.flags;
        let mut flags = e.flags;
        if reply {
            flags.seen_reply = true;
        }
        let state = if tcp {
            // A new connection on the flow's tuple: its own sequence, not the old one's.
            let w = tcp::Window {
                seen: e.flags.td_seen && !tcp::restarts(old_state, flags_in, reply),
                ..window_of(&e)
            };
            let (end, max_win) = tcp::sent(&w, flags_in, &seg);
            e.window.end = end;
            e.window.max_win = max_win;
            if flags_in.syn {
                e.window.wscale = seg.wscale;
            }
            flags.td_seen = true;
            let fins = tcp::Fins {
                orig: flags.fin_orig,
                reply: flags.fin_reply,
            };
            let (s, fins) = tcp::next(old_state, flags_in, reply, fins);
            flags.fin_orig = fins.orig;
            flags.fin_reply = fins.reply;
            s
        } else {
            old_state
        };
        let t = self.config.timeout(key.proto, state);
        let expires = now + t;
        // The first time a masqueraded TCP flow closes, its mapping has one flow fewer; a
        // SYN that reopens it makes it one of the mapping's flows again, as a new flow.
        let closed = matches!(state, tcp::State::TimeWait | tcp::State::Close);
        let release = flags.masq() && !flags.released && closed;
        if release {
            flags.released = true;
            self.counters.rule("mapping released");
        }
        if state != old_state || flags != old_flags {
            e.state = state;
            e.flags = flags;
            // A state change may shorten the lifetime (RST → CLOSE): written as it is.
            e.expires = expires;
            if let Some(mut q) = self.ct_get(touched, table, &peer_key) {
                q.state = state;
                q.flags = q.flags.with_shared(&flags);
                // A reopening forgets the other side's sequence: it starts afresh.
                if state == tcp::State::SynSent {
                    q.flags.td_seen = false;
                }
                // Where the state stays, the other entry keeps its own time (a flow lives
                // while either entry does).
                if state != old_state {
                    q.expires = expires;
                }
                // Both SYNs seen: the window shift each side keeps from now on.
                if tcp && flags_in.syn && reply {
                    let own = e.window.wscale;
                    e.window.wscale = tcp::agreed(own, q.window.wscale);
                    q.window.wscale = tcp::agreed(q.window.wscale, own);
                }
                self.ct_put(touched, table, peer_key, q);
            }
            if release {
                self.release_mapping(touched, key, &mut e, expires);
                // A hairpin between two mappings releases the other entry's too (a
                // container's hairpin to its own mapping is one entry, released twice).
                if e.flags.two_mappings {
                    if peer_key == *key {
                        self.release_mapping(touched, key, &mut e, expires);
                    } else if let Some(mut p) = self.ct_get(touched, table, &peer_key) {
                        self.release_mapping(touched, &peer_key, &mut p, expires);
                        self.ct_put(touched, table, peer_key, p);
                    }
                } else if peer_key != *key
                    && let Some(mut p) = self.ct_get(touched, table, &peer_key)
                {
                    // Both entries know how long the mapping lives now: a packet the other
                    // way (an answer to the close) extends it as far as it extends the flow.
                    p.map_expires = e.map_expires;
                    self.ct_put(touched, table, peer_key, p);
                }
            } else if flags.released && !closed {
                let until = expires + super::mapping_slack(t);
                self.reopen(touched, table, key, &mut e, until);
            }
        } else if expires > e.expires {
            e.expires = expires;
        }
        if e.flags.masq() && expires > e.map_expires {
            let until = expires + super::mapping_slack(t);
            e.map_expires = self.keep_mapping(touched, key, &e, until, Keep::Extend);
            // A hairpin between two mappings keeps the other entry's alive with this one's.
            if e.flags.two_mappings {
                if peer_key == *key {
                    e.map_expires = self.keep_mapping(touched, key, &e, until, Keep::Extend);
                } else if let Some(mut p) = self.ct_get(touched, table, &peer_key) {
                    p.map_expires = self.keep_mapping(touched, &peer_key, &p, until, Keep::Extend);
                    self.ct_put(touched, table, peer_key, p);
                }
            }
        }
        let answered = if tcp {
            state == tcp::State::Established
        } else {
            e.flags.seen_reply
        };
        self.ct_put(touched, table, *key, e);
        Ok(if table == Table::Inbound && answered {
            Tracked::Answered
        } else {
            Tracked::Tracked
        })
    }

    /// A masqueraded TCP flow that closed (releasing its mapping) reopened with a SYN: it is
    /// one of its mapping's flows again, as a new flow would be, and both entries know the
    /// mapping lives until `until` (a hairpin between two mappings retakes both).
    fn reopen(
        &mut self,
        touched: &mut Touched,
        table: Table,
        key: &Tuple,
        e: &mut Entry,
        until: u32,
    ) {
        self.counters.rule("mapping retaken");
        e.flags.released = false;
        e.map_expires = self.keep_mapping(touched, key, e, until, Keep::Retake);
        let peer_key = e.peer_key(key);
        if peer_key == *key {
            // A container's hairpin to its own mapping: one entry, retaken twice.
            if e.flags.two_mappings {
                e.map_expires = self.keep_mapping(touched, key, e, until, Keep::Retake);
            }
        } else if let Some(mut q) = self.ct_get(touched, table, &peer_key) {
            q.flags.released = false;
            q.map_expires = if e.flags.two_mappings {
                self.keep_mapping(touched, &peer_key, &q, until, Keep::Retake)
            } else {
                until
            };
            self.ct_put(touched, table, peer_key, q);
        }
    }

    /// An inbound flow that was answered (TCP: its handshake completed; UDP, ICMP: the
    /// container replied) moves to the main table, where unanswered packets cannot push it
    /// out. Both entries, or neither.
    pub fn promote(&mut self, touched: &mut Touched, key: &Tuple) -> bool {
        let Some(e) = self.ct_get(touched, Table::Inbound, key) else {
            return false;
        };
        let peer_key = e.peer_key(key);
        let Some(peer) = self.ct_get(touched, Table::Inbound, &peer_key) else {
            return false;
        };
        // Never over a live entry of another flow.
        for (k, other) in [(*key, peer_key), (peer_key, *key)] {
            if let Some(held) = self.ct_get(touched, Table::Main, &k)
                && held.peer_key(&k) != other
                && self.flow_alive(touched, Table::Main, &k, &held)
            {
                self.counters.rule("promotion refused");
                return false;
            }
        }
        self.ct_put(touched, Table::Main, *key, e);
        self.ct_put(touched, Table::Main, peer_key, peer);
        self.ct_remove(touched, Table::Inbound, key);
        self.ct_remove(touched, Table::Inbound, &peer_key);
        self.counters.event(Event::InboundAnswered);
        true
    }

    /// A masqueraded flow that lost its reply entry while its original lives: an inbound
    /// packet for the external port of a live claim whose owner's flow to the packet's
    /// source points back at it makes the reply entry again.
    pub fn restore_reply(&mut self, touched: &mut Touched, key: &Tuple) -> bool {
        let ck = super::ClaimKey {
            ext_addr: key.dst,
            ext_port: key.dport,
            proto: key.proto,
        };
        touched.claims.insert(ck);
        let Some(claim) = self.claims.get(&ck).copied() else {
            return false;
        };
        let orig_key = Tuple::new(claim.owner.0, key.src, claim.owner.1, key.sport, key.proto);
        let Some(orig) = self.ct_get(touched, Table::Main, &orig_key) else {
            return false;
        };
        if orig.expires < self.now || !orig.serves(true) || orig.peer_key(&orig_key) != *key {
            return false;
        }
        if self.ct_get(touched, Table::Main, key).is_some() {
            return false;
        }
        let mut reply = orig.reply(
            &orig_key,
            EntryFlags {
                inward: true,
                ..EntryFlags::default()
            },
        );
        reply.flags = reply.flags.or_shared(&orig.flags.shared());
        reply.flags.td_seen = false;
        reply.window = tcp::Window {
            wscale: tcp::WSCALE_UNKNOWN,
            ..tcp::Window::default()
        };
        self.ct_put(touched, Table::Main, *key, reply);
        self.counters.rule("reply restored");
        true
    }
}

/// An entry's window as TCP tracking reads it.
pub fn window_of(e: &Entry) -> tcp::Window {
    tcp::Window {
        seen: e.flags.td_seen,
        ..e.window
    }
}
