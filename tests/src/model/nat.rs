//! Masquerade's mappings (RFC 4787 REQ-1, RFC 5382 REQ-1: endpoint-independent). An
//! internal endpoint (address, port, protocol) leaving through an external address is
//! *bound* to one external port, which every flow of the endpoint reuses whatever its
//! destination, for as long as the mapping lives; the external port is *claimed* by that
//! endpoint, so that no other endpoint takes it. A mapping lives while its flows do (each
//! flow extends it to its own expiry and a slack beyond); a TCP flow that closes subtracts
//! itself, and the last one shrinks the mapping to its own lifetime.
//!
//! A new mapping keeps the internal port when it is free (port preservation), else takes a
//! port of the configured range: one that no live endpoint holds, that no socket of the
//! host uses, and that no publication serves. The datapath searches a bounded number of
//! candidates from a random start; the model accepts any port that satisfies those rules.

use std::net::Ipv4Addr;

use netfast::common::{
    DropReason,
    maps::NAT_PORT_TRIES,
    nat::{NatBinding, NatClaim},
};

use super::{
    BindKey, Binding, Claim, ClaimKey, Endpoint, Entry, HostSocket, Model, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, Tuple,
    conntrack::{Touched, noted_get, noted_put},
    mapping_slack,
};

/// `closed_until` of a claim that does not know its mapping's closed flows.
const CLOSED_UNKNOWN: u32 = NatClaim::CLOSED_UNKNOWN;

/// What the datapath did where it chose at random: the port it put in the packet, or that
/// it found none. Read from its output by the fuzzer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Port(u16),
    Exhausted,
    /// The datapath's output says nothing (it dropped the packet for another reason).
    Unknown,
}

/// The external port the datapath's maps bind an internal endpoint to (see
/// `hooks::Observed::bound`).
pub type Bound<'a> = &'a dyn Fn(&BindKey) -> Option<u16>;

impl Choice {
    /// Where the output says nothing, the port the datapath's maps bound the endpoint to.
    pub fn or_bound(self, bk: &BindKey, bound: Bound<'_>) -> Choice {
        match self {
            Choice::Unknown => bound(bk).map_or(Choice::Unknown, Choice::Port),
            c => c,
        }
    }
}

/// The binding and claim keys of the mapping a masquerade entry belongs to.
pub fn mapping_keys(key: &Tuple, e: &Entry) -> (BindKey, ClaimKey) {
    let unset = (Ipv4Addr::UNSPECIFIED, 0);
    let (int, ext) = if e.flags.masq_src {
        ((key.src, key.sport), e.new_src.unwrap_or(unset))
    } else {
        (e.new_dst.unwrap_or(unset), (key.dst, key.dport))
    };
    (
        BindKey {
            int_addr: int.0,
            ext_addr: ext.0,
            int_port: int.1,
            proto: key.proto,
        },
        ClaimKey {
            ext_addr: ext.0,
            ext_port: ext.1,
            proto: key.proto,
        },
    )
}

/// How a flow keeps its mapping (see [`Model::keep_mapping`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Alive longer.
    Extend,
    /// One flow more again: a closed flow reopened.
    Retake,
}

impl Model {
    pub fn binding(&self, touched: &mut Touched, bk: &BindKey) -> Option<Binding> {
        noted_get(&self.bindings, &mut touched.bindings, bk)
    }

    pub fn set_binding(&mut self, touched: &mut Touched, bk: BindKey, b: Binding) {
        noted_put(&mut self.bindings, &mut touched.bindings, bk, b);
    }

    pub fn claim(&self, touched: &mut Touched, ck: &ClaimKey) -> Option<Claim> {
        noted_get(&self.claims, &mut touched.claims, ck)
    }

    pub fn set_claim(&mut self, touched: &mut Touched, ck: ClaimKey, c: Claim) {
        noted_put(&mut self.claims, &mut touched.claims, ck, c);
    }

