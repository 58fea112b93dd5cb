//! `netfast apply -f FILE` and `netfast down`.

use std::path::PathBuf;

use anyhow::Context as _;
use netfast::loader::{Loader, plan::ApplyFile};

pub fn apply(file: PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let desired = ApplyFile::parse(&text).with_context(|| file.display().to_string())?;
    super::print_lines(Loader::new()?.apply(&desired)?);
    Ok(())
}

pub fn down() -> anyhow::Result<()> {
    super::print_lines(Loader::new()?.down()?);
    Ok(())
}
