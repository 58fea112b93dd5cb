//! How each map layout version becomes the next: which maps changed, and how their entries
//! are carried over.
//!
//! Adding a layout (a pinned map changes type, key or value): bump
//! `netfast_common::upgrade::LAYOUT_VERSION`, add the new version's row to [`LAYOUTS`], and
//! add a [`Step`] from the previous version that names every map whose layout or meaning
//! changed, with a function that converts one entry. The tests below fail until the three
//! agree.

use netfast_common::maps as names;

/// Converts one entry of a map from the layout before a step to the layout after it;
/// `None` drops the entry (it has no meaning in the new layout).
pub(crate) type Convert = fn(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;

/// The maps whose layout or meaning changed from version `from` to `from + 1`.
pub(crate) struct Step {
    pub from: u32,
    pub maps: &'static [(&'static str, Convert)],
}

/// Every step, oldest first. Version 2 is the first with a version on its pins; version 1's
/// pins carry none and cannot be upgraded in place.
pub(crate) const STEPS: &[Step] = &[
    // 3 adds the monitor's maps (the drop ring, its per-CPU budget, drops per hook): new
    // maps start empty, and no map changed.
    Step { from: 2, maps: &[] },
    #[cfg(feature = "layout-next")]
    Step {
        from: 3,
        maps: &[
            (names::CONNTRACK, next::ct_entry),
            (names::CT_INBOUND, next::ct_entry),
        ],
    },
];

/// Every pinned map's (name, `bpf_map_type`, key bytes, value bytes) at one version.
pub(crate) type Layout = &'static [(&'static str, u32, u32, u32)];

/// The layout of every pinned map, by version: (name, `bpf_map_type`, key bytes, value
/// bytes). Sizes of entries (`max_entries`) are the host's setting, not the layout's.
pub(crate) const LAYOUTS: &[(u32, Layout)] = &[
    (2, V2),
    (3, V3),
    #[cfg(feature = "layout-next")]
    (4, next::V4),
];

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PERCPU_ARRAY: u32 = 6;
const LRU_HASH: u32 = 9;
const LPM_TRIE: u32 = 11;
const RINGBUF: u32 = 27;

const V2: Layout = &layout_with_conntrack_value(80);

