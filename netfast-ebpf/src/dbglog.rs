//! Debug records (aya-log) for debugging the datapath, read by `netfast monitor --log`.
//! Built only with this crate's `log` feature (netfast's `ebpf-log`): without it `dropped`
//! is an empty inline function, so a default build has no logging code on the packet path.
//! With it, each record also passes aya-log's runtime level (`AYA_LOG_LEVEL`) first. A new
//! record goes in a function of its own, as `dropped` does.

/// A record of a drop. Its own BPF function: the record's buffer stays out of the entry
/// points' frames, which the deepest call chains already fill close to BPF's 512 bytes.
#[cfg(feature = "log")]
#[inline(never)]
pub fn dropped(
    ctx: &aya_ebpf::programs::TcContext,
    hook: netfast_common::Hook,
    reason: netfast_common::DropReason,
) {
    aya_log_ebpf::debug!(ctx, "{}: drop ({})", hook.name(), reason.name());
}

#[cfg(not(feature = "log"))]
#[inline(always)]
pub fn dropped(
    _: &aya_ebpf::programs::TcContext,
    _: netfast_common::Hook,
    _: netfast_common::DropReason,
) {
}
