//! `netfast upgrade`: this binary's programs in place of the running ones, flows kept.

use netfast::{
    host::Host,
    loader::{caps, state::Locked},
    upgrade::{self, MapPlan},
};

pub fn run(check: bool, json: bool) -> anyhow::Result<()> {
    let host = Host::current()?;
    caps::require("upgrade", true)?;
    // Exclusive: no other command changes the dataplane while its programs and maps move.
    let _locked = Locked::acquire(&host, true)?;
    let report = upgrade::upgrade(&host, check)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.current && report.maps.is_empty() {
        println!(
            "{} already runs this netfast's programs: {}",
            host.describe(),
            report.to
        );
        return Ok(());
    }
    if report.current {
        let verb = if check { "would finish" } else { "finished" };
        println!("{verb} an upgrade to {} that was interrupted:", report.to);
    } else if check {
        println!(
            "would upgrade {} from {} to {}:",
            host.describe(),
            report.from,
            report.to
        );
    } else {
        println!(
            "upgraded {} from {} to {}:",
            host.describe(),
            report.from,
            report.to
        );
    }
    if !report.current {
        let verb = if check { "would replace" } else { "replaced" };
        println!(
            "  programs: {verb} on {} link(s), atomically (BPF_LINK_UPDATE)",
            report.links
        );
    }
    for m in &report.maps {
        let what = match (&m.plan, check || report.current) {
            (MapPlan::Keep, _) => continue,
            (MapPlan::Migrate, true) => "migrated to the new layout".to_owned(),
            (MapPlan::Migrate, false) => {
                format!(
                    "migrated to the new layout, {} entries carried over",
                    m.entries
                )
            }
            (MapPlan::Create, _) => "new in this version, starts empty".to_owned(),
            (MapPlan::Remove, _) => "not in this version, removed".to_owned(),
        };
        println!("  map {}: {what}", m.map);
    }
    let kept = report
        .maps
        .iter()
        .filter(|m| m.plan == MapPlan::Keep)
        .count();
    if !report.current {
        println!("  {kept} map(s) kept as they are");
    }
    Ok(())
}
