//! The datapath under test: the real programs (`ProgTest`) with their maps, in the fuzzer's
//! namespace, their clock frozen and moved only by the fuzzer, and typed access to
//! everything the model is compared with.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use netfast::{
    agent::reclaim::Snapshot,
    common::{
        DropReason, Hook, Traffic,
        config::DpConfig,
        conntrack::{CtEntry, CtKey},
        maps as names,
        nat::{FragEntry, FragKey, NatBindKey, NatBinding, NatClaim, NatClaimKey},
        publish::{PubKey, PubTarget},
        stats::{Event, drop_slot, event_slot, hook_slot},
        verdict::SHOT,
    },
    error::report,
    maps,
    prog_test::ProgTest,
};

use super::{convert, topology::Host};
use crate::model::{self, Config, HostSocket, Model, PROTO_TCP, conntrack::Table};

/// The programs' clock at the start of every episode: far from 0, so that no expiry
/// arithmetic meets a wrap.
pub const EPOCH: u32 = 1_000_000;

/// A map operation failed: the harness cannot go on.
fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("fuzzer: {what}: {e}")
}

/// Every entry of the maps the model mirrors: the conntrack and NAT maps as the agent reads
/// them, and the fragment records.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    pub maps: Snapshot,
    pub frags: HashMap<FragKey, FragEntry>,
}

/// The counters the model mirrors: per hook, per event, per drop reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub hooks: BTreeMap<u32, u64>,
    pub events: BTreeMap<u32, u64>,
    pub drops: BTreeMap<u32, u64>,
}

pub struct Datapath {
    pub host: Host,
    pub t: ProgTest,
    /// The clock fields of the config map (frozen).
    clock: DpConfig,
    sockets: BTreeMap<HostSocket, OwnedFd>,
    /// The counters when the episode began, and the drops at the last drop.
    baseline: Counts,
    drops_seen: BTreeMap<u32, u64>,
}

fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    t: &'a ProgTest,
    name: &str,
) -> BpfHashMap<&'a MapData, K, V> {
    let m = t
        .ebpf()
        .map(name)
        .unwrap_or_else(|| fail("no such map", name));
    BpfHashMap::try_from(m).unwrap_or_else(|e| fail(name, e))
}

fn hash_map_mut<'a, K: aya::Pod, V: aya::Pod>(
    t: &'a mut ProgTest,
    name: &str,
) -> BpfHashMap<&'a mut MapData, K, V> {
    let m = t
        .ebpf_mut()
        .map_mut(name)
        .unwrap_or_else(|| fail("no such map", name));
    BpfHashMap::try_from(m).unwrap_or_else(|e| fail(name, e))
}

fn all<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(t: &ProgTest, name: &str) -> HashMap<K, V> {
    hash_map::<K, V>(t, name)
        .iter()
        .filter_map(std::result::Result::ok)
        .collect()
}

fn clear<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(t: &mut ProgTest, name: &str) {
    let keys: Vec<K> = all::<K, V>(t, name).into_keys().collect();
    let mut m = hash_map_mut::<K, V>(t, name);
    for k in keys {
        let _ = m.remove(&k);
    }
}

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Main => names::CONNTRACK,
        Table::Inbound => names::CT_INBOUND,
    }
}

impl Datapath {
    /// Loads the programs with fresh maps and freezes their clock at [`EPOCH`]: the clock
    /// reads `m0 + (jiffies - j0) / hz + advance`, and with the largest tick rate there is
    /// the middle term stays 0 for weeks, so that only the fuzzer moves time.
    pub fn new(host: Host) -> Datapath {
        let mut t = ProgTest::load().unwrap_or_else(|e| {
            panic!(
                "fuzzer: loading the eBPF programs failed (needs root and BPF_PROG_TEST_RUN): {}",
                report(&e)
            )
        });
        let cfg = maps::read_config(t.ebpf()).unwrap_or_else(|e| fail("reading config", e));
        assert!(
            cfg.clock_hz != 0,
            "fuzzer: the programs' clock could not be calibrated to jiffies, so it cannot be \
             frozen: the fuzzer needs a clock only it moves"
        );
        let clock = DpConfig {
            clock_hz: u32::MAX,
            clock_m0: EPOCH,
            clock_advance: 0,
            ..cfg
        };
        maps::set_uplink(t.ebpf_mut(), host.uplink).unwrap_or_else(|e| fail("uplink", e));
        let mut dp = Datapath {
            host,
            t,
            clock,
            sockets: BTreeMap::new(),
            baseline: Counts::default(),
            drops_seen: BTreeMap::new(),
        };
        dp.write_config(&Config::default(), EPOCH);
        dp
    }

    /// Writes the settings with the clock at `now`.
    pub fn write_config(&mut self, c: &Config, now: u32) {
        let clock = DpConfig {
            clock_advance: now - EPOCH,
            ..self.clock
        };
        maps::write_config_uncalibrated(self.t.ebpf_mut(), &convert::dp_config(c, &clock))
            .unwrap_or_else(|e| fail("writing config", e));
    }

