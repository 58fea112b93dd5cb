//! Netlink sockets of the netfilter family (nfnetlink): the requests, answers and attributes
//! that [`super::ctnetlink`] (the conntrack table) and [`super::cttimeout`] (timeout
//! policies) speak, and the socket that [`super::sockdiag`] shares with them.

use std::{io, mem::size_of};

use crate::error::{Error, Result};

const NETLINK_NETFILTER: libc::c_int = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLA_F_NESTED: u16 = 0x8000;

/// A netlink attribute: its type (flags stripped) and payload.
pub(super) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & !NLA_F_NESTED & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty, payload))
    })
}

pub(super) fn be16(b: &[u8]) -> u16 {
    b.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

pub(super) fn be32(b: &[u8]) -> u32 {
    b.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn be64(b: &[u8]) -> u64 {
    b.get(..8).map_or(0, |b| {
        u64::from_be_bytes(b.try_into().expect("eight bytes"))
    })
}

/// A netlink socket of the netfilter family, closed when dropped.
pub(super) struct Socket {
    pub(super) fd: libc::c_int,
    /// The sequence number of the latest request. A socket serves several requests in turn:
    /// what an earlier one left unread (its answer cut short by an error) carries an earlier
    /// number, and the next request's reading skips it.
    seq: std::cell::Cell<u32>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: a descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

pub(super) fn io_err(context: &str) -> Error {
    Error::Io {
        context: context.to_owned(),
        source: io::Error::last_os_error(),
    }
}

impl Socket {
    pub(super) fn open() -> Result<Socket> {
        Socket::of(NETLINK_NETFILTER, "opening a ctnetlink socket")
    }

    /// A netlink socket of protocol `netlink` (`NETLINK_*`); `what` names it in an error.
    pub(super) fn of(netlink: libc::c_int, what: &str) -> Result<Socket> {
        // SAFETY: plain syscall; the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                netlink,
            )
        };
        if fd < 0 {
            return Err(io_err(what));
        }
        Ok(Socket {
            fd,
            seq: std::cell::Cell::new(0),
        })
    }

    /// Sends one request to nfnetlink subsystem `subsys` (`attrs` after the nfgenmsg) and
    /// returns every message of the answer up to NLMSG_DONE or the acknowledgement.
    pub(super) fn request_to(
        &self,
        subsys: u16,
        msg_type: u16,
        flags: u16,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let mut body = Vec::with_capacity(4 + attrs.len());
        body.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]); // nfgenmsg
        body.extend_from_slice(attrs);
        Ok(self
            .request((subsys << 8) | msg_type, flags, &body)?
            .into_iter()
            .map(|m| m.get(4..).unwrap_or_default().to_vec())
            .collect())
    }

    /// Sends one request of type `msg_type` with `body` after the netlink header, and
    /// returns the body of every message of the answer up to NLMSG_DONE or the
    /// acknowledgement.
    pub(super) fn request(&self, msg_type: u16, flags: u16, body: &[u8]) -> Result<Vec<Vec<u8>>> {
        let len = 16 + body.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&msg_type.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        req.extend_from_slice(body);
        // SAFETY: sending a buffer we own to the kernel (the default destination of an
        // unbound netlink socket is the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(
                self.fd,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io_err("sending a netlink request"));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io_err("reading the kernel's netlink answer"));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().expect("4")) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                if mlen < 16 || mlen > rest.len() {
                    return Ok(out);
                }
                let body = &rest[16..mlen];
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().expect("4"));
                let next = ((mlen + 3) & !3).min(rest.len());
                if mseq != seq {
                    // The rest of an earlier request's answer.
                    rest = &rest[next..];
                    continue;
                }
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(body[..4].try_into().expect("4"));
                        if errno == 0 {
                            return Ok(out); // the acknowledgement
                        }
                        return Err(Error::Io {
                            context: "the kernel refused a netlink request".into(),
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    _ => out.push(body.to_vec()),
                }
                rest = &rest[next..];
            }
        }
    }
}

/// A netlink attribute of type `ty` around `payload`, padded to four bytes.
pub(super) fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len() + 3);
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}
