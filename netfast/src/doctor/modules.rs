//! The netfilter pieces the iptables/nftables fallback needs: built in, loaded, loadable or
//! missing. The eBPF dataplane needs none of them, so a missing piece is a WARN — unless the
//! eBPF dataplane cannot run and no fallback is left, then it is a FAIL.

use super::{
    Check, MODULES, Remedy,
    kernel::{Kernel, Module, Version},
};

/// Which fallback needs a piece.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fallback {
    Iptables,
    Nftables,
    Both,
}

impl Fallback {
    fn needs(self) -> &'static str {
        match self {
            Fallback::Iptables => "the iptables fallback needs it",
            Fallback::Nftables => "the nftables fallback needs it",
            Fallback::Both => "the iptables and nftables fallbacks need it",
        }
    }

    fn serves(self, other: Fallback) -> bool {
        self == Fallback::Both || self == other
    }
}

struct Piece {
    module: &'static str,
    /// The configuration symbol that builds it.
    symbol: &'static str,
    fallback: Fallback,
    /// Without it the fallback works, less well (what it loses): never a FAIL.
    optional: Option<&'static str>,
}

const PIECES: &[Piece] = &[
    Piece {
        module: "ip_tables",
        symbol: "CONFIG_IP_NF_IPTABLES",
        fallback: Fallback::Iptables,
        optional: None,
    },
    Piece {
        module: "iptable_nat",
        symbol: "CONFIG_IP_NF_NAT",
        fallback: Fallback::Iptables,
        optional: None,
    },
    Piece {
        module: "nf_conntrack",
        symbol: "CONFIG_NF_CONNTRACK",
        fallback: Fallback::Both,
        optional: None,
    },
    Piece {
        module: "nf_defrag_ipv4",
        symbol: "CONFIG_NF_DEFRAG_IPV4",
        fallback: Fallback::Both,
        optional: None,
    },
    Piece {
        module: "nf_nat",
        symbol: "CONFIG_NF_NAT",
        fallback: Fallback::Both,
        optional: None,
    },
    Piece {
        module: "nf_tables",
        symbol: "CONFIG_NF_TABLES",
        fallback: Fallback::Nftables,
        optional: None,
    },
    Piece {
        module: "nft_chain_nat",
        symbol: "CONFIG_NFT_NAT",
        fallback: Fallback::Nftables,
        optional: None,
    },
    Piece {
        module: "nft_ct",
        symbol: "CONFIG_NFT_CT",
        fallback: Fallback::Nftables,
        optional: None,
    },
    Piece {
        module: "iptable_raw",
        symbol: "CONFIG_IP_NF_RAW",
        fallback: Fallback::Iptables,
        optional: None,
    },
    Piece {
        module: "xt_CT",
        symbol: "CONFIG_NETFILTER_XT_TARGET_CT",
        fallback: Fallback::Iptables,
        optional: None,
    },
    Piece {
        module: "nfnetlink_cttimeout",
        symbol: "CONFIG_NF_CT_NETLINK_TIMEOUT",
        fallback: Fallback::Iptables,
        optional: Some(
            "without it the iptables fallback's flows keep the kernel's timeouts, not netfast's",
        ),
    },
];

/// The kernel in which nf_conntrack_ipv4 was merged into nf_conntrack.
const CONNTRACK_MERGED: Version = (4, 19, 0);

/// `ebpf_ok`: no eBPF check failed.
pub fn checks(kernel: &Kernel, ebpf_ok: bool) -> Vec<Check> {
    let states: Vec<Module> = PIECES
        .iter()
        .map(|p| kernel.module(p.module, p.symbol))
        .collect();
    let complete = |f: Fallback| {
        PIECES
            .iter()
            .zip(&states)
            .filter(|(p, _)| p.fallback.serves(f) && p.optional.is_none())
            // Unknown is not missing: escalate only on what is known.
            .all(|(_, s)| !matches!(s, Module::Missing(_)))
    };
    let fallback_left = complete(Fallback::Iptables) || complete(Fallback::Nftables);
    let mut out: Vec<Check> = PIECES
        .iter()
        .zip(states)
        .map(|(p, state)| piece(p, state, ebpf_ok || fallback_left))
        .collect();
    out.push(conntrack_ipv4(kernel, ebpf_ok || fallback_left));
    out
}

