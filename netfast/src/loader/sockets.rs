//! Who listens on a port of the host: `/proc/net/{tcp,udp}` of this namespace, and the
//! processes whose file descriptors hold those sockets.

use std::{collections::HashMap, fs};

use super::publish::{Ports, Proto};

/// A socket of the host bound to a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub inode: u64,
    /// `comm (pid)` of each process holding it.
    pub owners: Vec<String>,
}

/// Parses `/proc/net/tcp` or `/proc/net/udp`: (port, inode) of sockets in the listening
/// state (TCP) or bound at all (UDP).
pub fn parse_proc_net(text: &str, proto: Proto) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.split(':').nth(1)?, 16).ok()?;
            let state = f.get(3)?;
            let inode = f.get(9)?.parse().ok()?;
            // TCP_LISTEN is 0A; any bound UDP socket receives on its port.
            (proto == Proto::Udp || *state == "0A").then_some((port, inode))
        })
        .collect()
}

/// Sockets of this namespace on any port of `ports`, with the processes that hold them.
pub fn listeners(proto: Proto, ports: Ports) -> Vec<Listener> {
    let path = match proto {
        Proto::Tcp => "/proc/net/tcp",
        Proto::Udp => "/proc/net/udp",
    };
    let bound: Vec<(u16, u64)> = fs::read_to_string(path)
        .map(|t| parse_proc_net(&t, proto))
        .unwrap_or_default()
        .into_iter()
        .filter(|(p, _)| (ports.first..=ports.last).contains(p))
        .collect();
    if bound.is_empty() {
        return Vec::new();
    }
    let mut owners: HashMap<u64, Vec<String>> = HashMap::new();
    for proc_dir in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(proc_dir.path().join("comm")).unwrap_or_default();
        for fd in fs::read_dir(proc_dir.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                && let Ok(inode) = inode.parse::<u64>()
                && bound.iter().any(|(_, i)| *i == inode)
            {
                owners
                    .entry(inode)
                    .or_default()
                    .push(format!("{} ({pid})", comm.trim()));
            }
        }
    }
    bound
        .into_iter()
        .map(|(port, inode)| Listener {
            port,
            inode,
            owners: owners.remove(&inode).unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn listening_tcp_sockets_and_bound_udp_sockets() {
        assert_eq!(parse_proc_net(TCP, Proto::Tcp), vec![(8080, 31337)]);
        assert_eq!(
            parse_proc_net(TCP, Proto::Udp),
            vec![(8080, 31337), (22, 4242)]
        );
        assert!(parse_proc_net("header only\n", Proto::Tcp).is_empty());
    }
}
