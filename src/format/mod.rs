//! On-disk structures of an encrypted database: the header region at the start of the main
//! database file, the logical/physical size mapping used by every encrypted file, and the
//! names of a database's side files.
//! Byte-level documentation: `docs/FORMAT.md`.

mod header;
mod names;
mod size;

pub use header::{
    authenticate, choose_slot, Header, HeaderError, KeyRef, RekeyState, SlotStatus, CIPHER_AES_256_XTS, FORMAT_VERSION,
    FORMAT_VERSION_1, HEADER_REGION_LEN, MAGIC, SLOT_LEN, SLOT_USED_LEN,
};
pub use names::{legacy_side_path, physical_name, side_path, SideFile};
pub use size::{logical_len, physical_len};
