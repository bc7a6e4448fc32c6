//! Writes the conformance vectors, `testdata/vectors.json` (docs/PROTOCOL.md, "Conformance
//! vectors"): every case of `cases.rs` with the expectation the big-integer reference
//! (`reference.rs`) computes from the page's bytes.
//!
//! ```sh
//! cargo run -p vmclock --example vectors            # rewrites testdata/vectors.json
//! cargo run -p vmclock --example vectors -- OUT     # writes OUT instead
//! ```
//! `tests/vectors.rs` fails when the committed file differs from what this writes.
mod cases;
mod reference;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors.json"));
    let cases = cases::all();
    std::fs::write(&out, cases::render(&cases))?;
    println!("{} cases written to {}", cases.len(), out.display());
    Ok(())
}
