//! Compiles `netfast-ebpf` for the BPF target with the nightly toolchain; the object lands in
//! `OUT_DIR/netfast` and `src/lib.rs` embeds it.
//!
//! This does what `aya_build::build_ebpf` does, with one more flag: `-C target-cpu=v3`. The
//! programs need BPF's atomic compare-and-exchange and fetch-and-add (v3, Linux 5.12; netfast
//! needs 6.6 anyway) to claim a NAT port and count a mapping's flows safely across CPUs, and
//! aya-build replaces every rustflag it is not told about.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message};

/// The BPF instruction set the programs are built for (see the module comment).
const BPF_CPU: &str = "v3";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP is set: the eBPF programs are not built");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "netfast-ebpf")
        .ok_or_else(|| anyhow!("the netfast-ebpf package is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent directory for {}", ebpf.manifest_path))?;
    // The programs' sources, and the shared types they are built from.
    println!("cargo:rerun-if-changed={root_dir}");
    println!("cargo:rerun-if-changed={root_dir}/../netfast-common");
    build(ebpf.name.as_str()).context(
        "building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src \
         component and bpf-linker they need",
    )
}

/// The `layout-next` test build builds the programs with the changed layout too, and the
/// `ebpf-log` build with their debug logging (aya-log).
fn ebpf_features() -> Vec<String> {
    let mut features = Vec::new();
    if env::var_os("CARGO_FEATURE_LAYOUT_NEXT").is_some() {
        features.push("netfast-common/layout-next");
    }
    if env::var_os("CARGO_FEATURE_EBPF_LOG").is_some() {
        features.push("log");
    }
    if features.is_empty() {
        Vec::new()
    } else {
        vec!["--features".to_owned(), features.join(",")]
    }
}

fn build(package: &str) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH is not set")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other:?}"),
    };
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Clink-arg=--export=netfast_track".to_owned(),
        // bpf-linker asks LLVM to expand memcpy "in order" (for the pattern matchers of
        // offloading JITs) unless told not to, which also leaves every memset to a call: a
        // loop storing one byte per turn (a zeroed route, a key's padding, the FIB request),
        // on the packet path and, turn by turn, in the verifier's count at every call site.
        // Without it LLVM expands memset, memcpy, memmove and memcmp inline, in the widest
        // accesses the alignment allows (bytes for packet data).
        "-Clink-arg=--disable-expand-memcpy-in-order".to_owned(),
        format!("-Ctarget-cpu={BPF_CPU}"),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    // A target directory of its own: cargo would otherwise wait for the lock of the build
    // that runs this script.
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", package])
        .args([
            "--bins",
            "--release",
            "--message-format=json",
            "--target",
            target,
        ])
        .args(["-Z", "build-std=core"])
        .args(ebpf_features())
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's compiler is the stable one; the programs need nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?} (is rustup installed?)"))?;
    let stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let relay = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            println!("cargo:warning={line}");
        }
    });
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().context("stdout")?)) {
        match message.context("cargo's JSON messages")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(exe),
                target,
                ..
            }) => executables.push((target.name, exe.into_std_path_buf())),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                for line in message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    let _ = relay.join();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&exe, &dst)
            .with_context(|| format!("copying {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}
