//! libvmclock.so carries the SONAME libvmclock.so.0 (ABI version 0): a package installs
//! libvmclock.so.0 with the libvmclock.so link for the linker, and programs record the versioned
//! name.
//!
//! The benches also measure vmclock.h's inline reader as a C compiler builds it: benches/inline.c
//! is compiled here with `cc -O2` and linked into the benches only (cfg `vmclock_inline_bench`;
//! without a C compiler the benches leave that side out).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvmclock.so.0");
    println!("cargo::rustc-check-cfg=cfg(vmclock_inline_bench)");
    println!("cargo:rerun-if-changed=benches/inline.c");
    println!("cargo:rerun-if-changed=include/vmclock.h");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("inline.o");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let ok = Command::new(cc)
        .args(["-O2", "-c", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(dir.join("include"))
        .arg(dir.join("benches/inline.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        println!("cargo:rustc-link-arg-benches={}", out.display());
        println!("cargo:rustc-cfg=vmclock_inline_bench");
    } else {
        println!("cargo:warning=no C compiler: the benches leave vmclock.h's inline reader out");
    }
}