    /// The external port of the live mapping of `bk`, counted as used by one more flow and
    /// kept alive until at least `until`; `None` when it has none, or when its port is no
    /// longer its own (then a new mapping is made).
    pub fn reuse_mapping(
        &mut self,
        touched: &mut Touched,
        bk: &BindKey,
        net_id: u16,
        until: u32,
    ) -> Option<u16> {
        let b = self.binding(touched, bk)?;
        if b.expires < self.now {
            return None;
        }
        let ck = ClaimKey {
            ext_addr: bk.ext_addr,
            ext_port: b.ext_port,
            proto: bk.proto,
        };
        if !self.hold_claim(touched, &ck, bk, net_id, until) {
            return None;
        }
        let b = Binding {
            ext_port: b.ext_port,
            flows: b.flows.saturating_add(1),
            expires: b.expires.max(until),
        };
        self.set_binding(touched, *bk, b);
        Some(b.ext_port)
    }

    /// Makes sure the endpoint of `bk` holds `ck` until at least `until` (claiming it again
    /// if it has no holder); false if another endpoint holds it.
    fn hold_claim(
        &mut self,
        touched: &mut Touched,
        ck: &ClaimKey,
        bk: &BindKey,
        net_id: u16,
        until: u32,
    ) -> bool {
        match self.claim(touched, ck) {
            None => {
                // Made again for a live binding: the flows that closed are not known.
                let c = Claim {
                    owner: (bk.int_addr, bk.int_port),
                    owner_net: net_id,
                    expires: until,
                    closed_until: CLOSED_UNKNOWN,
                };
                self.set_claim(touched, *ck, c);
                true
            }
            Some(c) if !c.owned_by((bk.int_addr, bk.int_port)) => false,
            Some(c) => {
                if c.expires < until {
                    self.set_claim(
                        touched,
                        *ck,
                        Claim {
                            expires: until,
                            ..c
                        },
                    );
                }
                true
            }
        }
    }

    /// Whether a host socket uses `(addr, port)` the way masquerade must avoid: a UDP
    /// socket bound there (any remote), or with `listeners`, a TCP listener there. (The
    /// fuzzer's host has no connected TCP sockets, whose exact tuple would also count.)
    pub fn host_uses(&self, proto: u8, addr: Ipv4Addr, port: u16, listeners: bool) -> bool {
        let bound = |a: Ipv4Addr| {
            self.host_sockets.contains(&HostSocket {
                proto,
                addr: a,
                port,
            })
        };
        let any = bound(addr) || bound(Ipv4Addr::UNSPECIFIED);
        match proto {
            PROTO_UDP => any,
            PROTO_TCP => listeners && any,
            _ => false,
        }
    }

    /// Whether `port` on `ext_addr` may become the external port of a new mapping for the
    /// endpoint `owner` of network `net_id`: not port 0 (but for ICMP identifiers), not a
    /// port the host uses, not a published port, and claimed by nobody — or by this very
    /// endpoint, or by one whose claim has expired and whose binding no longer leads there.
    pub fn port_free(
        &self,
        proto: u8,
        ext_addr: Ipv4Addr,
        port: u16,
        owner: (Endpoint, u16),
    ) -> bool {
        if port == 0 && proto != PROTO_ICMP {
            return false;
        }
        if self.host_uses(proto, ext_addr, port, false)
            || self.published(ext_addr, port, proto).is_some()
        {
            return false;
        }
        let ck = ClaimKey {
            ext_addr,
            ext_port: port,
            proto,
        };
        let Some(c) = self.claims.get(&ck) else {
            return true;
        };
        if (c.owner, c.owner_net) == owner {
            return true;
        }
        if c.expires >= self.now {
            return false;
        }
        let holder = BindKey {
            int_addr: c.owner.0,
            ext_addr,
            int_port: c.owner.1,
            proto,
        };
        !self
            .bindings
            .get(&holder)
            .is_some_and(|b| b.expires >= self.now && b.ext_port == port)
    }

