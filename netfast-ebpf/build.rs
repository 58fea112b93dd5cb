use which::which;

/// Building this crate depends on the `bpf-linker` binary, which cargo does not know about:
/// rebuild whenever the linker found on PATH changes.
fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup`");
        }
    }
}