/// Layout 2's maps, with `ct_value` bytes per conntrack entry.
const fn layout_with_conntrack_value(ct_value: u32) -> [(&'static str, u32, u32, u32); 19] {
    [
        (names::META, ARRAY, 4, 88),
        (names::STATS, PERCPU_ARRAY, 4, 16),
        (names::NET_STATS, PERCPU_ARRAY, 4, 16),
        (names::CONFIG, ARRAY, 4, 48),
        (names::NETWORKS, LPM_TRIE, 8, 16),
        (names::NET_BRIDGES, ARRAY, 4, 4),
        (names::CONNTRACK, LRU_HASH, 16, ct_value),
        (names::CT_INBOUND, LRU_HASH, 16, ct_value),
        (names::NAT_BINDINGS, LRU_HASH, 12, 8),
        (names::NAT_CLAIMS, LRU_HASH, 8, 16),
        (names::FRAGMENTS, LRU_HASH, 12, 16),
        (names::CT_EVENTS, RINGBUF, 0, 0),
        (names::PUBLISHED, HASH, 8, 12),
        (names::ALLOW, LPM_TRIE, 12, 1),
        (names::HOST_ADDRS, HASH, 4, 1),
        (names::HOST, ARRAY, 4, 8),
        (names::SOCK_REVNAT, LRU_HASH, 8, 16),
        (names::ENDPOINTS, HASH, 4, 20),
        (names::UPLINKS, HASH, 4, 1),
    ]
}

const V3: Layout = &layout_3(80);

/// Layout 3's maps: layout 2's and the monitor's three, with `ct_value` bytes per conntrack
/// entry (the test build's layout 4 differs in that alone).
const fn layout_3(ct_value: u32) -> [(&'static str, u32, u32, u32); 22] {
    let base = layout_with_conntrack_value(ct_value);
    let mut out = [("", 0, 0, 0); 22];
    let mut i = 0;
    while i < base.len() {
        out[i] = base[i];
        i += 1;
    }
    out[19] = (names::DROP_EVENTS, RINGBUF, 0, 0);
    out[20] = (names::MONITOR_BUDGET, PERCPU_ARRAY, 4, 16);
    out[21] = (names::HOOK_DROPS, PERCPU_ARRAY, 4, 16);
    out
}

/// The converters that carry `map` from layout `from` to layout `to`, oldest first (empty:
/// the map did not change).
pub(crate) fn chain(map: &str, from: u32, to: u32) -> Vec<Convert> {
    STEPS
        .iter()
        .filter(|s| s.from >= from && s.from < to)
        .filter_map(|s| s.maps.iter().find(|(n, _)| *n == map).map(|(_, f)| *f))
        .collect()
}

/// The (type, key bytes, value bytes) of `map` at layout `version`, when the table knows
/// them.
pub(crate) fn recorded(map: &str, version: u32) -> Option<(u32, u32, u32)> {
    let (_, rows) = LAYOUTS.iter().find(|(v, _)| *v == version)?;
    rows.iter().find(|r| r.0 == map).map(|r| (r.1, r.2, r.3))
}

/// Runs `entry` through `chain`.
pub(crate) fn convert(chain: &[Convert], key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (mut k, mut v) = (key.to_vec(), value.to_vec());
    for f in chain {
        (k, v) = f(&k, &v)?;
    }
    Some((k, v))
}

/// For maps where both the old and the new programs may have written an entry while an
/// upgrade ran, how fresh an entry (in the new layout) is: the larger wins. Others keep what
/// the new map has.
pub(crate) fn freshness(map: &str) -> Option<fn(&[u8]) -> u64> {
    match map {
        // `CtEntry::expires`, the first field in every layout so far: every packet moves it.
        names::CONNTRACK | names::CT_INBOUND => Some(|v: &[u8]| {
            v.get(..4).map_or(0, |b| {
                u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
        }),
        _ => None,
    }
}

/// The test build's next layout (feature `layout-next`): the conntrack entry grows by a
/// field, zero in migrated entries.
#[cfg(feature = "layout-next")]
mod next {
    use super::*;

    pub(super) fn ct_entry(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        if value.len() != 80 {
            return None;
        }
        let mut v = value.to_vec();
        v.extend_from_slice(&0u64.to_ne_bytes());
        Some((key.to_vec(), v))
    }

    pub(super) const V4: Layout = &layout_3(88);
}

#[cfg(test)]
mod tests {
    use netfast_common::upgrade::LAYOUT_VERSION;

    use super::*;

    fn layout(version: u32) -> &'static [(&'static str, u32, u32, u32)] {
        LAYOUTS.iter().find(|(v, _)| *v == version).map_or_else(
            || panic!("no row for layout {version} in LAYOUTS"),
            |(_, l)| *l,
        )
    }

    #[test]
    fn the_layout_table_describes_the_embedded_object() {
        let object = crate::dataplane::object_layout().expect("the embedded object's maps");
        let table = layout(LAYOUT_VERSION);
        for (name, l) in &object {
            let row = table.iter().find(|r| r.0 == *name).unwrap_or_else(|| {
                panic!("map {name} is not in the layout {LAYOUT_VERSION} row of LAYOUTS")
            });
            assert_eq!(
                (row.1, row.2, row.3),
                (l.map_type, l.key_size, l.value_size),
                "map {name} has another layout than the table's row for layout \
                 {LAYOUT_VERSION} says (type, key, value): a map changed: bump LAYOUT_VERSION, \
                 add its row to LAYOUTS and a Step that migrates the maps that changed"
            );
        }
        assert_eq!(
            object.len(),
            table.len(),
            "the table lists a map the object lacks"
        );
    }

    #[test]
    fn every_changed_map_has_a_migration() {
        for pair in LAYOUTS.windows(2) {
            let ((from, old), (to, new)) = (pair[0], pair[1]);
            assert_eq!(to, from + 1, "layout versions go one by one");
            for (name, t, k, v) in new {
                let Some(before) = old.iter().find(|r| r.0 == *name) else {
                    continue; // a new map starts empty
                };
                if (before.1, before.2, before.3) != (*t, *k, *v) {
                    assert!(
                        !chain(name, from, to).is_empty(),
                        "map {name} changed from layout {from} to {to} without a Step"
                    );
                }
            }
        }
    }

    #[test]
    fn a_chain_takes_the_steps_between_two_versions() {
        assert!(chain(names::CONNTRACK, LAYOUT_VERSION, LAYOUT_VERSION).is_empty());
        assert!(chain(names::STATS, 2, LAYOUT_VERSION).is_empty());
        // Layout 3 only added maps.
        assert!(chain(names::CONNTRACK, 2, 3).is_empty());
        #[cfg(feature = "layout-next")]
        {
            let c = chain(names::CONNTRACK, 3, 4);
            assert_eq!(c.len(), 1);
            let (k, v) = convert(&c, &[1; 16], &[7; 80]).expect("converted");
            assert_eq!((k.len(), v.len()), (16, 88));
            assert_eq!(&v[..80], &[7; 80][..]);
            assert_eq!(&v[80..], &[0; 8][..]);
        }
    }

    #[test]
    fn conntrack_freshness_is_the_expiry() {
        let f = freshness(names::CONNTRACK).expect("conntrack merges by freshness");
        let mut v = vec![0u8; 80];
        v[..4].copy_from_slice(&1234u32.to_ne_bytes());
        assert_eq!(f(&v), 1234);
        assert!(freshness(names::NAT_CLAIMS).is_none());
    }
}
