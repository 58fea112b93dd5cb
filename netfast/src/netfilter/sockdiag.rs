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

use std::net::{Ipv4Addr, SocketAddrV4};

use super::nfnetlink::{NLM_F_ACK, NLM_F_DUMP, Socket};
use crate::error::{Error, Result};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `INET_DIAG_NOCOOKIE`: a dump names no socket.
const NO_COOKIE: [u8; 8] = [0xff; 8];
/// The TCP states in which aborting a socket sends its peer a RST (`tcp_need_reset`):
/// ESTABLISHED (1), SYN_RECV (3), FIN_WAIT1 (4), FIN_WAIT2 (5), CLOSE_WAIT (8). Never a
/// listener: a socket named by its addresses alone falls back to the listener on its port
/// when the connection has gone (`inet_lookup`), which is why sockets are destroyed by the
/// cookie a dump gave. (A socket closing by itself, in LAST_ACK or CLOSING, is left to
/// finish.)
const CONNECTED: u32 = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8);

/// A TCP connection as a container's socket sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The container's end (its address and the port its server listens on).
    pub local: SocketAddrV4,
    /// Its peer, as the container sees it (a client's address, or the one it was
    /// masqueraded to).
    pub remote: SocketAddrV4,
}

impl Connection {
    /// The connection whose socket's end is `src`:`sport` and peer `dst`:`dport` (a flow's
    /// reply tuple, as the container sends it).
    pub fn of_reply(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Connection {
        Connection {
            local: SocketAddrV4::new(src, sport),
            remote: SocketAddrV4::new(dst, dport),
        }
    }
}

/// `struct inet_diag_req_v2` for IPv4 TCP sockets in `states`, at `c` with `cookie` (a dump:
/// unspecified addresses and ports, and no cookie).
fn request(states: u32, c: Option<Connection>, cookie: [u8; 8]) -> Vec<u8> {
    let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let (local, remote) = c.map_or((unspecified, unspecified), |c| (c.local, c.remote));
    let mut r = Vec::with_capacity(56);
    r.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    r.extend_from_slice(&states.to_ne_bytes());
    r.extend_from_slice(&local.port().to_be_bytes());
    r.extend_from_slice(&remote.port().to_be_bytes());
    for addr in [local.ip(), remote.ip()] {
        r.extend_from_slice(&addr.octets());
        r.extend_from_slice(&[0; 12]);
    }
    r.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    r.extend_from_slice(&cookie);
    r
}

/// A `struct inet_diag_msg` of a dump: the connection and its socket's cookie.
fn parse(msg: &[u8]) -> Option<(Connection, [u8; 8])> {
    let id = msg.get(4..52)?;
    let addr = |at: usize, port: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(id[at], id[at + 1], id[at + 2], id[at + 3]),
            u16::from_be_bytes([id[port], id[port + 1]]),
        )
    };
    let c = Connection {
        local: addr(4, 0),
        remote: addr(20, 2),
    };
    Some((c, id[40..48].try_into().ok()?))
}

/// Aborts the TCP sockets of this network namespace at `connections` that still carry data
/// (not a listener, not TIME_WAIT); returns those it aborted.
pub fn destroy_tcp(connections: &[Connection]) -> Result<Vec<Connection>> {
    let sock = Socket::of(NETLINK_SOCK_DIAG, "opening a sock_diag socket")?;
    let dumped = sock
        .request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_DUMP,
            &request(CONNECTED, None, NO_COOKIE),
        )
        .map_err(|e| explain(e, "listing the TCP sockets (sock_diag)"))?;
    let wanted: std::collections::HashSet<&Connection> = connections.iter().collect();
    let mut ended = Vec::new();
    for (c, cookie) in dumped.iter().filter_map(|m| parse(m)) {
        if !wanted.contains(&c) {
            continue;
        }
        match sock.request(
            SOCK_DESTROY,
            NLM_F_ACK,
            &request(CONNECTED, Some(c), cookie),
        ) {
            Ok(_) => ended.push(c),
            // Closed since the dump (its cookie then names no socket).
            Err(Error::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => {}
            Err(e) => {
                return Err(explain(
                    e,
                    &format!(
                        "ending the TCP connection {} → {} (sock_diag SOCK_DESTROY; a kernel \
                         without CONFIG_INET_DIAG_DESTROY refuses it)",
                        c.local, c.remote
                    ),
                ));
            }
        }
    }
    Ok(ended)
}

