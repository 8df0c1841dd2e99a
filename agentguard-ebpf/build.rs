//! Rebuild the kernel programs when bpf-linker changes: the linker is part of
//! the eBPF toolchain, so a new bpf-linker can change the object we load.
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
