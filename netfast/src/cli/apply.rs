//! `netfast apply -f FILE` and `netfast down`.

use std::path::PathBuf;

use anyhow::Context as _;
use netfast::loader::{Loader, plan::ApplyFile};

pub fn apply(file: PathBuf, out: super::Changes) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let desired = ApplyFile::parse(&text).with_context(|| file.display().to_string())?;
    out.print(&Loader::new()?.apply(&desired)?)
}

pub fn down(out: super::Changes) -> anyhow::Result<()> {
    out.print(&Loader::new()?.down()?)
}
