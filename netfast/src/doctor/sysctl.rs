//! Settings under /proc/sys of the host namespace: forwarding, and the conntrack table's
//! headroom.

use std::{fs, io};

use super::{Check, FORWARDING, NETFILTER, Remedy};

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
const IPV6_FORWARDING: &str = "net.ipv6.conf.all.forwarding";
const CONNTRACK_COUNT: &str = "net.netfilter.nf_conntrack_count";
pub const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";
/// Above this share of nf_conntrack_max in use, new flows are close to being dropped.
const CONNTRACK_WARN_PERCENT: u64 = 80;

/// `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`.
pub fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// A sysctl of the calling thread's network namespace.
pub fn read(key: &str) -> io::Result<String> {
    fs::read_to_string(path(key)).map(|s| s.trim().to_owned())
}

pub fn write(key: &str, value: &str) -> io::Result<()> {
    fs::write(path(key), value)
}

pub fn forwarding() -> Vec<Check> {
    vec![ip_forward(), ipv6_forwarding()]
}

/// `route_localnet` of every interface here (`all` included, `default` not): (name, on).
fn route_localnet_settings() -> io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/sys/net/ipv4/conf")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name == "default" || name == "lo" {
            continue;
        }
        let on = fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"))
            .is_ok_and(|v| v.trim() == "1");
        out.push((name, on));
    }
    out.sort();
    Ok(out)
}

/// Interfaces whose `route_localnet` lets their neighbours reach services bound to 127.0.0.1
/// here (CVE-2020-8558). `guarded`: the bridges netfast's fallback rules guard.
pub fn route_localnet(guarded: &[String]) -> Check {
    let name = "route_localnet";
    let settings = match route_localnet_settings() {
        Ok(s) => s,
        Err(e) => return unreadable(FORWARDING, "net.ipv4.conf.*.route_localnet", &e),
    };
    route_localnet_check(&settings, guarded)
        .unwrap_or_else(|| Check::pass(FORWARDING, name, "off on every interface"))
}

fn route_localnet_check(settings: &[(String, bool)], guarded: &[String]) -> Option<Check> {
    let name = "route_localnet";
    let on: Vec<&str> = settings
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.as_str())
        .collect();
    if on.is_empty() {
        return None;
    }
    let exposed: Vec<&str> = on
        .iter()
        .copied()
        .filter(|n| !guarded.iter().any(|g| g == n))
        .collect();
    if exposed.is_empty() {
        return Some(Check::pass(
            FORWARDING,
            name,
            format!(
                "on for {} only, where netfast's rules drop what comes in for 127.0.0.0/8 \
                 (to_host_loopback)",
                on.join(", ")
            ),
        ));
    }
    let shown: Vec<String> = exposed
        .iter()
        .map(|n| {
            if *n == "all" {
                "all (so every interface)".to_owned()
            } else {
                (*n).to_owned()
            }
        })
        .collect();
    let off: Vec<String> = exposed
        .iter()
        .map(|n| format!("sysctl -w net.ipv4.conf.{n}.route_localnet=0"))
        .collect();
    let drop: Vec<String> = exposed
        .iter()
        .filter(|n| **n != "all")
        .map(|n| {
            format!(
                "iptables -I INPUT -i {n} -d 127.0.0.0/8 -m conntrack ! --ctstate \
                 RELATED,ESTABLISHED -j DROP"
            )
        })
        .collect();
    let mut fix = off.join("; ");
    if !drop.is_empty() {
        fix.push_str(&format!(
            ", or keep it and drop what comes in for 127.0.0.0/8: {}",
            drop.join("; ")
        ));
    }
    Some(Check::warn(
        FORWARDING,
        name,
        format!(
            "on for {}: whatever is on those links can reach the services this host binds to \
             127.0.0.1 (CVE-2020-8558), unless a rule drops its packets to 127.0.0.0/8",
            shown.join(", ")
        ),
        fix,
    ))
}

fn unreadable(area: &'static str, key: &str, e: &io::Error) -> Check {
    Check::warn(
        area,
        key,
        format!("could not read {}: {e}", path(key)),
        "run netfast doctor as root, with /proc mounted",
    )
}

fn ip_forward() -> Check {
    match read(IP_FORWARD).as_deref() {
        Ok("1") => Check::pass(FORWARDING, IP_FORWARD, "1"),
        Ok(v) => Check::fail(
            FORWARDING,
            IP_FORWARD,
            format!(
                "{v}: this namespace forwards nothing, so neither the fast path (its route \
                 lookups fail) nor the kernel's path carries containers' traffic"
            ),
            format!(
                "sysctl -w {IP_FORWARD}=1, and `{IP_FORWARD} = 1` in \
                 /etc/sysctl.d/90-netfast.conf to keep it"
            ),
        )
        .remedy(Remedy::Sysctl {
            key: IP_FORWARD.into(),
            value: "1".into(),
        }),
        Err(e) => unreadable(FORWARDING, IP_FORWARD, e),
    }
}

