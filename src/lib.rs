//! sqlite-tde: Transparent Data Encryption for SQLite.
#![deny(unsafe_code)]

pub mod crypto;
pub mod error;
pub mod format;
pub use sqlite_tde_fsutil as fsutil;
pub mod keycache;
pub use sqlite_tde_kms as kms;
pub mod rotation;
pub mod vfs;

pub use error::{Error, ErrorClass, Result};
pub mod connection;

pub use connection::{OpenOptions, Tde, TdeBuilder};
/// Benchmark measurements behind `sqlite-tde bench` and `cargo bench --bench report`
/// (docs/PERFORMANCE.md); feature `cli`.
#[cfg(feature = "cli")]
pub mod bench;
/// SQLite loadable-extension entry points (`libtde.so`, built by the `ext/` crate).
pub mod ext;
pub mod inspect;
/// Reading encrypted databases without SQLite or the VFS (backup tools, `verify`).
pub mod reader;
