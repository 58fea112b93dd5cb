//! `netfast-no-bpf COMMAND [ARGS]…`: runs COMMAND where the bpf(2) system call fails with
//! ENOSYS, as on a kernel built without CONFIG_BPF_SYSCALL — a host where netfast's eBPF
//! dataplane cannot run and its fallback backends must. A seccomp filter does it; it holds
//! for COMMAND and everything it starts, and for nothing else.

use std::{os::unix::process::CommandExt, process::Command};

fn filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // seccomp_data.nr
        stmt(LD_W_ABS, 0),
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_bpf as u32,
        },
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("usage: netfast-no-bpf COMMAND [ARGS]...");
        std::process::exit(2);
    };
    let mut filter = filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with a filter program that outlives the call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const prog,
            ) != 0
        {
            eprintln!(
                "netfast-no-bpf: installing the seccomp filter failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(2);
        }
    }
    let err = Command::new(command).args(rest).exec();
    eprintln!("netfast-no-bpf: running {command}: {err}");
    std::process::exit(127);
}
