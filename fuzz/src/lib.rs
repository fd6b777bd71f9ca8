//! Fuzz targets for sqlite-tde (cargo-fuzz layout). The logic lives in `targets.rs`, which
//! `tests/fuzz_corpus.rs` in the main crate also includes to replay `fuzz/corpus/` in a plain
//! `cargo test`. See docs/RELIABILITY.md.
pub mod targets;
