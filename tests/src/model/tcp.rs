//! TCP as netfast tracks it: a simplified conntrack state machine, the sequence and window
//! each direction has shown, and when a RST is believed (RFC 5961).

/// The states of a tracked TCP flow, as conntrack names them. The numbers are the ones the
/// datapath stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    TimeWait,
    Close,
}

impl State {
    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_code(v: u8) -> State {
        match v {
            1 => State::SynSent,
            2 => State::SynRecv,
            3 => State::Established,
            4 => State::FinWait,
            5 => State::CloseWait,
            6 => State::TimeWait,
            7 => State::Close,
            _ => State::None,
        }
    }
}

/// The TCP flags a transition looks at (PSH, URG and the rest are ignored): the wire's
/// flags byte decoded as the datapath decodes it (a decoding, not a decision).
pub use netfast::common::conntrack::TcpFlags as Flags;

/// Which sides have sent a FIN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fins {
    pub orig: bool,
    pub reply: bool,
}

/// The state after a segment with `flags` sent by the reply side (`reply`) or the original
/// side, and the FINs seen:
/// - a RST closes;
/// - a SYN from the original side opens (again, from NONE, SYN_SENT, TIME_WAIT or CLOSE: the
///   FINs are forgotten); from the reply side it opens nothing;
/// - the first FIN goes to FIN_WAIT (from SYN_SENT, SYN_RECV or ESTABLISHED), the other
///   side's FIN to TIME_WAIT;
/// - SYN-ACK back in SYN_SENT → SYN_RECV; the original side's ACK then → ESTABLISHED;
/// - in FIN_WAIT, the other side acknowledging the FIN → CLOSE_WAIT;
/// - in FIN_WAIT with both FINs seen (only two CPUs, one FIN each at once, leave a flow
///   so), an ACK → TIME_WAIT;
/// - a flow picked up mid-stream (NONE) is taken as ESTABLISHED.
pub fn next(state: State, flags: Flags, reply: bool, mut fins: Fins) -> (State, Fins) {
    if flags.rst {
        return (State::Close, fins);
    }
    if flags.syn && !flags.ack && !reply {
        return match state {
            State::None | State::SynSent | State::TimeWait | State::Close => {
                (State::SynSent, Fins::default())
            }
            other => (other, fins),
        };
    }
    // The FIN bits as seen from the sender of this segment.
    let other_fin = if reply { fins.orig } else { fins.reply };
    if flags.fin {
        if reply {
            fins.reply = true;
        } else {
            fins.orig = true;
        }
        if other_fin {
            return (State::TimeWait, fins);
        }
        return match state {
            State::SynSent | State::SynRecv | State::Established => (State::FinWait, fins),
            other => (other, fins),
        };
    }
    let state = match state {
        State::SynSent if flags.syn && flags.ack && reply => State::SynRecv,
        State::SynRecv if flags.ack && !reply => State::Established,
        State::FinWait if flags.ack && other_fin && fins.orig && fins.reply => State::TimeWait,
        State::FinWait if flags.ack && other_fin => State::CloseWait,
        State::None => State::Established,
        other => other,
    };
    (state, fins)
}

/// The window scale codes an entry's `wscale` holds (a direction whose SYN was not seen, a
/// SYN without the option, RFC 7323's largest shift), and what window tracking reads of a
/// segment: the datapath's encodings, not decisions the fuzzer checks.
pub use netfast::common::conntrack::{Segment, WSCALE_MAX, WSCALE_NONE, WSCALE_UNKNOWN};

/// What one direction has shown of itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// A segment of this direction was seen since the flow was tracked.
    pub seen: bool,
    /// The end of the highest sequence it sent (SYN and FIN count one each).
    pub end: u32,
    /// The largest window it offered, scaled.
    pub max_win: u32,
    /// Its window scale: before the SYN-ACK its SYN's option, then the agreed shift.
    pub wscale: u8,
}

/// The shift a direction's window fields take.
pub const fn shift(wscale: u8) -> u32 {
    if wscale == WSCALE_UNKNOWN {
        WSCALE_MAX as u32
    } else if wscale > WSCALE_MAX {
        0
    } else {
        wscale as u32
    }
}

