//! The nftables backend's table, `ip netfast`: replaced whole from the state in one
//! transaction ([`render_nft`]), its counters carried over and read back.

use crate::{
    error::Result,
    netfilter::{self, Counts, ToolError, nft_ruleset, render_nft, rules::Rules},
};

/// Why nftables cannot be used here, if it cannot.
pub(super) fn unusable() -> Option<ToolError> {
    netfilter::run(&["nft", "list", "tables"]).err()
}

pub(super) fn exists() -> bool {
    table_exists().unwrap_or(false)
}

/// Whether table `ip netfast` exists: false where nft says there is no such table (or nft is
/// not installed), an error when nft fails otherwise (killed, say): a failed look is never
/// taken for an absent table, which would leave the table behind.
pub(super) fn table_exists() -> Result<bool> {
    match netfilter::run(&["nft", "list", "table", "ip", "netfast"]) {
        Ok(_) => Ok(true),
        Err(ToolError::Start { .. }) => Ok(false),
        Err(e) if e.says("No such file or directory") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn sync(rules: &Rules) -> Result<()> {
    if rules.is_empty() && !table_exists()? {
        return Ok(());
    }
    let counts = if rules.is_empty() {
        Counts::new()
    } else {
        counters()?
    };
    let batch = render_nft::nft_batch(rules, &counts, true).to_json();
    netfilter::run_with_input(&["nft", "-j", "-f", "-"], &batch)?;
    if rules.is_empty() {
        return Ok(());
    }
    // The timeout policies, in a second transaction (nft's JSON drops their policy): new
    // flows of the few milliseconds between the two get the kernel's timeouts. A kernel
    // without conntrack timeout policies refuses them: the rest works without.
    if let Err(e) = netfilter::run_with_input(
        &["nft", "-f", "-"],
        &render_nft::nft_timeouts_text(&rules.timeouts),
    ) {
        log::warn!(
            "nftables refused conntrack timeout policies ({}): flows of the \
             nftables backend's networks keep the kernel's timeouts \
             (net.netfilter.nf_conntrack_*_timeout)",
            crate::error::report(&e)
        );
    }
    Ok(())
}

/// The drop counters of table `ip netfast` (none when it does not exist).
pub(super) fn counters() -> Result<Counts> {
    if !table_exists()? {
        return Ok(Counts::new());
    }
    let json = netfilter::run(&["nft", "-j", "list", "counters", "table", "ip", "netfast"])?;
    let counters = nft_ruleset::parse_counters(&json).map_err(|e| {
        crate::error::Error::Settings(format!("reading `nft -j list counters`: {e}"))
    })?;
    Ok(counters
        .into_iter()
        .map(|c| (c.name, (c.packets, c.bytes)))
        .collect())
}
