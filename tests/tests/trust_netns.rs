//! What hostile packets must never do, with real namespaces, clients and kernels (issue #13):
//! a container carrying the fast path's mark past the uplink's egress; a flood of forged
//! SYNs pushing an established connection out of the conntrack table.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use netfast::netns::NetnsGuard;
use netfast_tests::{
    Background, Removed,
    clients::{echo_server, talker, talks_on},
    in_netns, require_root,
    topology::{OUTSIDE_ADDR, UPLINK_ADDR},
    web::web_on,
};

/// `bpf(2)`.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: the kernel reads (and writes) at most `attr.len()` bytes of the union.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// A TC program of four instructions that sets `skb->tc_index` to netfast's fast-path mark
/// (0x4000) and carries on: what a container with CAP_BPF could put on its own eth0.
fn load_marker() -> OwnedFd {
    let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| {
        let mut i = [0u8; 8];
        i[0] = code;
        i[1] = (src << 4) | dst;
        i[2..4].copy_from_slice(&off.to_le_bytes());
        i[4..8].copy_from_slice(&imm.to_le_bytes());
        i
    };
    let insns = [
        insn(0xb7, 2, 0, 0, 0x4000), // r2 = 0x4000
        insn(0x63, 1, 2, 44, 0),     // *(u32 *)(r1 + offsetof(__sk_buff, tc_index)) = r2
        insn(0xb7, 0, 0, 0, -1),     // r0 = TC_ACT_UNSPEC
        insn(0x95, 0, 0, 0, 0),      // exit
    ]
    .concat();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(5, &mut attr); // BPF_PROG_LOAD
    assert!(
        fd >= 0,
        "loading the marker program: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Pins `fd` at `path` (aya opens programs from a pin).
fn pin(fd: &OwnedFd, path: &str) {
    let c = CString::new(path).expect("path");
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    let rc = bpf(6, &mut attr); // BPF_OBJ_PIN
    assert!(
        rc == 0,
        "pinning at {path}: {}",
        std::io::Error::last_os_error()
    );
}

/// A container sets the fast path's mark on what it sends (its own TC program): the
/// uplink's egress must not take its packets for ones the fast path translated already, or
/// the container's address would leave unmasqueraded. With the fast path off, the host
/// routes the packet to the uplink as it came.
#[test]
fn a_container_cannot_carry_the_fast_paths_mark_to_the_uplink() {
    require_root();
    let w = web_on("ebpf", &["--fast-path", "off"]);
    let outside = w.topo.outside.name();
    let mut listener = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        outside,
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7008))\n\
         print('ready',flush=True)\nd,a=s.recvfrom(100)\nprint('from',a[0],flush=True)",
    ]);
    listener.wait_for_text("ready", Duration::from_secs(10));
    // The marker on c1's eth0 egress, attached from inside c1's namespace.
    let path = format!("/sys/fs/bpf/netfast-test-marker-{}", std::process::id());
    let marker = load_marker();
    pin(&marker, &path);
    let _pin = Removed::at(&path);
    let _attached = {
        let _in = NetnsGuard::enter(&w.c1).expect("enter c1");
        let mut prog = SchedClassifier::from_pin(&path).expect("the pinned marker");
        prog.attach("eth0", TcAttachType::Egress)
            .expect("attach the marker to c1's eth0");
        prog
    };
    netfast_tests::run_ok(&[
        "ip",
        "netns",
        "exec",
        &w.c1,
        "python3",
        "-c",
        &format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.sendto(b'x',('{OUTSIDE_ADDR}',7008))"
        ),
    ]);
    let out = listener.wait_exit(Duration::from_secs(10));
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains(&format!("from {UPLINK_ADDR}")),
        "the outside saw the datagram {seen}"
    );
}

/// With a conntrack table of 1024 flows, 20,000 SYNs from forged sources at a published
/// port (hping3 --rand-source) used to evict an established connection to that port. Flows
/// from outside that nobody answered live apart now: the connection talks on.
#[test]
fn a_syn_flood_from_forged_sources_leaves_an_established_connection_alone() {
    require_root();
    let w = web_on("ebpf", &["--ct-max", "1024"]);
    let _echo = echo_server(&w.c0, 9000);
    w.nf.ok(&["publish", "web", &format!("9000:{}:9000", w.c0)]);
    let outside = w.topo.outside.name();
    let up = UPLINK_ADDR.to_string();
    let mut talker = talker(outside, &up, 9000);
    let flood = netfast_tests::run(&in_netns(
        outside,
        &[
            "hping3",
            "-q",
            "-S",
            "-p",
            "9000",
            "--rand-source",
            "-c",
            "20000",
            "-i",
            "u20",
            &up,
        ],
    ));
    assert!(
        String::from_utf8_lossy(&flood.stderr).contains("20000 packets transmitted"),
        "hping3 did not send its flood: {}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let opened = w.nf.event("inbound_opened");
    assert!(
        opened >= 19_000,
        "the flood opened {opened} unanswered flows: {:?}",
        w.nf.stats()
    );
    talks_on(&mut talker, 5, "talk on after the flood");
}