fn ipv6_forwarding() -> Check {
    match read(IPV6_FORWARDING).as_deref() {
        Ok("1") => Check::pass(FORWARDING, IPV6_FORWARDING, "1"),
        Ok(v) => Check::warn(
            FORWARDING,
            IPV6_FORWARDING,
            format!(
                "{v}: containers get no IPv6 through this host; netfast is IPv4-only today, \
                 so its networks do not need it"
            ),
            format!(
                "only for IPv6 through this host: sysctl -w {IPV6_FORWARDING}=1 (not applied by \
                 --fix: forwarding makes the host ignore router advertisements unless \
                 accept_ra=2, which can cut its own IPv6)"
            ),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::pass(
            FORWARDING,
            IPV6_FORWARDING,
            "IPv6 is disabled here; netfast is IPv4-only today",
        ),
        Err(e) => unreadable(FORWARDING, IPV6_FORWARDING, e),
    }
}

/// `count` of `max` in use: `None` when below the warning mark, else the percentage.
pub fn crowded(count: u64, max: u64) -> Option<u64> {
    if max == 0 {
        return None;
    }
    let percent = count.saturating_mul(100) / max;
    (percent > CONNTRACK_WARN_PERCENT).then_some(percent)
}

pub fn conntrack_headroom() -> Check {
    let name = "conntrack table";
    let (count, max) = match (read(CONNTRACK_COUNT), read(CONNTRACK_MAX)) {
        (Ok(c), Ok(m)) => (c, m),
        (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Check::pass(
                NETFILTER,
                name,
                "not applicable: nf_conntrack is not loaded, so there is no table to fill",
            );
        }
        (Err(e), _) | (_, Err(e)) => return unreadable(NETFILTER, CONNTRACK_COUNT, &e),
    };
    let (Ok(count), Ok(max)) = (count.parse::<u64>(), max.parse::<u64>()) else {
        return Check::warn(
            NETFILTER,
            name,
            format!("unreadable figures: {CONNTRACK_COUNT}={count}, {CONNTRACK_MAX}={max}"),
            "none known",
        );
    };
    match crowded(count, max) {
        None => Check::pass(
            NETFILTER,
            name,
            format!(
                "{count} of {max} entries in use ({}%)",
                count * 100 / max.max(1)
            ),
        ),
        Some(percent) => {
            let bigger = (max * 2).to_string();
            Check::warn(
                NETFILTER,
                name,
                format!(
                    "{count} of {max} entries in use ({percent}%): when it is full the kernel \
                     drops new flows (\"nf_conntrack: table full, dropping packet\")"
                ),
                format!(
                    "sysctl -w {CONNTRACK_MAX}={bigger}, and `{CONNTRACK_MAX} = {bigger}` in \
                     /etc/sysctl.d/90-netfast.conf to keep it"
                ),
            )
            .remedy(Remedy::Sysctl {
                key: CONNTRACK_MAX.into(),
                value: bigger,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path(IP_FORWARD), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            path("net.ipv6.conf.all.forwarding"),
            "/proc/sys/net/ipv6/conf/all/forwarding"
        );
    }

    #[test]
    fn route_localnet_is_named_where_nothing_guards_it() {
        let s = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(n, on)| ((*n).to_owned(), *on)).collect()
        };
        assert!(route_localnet_check(&s(&[("all", false), ("eth0", false)]), &[]).is_none());
        let guarded = vec!["nf-web".to_owned()];
        let pass = route_localnet_check(&s(&[("all", false), ("nf-web", true)]), &guarded).unwrap();
        assert_eq!(pass.status, super::super::Status::Pass);
        assert!(
            pass.found.starts_with("on for nf-web only"),
            "{}",
            pass.found
        );
        let warn = route_localnet_check(
            &s(&[("all", false), ("docker0", true), ("nf-web", true)]),
            &guarded,
        )
        .unwrap();
        assert_eq!(warn.status, super::super::Status::Warn);
        assert!(warn.found.starts_with("on for docker0: "), "{}", warn.found);
        assert_eq!(
            warn.fix.as_deref(),
            Some(
                "sysctl -w net.ipv4.conf.docker0.route_localnet=0, or keep it and drop what \
                 comes in for 127.0.0.0/8: iptables -I INPUT -i docker0 -d 127.0.0.0/8 -m \
                 conntrack ! --ctstate RELATED,ESTABLISHED -j DROP"
            )
        );
        let all = route_localnet_check(&s(&[("all", true)]), &guarded).unwrap();
        assert!(
            all.found.starts_with("on for all (so every interface)"),
            "{}",
            all.found
        );
        assert_eq!(
            all.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.all.route_localnet=0")
        );
    }

    #[test]
    fn headroom() {
        assert_eq!(crowded(0, 262_144), None);
        assert_eq!(crowded(80, 100), None);
        assert_eq!(crowded(81, 100), Some(81));
        assert_eq!(crowded(100, 100), Some(100));
        assert_eq!(crowded(5, 0), None);
    }
}
