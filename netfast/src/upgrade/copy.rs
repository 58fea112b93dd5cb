//! Copying one map's entries into a new layout, while the programs may still write them.

use std::{
    collections::HashMap,
    hash::{Hash as _, Hasher as _},
    os::fd::AsFd as _,
};

use aya::maps::MapData;

use super::{io, layout_of, migrate};
use crate::{
    bpf_sys,
    error::{Error, Result},
};

/// Copying one map's entries into its new layout, twice: before the programs change, and
/// after (what the old programs wrote meanwhile).
pub(super) struct Copy {
    name: &'static str,
    chain: Vec<migrate::Convert>,
    key_size: usize,
    value_size: usize,
    /// What the first pass wrote for each key (a hash of the converted value).
    first: HashMap<Vec<u8>, u64>,
    freshness: Option<fn(&[u8]) -> u64>,
    new_value_size: usize,
    pub(super) copied: u64,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Copy {
    pub(super) fn new(
        name: &'static str,
        old: &MapData,
        new: &MapData,
        chain: Vec<migrate::Convert>,
    ) -> Result<Self> {
        let o = old.info().map_err(|e| Error::map(name, e))?;
        let n = new.info().map_err(|e| Error::map(name, e))?;
        let per_cpu = |t: u32| matches!(t, 5 | 6 | 10); // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU
        if per_cpu(layout_of(&o).map_type) || per_cpu(layout_of(&n).map_type) {
            return Err(Error::Settings(format!(
                "map {name}: migrating a per-CPU map is not supported (a defect of this build)"
            )));
        }
        Ok(Copy {
            name,
            chain,
            key_size: o.key_size() as usize,
            value_size: o.value_size() as usize,
            first: HashMap::new(),
            freshness: migrate::freshness(name),
            new_value_size: n.value_size() as usize,
            copied: 0,
        })
    }

    fn err(&self, what: &str) -> impl FnOnce(std::io::Error) -> Error {
        io(format!("{what} map {} during the upgrade", self.name))
    }

    /// Copies every entry of `old` into `new`. The first pass (`second == false`) keeps an
    /// entry the new map has unless the old one is fresher; the second copies only what
    /// changed in `old` since the first.
    pub(super) fn pass(&mut self, old: &MapData, new: &MapData, second: bool) -> Result<()> {
        let (old_fd, new_fd) = (old.fd().as_fd(), new.fd().as_fd());
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut value = vec![0u8; self.value_size];
        let mut current = vec![0u8; self.new_value_size];
        let mut first_key = true;
        loop {
            let more = bpf_sys::map_next_key(old_fd, (!first_key).then_some(&key[..]), &mut next)
                .map_err(self.err("walking the old"))?;
            if !more {
                break;
            }
            first_key = false;
            std::mem::swap(&mut key, &mut next);
            if !bpf_sys::map_lookup(old_fd, &key, &mut value)
                .map_err(self.err("reading the old"))?
            {
                continue; // gone meanwhile
            }
            let Some((k, v)) = migrate::convert(&self.chain, &key, &value) else {
                continue;
            };
            let h = hash(&v);
            if second && self.first.get(&k) == Some(&h) {
                continue; // unchanged since the first pass
            }
            let present = bpf_sys::map_lookup(new_fd, &k, &mut current)
                .map_err(self.err("reading the new"))?;
            let write = !present || self.freshness.is_some_and(|f| f(&v) > f(&current));
            let flags = if present {
                bpf_sys::EXIST
            } else {
                bpf_sys::NOEXIST
            };
            let written = write
                && bpf_sys::map_update(new_fd, &k, &v, flags)
                    .map_err(self.err("writing the new"))?;
            if second {
                self.copied += u64::from(!present && written);
            } else {
                // Carried over, by this copy or by a killed attempt's.
                self.copied += u64::from(present || written);
                self.first.insert(k, h);
            }
        }
        Ok(())
    }
}
