//! Ending a TCP connection at its socket (sock_diag's `SOCK_DESTROY`, what `ss -K` does): the
//! kernel aborts the socket, tells its peer with a RST, and the application's next call fails
//! with ECONNABORTED.
//!
//! Unpublishing ends the flows through the publication ([`crate::loader`]), but deleting a
//! flow does not end the container's connection: its next segment (a server that pushes, an
//! echo in flight) is picked up mid-stream as one of the container's own flows and
//! masqueraded from the port it came from — the published one — which is what the client's
//! connection expects, and the client would go on talking to the container through a port no
//! longer published. Cilium ends sockets of removed service backends the same way
//! (`bpf-lb-sock-terminate-pod-connections`).

use std::net::SocketAddrV4;

use super::nfnetlink::{NLM_F_ACK, Socket};
use crate::error::{Error, Result};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DESTROY: u16 = 21;
/// `INET_DIAG_NOCOOKIE`: the socket is named by its addresses alone.
const NO_COOKIE: u32 = !0;

/// A TCP connection as a container's socket sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The container's end (its address and the port its server listens on).
    pub local: SocketAddrV4,
    /// Its peer, as the container sees it (a client's address, or the one it was
    /// masqueraded to).
    pub remote: SocketAddrV4,
}

/// `struct inet_diag_req_v2` naming one IPv4 TCP socket by its two ends.
fn request(local: SocketAddrV4, remote: SocketAddrV4) -> Vec<u8> {
    let mut r = Vec::with_capacity(56);
    r.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    r.extend_from_slice(&local.port().to_be_bytes());
    r.extend_from_slice(&remote.port().to_be_bytes());
    for addr in [local.ip(), remote.ip()] {
        r.extend_from_slice(&addr.octets());
        r.extend_from_slice(&[0; 12]);
    }
    r.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    r.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    r.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    r
}

/// Aborts the TCP sockets of this network namespace at `connections`; returns how many there
/// were (one closed meanwhile has none).
pub fn destroy_tcp(connections: &[Connection]) -> Result<usize> {
    let sock = Socket::of(NETLINK_SOCK_DIAG, "opening a sock_diag socket")?;
    let mut ended = 0;
    for &Connection { local, remote } in connections {
        match sock.request(SOCK_DESTROY, NLM_F_ACK, &request(local, remote)) {
            Ok(_) => ended += 1,
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(Error::Io { source, .. }) => {
                return Err(Error::Io {
                    context: format!(
                        "ending the TCP connection {local} → {remote} (sock_diag SOCK_DESTROY; \
                         a kernel without CONFIG_INET_DIAG_DESTROY refuses it)"
                    ),
                    source,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_an_inet_diag_req_v2_for_one_socket() {
        let r = request(
            "172.18.0.2:9000".parse().unwrap(),
            "198.51.100.2:40002".parse().unwrap(),
        );
        assert_eq!(r.len(), 56, "sizeof(struct inet_diag_req_v2)");
        assert_eq!(&r[..4], &[2, 6, 0, 0], "AF_INET, IPPROTO_TCP");
        assert_eq!(&r[8..12], &[0x23, 0x28, 0x9c, 0x42], "ports, network order");
        assert_eq!(&r[12..16], &[172, 18, 0, 2]);
        assert_eq!(&r[28..32], &[198, 51, 100, 2]);
        assert_eq!(&r[48..56], &[0xff; 8], "no cookie");
    }
}
