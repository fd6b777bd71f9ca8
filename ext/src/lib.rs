//! `libtde.so`: the sqlite-tde encrypting VFS as an SQLite loadable extension.
//!
//! The entry points live in [`sqlite_tde::ext`] (`sqlite3_tde_init`,
//! `sqlite3_tde_default_init`); this crate only links them into a shared library. Build with
//! `cargo build --release -p sqlite-tde-ext` and load `target/release/libtde.so` from any
//! SQLite >= 3.32 (see docs/ANY-LANGUAGE.md).
#![forbid(unsafe_code)]

pub use sqlite_tde::ext::{sqlite3_tde_default_init, sqlite3_tde_init};