    /// Forgets every flow, mapping, fragment, publication and host socket, and provisions
    /// the model's networks, endpoints and settings: the start of an episode.
    pub fn reset(&mut self, m: &Model) {
        clear::<CtKey, CtEntry>(&mut self.t, names::CONNTRACK);
        clear::<CtKey, CtEntry>(&mut self.t, names::CT_INBOUND);
        clear::<NatBindKey, NatBinding>(&mut self.t, names::NAT_BINDINGS);
        clear::<NatClaimKey, NatClaim>(&mut self.t, names::NAT_CLAIMS);
        clear::<FragKey, FragEntry>(&mut self.t, names::FRAGMENTS);
        clear::<PubKey, PubTarget>(&mut self.t, names::PUBLISHED);
        for (rule, net) in maps::allow_entries(self.t.ebpf()).unwrap_or_else(|e| fail("allow", e)) {
            maps::disallow(self.t.ebpf_mut(), rule, net).unwrap_or_else(|e| fail("allow", e));
        }
        self.sockets.clear();
        for i in 0..2 {
            let n = self.host.network(i, true);
            maps::remove_network(self.t.ebpf_mut(), n.subnet.network(), n.subnet.prefix_len())
                .unwrap_or_else(|e| fail("networks", e));
            for addr in super::topology::CONTAINERS[i] {
                maps::remove_endpoint(self.t.ebpf_mut(), *addr)
                    .unwrap_or_else(|e| fail("endpoints", e));
            }
        }
        for n in &m.topo.networks {
            let info = netfast::common::config::NetInfo {
                id: n.id,
                flags: if n.masquerade {
                    netfast::common::config::NET_F_MASQUERADE
                } else {
                    0
                },
                uplink_ifindex: n.uplink,
                bridge_ifindex: n.bridge,
                ext_addr: maps::raw_addr(n.ext_addr),
            };
            maps::set_network(
                self.t.ebpf_mut(),
                n.subnet.network(),
                n.subnet.prefix_len(),
                &info,
            )
            .unwrap_or_else(|e| fail("networks", e));
        }
        for (addr, ep) in &m.topo.endpoints {
            let ep = netfast::common::config::Endpoint {
                ifindex: ep.ifindex,
                mac: ep.mac,
                gw_mac: ep.gw_mac,
                mtu: ep.mtu,
                _pad: 0,
            };
            maps::set_endpoint(self.t.ebpf_mut(), *addr, &ep)
                .unwrap_or_else(|e| fail("endpoints", e));
        }
        let addrs: Vec<Ipv4Addr> = m.topo.host_addrs.iter().copied().collect();
        maps::set_host_addrs(self.t.ebpf_mut(), &addrs)
            .unwrap_or_else(|e| fail("host addresses", e));
        self.write_config(&m.config, m.now);
        self.baseline = self.raw_counts();
        self.drops_seen = self.baseline.drops.clone();
    }

    /// Runs the program of `hook` on `frame` on device `ifindex`: its verdict, its frame,
    /// and for a drop, the reason it counted.
    pub fn run(
        &mut self,
        hook: Hook,
        ifindex: u32,
        frame: &[u8],
    ) -> (i32, Vec<u8>, Option<DropReason>) {
        let r = self.t.run_on(hook, frame, ifindex).unwrap_or_else(|e| {
            let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
            fail(
                "BPF_PROG_TEST_RUN",
                format!("{} on ifindex {ifindex}, frame {hex}", report(&e)),
            )
        });
        let drop = (r.verdict == SHOT).then(|| self.last_drop()).flatten();
        (r.verdict, r.frame, drop)
    }

    /// The drop reason whose counter moved since the last drop.
    fn last_drop(&mut self) -> Option<DropReason> {
        let mut found = None;
        for reason in DropReason::ALL {
            let slot = drop_slot(reason);
            let n = self.slot(names::STATS, slot);
            let before = self.drops_seen.get(&slot).copied().unwrap_or(0);
            if n != before {
                self.drops_seen.insert(slot, n);
                found = Some(reason);
            }
        }
        found
    }

    fn slot(&self, map: &str, slot: u32) -> u64 {
        let m = self
            .t
            .ebpf()
            .map(map)
            .unwrap_or_else(|| fail("no such map", map));
        let a: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(m).unwrap_or_else(|e| fail(map, e));
        a.get(&slot, 0)
            .map(|v| v.iter().map(|t| t.packets).sum())
            .unwrap_or_else(|e| fail(map, e))
    }

    fn raw_counts(&self) -> Counts {
        let mut c = Counts::default();
        for h in Hook::ALL {
            c.hooks
                .insert(h as u32, self.slot(names::STATS, hook_slot(h)));
        }
        // `monitor_suppressed` counts drops past the monitor's budget of events per CPU per
        // wall-clock second, or while its ring is full (nobody reads it here): it depends on
        // how fast the fuzzer runs, which the model does not know.
        for e in Event::ALL
            .into_iter()
            .filter(|e| *e != Event::MonitorSuppressed)
        {
            c.events
                .insert(e as u32, self.slot(names::STATS, event_slot(e)));
        }
        for r in DropReason::ALL {
            c.drops
                .insert(drop_slot(r), self.slot(names::STATS, drop_slot(r)));
        }
        c
    }

