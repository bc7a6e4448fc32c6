//! libvmclock.so carries the SONAME libvmclock.so.0 (ABI version 0): a package installs
//! libvmclock.so.0 with the libvmclock.so link for the linker, and programs record the versioned
//! name.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvmclock.so.0");
}