fn piece(p: &Piece, state: Module, tolerable: bool) -> Check {
    let name = p.module;
    match state {
        Module::BuiltIn(how) => Check::pass(MODULES, name, how),
        Module::Loaded => Check::pass(MODULES, name, "loaded"),
        Module::Available => Check::warn(
            MODULES,
            name,
            format!("not loaded; {}", p.fallback.needs()),
            format!(
                "modprobe {name}, and add `{name}` to /etc/modules-load.d/netfast.conf to load \
                 it at boot"
            ),
        )
        .remedy(Remedy::Modprobe(name.to_owned())),
        Module::Unknown(why) => Check::warn(
            MODULES,
            name,
            format!("{why}; {}", p.fallback.needs()),
            format!("modprobe {name}, and see whether it loads"),
        ),
        Module::Missing(why) => {
            let found = format!("{why}; {}", p.fallback.needs());
            let fix = format!(
                "a kernel with {} (=y or =m, and its modules installed under /lib/modules)",
                p.symbol
            );
            if let Some(loses) = p.optional {
                return Check::warn(MODULES, name, format!("{why}: {loses}"), fix);
            }
            if tolerable {
                Check::warn(
                    MODULES,
                    name,
                    format!("{found} (the eBPF dataplane does not)"),
                    fix,
                )
            } else {
                Check::fail(
                    MODULES,
                    name,
                    format!("{found}, and the eBPF dataplane cannot run here"),
                    fix,
                )
            }
        }
    }
}

fn conntrack_ipv4(kernel: &Kernel, tolerable: bool) -> Check {
    let name = "nf_conntrack_ipv4";
    match kernel.at_least(CONNTRACK_MERGED) {
        Some(true) => Check::pass(
            MODULES,
            name,
            format!(
                "merged into nf_conntrack since Linux 4.19 (this kernel: {})",
                kernel.release
            ),
        ),
        Some(false) => piece(
            &Piece {
                module: name,
                symbol: "CONFIG_NF_CONNTRACK_IPV4",
                fallback: Fallback::Both,
                optional: None,
            },
            kernel.module(name, "CONFIG_NF_CONNTRACK_IPV4"),
            tolerable,
        ),
        None => Check::warn(
            MODULES,
            name,
            format!(
                "unknown: the kernel release `{}` has no version (merged into nf_conntrack \
                 since Linux 4.19)",
                kernel.release
            ),
            "check `uname -r`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::doctor::{Status, kernel::parse_config};

    #[test]
    fn an_optional_piece_missing_is_a_warn_that_leaves_the_fallback_complete() {
        let mut config = String::from("CONFIG_MODULES=y\n");
        for p in PIECES.iter().filter(|p| p.optional.is_none()) {
            config.push_str(&format!("{}=y\n", p.symbol));
        }
        let kernel = Kernel {
            release: "6.18.0-test".into(),
            version: Some((6, 18, 0)),
            config: Some(parse_config(&config)),
            config_source: None,
            modules_dir: None,
            builtin: HashSet::new(),
            on_disk: HashSet::new(),
            loaded: Some(HashSet::new()),
        };
        // Even where eBPF cannot run: the fallbacks are complete without the optional piece.
        let checks = checks(&kernel, false);
        assert!(
            checks.iter().all(|c| c.status != Status::Fail),
            "{checks:?}"
        );
        let c = checks
            .iter()
            .find(|c| c.name == "nfnetlink_cttimeout")
            .expect("listed");
        // (Unless this machine has it loaded: /sys/module is read too.)
        if c.status == Status::Warn {
            assert!(
                c.found.contains("keep the kernel's timeouts"),
                "{}",
                c.found
            );
        }
        for name in ["iptable_raw", "xt_CT", "nft_ct"] {
            let c = checks.iter().find(|c| c.name == name).expect("listed");
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
    }
}
