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
/// the variant of a value if any.
#[macro_export]
#[doc(hidden)]
macro_rules! named_enum {
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
            pub const fn $from(v: $repr) -> Option<$name> {
                match v {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
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

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };
    const FIN: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    };
    const RST: TcpFlags = TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    };

    #[test]
    fn tcp_lifetime_walks_the_states() {
        let (s, f) = tcp_next(TcpState::None, SYN, false, 0);
        assert_eq!(s, TcpState::SynSent);
        let (s, f) = tcp_next(s, SYN_ACK, true, f);
        assert_eq!(s, TcpState::SynRecv);
        let (s, f) = tcp_next(s, ACK, false, f);
        assert_eq!(s, TcpState::Established);
        let (s, f) = tcp_next(s, ACK, true, f);
        assert_eq!(s, TcpState::Established);
        let (s, f) = tcp_next(s, FIN, false, f);
        assert_eq!((s, f & CT_F_FIN_ORIG != 0), (TcpState::FinWait, true));
        let (s, f) = tcp_next(s, ACK, true, f);
        assert_eq!(s, TcpState::CloseWait);
        let (s, f) = tcp_next(s, FIN, true, f);
        assert_eq!((s, f & CT_F_FIN_REPLY != 0), (TcpState::TimeWait, true));
        let (s, _) = tcp_next(s, ACK, false, f);
        assert_eq!(s, TcpState::TimeWait);
    }

    #[test]
    fn rst_closes_and_a_new_syn_reopens() {
        let (s, f) = tcp_next(TcpState::Established, RST, true, 0);
        assert_eq!(s, TcpState::Close);
        let (s, _) = tcp_next(s, SYN, false, f);
        assert_eq!(s, TcpState::SynSent);
        // A SYN from the reply side does not reopen a flow it does not own.
        let (s, _) = tcp_next(TcpState::Close, SYN, true, 0);
        assert_eq!(s, TcpState::Close);
    }

    #[test]
    fn simultaneous_close_goes_to_time_wait() {
        let (s, f) = tcp_next(TcpState::Established, FIN, true, 0);
        assert_eq!(s, TcpState::FinWait);
        let (s, _) = tcp_next(s, FIN, false, f);
        assert_eq!(s, TcpState::TimeWait);
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
            CT_F_REWRITE_DST, CT_F_REWRITE_SRC, CtEntry, CtKey,
        };
        let key = CtKey::new(0x0200_12ac, 0x0a00_71cb, 40000u16.to_be(), 80u16.to_be(), 6);
        let orig = CtEntry::opening(
            CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_FROM_INSIDE,
            (0x0100_33c6, 61000u16.to_be()),
            (0, 0),
            TcpState::SynSent,
            1,
            100,
            340,
            370,
            60,
        );
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
            _pad: 0,
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
