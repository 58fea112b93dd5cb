//! Endpoint-independent NAT mappings (RFC 4787 REQ-1, RFC 5382 REQ-1).
//!
//! A mapping is a pair: a *claim* on an external (address, port, protocol), inserted first
//! with `BPF_NOEXIST` so that two CPUs can never take the same port (and taken over from an
//! expired holder by one compare-and-exchange of its owner word, for the same reason), and a
//! *binding* from the internal (address, port, protocol) to that port, which every flow of
//! the internal endpoint reuses whatever its destination, for as long as the mapping lives.
//! The datapath never deletes either: a claim or binding it could not use expires, so that
//! no CPU can remove what another has just made.

crate::map_type! {
    /// An internal endpoint leaving through one external address.
    #[derive(Default, Hash)]
    pub struct NatBindKey: 12 {
        /// Internal (container) address, network byte order.
        pub int_addr: u32,
        /// External address the endpoint is translated to, network byte order.
        pub ext_addr: u32,
        /// Internal port or ICMP identifier, network byte order.
        pub int_port: u16,
        pub proto: u8,
        pub _pad: u8,
    }
}

crate::map_type! {
    #[repr(C, align(8))]
    /// An internal endpoint's external port. Eight bytes, read and written as one word
    /// ([`NatBinding::word`]): every change of a binding is a compare-and-exchange, so that two
    /// CPUs counting flows or reviving it at once never lose one another's change.
    #[derive(Default)]
    pub struct NatBinding: 8 {
        /// External port, network byte order.
        pub ext_port: u16,
        /// Flows using the mapping that have not closed yet (TCP flows are subtracted when they
        /// close; UDP and ICMP flows only ever expire, so they keep the count up). When the last
        /// TCP flow closes, the mapping's lifetime shrinks to that of the closed flows (this
        /// one, and those its claim's `closed_until` remembers). Never below the truth: a flow
        /// that failed to open is not subtracted, and a count that is not known
        /// ([`NatBinding::FLOWS_UNKNOWN`]) stays so until the mapping expires.
        pub flows: u16,
        /// CLOCK_MONOTONIC seconds; the mapping lives while any of its flows does.
        pub expires: u32,
    }
}

impl NatBinding {
    /// A count of flows that is not known: the binding was made again for a live flow after
    /// the LRU evicted it (how many other flows use the mapping is not known), or the count
    /// reached the largest a `u16` holds. Closes never subtract from it (adding leaves it
    /// so): the mapping then lives as long as its flows keep it alive, never shorter.
    pub const FLOWS_UNKNOWN: u16 = u16::MAX;

    /// One flow of the mapping closed: the count after it (an unknown count stays unknown).
    pub const fn closed_one(flows: u16) -> u16 {
        if flows == Self::FLOWS_UNKNOWN {
            flows
        } else {
            flows.saturating_sub(1)
        }
    }

    /// The binding as the word the datapath exchanges (memory order, so that it is the
    /// value's bytes whatever the host's endianness).
    pub fn word(&self) -> u64 {
        u64::from_ne_bytes(bytemuck::cast(*self))
    }

    pub fn from_word(w: u64) -> NatBinding {
        bytemuck::cast(w.to_ne_bytes())
    }
}

crate::map_type! {
    /// An external (address, port, protocol).
    #[derive(Default, Hash)]
    pub struct NatClaimKey: 8 {
        /// External address, network byte order.
        pub ext_addr: u32,
        /// External port or ICMP identifier, network byte order.
        pub ext_port: u16,
        pub proto: u8,
        pub _pad: u8,
    }
}

impl NatClaimKey {
    /// The key of the external `(ext_addr, ext_port)` (network byte order) for `proto`.
    pub const fn new(ext_addr: u32, ext_port: u16, proto: u8) -> NatClaimKey {
        NatClaimKey {
            ext_addr,
            ext_port,
            proto,
            _pad: 0,
        }
    }
}

crate::map_type! {
    /// Who holds an external port. The owner is one word, so that taking over a port whose
    /// holder has expired is one compare-and-exchange: of two CPUs that try at once, one wins.
    #[derive(Default)]
    pub struct NatClaim: 16 {
        /// The internal endpoint that owns the port: address, port and network, packed by
        /// [`NatClaim::owner_of`].
        pub owner: u64,
        /// CLOCK_MONOTONIC seconds; same lifetime as the binding.
        pub expires: u32,
        /// CLOCK_MONOTONIC seconds: the latest a flow of the mapping that has closed may live
        /// (its entries' expiry and a slack); [`NatClaim::CLOSED_NONE`] before any has
        /// closed; [`NatClaim::CLOSED_UNKNOWN`] when not known. The binding counts only the
        /// flows that have not closed; when the last of them closes, the mapping must still
        /// outlive the closed ones. 0 is what a datapath from before this field left in
        /// its place (padding): it reads as not known ([`NatClaim::closed`]).
        pub closed_until: u32,
    }
}

