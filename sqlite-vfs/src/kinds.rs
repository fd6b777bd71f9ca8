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
    /// The database file of the TEMP schema, and of any other database opened with an empty
    /// name: `ATTACH ''` and the whole-database copy plain `VACUUM` makes.
    TempDb,
    /// The rollback journal of a temporary database, and the sorter's spill files (runs of
    /// ORDER BY, GROUP BY, CREATE INDEX), whose writes are not page aligned.
    TempJournal,
    /// An ephemeral table that outgrew its cache (2 MB by default): DISTINCT, materialised
    /// views and CTEs, IN lists, UNION.
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
        matches!(self, FileKind::SubJournal | FileKind::TempDb | FileKind::TempJournal | FileKind::TransientDb)
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
    /// `SQLITE_OPEN_READONLY`.
    pub fn read_only(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_READONLY != 0
    }
    /// `SQLITE_OPEN_READWRITE`.
    pub fn read_write(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_READWRITE != 0
    }
    /// `SQLITE_OPEN_CREATE`.
    pub fn create(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_CREATE != 0
    }
    /// `SQLITE_OPEN_DELETEONCLOSE`: the base VFS deletes the file when it is closed.
    pub fn delete_on_close(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_DELETEONCLOSE != 0
    }
    /// `SQLITE_OPEN_EXCLUSIVE`: the file must not exist yet.
    pub fn exclusive(self) -> bool {
        self.0 & ffi::SQLITE_OPEN_EXCLUSIVE != 0
    }
    /// The flag word (without the file-type bit).
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
    /// `SQLITE_SYNC_FULL` (else `SQLITE_SYNC_NORMAL`).
    pub fn full(self) -> bool {
        self.0 & 0x0f == ffi::SQLITE_SYNC_FULL
    }
    /// `SQLITE_SYNC_DATAONLY`: the file's metadata (size) need not be synced.
    pub fn data_only(self) -> bool {
        self.0 & ffi::SQLITE_SYNC_DATAONLY != 0
    }
}

/// File lock levels (`SQLITE_LOCK_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockLevel {
    /// No lock.
    None,
    /// Reading.
    Shared,
    /// About to write; other connections may still read.
    Reserved,
    /// Waiting for readers to finish before writing.
    Pending,
    /// Writing.
    Exclusive,
}

impl LockLevel {
    /// Decode an `SQLITE_LOCK_*` value; `None` for anything else.
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
    /// The `SQLITE_LOCK_*` value.
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
    /// `SQLITE_ACCESS_EXISTS`.
    Exists,
    /// `SQLITE_ACCESS_READWRITE`.
    ReadWrite,
    /// `SQLITE_ACCESS_READ`.
    Read,
}

/// `SQLITE_IOCAP_*` bits reported by `xDeviceCharacteristics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCharacteristics(pub i32);

impl DeviceCharacteristics {
    /// Every "writes of this size are atomic" bit, including batch-atomic.
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
    /// A crash changes only the bytes being written (see the notes on read-modify-write).
    pub const POWERSAFE_OVERWRITE: i32 = ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE;
    /// Appended data is written before the file size grows.
    pub const SAFE_APPEND: i32 = ffi::SQLITE_IOCAP_SAFE_APPEND;
    /// Writes reach storage in the order they were issued.
    pub const SEQUENTIAL: i32 = ffi::SQLITE_IOCAP_SEQUENTIAL;

    /// Whether every bit of `bits` is set.
    pub fn contains(self, bits: i32) -> bool {
        self.0 & bits == bits
    }
    /// These characteristics with `bits` cleared.
    pub fn without(self, bits: i32) -> DeviceCharacteristics {
        DeviceCharacteristics(self.0 & !bits)
    }
}
