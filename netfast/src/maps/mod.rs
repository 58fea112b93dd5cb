//! Typed access to the dataplane's maps, shared by the loader and the packet-test harness so
//! that tests provision the programs exactly the way production does.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key},
};
use netfast_common::{
    config::{DpConfig, NetInfo},
    conntrack::{CtEntry, CtKey},
    maps,
    publish::{AllowKey, PubKey, PubTarget},
};

use crate::error::{Error, Result};

mod conntrack;

pub use conntrack::*;

/// CLOCK_MONOTONIC seconds: the clock of every `expires` field (bpf_ktime_get_ns).
pub fn monotonic_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u32
}

/// An address as the maps hold it (network byte order in a u32).
pub fn raw_addr(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub fn addr_of(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name).ok_or(Error::MissingMap(name))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or(Error::MissingMap(name))
}

/// Writes the settings, with the programs' clock calibrated (see [`crate::clock`]).
pub fn write_config(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<()> {
    let cfg = &crate::clock::calibrated(ebpf, cfg)?;
    write_config_uncalibrated(ebpf, cfg)
}

/// Writes the settings as they are: with `clock_hz` 0 the programs read the clock helper.
/// For tests of that path; everything else calls [`write_config`].
pub fn write_config_uncalibrated(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<()> {
    let mut array: Array<&mut MapData, DpConfig> =
        Array::try_from(map_mut(ebpf, maps::CONFIG)?).map_err(|e| Error::map(maps::CONFIG, e))?;
    array
        .set(0, cfg, 0)
        .map_err(|e| Error::map(maps::CONFIG, e))
}

pub fn read_config(ebpf: &Ebpf) -> Result<DpConfig> {
    let array: Array<&MapData, DpConfig> =
        Array::try_from(map(ebpf, maps::CONFIG)?).map_err(|e| Error::map(maps::CONFIG, e))?;
    array.get(&0, 0).map_err(|e| Error::map(maps::CONFIG, e))
}

/// Makes `subnet/prefix` a network of the dataplane.
pub fn set_network(ebpf: &mut Ebpf, subnet: Ipv4Addr, prefix: u8, info: &NetInfo) -> Result<()> {
    set_net_bridge(ebpf, info.id, info.bridge_ifindex)?;
    let mut trie: LpmTrie<&mut MapData, u32, NetInfo> =
        LpmTrie::try_from(map_mut(ebpf, maps::NETWORKS)?)
            .map_err(|e| Error::map(maps::NETWORKS, e))?;
    trie.insert(&Key::new(u32::from(prefix), raw_addr(subnet)), info, 0)
        .map_err(|e| Error::map(maps::NETWORKS, e))
}

fn set_net_bridge(ebpf: &mut Ebpf, id: u16, ifindex: u32) -> Result<()> {
    let mut array: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps::NET_BRIDGES)?)
        .map_err(|e| Error::map(maps::NET_BRIDGES, e))?;
    array
        .set(u32::from(id), ifindex, 0)
        .map_err(|e| Error::map(maps::NET_BRIDGES, e))
}

pub fn remove_network(ebpf: &mut Ebpf, subnet: Ipv4Addr, prefix: u8) -> Result<()> {
    let key = Key::new(u32::from(prefix), raw_addr(subnet));
    let mut trie: LpmTrie<&mut MapData, u32, NetInfo> =
        LpmTrie::try_from(map_mut(ebpf, maps::NETWORKS)?)
            .map_err(|e| Error::map(maps::NETWORKS, e))?;
    let id = trie.get(&key, 0).ok().map(|info| info.id);
    match trie.remove(&key) {
        Ok(()) => {}
        Err(ref e) if absent(e) => {}
        Err(e) => return Err(Error::map(maps::NETWORKS, e)),
    }
    match id {
        Some(id) => set_net_bridge(ebpf, id, 0),
        None => Ok(()),
    }
}

fn entries<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>> {
    let hm: BpfHashMap<&MapData, K, V> =
        BpfHashMap::try_from(map(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    let mut out = Vec::new();
    for item in &hm {
        match item {
            Ok(kv) => out.push(kv),
            // An entry evicted or deleted while we walk: skip it.
            Err(ref e) if absent(e) => {}
            Err(e) => return Err(Error::map(name, e)),
        }
    }
    Ok(out)
}

fn remove_key<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    match hm.remove(key) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(name, e)),
    }
}

/// Writes `key` → `value` into the hash map `name`, replacing what was there.
pub(crate) fn insert_key<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
    value: &V,
) -> Result<()> {
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    hm.insert(key, value, 0).map_err(|e| Error::map(name, e))
}

