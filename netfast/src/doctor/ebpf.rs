//! What the eBPF dataplane needs from the kernel and from this process: the bpf syscall,
//! TCX, the redirect helpers of the fast path, bpffs, the capabilities. A FAIL here means the
//! eBPF dataplane cannot run (see [`super::ebpf_usable`]).
//!
//! TCX and the helpers are probed (a TCX query on `lo`, aya's helper probe: a two-instruction
//! program the verifier accepts or refuses), never guessed from the kernel's version:
//! distribution kernels backport features, and configurations leave them out.

use std::io;

use aya::{
    programs::{ProgramError, ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported},
};

use super::{
    Check, EBPF, Remedy,
    kernel::{Kernel, Module},
};
use crate::loader::caps;

/// Kernel BTF, for the record.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn checks(kernel: &Kernel) -> Vec<Check> {
    let usable = try_map_create().is_ok();
    vec![
        bpf_syscall(),
        btf(kernel),
        tc_attach(kernel, usable),
        helper(
            kernel,
            usable,
            BpfHelper::BPF_FUNC_redirect_peer,
            "bpf_redirect_peer",
            "into a container's namespace",
        ),
        helper(
            kernel,
            usable,
            BpfHelper::BPF_FUNC_redirect_neigh,
            "bpf_redirect_neigh",
            "out of the uplink",
        ),
        bpffs(),
        capabilities(),
    ]
}

/// The errno of the bpf(2) call under a program error, if that is what failed.
fn errno(e: &ProgramError) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        source = s.source();
    }
    None
}

/// The check when the bpf syscall itself cannot be used: nothing could be probed.
fn not_probed(name: &str, kernel: &Kernel) -> Check {
    Check::warn(
        EBPF,
        name,
        format!(
            "not probed: the bpf syscall is not usable by this process (see `bpf syscall`; {})",
            version_text(kernel)
        ),
        "run netfast doctor as root, where the bpf syscall works",
    )
}

fn version_text(kernel: &Kernel) -> String {
    format!("this kernel: {}", kernel.release)
}

