//! `netfast doctor [--json] [--fix]`: a line per check — PASS, WARN or FAIL — with what was
//! found and the exact fix; `--fix` applies the safe fixes, then checks again.

use std::fs;

use netfast::{
    doctor::{self, Check, Status},
    host::Host,
    loader::{Loader, model::State, state::STATE_FILE},
};

pub fn run(json: bool, fix: bool) -> anyhow::Result<()> {
    let state = read_state();
    let mut checks = doctor::diagnose(state.as_ref());
    let mut applied = Vec::new();
    if fix {
        applied = doctor::fix(&checks);
        if !applied.is_empty() {
            checks = doctor::diagnose(state.as_ref());
            doctor::record(&mut checks, &applied);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print_text(&checks);
        if fix && applied.is_empty() {
            println!(
                "--fix: nothing here that netfast fixes by itself; the fixes above are for you"
            );
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!("doctor: {failed} check(s) FAIL");
    }
    Ok(())
}

/// netfast's state in this host namespace, to compare rules with; `None` when there is none.
/// Never creates the state directory (doctor changes nothing).
fn read_state() -> Option<State> {
    let host = match Host::current() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("netfast: doctor: {}", netfast::error::report(&e));
            return None;
        }
    };
    let path = host.state_dir().join(STATE_FILE);
    if !path.exists() {
        return None;
    }
    if let Ok(state) = Loader::new().and_then(|l| l.state()) {
        return Some(state);
    }
    // Without root the lock cannot be taken; the file is replaced atomically, so a read
    // without it still sees a whole state.
    let read = fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<State>(&b).map_err(|e| e.to_string()));
    match read {
        Ok(state) => Some(state),
        Err(e) => {
            eprintln!(
                "netfast: doctor: could not read {} ({e}); NAT rules are not compared with \
                 netfast's networks",
                path.display()
            );
            None
        }
    }
}

fn print_text(checks: &[Check]) {
    let width = checks.iter().map(|c| c.area.len()).max().unwrap_or(0);
    let indent = " ".repeat(4 + 2 + width + 2);
    for c in checks {
        println!("{}  {:<width$}  {}: {}", c.status, c.area, c.name, c.found);
        if c.status != Status::Pass
            && let Some(fix) = &c.fix
        {
            println!("{indent}fix: {fix}");
        }
        if let Some(fixed) = &c.fixed {
            println!("{indent}fixed: {fixed}");
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    println!(
        "{} checks: {} PASS, {} WARN, {} FAIL",
        checks.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    );
}
