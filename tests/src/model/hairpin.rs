//! Hairpinning (RFC 4787 REQ-9): a container reaching its own host's external address — a
//! published port (the server sees the client's masquerade mapping as its source), or
//! another container's masquerade mapping, or its own (the receiver sees what an outside
//! peer would: ICE between containers of one host depends on it). Both directions are
//! translated and forwarded at the bridge; each entry belongs to its own sender's network.

use std::net::Ipv4Addr;

use netfast::common::DropReason;

use super::{
    BindKey, Claim, ClaimKey, Entry, EntryFlags, Model, Network, PubTarget,
    conntrack::{Pair, Pkt, Touched},
    mapping_slack, tcp,
};

/// The flags both entries of every hairpin flow carry: each direction goes to a container,
/// comes from inside, and is forwarded at the bridge.
fn hairpin_flags() -> EntryFlags {
    EntryFlags {
        inward: true,
        redirect: true,
        from_inside: true,
        ..EntryFlags::default()
    }
}

impl Model {
    /// The live mapping that holds the external `(addr, port)` for `proto`: its claim, when
    /// its owner's binding is alive and leads to this very port.
    pub fn live_claim(
        &self,
        touched: &mut Touched,
        addr: Ipv4Addr,
        port: u16,
        proto: u8,
    ) -> Option<Claim> {
        let claim = self.claim(
            touched,
            &ClaimKey {
                ext_addr: addr,
                ext_port: port,
                proto,
            },
        )?;
        let bk = BindKey {
            int_addr: claim.owner.0,
            ext_addr: addr,
            int_port: claim.owner.1,
            proto,
        };
        let b = self.binding(touched, &bk)?;
        (b.expires >= self.now && b.ext_port == port).then_some(claim)
    }

    /// A container opens a flow to a published port of its own host: the destination
    /// becomes the serving container, the source the client's masquerade mapping
    /// (`ext_port`, made by the caller), so that the server's replies come back through the
    /// host to be translated.
    pub fn hairpin_new_flow(
        &mut self,
        touched: &mut Touched,
        p: &Pkt<'_>,
        target: &PubTarget,
        net: &Network,
        ext_port: u16,
    ) -> Result<Pair, DropReason> {
        let key = p.key;
        let Some((state, t)) = self.opening_state(p) else {
            unreachable!("the caller checked that the packet may open a flow");
        };
        self.counters.rule("hairpin to a published port");
        let reply_own = EntryFlags {
            published: true,
            ..hairpin_flags()
        };
        let orig = EntryFlags {
            masq_src: true,
            ..reply_own
        };
        let mut pair = self.hairpin_pair(
            p,
            (net, ext_port),
            (target.addr, target.port),
            (state, t),
            (orig, reply_own),
        )?;
        // Each direction crosses its own sender's bridge.
        pair.reply.net_id = target.net_id;
        self.open_pair(touched, key, pair, false)
    }

    /// A container sends to an external endpoint that a live mapping holds (another
    /// container's, or its own): the packet goes to the mapping's owner, from the sender's
    /// own mapping (`ext_port`). Each direction leaves through its own sender's mapping,
    /// both kept alive with the flow. Within a network it is not filtered (containers reach
    /// each other on their bridge anyway); across networks, with address-and-port-dependent
    /// filtering, the way opens only once the receiver has answered, so that hairpinning
    /// opens no way around isolation. `None`: no live mapping holds the destination;
    /// `Some((pair, true))`: the flow is open, this packet waits (dropped, `NatFiltered`).
    pub fn mapping_hairpin_new_flow(
        &mut self,
        touched: &mut Touched,
        p: &Pkt<'_>,
        net: &Network,
        ext_port: u16,
    ) -> Result<Option<(Pair, bool)>, DropReason> {
        let key = p.key;
        let Some(claim) = self.live_claim(touched, key.dst, key.dport, key.proto) else {
            return Ok(None);
        };
        // A TCP segment other than a plain SYN opens no flow.
        let Some((state, t)) = self.opening_state(p) else {
            return Ok(None);
        };
        let until = self.now + t + mapping_slack(t);
        // The receiver's mapping, one flow more (the sender's was counted by the caller).
        let receiver = BindKey {
            int_addr: claim.owner.0,
            ext_addr: key.dst,
            int_port: claim.owner.1,
            proto: key.proto,
        };
        if self.reuse_mapping(touched, &receiver, claim.owner_net, until) != Some(key.dport) {
            return Ok(None);
        }
        let wait = claim.owner_net != net.id && !self.config.endpoint_independent;
        self.counters.rule(if wait {
            "hairpin to a mapping, filtered"
        } else {
            "hairpin to a mapping"
        });
        let reply_own = EntryFlags {
            two_mappings: true,
            ..hairpin_flags()
        };
        let orig = EntryFlags {
            masq_src: true,
            await_reply: wait,
            ..reply_own
        };
        let mut pair = self.hairpin_pair(
            p,
            (net, ext_port),
            claim.owner,
            (state, t),
            (orig, reply_own),
        )?;
        // The receiver's packets leave through the receiver's own mapping, and cross the
        // receiver's bridge.
        pair.reply.flags.masq_dst = false;
        pair.reply.flags.masq_src = true;
        pair.reply.net_id = claim.owner_net;
        self.open_pair(touched, key, pair, false)
            .map(|pair| Some((pair, wait)))
    }

    /// The pair of a hairpin flow the packet opens, in `(state, timeout)`: from the sender's
    /// mapping (`(net, ext_port)`) to `dst`, with the original and the reply entry's own
    /// flags.
    fn hairpin_pair(
        &self,
        p: &Pkt<'_>,
        (net, ext_port): (&Network, u16),
        dst: (Ipv4Addr, u16),
        (state, t): (tcp::State, u32),
        (orig, reply_own): (EntryFlags, EntryFlags),
    ) -> Result<Pair, DropReason> {
        let (now, expires) = (self.now, self.now + t);
        let orig = Entry::opening(
            orig,
            Some((net.ext_addr, ext_port)),
            Some(dst),
            state,
            net.id,
            now,
            expires,
            expires + mapping_slack(t),
            p.f.len(),
        );
        self.fill_pair(p, orig, reply_own)
    }
}