/// Creates (and closes) a one-entry BPF array map: the cheapest thing that proves the
/// syscall works for this process.
fn try_map_create() -> io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // The head of `union bpf_attr` for BPF_MAP_CREATE; the kernel zero-fills the rest.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: BPF_MAP_CREATE reads `size` bytes of a valid attribute struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const attr,
            size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a file descriptor the kernel just gave us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn bpf_syscall() -> Check {
    let name = "bpf syscall";
    let privileged = holds(caps::CAP_BPF) || holds(caps::CAP_SYS_ADMIN);
    match try_map_create() {
        Ok(()) => Check::pass(EBPF, name, "usable (created a BPF array map)"),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Check::fail(
            EBPF,
            name,
            "the kernel has no bpf syscall (built without CONFIG_BPF_SYSCALL)",
            "run a kernel built with CONFIG_BPF_SYSCALL=y",
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !privileged => Check::warn(
            EBPF,
            name,
            "not tried: this process may not use it without CAP_BPF \
             (kernel.unprivileged_bpf_disabled)",
            "run netfast doctor as root to test it",
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Check::fail(
            EBPF,
            name,
            "refused with CAP_BPF held (EPERM): a seccomp filter (a container's runtime) or \
             kernel lockdown forbids it",
            "run netfast on the host, or in a container allowed the bpf syscall",
        ),
        Err(e) => Check::fail(
            EBPF,
            name,
            format!("creating a BPF array map failed: {e}"),
            "check dmesg and the memlock limit (ulimit -l) of this process",
        ),
    }
}

fn btf(kernel: &Kernel) -> Check {
    let name = "BTF";
    if std::path::Path::new(VMLINUX_BTF).exists() {
        return Check::pass(EBPF, name, format!("{VMLINUX_BTF} present"));
    }
    Check::warn(
        EBPF,
        name,
        format!(
            "{VMLINUX_BTF} absent ({}): netfast's programs carry no CO-RE relocations and \
             load without it, but bpftool and CO-RE tools need it",
            match kernel.config("CONFIG_DEBUG_INFO_BTF") {
                Some(_) => "CONFIG_DEBUG_INFO_BTF=y, yet no file: is sysfs mounted?".into(),
                None if kernel.config.is_some() => "CONFIG_DEBUG_INFO_BTF is not set".into(),
                None => version_text(kernel),
            }
        ),
        "run a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )
}

fn clsact(kernel: &Kernel) -> String {
    match kernel.module("sch_ingress", "CONFIG_NET_SCH_INGRESS") {
        Module::BuiltIn(_) | Module::Loaded => "clsact (sch_ingress) is there".into(),
        Module::Available => "clsact (sch_ingress) is loadable".into(),
        Module::Missing(_) => "clsact (sch_ingress) is missing too".into(),
        Module::Unknown(_) => "whether clsact (sch_ingress) is there is unknown".into(),
    }
}

fn tc_attach(kernel: &Kernel, usable: bool) -> Check {
    let name = "TC attach";
    if !usable {
        return not_probed(name, kernel);
    }
    // A query of the programs on lo's TCX ingress: answered where the kernel has TCX,
    // refused where it does not. It changes nothing.
    match SchedClassifier::query_tcx("lo", TcAttachType::Ingress) {
        Ok(_) => Check::pass(
            EBPF,
            name,
            format!(
                "TCX (probed: the kernel answers a TCX query on lo; {})",
                version_text(kernel)
            ),
        ),
        Err(e) if errno(&e) == Some(libc::EPERM) => Check::warn(
            EBPF,
            name,
            "not probed: the TCX query was refused to this process (EPERM)",
            "run netfast doctor as root to probe it",
        ),
        Err(e) => Check::fail(
            EBPF,
            name,
            format!(
                "no TCX: the kernel refuses a TCX query ({}; {}); {}, but netfast pins its \
                 attachments as TCX links and does not attach through clsact",
                crate::error::report(&e),
                version_text(kernel),
                clsact(kernel)
            ),
            "run a kernel with TCX (Linux 6.6 or later, CONFIG_NET_XGRESS=y), or use the \
             iptables/nftables fallback",
        ),
    }
}

fn helper(kernel: &Kernel, usable: bool, id: BpfHelper, helper: &str, purpose: &str) -> Check {
    if !usable {
        return not_probed(helper, kernel);
    }
    match is_helper_supported(ProgramType::SchedClassifier, id) {
        Ok(true) => Check::pass(
            EBPF,
            helper,
            format!(
                "available to TC programs (probed; {})",
                version_text(kernel)
            ),
        ),
        Ok(false) => Check::fail(
            EBPF,
            helper,
            format!(
                "missing (probed: the verifier refuses a TC program that calls it; {}): the \
                 fast path forwards with it {purpose}, and the kernel rejects programs that \
                 call it",
                version_text(kernel)
            ),
            "run a kernel that has it (Linux 5.10 or later), or use the iptables/nftables \
             fallback",
        ),
        Err(e) => Check::warn(
            EBPF,
            helper,
            format!("not probed: {}", crate::error::report(&e)),
            "run netfast doctor as root to probe it",
        ),
    }
}

fn bpffs() -> Check {
    let name = "bpffs";
    if let Some(at) = crate::bpffs::find() {
        return Check::pass(EBPF, name, format!("mounted ({})", at.display()));
    }
    let why = if crate::bpffs::private_mount_ns() {
        "this process has a mount namespace of its own (under `ip netns exec`?), where netfast \
         cannot mount it for good"
    } else {
        "netfast mounts it when it first pins a map"
    };
    Check::warn(
        EBPF,
        name,
        format!("not mounted at /sys/fs/bpf: {why}"),
        "mount -t bpf bpf /sys/fs/bpf",
    )
    .remedy(Remedy::MountBpffs)
}

fn holds(cap: u32) -> bool {
    caps::effective() & (1 << cap) != 0
}

fn capabilities() -> Check {
    let name = "capabilities";
    let missing = caps::missing(true);
    if missing.is_empty() {
        let held: Vec<&str> = [
            ("CAP_NET_ADMIN", caps::CAP_NET_ADMIN),
            ("CAP_SYS_ADMIN", caps::CAP_SYS_ADMIN),
            ("CAP_BPF", caps::CAP_BPF),
        ]
        .into_iter()
        .filter(|&(_, c)| holds(c))
        .map(|(n, _)| n)
        .collect();
        return Check::pass(EBPF, name, format!("{} held", held.join(", ")));
    }
    Check::fail(
        EBPF,
        name,
        format!(
            "this process lacks {}: netfast cannot load, attach or pin programs",
            missing.join(" and ")
        ),
        "run netfast as root (sudo netfast …)",
    )
}
