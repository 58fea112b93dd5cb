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
const MAX_ANSWER: usize = 64 << 20;

#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
}

/// The networks every dockerd has, whatever its settings: a list without them is not a
/// whole dockerd's.
const BUILT_IN: [&str; 2] = ["host", "none"];

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
    // HTTP/1.0: the answer comes in one piece (not chunked), and the connection closes
    // after it (or at its Content-Length, for a server that keeps it open).
    stream
        .write_all(b"GET /networks HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_ANSWER {
            return Err(format!(
                "{at} answered GET /networks with over {MAX_ANSWER} bytes"
            ));
        }
        if complete(&answer) {
            break;
        }
    }
    parse(&answer).map_err(|why| format!("{at} answered GET /networks {why}"))
}

/// Where the header of `answer` ends (the body's first byte), once it has.
fn body_at(answer: &[u8]) -> Option<usize> {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// The value of header `name` (lowercase) in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body's length, as the header `head` gives it.
fn content_length(head: &str) -> Option<usize> {
    header(head, "content-length").and_then(|v| v.parse().ok())
}

/// `answer` holds its whole body, as its Content-Length says.
fn complete(answer: &[u8]) -> bool {
    let Some(at) = body_at(answer) else {
        return false;
    };
    content_length(&String::from_utf8_lossy(&answer[..at]))
        .is_some_and(|len| answer.len() - at >= len)
}

/// The network IDs of an HTTP answer to `GET /networks`: only from a whole answer of
/// dockerd's own (its `Server` header), listing the networks every dockerd has. Anything
/// else (another daemon behind the socket, a proxy's error, a cut answer) is refused: its
/// list would delete networks Docker still has.
fn parse(answer: &[u8]) -> Result<HashSet<String>, String> {
    let at = body_at(answer).ok_or("with no complete header")?;
    let head = String::from_utf8_lossy(&answer[..at]);
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/1.") || code != Some("200") {
        return Err(format!("with `{status}`"));
    }
    let server = header(&head, "server").unwrap_or_default();
    if !server.starts_with("Docker/") {
        return Err(format!(
            "as server `{server}`, not dockerd (`Docker/…`): pass --docker-socket with \
             dockerd's own socket"
        ));
    }
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return Err("in chunks, which this reader does not take".into());
    }
    let body = &answer[at..];
    if let Some(len) = content_length(&head)
        && body.len() < len
    {
        return Err(format!("cut short: {} of {len} bytes", body.len()));
    }
    let listed: Vec<Listed> = serde_json::from_slice(body)
        .map_err(|e| format!("with a body that is not a list of networks: {e}"))?;
    if let Some(missing) = BUILT_IN
        .iter()
        .find(|b| !listed.iter().any(|n| n.name == **b))
    {
        return Err(format!(
            "with a list without Docker's own `{missing}` network: not a whole dockerd's"
        ));
    }
    Ok(listed.into_iter().map(|n| n.id).collect())
}

#[cfg(test)]
mod tests {
    use super::{complete, parse};

    const HEAD: &str = "HTTP/1.0 200 OK\r\nServer: Docker/28.2.2 (linux)\r\n\
                        Content-Type: application/json\r\n\r\n";
    const BUILT_IN: &str = "{\"Name\":\"host\",\"Id\":\"h1\"},{\"Name\":\"none\",\"Id\":\"n1\"}";

    #[test]
    fn an_answer_gives_its_networks_ids() {
        let answer = format!(
            "{HEAD}[{BUILT_IN},{{\"Name\":\"bridge\",\"Id\":\"aa11\",\"Driver\":\"bridge\"}},\
             {{\"Name\":\"web\",\"Id\":\"bb22\",\"Driver\":\"netfast\",\"IPAM\":{{}}}}]"
        );
        let ids = parse(answer.as_bytes()).expect("a list");
        assert_eq!(ids.len(), 4);
        assert!(ids.contains("aa11") && ids.contains("bb22"));
    }

    #[test]
    fn anything_but_a_whole_list_of_dockerds_is_refused() {
        let whole = format!("[{BUILT_IN}]");
        for (answer, why) in [
            (
                "HTTP/1.0 500 Internal Server Error\r\nServer: Docker/28\r\n\r\n{}".to_owned(),
                "500",
            ),
            (format!("{HEAD}[{{\"Id\":\"a"), "not a list"),
            (
                "HTTP/1.0 200 OK\r\nContent-Type: app".to_owned(),
                "no complete header",
            ),
            (
                "HTTP/1.1 200 OK\r\nServer: Docker/28\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[]"
                    .to_owned(),
                "chunks",
            ),
            (format!("{HEAD}{{\"message\":\"no\"}}"), "not a list"),
            // Another daemon behind the socket, or a list that is not a whole dockerd's.
            (
                format!("HTTP/1.0 200 OK\r\nServer: Libpod/5.0\r\n\r\n{whole}"),
                "not dockerd",
            ),
            (format!("HTTP/1.0 200 OK\r\n\r\n{whole}"), "not dockerd"),
            (format!("{HEAD}[]"), "without Docker's own `host`"),
            (
                format!("{HEAD}[{{\"Name\":\"host\",\"Id\":\"h\"}}]"),
                "without Docker's own `none`",
            ),
            (
                format!(
                    "HTTP/1.0 200 OK\r\nServer: Docker/28\r\nContent-Length: 999\r\n\r\n{whole}"
                ),
                "cut short",
            ),
        ] {
            let err = parse(answer.as_bytes()).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn an_answer_is_complete_at_its_content_length() {
        let head = "HTTP/1.1 200 OK\r\nServer: Docker/28\r\nContent-Length: 4\r\n\r\n";
        assert!(!complete(head.as_bytes()));
        assert!(!complete(format!("{head}[]").as_bytes()));
        assert!(complete(format!("{head}[  ]").as_bytes()));
        assert!(
            !complete(b"HTTP/1.0 200 OK\r\n\r\n[]"),
            "no length: up to the close"
        );
    }
}
