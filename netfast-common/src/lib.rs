//! Types and constants shared by the eBPF programs (`netfast-ebpf`) and the loader (`netfast`).
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields and derives
//! `bytemuck::{Pod, Zeroable}`, so a padding mistake fails to compile; its size is asserted
//! so that both sides agree on the layout the kernel sees.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod maps;
pub mod monitor;
pub mod nat;
pub mod publish;
pub mod stats;
pub mod upgrade;

pub use stats::{DropReason, Hook, Traffic};

/// Implements `aya::Pod` (userspace only) for types that are already `bytemuck::Pod`.
#[macro_export]
#[doc(hidden)]
macro_rules! aya_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `bytemuck::Pod`, which has the same requirements.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// Declares a map key or value, as the kernel sees it on both sides: `#[repr(C)]` (or the
/// `repr` given), `bytemuck::{Pod, Zeroable}` (so that a padding mistake fails to compile), its
/// size asserted, and `aya::Pod` for userspace. Further derives (`Default`, `Hash`) are given
/// with the struct.
#[macro_export]
#[doc(hidden)]
macro_rules! map_type {
    (#[repr($($repr:tt)*)] $(#[$attr:meta])* pub struct $name:ident: $size:tt { $($body:tt)* }) => {
        $(#[$attr])*
        #[repr($($repr)*)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($body)* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        $crate::aya_pod!($name);
    };
    ($(#[$attr:meta])* pub struct $name:ident: $size:tt { $($body:tt)* }) => {
        $crate::map_type!(#[repr(C)] $(#[$attr])* pub struct $name: $size { $($body)* });
    };
}

/// Declares a field-less enum whose values are stable (they are stored in maps or index
/// them), with `ALL` (declaration order), `name` (the stable name users see) and `$from`,
/// the variant of a value if any; and `describe`, where each name is followed by `: "a
/// sentence for users"`.
#[macro_export]
#[doc(hidden)]
macro_rules! named_enum {
    // With a sentence for users after each name: `describe`.
    (
        $(#[$attr:meta])*
        pub enum $name:ident: $repr:ident, $from:ident {
            $($(#[$vattr:meta])* $variant:ident = $value:literal => $text:literal: $says:literal,)*
        }
    ) => {
        $crate::named_enum! {
            $(#[$attr])*
            pub enum $name: $repr, $from {
                $($(#[$vattr])* $variant = $value => $text,)*
            }
        }

        impl $name {
            /// What this is, in a sentence for users.
            pub const fn describe(self) -> &'static str {
                match self {
                    $($name::$variant => $says,)*
                }
            }
        }
    };
    (
        $(#[$attr:meta])*
        pub enum $name:ident: $repr:ident, $from:ident {
            $($(#[$vattr:meta])* $variant:ident = $value:literal => $text:literal,)*
        }
    ) => {
        $(#[$attr])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vattr])* $variant = $value,)*
        }

        impl $name {
            pub const ALL: [$name; [$($value),*].len()] = [$($name::$variant),*];

            /// The variant with this value, if any.
            // A loop, not a match: the programs call it on their error path (`Outcome`),
            // where a match nearly doubled what the verifier checks (bridge_ingress 245k
            // instructions to 476k).
            pub const fn $from(v: $repr) -> Option<$name> {
                let mut i = 0;
                while i < Self::ALL.len() {
                    if Self::ALL[i] as $repr == v {
                        return Some(Self::ALL[i]);
                    }
                    i += 1;
                }
                None
            }

            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

/// TC verdicts as the programs return them (`TC_ACT_*`), for both sides to compare with.
pub mod verdict {
    /// `TC_ACT_UNSPEC`: carry on (next TCX program, else the stack). A pass-through.
    pub const NEXT: i32 = -1;
    /// `TC_ACT_OK`: hand the packet to the stack, skipping later TCX programs.
    pub const OK: i32 = 0;
    /// `TC_ACT_SHOT`: drop.
    pub const SHOT: i32 = 2;
    /// `TC_ACT_REDIRECT`: sent elsewhere by a redirect helper.
    pub const REDIRECT: i32 = 7;

    pub const fn name(v: i32) -> &'static str {
        match v {
            NEXT => "NEXT (TC_ACT_UNSPEC)",
            OK => "OK (TC_ACT_OK)",
            SHOT => "SHOT (TC_ACT_SHOT)",
            REDIRECT => "REDIRECT (TC_ACT_REDIRECT)",
            _ => "unknown verdict",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        config::DpConfig,
        conntrack::{
            CT_F_FIN_ORIG, CT_F_FIN_REPLY, PROTO_TCP, PROTO_UDP, TcpFlags, TcpState, tcp_next,
            timeout,
        },
        nat::port_candidate,
    };

    // From the header's flags byte: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10.
    const SYN: TcpFlags = TcpFlags::from_byte(0x02);
    const SYN_ACK: TcpFlags = TcpFlags::from_byte(0x12);
    const ACK: TcpFlags = TcpFlags::from_byte(0x10);
    const FIN: TcpFlags = TcpFlags::from_byte(0x11);
    const RST: TcpFlags = TcpFlags::from_byte(0x04);

    const BOTH_FINS: u16 = CT_F_FIN_ORIG | CT_F_FIN_REPLY;

    /// Walks through the state machine: a name, the state it starts from, and its steps: a
    /// segment's flags, whether the reply side sent it, the state and the FINs seen after it.
    type Walk = (
        &'static str,
        TcpState,
        &'static [(TcpFlags, bool, TcpState, u16)],
    );
    const WALKS: &[Walk] = &[
        (
            "a lifetime",
            TcpState::None,
            &[
                (SYN, false, TcpState::SynSent, 0),
                (SYN_ACK, true, TcpState::SynRecv, 0),
                (ACK, false, TcpState::Established, 0),
                (ACK, true, TcpState::Established, 0),
                (FIN, false, TcpState::FinWait, CT_F_FIN_ORIG),
                (ACK, true, TcpState::CloseWait, CT_F_FIN_ORIG),
                (FIN, true, TcpState::TimeWait, BOTH_FINS),
                (ACK, false, TcpState::TimeWait, BOTH_FINS),
            ],
        ),
        (
            "a RST closes and a new SYN reopens",
            TcpState::Established,
            &[
                (RST, true, TcpState::Close, 0),
                (SYN, false, TcpState::SynSent, 0),
            ],
        ),
        (
            "a SYN from the reply side does not reopen a flow it does not own",
            TcpState::Close,
            &[(SYN, true, TcpState::Close, 0)],
        ),
        (
            "a simultaneous close goes to TIME_WAIT",
            TcpState::Established,
            &[
                (FIN, true, TcpState::FinWait, CT_F_FIN_REPLY),
                (FIN, false, TcpState::TimeWait, BOTH_FINS),
            ],
        ),
    ];

    #[test]
    fn tcp_next_walks_the_states() {
        for (name, start, steps) in WALKS {
            let (mut s, mut f) = (*start, 0);
            for (i, (flags, reply, state, fins)) in steps.iter().enumerate() {
                (s, f) = tcp_next(s, *flags, *reply, f);
                assert_eq!((s, f & BOTH_FINS), (*state, *fins), "{name}: step {i}");
            }
        }
    }

    /// Two CPUs that each read the flow before the other's FIN leave it in FIN_WAIT with
    /// both FINs seen (its ACKs took it to CLOSE_WAIT, where it stayed): the next ACK closes
    /// it.
    #[test]
    fn a_flow_left_open_with_both_fins_closes_at_its_next_ack() {
        for reply in [false, true] {
            assert_eq!(
                tcp_next(TcpState::FinWait, ACK, reply, BOTH_FINS),
                (TcpState::TimeWait, BOTH_FINS),
                "reply {reply}"
            );
        }
        // One FIN: half-closed, as before.
        assert_eq!(
            tcp_next(TcpState::FinWait, ACK, true, CT_F_FIN_ORIG),
            (TcpState::CloseWait, CT_F_FIN_ORIG)
        );
    }

    #[test]
    fn timeouts_follow_the_state() {
        let cfg = DpConfig::default();
        assert_eq!(timeout(&cfg, PROTO_TCP, TcpState::Established), 7440);
        assert_eq!(timeout(&cfg, PROTO_TCP, TcpState::SynSent), 240);
        assert_eq!(timeout(&cfg, PROTO_TCP, TcpState::TimeWait), 240);
        assert_eq!(timeout(&cfg, PROTO_TCP, TcpState::Close), 10);
        assert_eq!(timeout(&cfg, PROTO_UDP, TcpState::None), 300);
        assert_eq!(timeout(&cfg, 1, TcpState::None), 60);
    }

    #[test]
    fn a_reply_entry_undoes_its_original_and_each_points_to_the_other() {
        use crate::conntrack::{
            CT_F_FROM_INSIDE, CT_F_INWARD, CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REPLY,
            CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtEntry, CtKey, FlowTimes, NewEntry,
        };
        let key = CtKey::new(0x0200_12ac, 0x0a00_71cb, 40000u16.to_be(), 80u16.to_be(), 6);
        let orig = CtEntry::opening(&NewEntry {
            flags: CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_FROM_INSIDE,
            src: (0x0100_33c6, 61000u16.to_be()),
            dst: (0, 0),
            net_id: 1,
            times: FlowTimes::opening(TcpState::SynSent, 100, 240),
            bytes: 60,
        });
        let reply = orig.reply(&key, CT_F_INWARD);
        let reply_key = orig.peer_key(&key);
        assert_eq!(
            reply.flags,
            CT_F_REWRITE_DST | CT_F_MASQ_DST | CT_F_INWARD | CT_F_REPLY
        );
        assert_eq!(
            (reply.dst_addr, reply.dst_port),
            (key.src_addr, key.src_port)
        );
        assert_eq!(reply.peer_key(&reply_key), key);
        assert_eq!((reply.expires, reply.packets), (340, 0));
        assert!(orig.serves(true) && !orig.serves(false));
        assert!(reply.serves(false) && !reply.serves(true));
    }

    #[test]
    fn a_rst_is_believed_only_inside_the_window() {
        use crate::conntrack::{CT_F_TD_SEEN, CtEntry, Segment, WSCALE_NONE, rst_in_window, sent};
        let rst = TcpFlags {
            rst: true,
            ..TcpFlags::default()
        };
        let seen = |td_end, td_maxwin| CtEntry {
            flags: CT_F_TD_SEEN,
            td_end,
            td_maxwin,
            ..CtEntry::default()
        };
        let seg = |seq| Segment {
            seq,
            ..Segment::default()
        };
        let (server, client) = (seen(5101, 64240), seen(1001, 64240));
        assert!(rst_in_window(&server, &client, rst, &seg(5101)));
        assert!(rst_in_window(&server, &client, rst, &seg(5101 + 60_000)));
        assert!(!rst_in_window(&server, &client, rst, &seg(123_456_789)));
        assert!(!rst_in_window(
            &server,
            &client,
            rst,
            &seg(5101u32.wrapping_sub(200_000))
        ));
        // Around the wrap of the sequence space.
        let late = seen(10, 64240);
        assert!(rst_in_window(&late, &client, rst, &seg(u32::MAX - 5)));
        // A side that sent nothing may only refuse the other's SYN.
        let silent = CtEntry::default();
        let syn_sent = seen(1001, 64240);
        let rst_ack = TcpFlags { ack: true, ..rst };
        let refusal = |ack| Segment {
            ack,
            ..Segment::default()
        };
        assert!(rst_in_window(&silent, &syn_sent, rst_ack, &refusal(1001)));
        assert!(!rst_in_window(&silent, &syn_sent, rst_ack, &refusal(777)));
        assert!(!rst_in_window(&silent, &syn_sent, rst, &refusal(1001)));
        // Scaled windows: what a SYN-ACK agreed to widens the window that is judged.
        let mut e = CtEntry {
            wscale: 7,
            ..CtEntry::default()
        };
        let ack = TcpFlags {
            ack: true,
            ..TcpFlags::default()
        };
        let (end, win) = sent(
            &e,
            ack,
            &Segment {
                seq: 1,
                win: 1000,
                len: 10,
                ..Segment::default()
            },
        );
        assert_eq!((end, win), (11, 128_000));
        e.wscale = WSCALE_NONE;
        let (_, win) = sent(
            &e,
            ack,
            &Segment {
                seq: 1,
                win: 1000,
                ..Segment::default()
            },
        );
        assert_eq!(win, 1000, "without both options, windows are not scaled");
    }

    #[test]
    fn a_claims_owner_packs_into_one_word_and_back() {
        use crate::nat::{NatBinding, NatClaim};
        let owner = NatClaim::owner_of(0x0200_12ac, 40000u16.to_be(), 7);
        let c = NatClaim {
            owner,
            expires: 9,
            closed_until: 0,
        };
        assert_eq!(
            (c.int_addr(), c.int_port(), c.net_id()),
            (0x0200_12ac, 40000u16.to_be(), 7)
        );
        assert!(c.owned_by(0x0200_12ac, 40000u16.to_be()));
        assert!(!c.owned_by(0x0300_12ac, 40000u16.to_be()));
        let b = NatBinding {
            ext_port: 61000u16.to_be(),
            flows: 3,
            expires: 12345,
        };
        assert_eq!(NatBinding::from_word(b.word()), b);
    }

    #[test]
    fn a_port_held_for_nobody_names_no_endpoint_and_no_network() {
        use crate::nat::NatClaim;
        let held = NatClaim::new(NatClaim::HELD_FOR_NOBODY, 9);
        // No container or host flow has address 0.0.0.0 and port 0: no binding leads to it.
        assert_eq!((held.int_addr(), held.int_port(), held.net_id()), (0, 0, 0));
    }

    #[test]
    fn port_candidates_keep_the_original_then_cover_a_small_range() {
        assert_eq!(port_candidate(0, 5000, 7, 61000, 61003), 5000);
        let mut seen: [bool; 4] = [false; 4];
        for attempt in 1..=4 {
            let p = port_candidate(attempt, 5000, 0xffff_fffe, 61000, 61003);
            assert!((61000..=61003).contains(&p));
            seen[usize::from(p - 61000)] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "four attempts must cover a four-port range"
        );
        assert_eq!(port_candidate(1, 1, 0, 65535, 65535), 65535);
    }
}