/// The shift a direction keeps once both SYNs are seen: its own option if both sides sent
/// one, else none; unknown if either SYN was not seen.
pub const fn agreed(own: u8, other: u8) -> u8 {
    if own == WSCALE_UNKNOWN || other == WSCALE_UNKNOWN {
        WSCALE_UNKNOWN
    } else if own > WSCALE_MAX || other > WSCALE_MAX {
        0
    } else {
        own
    }
}

/// Whether a segment starts its side's sequence afresh: a SYN from the original side that
/// opens the flow or reopens a closed one (a new connection, a new initial sequence).
pub fn restarts(state: State, flags: Flags, reply: bool) -> bool {
    let opening = matches!(
        state,
        State::None | State::SynSent | State::TimeWait | State::Close
    );
    flags.syn && !flags.ack && !flags.rst && !reply && opening
}

/// The direction's highest sequence end and largest window after it sent `seg` (a SYN's
/// window is never scaled). Before anything was seen, the segment's own values.
pub fn sent(w: &Window, flags: Flags, seg: &Segment) -> (u32, u32) {
    let end = seg
        .seq
        .wrapping_add(u32::from(seg.len))
        .wrapping_add(u32::from(flags.syn))
        .wrapping_add(u32::from(flags.fin));
    let win = if flags.syn {
        u32::from(seg.win)
    } else {
        u32::from(seg.win) << shift(w.wscale)
    };
    if !w.seen {
        return (end, win);
    }
    let end = if (end.wrapping_sub(w.end) as i32) > 0 {
        end
    } else {
        w.end
    };
    (end, win.max(w.max_win))
}

/// Whether a RST from the side `sender` is believed: its sequence must lie within a window
/// (at least 65535 bytes, else the largest the receiver offered) around where the sender's
/// sequence stands. A side that has sent nothing may only refuse what it was sent: its RST
/// must acknowledge the other side's sequence. What is not known is not held against it.
pub fn rst_believed(sender: &Window, receiver: &Window, flags: Flags, seg: &Segment) -> bool {
    if !sender.seen {
        return !receiver.seen || (flags.ack && seg.ack == receiver.end);
    }
    if !receiver.seen {
        return true;
    }
    within(sender, receiver, seg)
}

/// Whether a segment other than a RST may move the flow: its sequence within the window, as
/// a RST's; what is not known is not held against it.
pub fn segment_believed(sender: &Window, receiver: &Window, seg: &Segment) -> bool {
    !sender.seen || !receiver.seen || within(sender, receiver, seg)
}

/// `seg`'s sequence within a window (at least 65535 bytes, else the largest the receiver
/// offered) around where the sender's sequence stands.
fn within(sender: &Window, receiver: &Window, seg: &Segment) -> bool {
    let win = i64::from(receiver.max_win.max(65535));
    let off = i64::from(seg.seq.wrapping_sub(sender.end) as i32);
    (-win..=win).contains(&off)
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the header's flags byte: SYN 0x02, ACK 0x10.
    const SYN: Flags = Flags::from_byte(0x02);
    const ACK: Flags = Flags::from_byte(0x10);

    #[test]
    fn a_handshake_and_a_close() {
        let f = Fins::default();
        let (s, f) = next(State::None, SYN, false, f);
        assert_eq!(s, State::SynSent);
        let (s, f) = next(s, Flags { ack: true, ..SYN }, true, f);
        assert_eq!(s, State::SynRecv);
        let (s, f) = next(s, ACK, false, f);
        assert_eq!(s, State::Established);
        let fin = Flags { fin: true, ..ACK };
        let (s, f) = next(s, fin, true, f);
        assert_eq!((s, f.reply), (State::FinWait, true));
        let (s, f) = next(s, ACK, false, f);
        assert_eq!(s, State::CloseWait);
        let (s, _) = next(s, fin, false, f);
        assert_eq!(s, State::TimeWait);
    }

    #[test]
    fn a_rst_far_from_the_sequence_is_not_believed() {
        let seen = |end| Window {
            seen: true,
            end,
            max_win: 1000,
            wscale: 0,
        };
        let rst = Flags {
            rst: true,
            ..Flags::default()
        };
        let at = |seq| Segment {
            seq,
            ..Segment::default()
        };
        assert!(rst_believed(&seen(100), &seen(5), rst, &at(100 + 65535)));
        assert!(!rst_believed(&seen(100), &seen(5), rst, &at(100 + 65536)));
        assert!(rst_believed(&seen(10), &seen(5), rst, &at(u32::MAX - 3)));
    }
}