impl NatClaim {
    /// `closed_until` of a claim made again for a live binding (the LRU evicted it): the
    /// flows that closed are not known, and live at most as long as a closed flow may.
    pub const CLOSED_UNKNOWN: u32 = u32::MAX;
    /// `closed_until` of a claim no flow of which has closed: a moment long past, which
    /// keeps a mapping no longer than its own flows.
    pub const CLOSED_NONE: u32 = 1;

    /// What a `closed_until` word says: [`NatClaim::CLOSED_UNKNOWN`] for the 0 of a claim
    /// an older datapath wrote, which never recorded its closed flows.
    pub const fn closed(word: u32) -> u32 {
        if word == 0 {
            Self::CLOSED_UNKNOWN
        } else {
            word
        }
    }

    /// A claim of the endpoint `owner` (see [`NatClaim::owner_of`]) until `expires`.
    pub const fn new(owner: u64, expires: u32) -> NatClaim {
        NatClaim {
            owner,
            expires,
            closed_until: Self::CLOSED_NONE,
        }
    }

    /// The owner word of a port held for no endpoint (the loader's hold on a port that was
    /// published, while its old clients may still send to it): 0.0.0.0:0 of no network.
    /// No endpoint has it, so no binding ever leads to it, and every reader of a claim
    /// requires its owner's live binding: until it expires, nobody takes the port; after,
    /// the datapath takes it over as any expired claim.
    pub const HELD_FOR_NOBODY: u64 = Self::owner_of(0, 0, 0);

    /// The owner word of an internal endpoint: its address and port (network byte order) and
    /// its network, in memory order.
    pub const fn owner_of(int_addr: u32, int_port: u16, net_id: u16) -> u64 {
        let a = int_addr.to_ne_bytes();
        let p = int_port.to_ne_bytes();
        let n = net_id.to_ne_bytes();
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], p[0], p[1], n[0], n[1]])
    }

    /// The owner's address, network byte order.
    pub const fn int_addr(&self) -> u32 {
        let b = self.owner.to_ne_bytes();
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The owner's port, network byte order.
    pub const fn int_port(&self) -> u16 {
        let b = self.owner.to_ne_bytes();
        u16::from_ne_bytes([b[4], b[5]])
    }

    /// The owner's network.
    pub const fn net_id(&self) -> u16 {
        let b = self.owner.to_ne_bytes();
        u16::from_ne_bytes([b[6], b[7]])
    }

    /// Whether `(int_addr, int_port)` owns the port (whatever its network).
    pub const fn owned_by(&self, int_addr: u32, int_port: u16) -> bool {
        self.int_addr() == int_addr && self.int_port() == int_port
    }
}

crate::map_type! {
    /// A fragmented datagram, as its fragments carry it before translation.
    #[derive(Default, Hash)]
    pub struct FragKey: 12 {
        /// Addresses, network byte order.
        pub src_addr: u32,
        pub dst_addr: u32,
        /// IPv4 identification, network byte order.
        pub id: u16,
        pub proto: u8,
        pub _pad: u8,
    }
}

crate::map_type! {
    /// What the first fragment's translation did to the addresses; later fragments repeat it,
    /// at whichever hook sees them first (once translated, a fragment no longer matches).
    #[derive(Default)]
    pub struct FragEntry: 16 {
        /// New source and destination, network byte order.
        pub src_addr: u32,
        pub dst_addr: u32,
        /// CLOCK_MONOTONIC seconds.
        pub expires: u32,
        pub _pad: u32,
    }
}

/// The `attempt`-th external port to try (host byte order): the original port first, then a
/// walk through `[min, max]` from `random`, so that a small range is searched completely.
pub const fn port_candidate(attempt: u32, original: u16, random: u32, min: u16, max: u16) -> u16 {
    if attempt == 0 {
        return original;
    }
    let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
    let span = (hi - lo) as u32 + 1;
    lo + ((random.wrapping_add(attempt - 1)) % span) as u16
}

/// Refresh a mapping once its flows have extended their lifetime by this fraction of the
/// timeout, and keep it alive that much beyond them, so that a mapping never expires before
/// one of its flows (RFC 4787 REQ-1: the mapping lives while its flows do).
pub const MAPPING_SLACK_DIVISOR: u32 = 8;

pub const fn mapping_slack(timeout: u32) -> u32 {
    let s = timeout / MAPPING_SLACK_DIVISOR;
    if s == 0 { 1 } else { s }
}

/// The mapping a masquerade conntrack entry belongs to: its binding and claim keys.
pub const fn mapping_keys(
    key: &crate::conntrack::CtKey,
    entry: &crate::conntrack::CtEntry,
) -> (NatBindKey, NatClaimKey) {
    let (int_addr, int_port, ext_addr, ext_port) =
        if entry.flags & crate::conntrack::CT_F_MASQ_SRC != 0 {
            (key.src_addr, key.src_port, entry.src_addr, entry.src_port)
        } else {
            (entry.dst_addr, entry.dst_port, key.dst_addr, key.dst_port)
        };
    (
        NatBindKey {
            int_addr,
            ext_addr,
            int_port,
            proto: key.proto,
            _pad: 0,
        },
        NatClaimKey {
            ext_addr,
            ext_port,
            proto: key.proto,
            _pad: 0,
        },
    )
}
