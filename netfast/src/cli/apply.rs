//! `netfast apply -f FILE` and `netfast down`.

use std::path::PathBuf;

use anyhow::Context as _;
use netfast::loader::{Loader, plan::ApplyFile};

pub fn apply(file: PathBuf, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let desired = ApplyFile::parse(&text).with_context(|| file.display().to_string())?;
    super::print_changes(&Loader::new()?.apply(&desired)?, json)
}

pub fn down(json: bool) -> anyhow::Result<()> {
    super::print_changes(&Loader::new()?.down()?, json)
}
