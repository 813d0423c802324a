//! Finds the eBPF object `cargo xtask build` produced and hands its path to
//! `include_bytes_aligned!`. Without one (a plain `cargo check`, an IDE), the
//! binary embeds nothing and says so at runtime instead of failing to build.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=UNRM_EBPF_OBJECT");
    let object = match env::var_os("UNRM_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/ebpf/bpfel-unknown-none/bpf/unrm-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    let object = if object.is_file() {
        object
    } else {
        println!("cargo:warning=no eBPF object at {}; run `cargo xtask build`", object.display());
        let empty = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("unrm-ebpf.empty");
        fs::write(&empty, b"").unwrap();
        empty
    };
    println!("cargo:rustc-env=UNRM_EBPF_OBJECT={}", object.canonicalize().unwrap().display());
}