/// Publishes `key` (one host port) to `target`.
pub fn publish(ebpf: &mut Ebpf, key: &PubKey, target: &PubTarget) -> Result<()> {
    insert_key(ebpf, maps::PUBLISHED, key, target)
}

pub fn unpublish(ebpf: &mut Ebpf, key: &PubKey) -> Result<()> {
    remove_key::<PubKey, PubTarget>(ebpf, maps::PUBLISHED, key)
}

pub fn published(ebpf: &Ebpf) -> Result<Vec<(PubKey, PubTarget)>> {
    entries(ebpf, maps::PUBLISHED)
}

fn allow_key(rule: u32, net: ipnet::Ipv4Net) -> Key<AllowKey> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        AllowKey {
            rule: rule.to_be(),
            addr: raw_addr(net.network()),
        },
    )
}

/// Lets clients in `net` use the publications of allow-list `rule`.
pub fn allow(ebpf: &mut Ebpf, rule: u32, net: ipnet::Ipv4Net) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, AllowKey, u8> =
        LpmTrie::try_from(map_mut(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    trie.insert(&allow_key(rule, net), 1, 0)
        .map_err(|e| Error::map(maps::ALLOW, e))
}

pub fn disallow(ebpf: &mut Ebpf, rule: u32, net: ipnet::Ipv4Net) -> Result<()> {
    let mut trie: LpmTrie<&mut MapData, AllowKey, u8> =
        LpmTrie::try_from(map_mut(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    match trie.remove(&allow_key(rule, net)) {
        Ok(()) => Ok(()),
        Err(ref e) if absent(e) => Ok(()),
        Err(e) => Err(Error::map(maps::ALLOW, e)),
    }
}

/// Every allow-list entry: its rule and client network.
pub fn allow_entries(ebpf: &Ebpf) -> Result<Vec<(u32, ipnet::Ipv4Net)>> {
    let trie: LpmTrie<&MapData, AllowKey, u8> =
        LpmTrie::try_from(map(ebpf, maps::ALLOW)?).map_err(|e| Error::map(maps::ALLOW, e))?;
    let mut out = Vec::new();
    for key in trie.keys() {
        let key = key.map_err(|e| Error::map(maps::ALLOW, e))?;
        let data = key.data();
        let addr = Ipv4Addr::from(u32::from_be(data.addr));
        let len = key.prefix_len().saturating_sub(32).min(32) as u8;
        if let Ok(net) = ipnet::Ipv4Net::new(addr, len) {
            out.push((u32::from_be(data.rule), net));
        }
    }
    Ok(out)
}

/// Makes the host-address map hold exactly `addrs`.
pub fn set_host_addrs(ebpf: &mut Ebpf, addrs: &[Ipv4Addr]) -> Result<()> {
    let current: Vec<u32> = entries::<u32, u8>(ebpf, maps::HOST_ADDRS)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut hm: BpfHashMap<&mut MapData, u32, u8> =
        BpfHashMap::try_from(map_mut(ebpf, maps::HOST_ADDRS)?)
            .map_err(|e| Error::map(maps::HOST_ADDRS, e))?;
    let wanted: Vec<u32> = addrs.iter().map(|a| raw_addr(*a)).collect();
    for k in current.iter().filter(|k| !wanted.contains(k)) {
        let _ = hm.remove(k);
    }
    for k in &wanted {
        hm.insert(k, 1, 0)
            .map_err(|e| Error::map(maps::HOST_ADDRS, e))?;
    }
    Ok(())
}

/// Removes these conntrack entries from whichever table holds them (those already gone are
/// skipped).
pub fn remove_conntrack(ebpf: &mut Ebpf, keys: &[CtKey]) -> Result<()> {
    for table in [maps::CONNTRACK, maps::CT_INBOUND] {
        let mut hm: BpfHashMap<&mut MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(map_mut(ebpf, table)?).map_err(|e| Error::map(table, e))?;
        for k in keys {
            match hm.remove(k) {
                Ok(()) => {}
                Err(ref e) if absent(e) => {}
                Err(e) => return Err(Error::map(table, e)),
            }
        }
    }
    Ok(())
}

/// The host namespace the dataplane serves.
pub fn write_host(ebpf: &mut Ebpf, info: &netfast_common::publish::HostInfo) -> Result<()> {
    let mut array: Array<&mut MapData, netfast_common::publish::HostInfo> =
        Array::try_from(map_mut(ebpf, maps::HOST)?).map_err(|e| Error::map(maps::HOST, e))?;
    array.set(0, info, 0).map_err(|e| Error::map(maps::HOST, e))
}

/// A key that is not there (aya reports it as `KeyNotFound` or as the syscall's ENOENT).
fn absent(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

pub fn set_endpoint(
    ebpf: &mut Ebpf,
    addr: Ipv4Addr,
    ep: &netfast_common::config::Endpoint,
) -> Result<()> {
    insert_key(ebpf, maps::ENDPOINTS, &raw_addr(addr), ep)
}

pub fn remove_endpoint(ebpf: &mut Ebpf, addr: Ipv4Addr) -> Result<()> {
    remove_key::<u32, netfast_common::config::Endpoint>(ebpf, maps::ENDPOINTS, &raw_addr(addr))
}

/// Marks `ifindex` as an uplink of the dataplane (see `maps::UPLINKS`).
pub fn set_uplink(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    insert_key(ebpf, maps::UPLINKS, &ifindex, &1u8)
}

pub fn remove_uplink(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    remove_key::<u32, u8>(ebpf, maps::UPLINKS, &ifindex)
}

/// The network info of `subnet/prefix`, if it is a network of the dataplane.
pub fn network_info(ebpf: &Ebpf, subnet: Ipv4Addr, prefix: u8) -> Result<Option<NetInfo>> {
    let trie: LpmTrie<&MapData, u32, NetInfo> =
        LpmTrie::try_from(map(ebpf, maps::NETWORKS)?).map_err(|e| Error::map(maps::NETWORKS, e))?;
    match trie.get(&Key::new(u32::from(prefix), raw_addr(subnet)), 0) {
        Ok(info) => Ok(Some(info)),
        Err(ref e) if absent(e) => Ok(None),
        Err(e) => Err(Error::map(maps::NETWORKS, e)),
    }
}

/// The host addresses the dataplane knows (see `maps::HOST_ADDRS`).
pub fn host_addrs(ebpf: &Ebpf) -> Result<Vec<Ipv4Addr>> {
    Ok(entries::<u32, u8>(ebpf, maps::HOST_ADDRS)?
        .into_iter()
        .map(|(k, _)| addr_of(k))
        .collect())
}

/// Every fast-path endpoint: container address and where it is.
pub fn endpoints(ebpf: &Ebpf) -> Result<Vec<(Ipv4Addr, netfast_common::config::Endpoint)>> {
    Ok(
        entries::<u32, netfast_common::config::Endpoint>(ebpf, maps::ENDPOINTS)?
            .into_iter()
            .map(|(k, v)| (addr_of(k), v))
            .collect(),
    )
}

/// The ifindexes marked as uplinks (see `maps::UPLINKS`).
pub fn uplinks(ebpf: &Ebpf) -> Result<Vec<u32>> {
    Ok(entries::<u32, u8>(ebpf, maps::UPLINKS)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// What [`take_if`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The entry was `expected`, and is gone.
    Removed,
    /// The entry had changed (the datapath used it meanwhile): it was put back as it is.
    Kept,
    /// There was no entry.
    Absent,
}

/// Removes `key` from the hash map `name` if its value is still `expected`, atomically:
/// the kernel hands over the value it removed (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`), and a
/// value that changed since it was judged is put back at once (`BPF_NOEXIST`: unless the
/// datapath has already made the entry again, which then stands).
pub fn take_if<K: aya::Pod, V: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
    expected: &V,
) -> Result<Taken> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match map(ebpf, name)? {
        aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m) => m.fd().as_fd().as_raw_fd(),
        _ => {
            return Err(Error::Settings(format!(
                "map {name} is not a hash map (a bug in netfast)"
            )));
        }
    };
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    // `union bpf_attr` for the map element commands: map_fd, (pad), key, value, flags.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    // SAFETY: bpf(2) with an attribute block that outlives the call; the kernel writes a
    // value of the map's value size (checked against `V` when the map was opened) into
    // `value`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(Taken::Absent);
        }
        return Err(Error::Io {
            context: format!("taking an entry out of map {name}"),
            source: err,
        });
    }
    // SAFETY: the kernel wrote the whole value; `V` is plain old data.
    let value = unsafe { value.assume_init() };
    if value == *expected {
        return Ok(Taken::Removed);
    }
    let mut hm: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map_mut(ebpf, name)?).map_err(|e| Error::map(name, e))?;
    const BPF_NOEXIST: u64 = 1;
    match hm.insert(key, value, BPF_NOEXIST) {
        Ok(()) => Ok(Taken::Kept),
        // The datapath made it again meanwhile: its entry stands.
        Err(aya::maps::MapError::SyscallError(ref s))
            if s.io_error.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(Taken::Kept)
        }
        Err(e) => Err(Error::map(name, e)),
    }
}
