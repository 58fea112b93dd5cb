//! The cost of BPF_PROG_TEST_RUN itself: the per-run time of an empty TC program (`r0 = -1;
//! exit`), loaded with the raw bpf(2) syscall because it is not part of netfast. A single
//! run's time includes the kernel's timer read and the call into the program; subtracting
//! this floor leaves what netfast's programs cost.

use std::{io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

use anyhow::{Context as _, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: bpf(2) with a zero-padded attribute block of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// An empty sched_cls program.
pub struct Empty(OwnedFd);

impl Empty {
    pub fn load() -> Result<Empty> {
        // mov64 r0, -1 (TC_ACT_UNSPEC); exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
        put32(&mut attr, 4, insns.len() as u32);
        put64(&mut attr, 8, insns.as_ptr() as u64);
        put64(&mut attr, 16, license.as_ptr() as u64);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty TC program")?;
        // SAFETY: a file descriptor bpf(2) just returned, owned by nobody else.
        Ok(Empty(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// One run on `frame`: the kernel's duration, ns.
    pub fn run_once(&self, frame: &[u8]) -> Result<u32> {
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, self.0.as_raw_fd() as u32);
        put32(&mut attr, 8, frame.len() as u32);
        put64(&mut attr, 16, frame.as_ptr() as u64);
        put32(&mut attr, 32, 1);
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("running the empty TC program")?;
        Ok(u32::from_ne_bytes(
            attr[36..40].try_into().expect("4 bytes"),
        ))
    }
}
