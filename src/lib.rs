//! sqlite-tde: Transparent Data Encryption for SQLite.
#![deny(unsafe_code)]

pub mod crypto;
pub mod format;
pub mod fsutil;
pub mod keycache;
pub mod kms;
pub mod vfs;
pub mod error;

pub use error::{Error, Result};
pub mod connection;

pub use connection::{OpenOptions, Tde, TdeBuilder};
pub mod cli;
pub mod inspect;
