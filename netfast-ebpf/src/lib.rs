#![no_std]
// This library target exists so that `netfast` can build-depend on this crate (and cargo
// rebuilds the eBPF object when it changes); the programs are in the `netfast` binary target.
