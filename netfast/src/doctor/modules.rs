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
}

const PIECES: &[Piece] = &[
    Piece {
        module: "ip_tables",
        symbol: "CONFIG_IP_NF_IPTABLES",
        fallback: Fallback::Iptables,
    },
    Piece {
        module: "iptable_nat",
        symbol: "CONFIG_IP_NF_NAT",
        fallback: Fallback::Iptables,
    },
    Piece {
        module: "nf_conntrack",
        symbol: "CONFIG_NF_CONNTRACK",
        fallback: Fallback::Both,
    },
    Piece {
        module: "nf_defrag_ipv4",
        symbol: "CONFIG_NF_DEFRAG_IPV4",
        fallback: Fallback::Both,
    },
    Piece {
        module: "nf_nat",
        symbol: "CONFIG_NF_NAT",
        fallback: Fallback::Both,
    },
    Piece {
        module: "nf_tables",
        symbol: "CONFIG_NF_TABLES",
        fallback: Fallback::Nftables,
    },
    Piece {
        module: "nft_chain_nat",
        symbol: "CONFIG_NFT_NAT",
        fallback: Fallback::Nftables,
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
            .filter(|(p, _)| p.fallback.serves(f))
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
