//! Hairpinning (RFC 4787 REQ-9): a container reaching its own host's external address — a
//! published port (the server sees the client's masquerade mapping as its source), or
//! another container's masquerade mapping, or its own (the receiver sees what an outside
//! peer would: ICE between containers of one host depends on it). Both directions are
//! translated and forwarded at the bridge; each entry belongs to its own sender's network.

use std::net::Ipv4Addr;

use netfast::common::DropReason;

use super::{
    BindKey, Claim, ClaimKey, Entry, EntryFlags, Model, Network, PROTO_TCP, PubTarget, Tuple,
    conntrack::{Inserted, Pair, Touched},
    frame, mapping_slack, tcp,
};

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
    #[allow(clippy::too_many_arguments)]
    pub fn hairpin_new_flow(
        &mut self,
        touched: &mut Touched,
        f: &[u8],
        ip: &frame::Ip,
        key: &Tuple,
        tcp_flags: u8,
        target: &PubTarget,
        net: &Network,
        ext_port: u16,
    ) -> Result<Pair, DropReason> {
        let Some((state, t)) = self.opening_state(key, tcp_flags) else {
            unreachable!("the caller checked that the packet may open a flow");
        };
        let now = self.now;
        let expires = now + t;
        let until = expires + mapping_slack(t);
        self.counters.rule("hairpin to a published port");
        let orig = Entry::opening(
            EntryFlags {
                masq_src: true,
                published: true,
                inward: true,
                redirect: true,
                from_inside: true,
                ..EntryFlags::default()
            },
            Some((net.ext_addr, ext_port)),
            Some((target.addr, target.port)),
            state,
            net.id,
            now,
            expires,
            until,
            f.len(),
        );
        let reply_own = EntryFlags {
            published: true,
            inward: true,
            redirect: true,
            from_inside: true,
            ..EntryFlags::default()
        };
        let mut pair = self.fill_pair(f, ip, key, tcp_flags, orig, reply_own)?;
        // Each direction crosses its own sender's bridge.
        pair.reply.net_id = target.net_id;
        match self.insert_pair(touched, key, &mut pair, false, false) {
            Inserted::Clash => Err(DropReason::CtInsertFailed),
            other => {
                self.count_opened(other);
                Ok(pair)
            }
        }
    }

    /// A container sends to an external endpoint that a live mapping holds (another
    /// container's, or its own): the packet goes to the mapping's owner, from the sender's
    /// own mapping (`ext_port`). Each direction leaves through its own sender's mapping,
    /// both kept alive with the flow. Within a network it is not filtered (containers reach
    /// each other on their bridge anyway); across networks, with address-and-port-dependent
    /// filtering, the way opens only once the receiver has answered, so that hairpinning
    /// opens no way around isolation. `None`: no live mapping holds the destination;
    /// `Some((pair, true))`: the flow is open, this packet waits (dropped, `NatFiltered`).
    #[allow(clippy::too_many_arguments)]
    pub fn mapping_hairpin_new_flow(
        &mut self,
        touched: &mut Touched,
        f: &[u8],
        ip: &frame::Ip,
        key: &Tuple,
        tcp_flags: u8,
        net: &Network,
        ext_port: u16,
    ) -> Result<Option<(Pair, bool)>, DropReason> {
        let Some(claim) = self.live_claim(touched, key.dst, key.dport, key.proto) else {
            return Ok(None);
        };
        let flags = tcp::Flags::from_byte(tcp_flags);
        let state = match key.proto {
            PROTO_TCP if flags.opens() => {
                tcp::next(tcp::State::None, flags, false, tcp::Fins::default()).0
            }
            PROTO_TCP => return Ok(None),
            _ => tcp::State::None,
        };
        let t = self.config.timeout(key.proto, state);
        let now = self.now;
        let expires = now + t;
        let until = expires + mapping_slack(t);
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
        let orig = Entry::opening(
            EntryFlags {
                masq_src: true,
                inward: true,
                redirect: true,
                from_inside: true,
                two_mappings: true,
                await_reply: wait,
                ..EntryFlags::default()
            },
            Some((net.ext_addr, ext_port)),
            Some(claim.owner),
            state,
            net.id,
            now,
            expires,
            until,
            f.len(),
        );
        let reply_own = EntryFlags {
            inward: true,
            redirect: true,
            from_inside: true,
            two_mappings: true,
            ..EntryFlags::default()
        };
        let mut pair = self.fill_pair(f, ip, key, tcp_flags, orig, reply_own)?;
        // The receiver's packets leave through the receiver's own mapping, and cross the
        // receiver's bridge.
        pair.reply.flags.masq_dst = false;
        pair.reply.flags.masq_src = true;
        pair.reply.net_id = claim.owner_net;
        match self.insert_pair(touched, key, &mut pair, false, false) {
            Inserted::Clash => Err(DropReason::CtInsertFailed),
            other => {
                self.count_opened(other);
                Ok(Some((pair, wait)))
            }
        }
    }
}