/// Waits up to 200 ms for `crossed` to say that the RSTs of the sockets just aborted have
/// crossed their flows (the flows are then closed, or gone). The kernel sends each RST as
/// it aborts the socket, and the veth hands it on in the softirq that follows, mostly before
/// SOCK_DESTROY returns; a flow deleted before its RST crossed would leave a client that
/// only listens waiting for ever.
/// `crossed` tells whether one connection's RST has crossed; it is asked again only about
/// those that had not. A failure to tell is logged, and ends the wait.
pub fn wait_for_resets(ended: &[Connection], mut crossed: impl FnMut(&Connection) -> Result<bool>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    let mut pending: Vec<&Connection> = ended.iter().collect();
    loop {
        let mut still = Vec::new();
        for c in pending {
            match crossed(c) {
                Ok(true) => {}
                Ok(false) => still.push(c),
                Err(e) => {
                    log::warn!(
                        "could not tell whether the RST of {} → {} reached its client: {}",
                        c.local,
                        c.remote,
                        crate::error::report(&e)
                    );
                    return;
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            log::debug!(
                "{} aborted connections' RSTs not seen within 200 ms",
                pending.len()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn explain(e: Error, what: &str) -> Error {
    match e {
        Error::Io { source, .. } => Error::Io {
            context: what.to_owned(),
            source,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's connection to a container's server, as the container sees it.
    const C: [u8; 12] = [172, 18, 0, 2, 0x23, 0x28, 198, 51, 100, 2, 0x9c, 0x42];

    fn connection() -> Connection {
        let [a, b, c, d, p0, p1, e, f, g, h, q0, q1] = C;
        Connection::of_reply(
            Ipv4Addr::new(a, b, c, d),
            u16::from_be_bytes([p0, p1]),
            Ipv4Addr::new(e, f, g, h),
            u16::from_be_bytes([q0, q1]),
        )
    }

    #[test]
    fn the_request_is_an_inet_diag_req_v2_for_one_socket() {
        let r = request(CONNECTED, Some(connection()), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(r.len(), 56, "sizeof(struct inet_diag_req_v2)");
        assert_eq!(&r[..4], &[2, 6, 0, 0], "AF_INET, IPPROTO_TCP");
        assert_eq!(r[4..8], CONNECTED.to_ne_bytes());
        assert_eq!(CONNECTED & (1 << 10), 0, "never a listener");
        assert_eq!(&r[8..12], &[0x23, 0x28, 0x9c, 0x42], "ports, network order");
        assert_eq!(&r[12..16], &[172, 18, 0, 2]);
        assert_eq!(&r[28..32], &[198, 51, 100, 2]);
        assert_eq!(&r[48..56], &[1, 2, 3, 4, 5, 6, 7, 8], "the dump's cookie");
    }

    #[test]
    fn a_dumped_socket_reads_back_as_its_connection_and_cookie() {
        // inet_diag_msg: family, state, timer, retrans, then the id as in a request.
        let mut msg = vec![2, 1, 0, 0];
        msg.extend_from_slice(&request(0, Some(connection()), [9; 8])[8..56]);
        msg.extend_from_slice(&[0; 20]); // expires, rqueue, wqueue, uid, inode
        assert_eq!(parse(&msg), Some((connection(), [9; 8])));
        assert_eq!(parse(&msg[..40]), None, "a short message");
    }
}
