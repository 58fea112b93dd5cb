//! What dockerd itself knows: the IDs of its networks, asked over its API socket
//! (`GET /networks`). Docker deletes a network from its own store even when the driver's
//! DeleteNetwork failed, and never asks again: a delete that died before it recorded its
//! intent leaves netfast serving a network Docker has forgotten, which only this list tells.

use std::{
    collections::HashSet,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::Deserialize;

/// dockerd's API socket, where the daemon that finds plugins in
/// [`super::DEFAULT_SOCKET`]'s directory listens.
pub const DEFAULT_API_SOCKET: &str = "/var/run/docker.sock";

/// The longest answer read: a list of networks, each a few kilobytes.
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
}

/// The IDs of the networks dockerd listening on `socket` has, or why they could not be had
/// (in words naming the socket).
pub fn network_ids(socket: &Path) -> Result<HashSet<String>, String> {
    let at = socket.display();
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot reach dockerd at {at}: {e}"))?;
    let io = |e: std::io::Error| format!("asking dockerd at {at} for its networks: {e}");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    // HTTP/1.0: the answer ends with the connection, in one piece (not chunked).
    stream
        .write_all(b"GET /networks HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io)?;
    parse(&answer).map_err(|why| format!("dockerd at {at} answered GET /networks {why}"))
}

/// The network IDs of an HTTP answer to `GET /networks`.
fn parse(answer: &[u8]) -> Result<HashSet<String>, String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("with no complete header")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/1.") || code != Some("200") {
        return Err(format!("with `{status}`"));
    }
    if head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    }) {
        return Err("in chunks, which this reader does not take".into());
    }
    let listed: Vec<Listed> = serde_json::from_slice(&answer[end + 4..])
        .map_err(|e| format!("with a body that is not a list of networks: {e}"))?;
    Ok(listed.into_iter().map(|n| n.id).collect())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn an_answer_gives_its_networks_ids() {
        let ids = parse(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
              [{\"Name\":\"bridge\",\"Id\":\"aa11\",\"Driver\":\"bridge\"},\
               {\"Name\":\"web\",\"Id\":\"bb22\",\"Driver\":\"netfast\",\"IPAM\":{}}]",
        )
        .expect("a list");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains("aa11") && ids.contains("bb22"));
    }

    #[test]
    fn anything_but_a_whole_list_is_refused() {
        for (answer, why) in [
            (&b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}"[..], "500"),
            (b"HTTP/1.0 200 OK\r\n\r\n[{\"Id\":\"a", "not a list"),
            (
                b"HTTP/1.0 200 OK\r\nContent-Type: app",
                "no complete header",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[]",
                "chunks",
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n{\"message\":\"no\"}", "not a list"),
        ] {
            let err = parse(answer).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
