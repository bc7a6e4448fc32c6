//! include/vmclock.h is what cbindgen generates from src/lib.rs today: this fails when the
//! checked-in header is stale. `VMCLOCK_BLESS=1 cargo test -p vmclock-ffi --test header`
//! rewrites it. The header ends with src/reader.h (the inline reader, hand-written C).
use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // The inline reader: hand-written C, appended inside the include guard.
    config.trailer = Some(std::fs::read_to_string(dir.join("src/reader.h")).expect("src/reader.h"));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    let path = dir.join("include/vmclock.h");
    if std::env::var_os("VMCLOCK_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == out,
        "{} is stale: regenerate it with `VMCLOCK_BLESS=1 cargo test -p vmclock-ffi --test header` and commit it",
        path.display()
    );
}
