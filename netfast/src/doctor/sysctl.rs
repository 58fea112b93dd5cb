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
    fn headroom() {
        assert_eq!(crowded(0, 262_144), None);
        assert_eq!(crowded(80, 100), None);
        assert_eq!(crowded(81, 100), Some(81));
        assert_eq!(crowded(100, 100), Some(100));
        assert_eq!(crowded(5, 0), None);
    }
}