    /// The counters since the episode began, keyed as the model keys them (a drop by its
    /// reason's value, not its slot); zeros left out.
    pub fn counts(&self) -> Counts {
        let now = self.raw_counts();
        let delta = |a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>, key: &dyn Fn(u32) -> u32| {
            a.iter()
                .filter_map(|(k, v)| {
                    let d = v - b.get(k).copied().unwrap_or(0);
                    (d != 0).then_some((key(*k), d))
                })
                .collect()
        };
        Counts {
            hooks: delta(&now.hooks, &self.baseline.hooks, &|k| k),
            events: delta(&now.events, &self.baseline.events, &|k| k),
            drops: delta(&now.drops, &self.baseline.drops, &|k| {
                k - netfast::common::stats::DROP_SLOT_BASE
            }),
        }
    }

    pub fn ct(&self, t: Table, k: &CtKey) -> Option<CtEntry> {
        hash_map::<CtKey, CtEntry>(&self.t, table_name(t))
            .get(k, 0)
            .ok()
    }

    pub fn binding(&self, k: &NatBindKey) -> Option<NatBinding> {
        hash_map::<NatBindKey, NatBinding>(&self.t, names::NAT_BINDINGS)
            .get(k, 0)
            .ok()
    }

    pub fn claim(&self, k: &NatClaimKey) -> Option<NatClaim> {
        hash_map::<NatClaimKey, NatClaim>(&self.t, names::NAT_CLAIMS)
            .get(k, 0)
            .ok()
    }

    pub fn frag(&self, k: &FragKey) -> Option<FragEntry> {
        hash_map::<FragKey, FragEntry>(&self.t, names::FRAGMENTS)
            .get(k, 0)
            .ok()
    }

    pub fn dump(&self) -> Dump {
        Dump {
            maps: Snapshot {
                main: all(&self.t, names::CONNTRACK),
                inbound: all(&self.t, names::CT_INBOUND),
                bindings: all(&self.t, names::NAT_BINDINGS),
                claims: all(&self.t, names::NAT_CLAIMS),
            },
            frags: all(&self.t, names::FRAGMENTS),
        }
    }

    pub fn remove_ct(&mut self, t: Table, k: &CtKey) {
        let _ = hash_map_mut::<CtKey, CtEntry>(&mut self.t, table_name(t)).remove(k);
    }

    pub fn remove_binding(&mut self, k: &NatBindKey) {
        let _ = hash_map_mut::<NatBindKey, NatBinding>(&mut self.t, names::NAT_BINDINGS).remove(k);
    }

    pub fn remove_claim(&mut self, k: &NatClaimKey) {
        let _ = hash_map_mut::<NatClaimKey, NatClaim>(&mut self.t, names::NAT_CLAIMS).remove(k);
    }

    pub fn publish(&mut self, k: &model::PubKey, target: &model::PubTarget) {
        let key = pub_key(k);
        let target = PubTarget {
            addr: maps::raw_addr(target.addr),
            port: target.port.to_be(),
            net_id: target.net_id,
            rule: target.rule,
        };
        maps::publish(self.t.ebpf_mut(), &key, &target).unwrap_or_else(|e| fail("publish", e));
    }

    pub fn unpublish(&mut self, k: &model::PubKey) {
        maps::unpublish(self.t.ebpf_mut(), &pub_key(k)).unwrap_or_else(|e| fail("unpublish", e));
    }

    pub fn allow(&mut self, rule: u32, net: ipnet::Ipv4Net) {
        maps::allow(self.t.ebpf_mut(), rule, net).unwrap_or_else(|e| fail("allow", e));
    }

    pub fn disallow(&mut self, rule: u32, net: ipnet::Ipv4Net) {
        maps::disallow(self.t.ebpf_mut(), rule, net).unwrap_or_else(|e| fail("allow", e));
    }

    /// Opens one of the host's own sockets (in the fuzzer's namespace): a UDP socket bound
    /// to the address and port, or a TCP listener there. False if the port is taken.
    pub fn open_socket(&mut self, s: &HostSocket) -> bool {
        if self.sockets.contains_key(s) {
            return true;
        }
        let tcp = s.proto == PROTO_TCP;
        // SAFETY: plain socket calls on a descriptor we own, with a sockaddr_in on our stack.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                if tcp {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                },
                0,
            );
            if fd < 0 {
                fail("socket", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            );
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: s.port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: maps::raw_addr(s.addr),
                },
                sin_zero: [0; 8],
            };
            if libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return false;
            }
            if tcp && libc::listen(fd.as_raw_fd(), 8) != 0 {
                return false;
            }
            self.sockets.insert(*s, fd);
        }
        true
    }

    pub fn close_socket(&mut self, s: &HostSocket) {
        self.sockets.remove(s);
    }
}

fn pub_key(k: &model::PubKey) -> PubKey {
    PubKey {
        addr: k.addr.map_or(0, maps::raw_addr),
        port: k.port.to_be(),
        proto: k.proto,
        _pad: 0,
    }
}