    /// Whether a search of `tries` candidates from some start in `[min, max]` (cyclically)
    /// finds only ports that are not free: the only case in which the datapath may give up.
    pub fn exhaustible(&self, tries: u32, min: u16, max: u16, free: impl Fn(u16) -> bool) -> bool {
        let (lo, hi) = (min.min(max), min.max(max));
        let span = u32::from(hi - lo) + 1;
        let run = tries.min(span);
        let mut streak = 0u32;
        // Twice round the range finds a cyclic run that wraps.
        for i in 0..span * 2 {
            let p = lo + (i % span) as u16;
            if free(p) {
                streak = 0;
            } else {
                streak += 1;
                if streak >= run {
                    return true;
                }
            }
        }
        false
    }

    /// The masquerade mapping of the source of `key` on `ext_addr` (network `net_id`),
    /// counted as used by one more flow until `until`: the live one, or a new one.
    #[allow(clippy::too_many_arguments)]
    pub fn mapping(
        &mut self,
        touched: &mut Touched,
        key: &Tuple,
        ext_addr: Ipv4Addr,
        net_id: u16,
        until: u32,
        choice: (Choice, Bound<'_>),
        violations: &mut Vec<String>,
    ) -> Result<u16, DropReason> {
        let bk = BindKey {
            int_addr: key.src,
            ext_addr,
            int_port: key.sport,
            proto: key.proto,
        };
        if let Some(port) = self.reuse_mapping(touched, &bk, net_id, until) {
            return Ok(port);
        }
        let choice = choice.0.or_bound(&bk, choice.1);
        self.new_mapping(touched, &bk, net_id, until, choice, violations)
    }

    /// A new mapping for `bk`: its own port when free, else a free port of the range, or a
    /// drop when a bounded search could find none.
    fn new_mapping(
        &mut self,
        touched: &mut Touched,
        bk: &BindKey,
        net_id: u16,
        until: u32,
        choice: Choice,
        violations: &mut Vec<String>,
    ) -> Result<u16, DropReason> {
        let owner = ((bk.int_addr, bk.int_port), net_id);
        let (min, max) = (self.config.port_min, self.config.port_max);
        let free = |p: u16| self.port_free(bk.proto, bk.ext_addr, p, owner);
        let preserved = free(bk.int_port);
        let port = if preserved {
            if choice != Choice::Port(bk.int_port) && choice != Choice::Unknown {
                violations.push(format!(
                    "mapping of {}:{}: its own port {} is free, the datapath chose {choice:?}",
                    bk.int_addr, bk.int_port, bk.int_port
                ));
            }
            bk.int_port
        } else {
            match choice {
                Choice::Exhausted => {
                    if !self.exhaustible(NAT_PORT_TRIES - 1, min, max, free) {
                        violations.push(format!(
                            "mapping of {}:{}: the datapath found no free port, but {} \
                             candidates from any start in {min}-{max} include a free one",
                            bk.int_addr,
                            bk.int_port,
                            NAT_PORT_TRIES - 1
                        ));
                    }
                    self.counters.rule("no free port");
                    return Err(DropReason::NatPortExhausted);
                }
                Choice::Port(p) => {
                    let in_range = (min.min(max)..=min.max(max)).contains(&p);
                    if !in_range || !free(p) {
                        violations.push(format!(
                            "mapping of {}:{}: the datapath chose port {p}, which is {}",
                            bk.int_addr,
                            bk.int_port,
                            if in_range {
                                "not free"
                            } else {
                                "outside the port range"
                            }
                        ));
                    }
                    p
                }
                Choice::Unknown => {
                    // Nothing to learn from: predict the first free port (the frames will
                    // differ anyway if the datapath translated the packet).
                    match (min.min(max)..=min.max(max)).find(|p| free(*p)) {
                        Some(p) => p,
                        None => return Err(DropReason::NatPortExhausted),
                    }
                }
            }
        };
        if !preserved {
            self.counters.rule("port from the range");
        }
        if self
            .claims
            .get(&ClaimKey {
                ext_addr: bk.ext_addr,
                ext_port: port,
                proto: bk.proto,
            })
            .is_some_and(|c| c.owner != (bk.int_addr, bk.int_port))
        {
            self.counters.rule("expired claim taken over");
        }
        // The endpoint's own live claim, retaken: its binding was evicted while flows may
        // use the port, how many is not known.
        let flows = if self.claim_port(touched, bk, net_id, port, until) {
            self.counters.rule("mapping bound again, flows unknown");
            NatBinding::FLOWS_UNKNOWN
        } else {
            1
        };
        Ok(self.bind(touched, bk, port, flows, until))
    }

    /// Claims `port` for the endpoint of `bk` (free, its own, or taken over from an expired
    /// holder: the caller checked which). True where it was the endpoint's own live claim.
    fn claim_port(
        &mut self,
        touched: &mut Touched,
        bk: &BindKey,
        net_id: u16,
        port: u16,
        until: u32,
    ) -> bool {
        let ck = ClaimKey {
            ext_addr: bk.ext_addr,
            ext_port: port,
            proto: bk.proto,
        };
        let held = self.claim(touched, &ck);
        let live_own = held.is_some_and(|c| {
            c.owner == (bk.int_addr, bk.int_port) && c.owner_net == net_id && c.expires >= self.now
        });
        let c = match held {
            Some(c) => Claim {
                owner: (bk.int_addr, bk.int_port),
                owner_net: net_id,
                expires: c.expires.max(until),
                // Taken over, or its own once its mapping is over: the record was of a
                // mapping that is over (its closed flows are, too).
                closed_until: if live_own {
                    c.closed_until
                } else {
                    NatClaim::CLOSED_NONE
                },
            },
            None => Claim {
                owner: (bk.int_addr, bk.int_port),
                owner_net: net_id,
                expires: until,
                closed_until: NatClaim::CLOSED_NONE,
            },
        };
        self.set_claim(touched, ck, c);
        live_own
    }

    /// Binds `bk` to the port it just claimed: `flows` flows (one, or not known), alive
    /// until `until`. A live
    /// binding found there instead is reused (and its port returned), unless another
    /// endpoint has claimed its port since: then it is replaced.
    fn bind(
        &mut self,
        touched: &mut Touched,
        bk: &BindKey,
        port: u16,
        flows: u16,
        until: u32,
    ) -> u16 {
        let taken = |m: &mut Self, touched: &mut Touched, p: u16| {
            let ck = ClaimKey {
                ext_addr: bk.ext_addr,
                ext_port: p,
                proto: bk.proto,
            };
            m.claim(touched, &ck)
                .is_some_and(|c| !c.owned_by((bk.int_addr, bk.int_port)))
        };
        let b = match self.binding(touched, bk) {
            Some(b) if b.expires >= self.now && !taken(self, touched, b.ext_port) => Binding {
                ext_port: b.ext_port,
                flows: b.flows.saturating_add(1),
                expires: b.expires.max(until),
            },
            _ => Binding {
                ext_port: port,
                flows,
                expires: until,
            },
        };
        self.set_binding(touched, *bk, b);
        b.ext_port
    }

    /// A flow keeps its mapping alive until `until` (`Keep::Retake`: a TCP flow of the
    /// mapping that closed, and released it, has reopened: one flow more again, as for a new
    /// flow); returns the new high-water mark. A binding that is gone is made again (not
    /// knowing its flows: [`NatBinding::FLOWS_UNKNOWN`]), and so is a claim that is gone (not knowing the closed flows); a claim is
    /// raised only if it is still the endpoint's.
    pub fn keep_mapping(
        &mut self,
        touched: &mut Touched,
        key: &Tuple,
        e: &Entry,
        until: u32,
        how: Keep,
    ) -> u32 {
        let (bk, ck) = mapping_keys(key, e);
        // A claim that is gone (the LRU evicted it) while the mapping lives is made again.
        if self.claim(touched, &ck).is_none() {
            let again = Claim {
                owner: (bk.int_addr, bk.int_port),
                owner_net: e.net_id,
                expires: until,
                closed_until: CLOSED_UNKNOWN,
            };
            self.counters.rule("claim made again");
            self.set_claim(touched, ck, again);
        }
        if e.flags.released {
            self.note_closed(touched, &ck, &bk, until);
        }
        let more = u16::from(how == Keep::Retake);
        if let Some(b) = self.binding(touched, &bk) {
            if b.ext_port == ck.ext_port && (b.expires < until || more > 0) {
                self.set_binding(
                    touched,
                    bk,
                    Binding {
                        ext_port: b.ext_port,
                        flows: b.flows.saturating_add(more),
                        expires: b.expires.max(until),
                    },
                );
            }
        } else {
            // Made again for a live flow: how many others use the mapping is not known.
            self.counters.rule("mapping bound again, flows unknown");
            self.set_binding(
                touched,
                bk,
                Binding {
                    ext_port: ck.ext_port,
                    flows: NatBinding::FLOWS_UNKNOWN,
                    expires: until,
                },
            );
        }
        if let Some(c) = self.claim(touched, &ck)
            && c.owned_by((bk.int_addr, bk.int_port))
            && c.expires < until
        {
            self.set_claim(
                touched,
                ck,
                Claim {
                    expires: until,
                    ..c
                },
            );
        }
        until
    }

    /// A TCP flow of the mapping has closed: one flow fewer, and the flow's entries keep the
    /// mapping alive as long as they live (`until`, plus the slack); its claim, if still the
    /// endpoint's, remembers that among the closed flows' (`closed_until`). When it was the
    /// last flow, the mapping (and its claim) lives as long as the closed flows: those the
    /// claim remembers (settings lowered since do not shorten them), or, when it does not
    /// know (`CLOSED_UNKNOWN`, or no claim), as long as a closed flow can live from now (the
    /// longest closed state's timeout and its slack).
    pub fn release_mapping(
        &mut self,
        touched: &mut Touched,
        key: &Tuple,
        e: &mut Entry,
        until: u32,
    ) {
        let (bk, ck) = mapping_keys(key, e);
        let Some(b) = self.binding(touched, &bk) else {
            return;
        };
        let until = until + mapping_slack(until.saturating_sub(self.now));
        self.note_closed(touched, &ck, &bk, until);
        if b.ext_port != ck.ext_port {
            return;
        }
        let flows = NatBinding::closed_one(b.flows);
        e.map_expires = until;
        if flows != 0 {
            self.set_binding(touched, bk, Binding { flows, ..b });
            return;
        }
        let t = self.config.closed_timeout();
        let bound = self.now + t + mapping_slack(t);
        let claim = self
            .claim(touched, &ck)
            .filter(|c| c.owned_by((bk.int_addr, bk.int_port)));
        let closed = claim.map_or(CLOSED_UNKNOWN, |c| NatClaim::closed(c.closed_until));
        let expires = if closed == CLOSED_UNKNOWN {
            bound
        } else {
            closed
        }
        .max(until);
        self.set_binding(
            touched,
            bk,
            Binding {
                ext_port: b.ext_port,
                flows,
                expires,
            },
        );
        if let Some(c) = claim {
            self.set_claim(touched, ck, Claim { expires, ..c });
        }
    }

    /// Raises `closed_until` of the claim `ck`, if still the endpoint's (of `bk`), to
    /// `until`: a flow of the mapping that has closed lives until then.
    fn note_closed(&mut self, touched: &mut Touched, ck: &ClaimKey, bk: &BindKey, until: u32) {
        if let Some(c) = self.claim(touched, ck)
            && c.owned_by((bk.int_addr, bk.int_port))
            && NatClaim::closed(c.closed_until) < until
        {
            self.set_claim(
                touched,
                *ck,
                Claim {
                    closed_until: until,
                    ..c
                },
            );
        }
    }

    /// Whether a container's live mapping holds the source (address, port) of the host's
    /// own packet `key`: the host's flow must then leave from another port, or the remote
    /// would see two conversations as one (and answer the container).
    pub fn held_by_a_container(&self, touched: &mut Touched, key: &Tuple) -> bool {
        self.live_claim(touched, key.src, key.sport, key.proto)
            .is_some_and(|c| c.owner_net != HOST_FLOWS)
    }
}

/// The network id of the host's own flows (networks start at 1).
pub const HOST_FLOWS: u16 = 0;
