//! Conntrack timeout policies (nfnetlink_cttimeout), the objects iptables' `CT --timeout`
//! target refers to by name: the iptables backend gives its networks' flows netfast's idle
//! timeouts with them. (The nftables backend declares its own `ct timeout` objects.)
//!
//! A policy is created or updated in place (which reaches the flows that already use it),
//! and deleted once no rule refers to it.

use std::io;

use super::nfnetlink::{NLA_F_NESTED, NLM_F_ACK, Socket, nla};
use crate::{
    error::{Error, Result},
    loader::model::Timeouts,
};

const NFNL_SUBSYS_CTNETLINK_TIMEOUT: u16 = 8;
const IPCTNL_MSG_TIMEOUT_NEW: u16 = 0;
const IPCTNL_MSG_TIMEOUT_DELETE: u16 = 2;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const CTA_TIMEOUT_NAME: u16 = 1;
const CTA_TIMEOUT_L3PROTO: u16 = 2;
const CTA_TIMEOUT_L4PROTO: u16 = 3;
const CTA_TIMEOUT_DATA: u16 = 4;

// CTA_TIMEOUT_TCP_*
const TCP_SYN_SENT: u16 = 1;
const TCP_SYN_RECV: u16 = 2;
const TCP_ESTABLISHED: u16 = 3;
const TCP_FIN_WAIT: u16 = 4;
const TCP_CLOSE_WAIT: u16 = 5;
const TCP_LAST_ACK: u16 = 6;
const TCP_TIME_WAIT: u16 = 7;
const TCP_CLOSE: u16 = 8;
// CTA_TIMEOUT_UDP_*
const UDP_UNREPLIED: u16 = 1;
const UDP_REPLIED: u16 = 2;
// CTA_TIMEOUT_ICMP_TIMEOUT
const ICMP_TIMEOUT: u16 = 1;

/// A named timeout policy for one transport protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: &'static str,
    /// `tcp`, `udp` or `icmp`: what iptables' `-p` must say in a rule that uses it.
    pub proto: &'static str,
    l4proto: u8,
    /// (CTA_TIMEOUT_<PROTO>_<STATE>, seconds).
    values: Vec<(u16, u32)>,
}

/// The policies for `t`, under the names the iptables rules use.
pub fn policies(t: &Timeouts) -> [Policy; 3] {
    let tr = t.tcp_transitory;
    [
        Policy {
            name: "netfast-tcp",
            proto: "tcp",
            l4proto: libc::IPPROTO_TCP as u8,
            values: vec![
                (TCP_SYN_SENT, tr),
                (TCP_SYN_RECV, tr),
                (TCP_ESTABLISHED, t.tcp_established),
                (TCP_FIN_WAIT, tr),
                (TCP_CLOSE_WAIT, tr),
                (TCP_LAST_ACK, tr),
                (TCP_TIME_WAIT, tr),
                (TCP_CLOSE, t.tcp_close),
            ],
        },
        Policy {
            name: "netfast-udp",
            proto: "udp",
            l4proto: libc::IPPROTO_UDP as u8,
            values: vec![(UDP_UNREPLIED, t.udp), (UDP_REPLIED, t.udp)],
        },
        Policy {
            name: "netfast-icmp",
            proto: "icmp",
            l4proto: libc::IPPROTO_ICMP as u8,
            values: vec![(ICMP_TIMEOUT, t.icmp)],
        },
    ]
}

fn name_attr(name: &str) -> Vec<u8> {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    nla(CTA_TIMEOUT_NAME, &z)
}

/// The attributes of a request that creates or replaces `p`.
fn encode(p: &Policy) -> Vec<u8> {
    let data: Vec<u8> = p
        .values
        .iter()
        .flat_map(|&(ty, secs)| nla(ty, &secs.to_be_bytes()))
        .collect();
    [
        name_attr(p.name),
        nla(CTA_TIMEOUT_L3PROTO, &(libc::AF_INET as u16).to_be_bytes()),
        nla(CTA_TIMEOUT_L4PROTO, &[p.l4proto]),
        nla(CTA_TIMEOUT_DATA | NLA_F_NESTED, &data),
    ]
    .concat()
}

/// Creates `p`, or sets the values of the policy of that name.
pub fn set(p: &Policy) -> Result<()> {
    Socket::open()?
        .request_to(
            NFNL_SUBSYS_CTNETLINK_TIMEOUT,
            IPCTNL_MSG_TIMEOUT_NEW,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &encode(p),
        )
        .map(drop)
        .map_err(|e| with_context(e, &format!("creating conntrack timeout policy {}", p.name)))
}

/// Deletes the policy `name`; false when there was none.
pub fn delete(name: &str) -> Result<bool> {
    match Socket::open()?.request_to(
        NFNL_SUBSYS_CTNETLINK_TIMEOUT,
        IPCTNL_MSG_TIMEOUT_DELETE,
        NLM_F_ACK,
        &name_attr(name),
    ) {
        Ok(_) => Ok(true),
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(with_context(
            e,
            &format!("deleting conntrack timeout policy {name}"),
        )),
    }
}

fn with_context(e: Error, what: &str) -> Error {
    match e {
        Error::Io { source, .. } => Error::Io {
            context: format!("{what} (nfnetlink_cttimeout)"),
            source,
        },
        e => e,
    }
}

/// Whether an error says the kernel has no timeout policies at all (built without
/// CONFIG_NF_CONNTRACK_TIMEOUT / CONFIG_NF_CT_NETLINK_TIMEOUT).
pub fn unsupported(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT))
            || source.kind() == io::ErrorKind::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_encodes_name_protocols_and_big_endian_seconds() {
        let [tcp, udp, icmp] = policies(&Timeouts::default());
        assert_eq!((tcp.proto, udp.proto, icmp.proto), ("tcp", "udp", "icmp"));
        let b = encode(&udp);
        // "netfast-udp\0" padded to 12: a 16-byte attribute.
        assert_eq!(&b[0..4], &[16, 0, 1, 0]);
        assert_eq!(&b[4..16], b"netfast-udp\0");
        // L3 protocol AF_INET, big endian; L4 protocol 17.
        assert_eq!(&b[16..24], &[6, 0, 2, 0, 0, 2, 0, 0]);
        assert_eq!(&b[24..29], &[5, 0, 3, 0, 17]);
        // Data: nested, two 8-byte attributes of 300 s.
        assert_eq!(&b[32..36], &[20, 0, 4, 0x80]);
        assert_eq!(&b[36..44], &[8, 0, 1, 0, 0, 0, 1, 44]);
        assert_eq!(&b[44..52], &[8, 0, 2, 0, 0, 0, 1, 44]);
        assert_eq!(b.len(), 52);
        assert!(tcp.values.contains(&(TCP_ESTABLISHED, 7440)));
        assert!(tcp.values.contains(&(TCP_TIME_WAIT, 240)));
    }
}
