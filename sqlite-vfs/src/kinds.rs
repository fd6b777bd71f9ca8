//! C flag words decoded once into Rust types.

use libsqlite3_sys as ffi;

/// What SQLite is opening, from the `SQLITE_OPEN_*` file-type bit of `xOpen`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A main database file (`SQLITE_OPEN_MAIN_DB`), including ATTACH and VACUUM INTO targets.
    MainDb,
    /// The rollback journal of a main database (`<db>-journal`).
    MainJournal,
    /// The write-ahead log of a main database (`<db>-wal`).
    Wal,
    /// A statement journal (`SQLITE_OPEN_SUBJOURNAL`), always anonymous.
    SubJournal,
    /// The super-journal of a multi-database commit; holds only file names.
    SuperJournal,
    /// The database file of the TEMP schema.
    TempDb,
    /// The rollback journal of the TEMP database.
    TempJournal,
    /// A transient database: sorter runs, materialised views, VACUUM's copy.
    TransientDb,
}

impl FileKind {
    /// Decode the file-type bit of `xOpen` flags. `None` when no known type bit is set:
    /// callers must refuse such opens rather than guess.
    pub fn from_open_flags(flags: i32) -> Option<FileKind> {
        const TYPES: [(i32, FileKind); 8] = [
            (ffi::SQLITE_OPEN_MAIN_DB, FileKind::MainDb),
            (ffi::SQLITE_OPEN_MAIN_JOURNAL, FileKind::MainJournal),
            (ffi::SQLITE_OPEN_WAL, FileKind::Wal),
            (ffi::SQLITE_OPEN_SUBJOURNAL, FileKind::SubJournal),
            (ffi::SQLITE_OPEN_SUPER_JOURNAL, FileKind::SuperJournal),
            (ffi::SQLITE_OPEN_TEMP_DB, FileKind::TempDb),
            (ffi::SQLITE_OPEN_TEMP_JOURNAL, FileKind::TempJournal),
            (ffi::SQLITE_OPEN_TRANSIENT_DB, FileKind::TransientDb),
        ];
        let mut found = None;
        for (bit, kind) in TYPES {
            if flags & bit != 0 {
                if found.is_some() {
                    return None; // two type bits: ambiguous, refuse
                }
                found = Some(kind);
            }
        }
        found
    }

    /// Files that never outlive the connection that made them.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            FileKind::SubJournal | FileKind::TempDb | FileKind::TempJournal | FileKind::TransientDb
        )
    }

    /// Files that belong to (and must be readable with the key of) a persistent main database.
    pub fn is_linked_to_main_db(self) -> bool {
        matches!(self, FileKind::MainJournal | FileKind::Wal)
    }

    /// A short stable name, for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::MainDb => "main-db",
            FileKind::MainJournal => "main-journal",
            FileKind::Wal => "wal",
            FileKind::SubJournal => "statement-journal",
            FileKind::SuperJournal => "super-journal",
            FileKind::TempDb => "temp-db",
            FileKind::TempJournal => "temp-journal",
            FileKind::TransientDb => "transient-db",
        }
    }
}

/// The non-type bits of `xOpen` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags(pub i32);

impl OpenFlags {
    pub fn read_only(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_READONLY != 0
    }
    pub fn read_write(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_READWRITE != 0
    }
    pub fn create(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_CREATE != 0
    }
    pub fn delete_on_close(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_DELETEONCLOSE != 0
    }
    pub fn exclusive(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_EXCLUSIVE != 0
    }
    pub fn raw(self) -> i32 {
        self.0
    }
}

/// `xSync` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncFlags(pub i32);

impl SyncFlags {
    /// `SQLITE_SYNC_NORMAL`.
    pub const NORMAL: SyncFlags = SyncFlags(ffi::SQLITE_SYNC_NORMAL);
    /// `SQLITE_SYNC_FULL`.
    pub const FULL: SyncFlags = SyncFlags(ffi::SQLITE_SYNC_FULL);
    pub fn full(self) -> bool {
        self.0 & 0x0f == ffi::SQLITE_SYNC_FULL
    }
    pub fn data_only(self) -> bool {
        self.0 & ffi::SQLITE_SYNC_DATAONLY != 0
    }
}

/// File lock levels (`SQLITE_LOCK_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockLevel {
    None,
    Shared,
    Reserved,
    Pending,
    Exclusive,
}

impl LockLevel {
    pub fn from_raw(v: i32) -> Option<LockLevel> {
        Some(match v {
            ffi::SQLITE_LOCK_NONE => LockLevel::None,
            ffi::SQLITE_LOCK_SHARED => LockLevel::Shared,
            ffi::SQLITE_LOCK_RESERVED => LockLevel::Reserved,
            ffi::SQLITE_LOCK_PENDING => LockLevel::Pending,
            ffi::SQLITE_LOCK_EXCLUSIVE => LockLevel::Exclusive,
            _ => return None,
        })
    }
    pub fn raw(self) -> i32 {
        match self {
            LockLevel::None => ffi::SQLITE_LOCK_NONE,
            LockLevel::Shared => ffi::SQLITE_LOCK_SHARED,
            LockLevel::Reserved => ffi::SQLITE_LOCK_RESERVED,
            LockLevel::Pending => ffi::SQLITE_LOCK_PENDING,
            LockLevel::Exclusive => ffi::SQLITE_LOCK_EXCLUSIVE,
        }
    }
}

/// `xAccess` check kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessCheck {
    Exists,
    ReadWrite,
    Read,
}

/// `SQLITE_IOCAP_*` bits reported by `xDeviceCharacteristics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCharacteristics(pub i32);

impl DeviceCharacteristics {
    pub const ATOMIC_ANY: i32 = ffi::SQLITE_IOCAP_ATOMIC
        | ffi::SQLITE_IOCAP_ATOMIC512
        | ffi::SQLITE_IOCAP_ATOMIC1K
        | ffi::SQLITE_IOCAP_ATOMIC2K
        | ffi::SQLITE_IOCAP_ATOMIC4K
        | ffi::SQLITE_IOCAP_ATOMIC8K
        | ffi::SQLITE_IOCAP_ATOMIC16K
        | ffi::SQLITE_IOCAP_ATOMIC32K
        | ffi::SQLITE_IOCAP_ATOMIC64K
        | ffi::SQLITE_IOCAP_BATCH_ATOMIC;
    pub const POWERSAFE_OVERWRITE: i32 = ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE;
    pub const SAFE_APPEND: i32 = ffi::SQLITE_IOCAP_SAFE_APPEND;
    pub const SEQUENTIAL: i32 = ffi::SQLITE_IOCAP_SEQUENTIAL;

    pub fn contains(self, bits: i32) -> bool {
        self.0 & bits == bits
    }
    pub fn without(self, bits: i32) -> DeviceCharacteristics {
        DeviceCharacteristics(self.0 & !bits)
    }
}
