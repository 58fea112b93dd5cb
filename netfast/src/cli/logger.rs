//! Where the library's log records go: stderr, a line each, named after the part of netfast
//! that wrote it (`netfast: …`, `netfast agent: …`, `netfast docker-plugin: …`), in the words
//! the library gives. Records of other crates (aya's) are not shown.
//!
//! The level is `info` (warnings and notes of what a command did besides its own output);
//! `-v` adds `debug`, `-vv` `trace`; `NETFAST_LOG=off|error|warn|info|debug|trace` sets it
//! when no `-v` is given.

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
            && (m.target() == "netfast" || m.target().starts_with("netfast::"))
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let name = if target.starts_with("netfast::agent") {
            "netfast agent"
        } else if target.starts_with("netfast::docker") {
            "netfast docker-plugin"
        } else {
            "netfast"
        };
        eprintln!("{name}: {}", record.args());
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// The level `-v` given `verbose` times asks for, else `NETFAST_LOG`'s, else `info`.
fn level(verbose: u8, env: Option<&str>) -> Result<LevelFilter, String> {
    match (verbose, env) {
        (0, None) => Ok(LevelFilter::Info),
        (0, Some(v)) => v.parse().map_err(|_| {
            format!("NETFAST_LOG={v} is not a level; use off, error, warn, info, debug or trace")
        }),
        (1, _) => Ok(LevelFilter::Debug),
        _ => Ok(LevelFilter::Trace),
    }
}

/// Installs the logger, once, before the command runs.
pub fn init(verbose: u8) -> anyhow::Result<()> {
    let env = std::env::var("NETFAST_LOG").ok();
    let level = level(verbose, env.as_deref()).map_err(anyhow::Error::msg)?;
    log::set_logger(&LOGGER).map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_wins_over_the_environment_and_a_bad_level_is_named() {
        assert_eq!(level(0, None), Ok(LevelFilter::Info));
        assert_eq!(level(0, Some("warn")), Ok(LevelFilter::Warn));
        assert_eq!(level(1, Some("warn")), Ok(LevelFilter::Debug));
        assert_eq!(level(2, None), Ok(LevelFilter::Trace));
        assert!(
            level(0, Some("loud"))
                .unwrap_err()
                .contains("NETFAST_LOG=loud")
        );
    }
}
