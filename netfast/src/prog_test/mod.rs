//! Running the real programs on test packets with `BPF_PROG_TEST_RUN`.
//!
//! [`ProgTest`] loads the embedded eBPF object with fresh maps, so each test owns its state.
//! [`fixture`] turns a table of cases into runs with readable failures; [`packet`] builds
//! frames and reads them back with every checksum verified independently.

pub mod fixture;
pub mod packet;

use std::time::Duration;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use netfast_common::{Hook, config::DpConfig};

use crate::{
    dataplane::{classifier, load_object},
    error::{Error, Result},
    maps,
    stats::{self, Stats},
};

/// Room the output buffer leaves beyond the input, for programs that grow a packet.
const OUTPUT_HEADROOM: usize = 512;

/// The verdict and the frame as the program left it.
#[derive(Clone, Debug)]
pub struct Run {
    pub verdict: i32,
    pub frame: Vec<u8>,
    /// How long the program ran, as the kernel measured it.
    pub duration: Duration,
}

/// The dataplane's programs loaded for test runs, with their own maps.
pub struct ProgTest {
    ebpf: Ebpf,
}

impl ProgTest {
    /// Loads every program with the default configuration; needs root (or CAP_BPF and
    /// CAP_NET_ADMIN).
    pub fn load() -> Result<Self> {
        Self::load_with(&DpConfig::default())
    }

    /// Loads every program with `config` written to the config map.
    pub fn load_with(config: &DpConfig) -> Result<Self> {
        Self::load_sized(netfast_common::maps::DEFAULT_CT_MAX_FLOWS, config)
    }

    /// As [`ProgTest::load_with`], with a conntrack table for `ct_max_flows` flows.
    pub fn load_sized(ct_max_flows: u32, config: &DpConfig) -> Result<Self> {
        let mut ebpf = load_object(ct_max_flows)?;
        maps::write_config(&mut ebpf, config)?;
        Ok(ProgTest { ebpf })
    }

    /// The loaded object, to seed or read maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Moves the programs' clock `secs` seconds forward, as if that much time had passed:
    /// timeouts are tested without sleeping, and without depending on the machine's pace.
    pub fn advance_clock(&mut self, secs: u32) -> Result<()> {
        let mut cfg = maps::read_config(&self.ebpf)?;
        cfg.clock_advance = cfg.clock_advance.wrapping_add(secs);
        maps::write_config(&mut self.ebpf, &cfg)
    }

    /// The programs' idea of now: CLOCK_MONOTONIC seconds, plus what the test advanced.
    pub fn now(&self) -> Result<u32> {
        let cfg = maps::read_config(&self.ebpf)?;
        Ok(maps::monotonic_now().wrapping_add(cfg.clock_advance))
    }

    /// The counters, summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        stats::of(&self.ebpf)
    }

    /// Runs the program of `hook` once on `frame` (Ethernet header included), on the
    /// loopback device of the calling thread's network namespace.
    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> Result<Run> {
        self.run_on(hook, frame, 0)
    }

    /// As [`ProgTest::run`], with the skb on the device `ifindex` of the calling thread's
    /// namespace (for programs that look up routes from where the packet arrived).
    pub fn run_on(&mut self, hook: Hook, frame: &[u8], ifindex: u32) -> Result<Run> {
        let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
        let skb = skb_on(ifindex);
        let program = classifier(&mut self.ebpf, hook)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        if ifindex != 0 {
            opts.ctx_in = Some(&skb);
        }
        let result = program
            .test_run(opts)
            .map_err(|e| Error::program(hook.name(), e))?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            verdict: result.return_value as i32,
            frame: out,
            duration: result.duration,
        })
    }

    /// Runs the program of `hook` on `frame` `repeat` times in the kernel and returns the
    /// mean time per run, as the kernel measured it. The kernel runs the same skb every
    /// time: a program that rewrites the packet sees its own output from the second run on
    /// (time single runs, [`Run::duration`], for those).
    pub fn time(&mut self, hook: Hook, frame: &[u8], repeat: u32) -> Result<Duration> {
        let program = classifier(&mut self.ebpf, hook)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let result = program
            .test_run(opts)
            .map_err(|e| Error::program(hook.name(), e))?;
        Ok(result.duration)
    }
}

/// `struct __sk_buff` up to its `ifindex` field (offset 40), which the kernel lets a test
/// run set; everything else zero.
fn skb_on(ifindex: u32) -> [u8; 44] {
    let mut skb = [0u8; 44];
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    skb
}
