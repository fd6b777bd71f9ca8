//! The exact read/write patterns SQLite (3.54) sends to each kind of file, recorded through the
//! pass-through VFS. A shim that transforms contents (encryption) depends on these facts; if an
//! SQLite upgrade changes one, this test says which.

mod common;

use common::{fill_sql, open, passthrough, rows, Vfs};
use sqlite_vfs::passthrough::{IoOp, IoRecord, PassThroughConfig};
use sqlite_vfs::FileKind;

const PS: u64 = 4096;

fn recording(tag: &str) -> Vfs {
    passthrough(tag, PassThroughConfig { allow_mmap: false, record_io: true })
}

fn io_of(vfs: &Vfs, kind: FileKind, op: IoOp) -> Vec<IoRecord> {
    vfs.stats().io.iter().filter(|r| r.kind == kind && r.op == op).cloned().collect()
}

fn exec(conn: &rusqlite::Connection, sql: &str) {
    conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Main database: whole aligned pages, except two small header reads.
fn check_main_db(vfs: &Vfs) {
    for w in io_of(vfs, FileKind::MainDb, IoOp::Write) {
        assert!(w.len == PS && w.offset % PS == 0, "main-db write {w:?}");
    }
    let reads = io_of(vfs, FileKind::MainDb, IoOp::Read);
    for r in &reads {
        let header = (r.offset, r.len) == (0, 100) || (r.offset, r.len) == (24, 16);
        assert!(header || (r.len == PS && r.offset % PS == 0), "main-db read {r:?}");
    }
    // 100 bytes at 0 when the b-tree opens; 16 bytes at 24 (change counter) per transaction.
    assert!(reads.iter().any(|r| (r.offset, r.len) == (0, 100)));
    assert!(reads.iter().any(|r| (r.offset, r.len) == (24, 16)));
}

#[test]
fn rollback_journal() {
    let vfs = recording("io-journal");
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    let conn = open(&path, Some(vfs.name()));
    exec(&conn, "PRAGMA journal_mode=PERSIST; PRAGMA cache_size=10;");
    exec(&conn, &fill_sql("t", 1500));
    exec(&conn, "BEGIN; UPDATE t SET grp = grp + 1; COMMIT;");
    exec(&conn, "BEGIN; UPDATE t SET payload = zeroblob(10); ROLLBACK;");
    drop(conn);
    let conn = open(&path, Some(vfs.name()));
    exec(&conn, "UPDATE t SET grp = 0 WHERE id = 1;");
    drop(conn);
    check_main_db(&vfs);

    let writes = io_of(&vfs, FileKind::MainJournal, IoOp::Write);
    for w in &writes {
        // 512: header padded to the sector size (512 with POWERSAFE_OVERWRITE), at a sector
        // boundary; 12: magic + record count rewritten in place after a sync; 28: the header
        // zeroed at commit in PERSIST mode; 1: a zero byte over the magic of a stale header
        // left by an earlier PERSIST transaction right after the current records (pager.c
        // syncJournal); 4: page number or checksum; PS: page image.
        let ok = match w.len {
            512 | 12 | 28 | 1 => w.offset % 512 == 0,
            4 => true,
            PS => true,
            _ => false,
        };
        assert!(ok, "journal write {w:?}");
    }
    // Record = 4-byte page number, page image, 4-byte checksum, as three writes: page images
    // are NOT page-aligned in the journal (first one at 512 + 4).
    assert!(writes.iter().any(|w| w.len == PS && w.offset == 516), "{writes:?}");
    assert!(writes.iter().all(|w| w.len != PS || w.offset % PS != 0));
    assert!(writes.iter().any(|w| (w.offset, w.len) == (0, 28)), "PERSIST zeroes the header");
    assert!(writes.iter().any(|w| w.len == 1), "stale header magic overwritten");

    let reads = io_of(&vfs, FileKind::MainJournal, IoOp::Read);
    for r in &reads {
        // 1 at 0: hot-journal probe; 8: magic at a header offset (often past the end, a short
        // read); 4: header fields, page numbers, checksums; PS: page images during rollback.
        assert!(matches!(r.len, 1 | 4 | 8 | PS), "journal read {r:?}");
    }
    assert!(reads.iter().any(|r| (r.offset, r.len) == (0, 1)), "hot-journal probe");
    assert!(reads.iter().any(|r| r.len == PS), "rollback reads page images back");
}

#[test]
fn wal() {
    let vfs = recording("io-wal");
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    let conn = open(&path, Some(vfs.name()));
    exec(&conn, "PRAGMA journal_mode=WAL; PRAGMA cache_size=10; PRAGMA synchronous=FULL;");
    exec(&conn, &fill_sql("t", 1500));
    exec(&conn, "BEGIN; UPDATE t SET grp = grp + 1; UPDATE t SET grp = grp + 1; COMMIT;");
    exec(&conn, "PRAGMA wal_checkpoint(PASSIVE);");
    drop(conn);
    check_main_db(&vfs);

    let frame = PS + 24;
    for w in io_of(&vfs, FileKind::Wal, IoOp::Write) {
        let ok = match w.len {
            32 => w.offset == 0,                                  // WAL header
            24 => w.offset >= 32 && (w.offset - 32) % frame == 0, // frame header
            PS => w.offset >= 56 && (w.offset - 56) % frame == 0, // page
            _ => false,
        };
        assert!(ok, "wal write {w:?}");
    }
    for r in io_of(&vfs, FileKind::Wal, IoOp::Read) {
        let ok = match r.len {
            32 => r.offset == 0,
            8 => true, // checksum of the previous frame (walRewriteChecksums) or the header
            PS => r.offset >= 56 && (r.offset - 56) % frame == 0,
            l if l == frame => (r.offset - 32) % frame == 0, // whole frames: recovery, rewrite
            _ => false,
        };
        assert!(ok, "wal read {r:?}");
    }
}

#[test]
fn temp_files() {
    let vfs = recording("io-temp");
    let dir = common::tempdir();
    let conn = open(&dir.path().join("main.db"), Some(vfs.name()));
    exec(&conn, "PRAGMA temp_store=FILE; PRAGMA cache_size=10;");
    exec(&conn, &fill_sql("t", 12000));

    // The sorter spills runs (PMAs) into TEMP_JOURNAL files through page-sized buffers: a run
    // ends with a partial buffer and the next run starts right after it, so writes (and reads)
    // are often shorter than a page and unaligned, though never across a page boundary.
    vfs.stats().io.clear();
    let sorted = rows(&conn, "SELECT id FROM t ORDER BY payload DESC, k");
    assert_eq!(sorted.len(), 12000);
    let sorter = io_of(&vfs, FileKind::TempJournal, IoOp::Write);
    assert!(!sorter.is_empty(), "the sort spilled");
    assert!(sorter.iter().any(|w| w.len < PS && w.offset % PS != 0), "{sorter:?}");
    for w in &sorter {
        assert_eq!(w.offset / PS, (w.offset + w.len - 1) / PS, "crosses a page: {w:?}");
    }

    // Statement journal: records (4-byte page number + page) are buffered in memory and spilled
    // in one write of arbitrary length, then written as 4 + PS pairs.
    vfs.stats().io.clear();
    exec(&conn, "CREATE UNIQUE INDEX t_k ON t(k);");
    exec(&conn, "BEGIN; UPDATE t SET grp = grp + 1; UPDATE t SET k = k || '!'; COMMIT;");
    let sub = io_of(&vfs, FileKind::SubJournal, IoOp::Write);
    assert!(!sub.is_empty());
    assert_eq!(sub[0].offset, 0);
    assert!(sub[0].len > PS && !sub[0].len.is_multiple_of(PS + 4), "spill chunk {:?}", sub[0]);
    assert!(sub[1..].iter().all(|w| w.len == 4 || w.len == PS), "{sub:?}");

    // Ephemeral tables (DISTINCT) and the temp database are paged files: aligned pages.
    vfs.stats().io.clear();
    rows(&conn, "SELECT count(*) FROM (SELECT DISTINCT payload || k FROM t)");
    exec(&conn, "PRAGMA temp.cache_size=10; CREATE TEMP TABLE tt AS SELECT * FROM t;");
    for kind in [FileKind::TransientDb, FileKind::TempDb] {
        let w = io_of(&vfs, kind, IoOp::Write);
        assert!(!w.is_empty(), "{kind:?}");
        assert!(w.iter().all(|w| w.len == PS && w.offset % PS == 0), "{kind:?}: {w:?}");
    }
}
