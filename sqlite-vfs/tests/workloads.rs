//! Every workload runs through the pass-through VFS and through plain SQLite and must produce
//! the same rows; the pass-through's statistics prove which kinds of files SQLite opened and
//! that journals and WALs were linked to their main database.

mod common;

use std::path::Path;

use common::{assert_all_closed, assert_links, compare, dump, fill_sql, one, open, passthrough, rows, Rows};
use rusqlite::Connection;
use sqlite_vfs::passthrough::PassThroughConfig;
use sqlite_vfs::FileKind;

fn exec(conn: &Connection, sql: &str) {
    conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Inserts, updates, deletes, a rolled-back transaction and savepoints, with a cache small
/// enough that transactions spill to the database file before they commit.
fn journal_workload(dir: &Path, vfs: Option<&str>, mode: &str) -> Vec<Rows> {
    let path = dir.join("main.db");
    let conn = open(&path, vfs);
    let mut out = vec![rows(&conn, &format!("PRAGMA journal_mode={mode}"))];
    exec(&conn, "PRAGMA cache_size=20");
    exec(&conn, &fill_sql("t", 3000));
    exec(&conn, "BEGIN; UPDATE t SET k = k || '-u' WHERE grp % 3 = 0; DELETE FROM t WHERE grp = 5; COMMIT;");
    exec(&conn, "BEGIN; DELETE FROM t WHERE id % 2 = 0; UPDATE t SET payload = zeroblob(500); ROLLBACK;");
    exec(
        &conn,
        "SAVEPOINT a; INSERT INTO t(grp, k, payload) VALUES (1, 'x', x'00');
         SAVEPOINT b; DELETE FROM t WHERE grp < 50; ROLLBACK TO b; RELEASE a;",
    );
    out.push(rows(
        &conn,
        "SELECT grp, count(*), sum(length(payload)), min(k), max(k) FROM t GROUP BY grp ORDER BY grp",
    ));
    out.push(rows(&conn, "PRAGMA integrity_check"));
    if mode == "WAL" {
        out.push(rows(&conn, "PRAGMA wal_checkpoint(TRUNCATE)"));
    }
    drop(conn);
    let conn = open(&path, vfs);
    out.push(rows(&conn, "SELECT count(*), sum(grp), sum(length(k)) FROM t"));
    out
}

#[test]
fn journal_modes() {
    for mode in ["DELETE", "TRUNCATE", "PERSIST", "WAL", "MEMORY"] {
        let vfs = passthrough(&format!("jm-{}", mode.to_lowercase()), PassThroughConfig::default());
        compare(&vfs, |dir, v| journal_workload(dir, v, mode));
        let s = vfs.stats();
        match mode {
            "WAL" => {
                // (A main journal is opened too: switching a new database to WAL is itself a
                // rollback-mode transaction.)
                assert!(s.opens_of(FileKind::Wal) >= 1, "{mode}: {}", s.summary());
            }
            "MEMORY" => {
                assert_eq!(s.opens_of(FileKind::MainJournal), 0, "{mode}: {}", s.summary());
                assert_eq!(s.opens_of(FileKind::Wal), 0, "{mode}: {}", s.summary());
            }
            _ => assert!(s.opens_of(FileKind::MainJournal) >= 1, "{mode}: {}", s.summary()),
        }
        assert!(s.lock_changes > 0);
        assert_links(&s);
        assert_all_closed(&s);
    }
}

#[test]
fn page_sizes() {
    for page_size in [512, 4096, 65536] {
        for mode in ["DELETE", "WAL"] {
            let vfs = passthrough(&format!("ps{page_size}-{}", mode.to_lowercase()), PassThroughConfig::default());
            compare(&vfs, |dir, v| {
                let path = dir.join("main.db");
                let conn = open(&path, v);
                exec(&conn, &format!("PRAGMA page_size={page_size}; PRAGMA journal_mode={mode}; PRAGMA cache_size=8;"));
                exec(&conn, &fill_sql("t", 1500));
                exec(&conn, "CREATE INDEX t_k ON t(k); BEGIN; UPDATE t SET grp = grp + 1 WHERE id % 7 = 0; COMMIT;");
                exec(&conn, "BEGIN; DELETE FROM t WHERE id % 3 = 0; ROLLBACK;");
                let mut out = vec![rows(&conn, "PRAGMA page_size"), rows(&conn, "PRAGMA integrity_check")];
                out.push(rows(&conn, "SELECT grp, count(*), max(k) FROM t GROUP BY grp ORDER BY grp"));
                out
            });
            let s = vfs.stats();
            let kind = if mode == "WAL" { FileKind::Wal } else { FileKind::MainJournal };
            assert!(s.opens_of(kind) >= 1, "{}", s.summary());
            assert_links(&s);
            assert_all_closed(&s);
        }
    }
}

/// temp_store=FILE with caches far smaller than the data: sorter runs, temp tables, the temp
/// database's journal, ephemeral tables and statement journals all spill to files.
#[test]
fn temp_files() {
    let vfs = passthrough("temp", PassThroughConfig::default());
    compare(&vfs, |dir, v| {
        let conn = open(&dir.join("main.db"), v);
        exec(&conn, "PRAGMA temp_store=FILE; PRAGMA cache_size=10;");
        // 12000 rows, about 3 MB: more than the 2 MB cache an ephemeral table gets.
        exec(&conn, &fill_sql("t", 12000));
        let mut out = Vec::new();
        // Sorter (ORDER BY, GROUP BY on an expression, CREATE INDEX).
        out.push(rows(&conn, "SELECT id, k FROM t ORDER BY payload DESC, k LIMIT 20 OFFSET 5000"));
        out.push(rows(
            &conn,
            "SELECT substr(k, 5, 3) AS g, count(*), sum(length(payload)) FROM t GROUP BY g ORDER BY g LIMIT 40",
        ));
        exec(&conn, "CREATE UNIQUE INDEX t_k ON t(k)");
        // DISTINCT over more data than an ephemeral table's cache.
        out.push(rows(&conn, "SELECT count(*) FROM (SELECT DISTINCT payload || k FROM t)"));
        out.push(rows(
            &conn,
            "WITH m AS MATERIALIZED (SELECT k || payload AS v FROM t) SELECT count(*), max(v) FROM m",
        ));
        // A temp table larger than the temp database's cache, modified in a transaction (temp
        // journal), then queried.
        exec(&conn, "PRAGMA temp.cache_size=10; CREATE TEMP TABLE tt AS SELECT * FROM t;");
        exec(&conn, "BEGIN; UPDATE tt SET grp = grp * 2, payload = payload || 'x'; COMMIT;");
        out.push(rows(&conn, "SELECT grp, count(*), sum(length(payload)) FROM tt GROUP BY grp ORDER BY grp"));
        // Statement journal: multi-statement transaction, UPDATEs that may hit the UNIQUE index.
        exec(&conn, "BEGIN; UPDATE t SET grp = grp + 1; UPDATE t SET k = k || '!' WHERE id > 10;");
        let failed = conn.execute("UPDATE t SET k = 'dup' WHERE id > 11000", []).is_err();
        out.push(vec![vec![rusqlite::types::Value::Integer(failed.into())]]);
        exec(&conn, "COMMIT;");
        out.push(rows(&conn, "SELECT count(*), sum(grp), max(k) FROM t"));
        out.push(rows(&conn, "PRAGMA integrity_check"));
        out
    });
    let s = vfs.stats();
    for kind in [
        FileKind::MainDb,
        FileKind::MainJournal,
        FileKind::SubJournal,
        FileKind::TempDb,
        FileKind::TempJournal,
        FileKind::TransientDb,
    ] {
        assert!(s.opens_of(kind) >= 1, "{kind:?} never opened: {}", s.summary());
    }
    assert_links(&s);
    assert_all_closed(&s);
}

#[test]
fn vacuum_vacuum_into_and_backup() {
    let vfs = passthrough("vacuum", PassThroughConfig::default());
    compare(&vfs, |dir, v| {
        let path = dir.join("main.db");
        let conn = open(&path, v);
        exec(&conn, "PRAGMA temp_store=FILE; PRAGMA cache_size=10;");
        exec(&conn, &fill_sql("t", 4000));
        exec(&conn, "DELETE FROM t WHERE id % 3 = 0;");
        let before: i64 = one(&conn, "PRAGMA page_count");
        // Plain VACUUM copies the database through a temp database and back.
        exec(&conn, "VACUUM");
        let after: i64 = one(&conn, "PRAGMA page_count");
        assert!(after < before);
        // VACUUM INTO opens a new main database through the connection's VFS.
        let into = dir.join("into.db");
        exec(&conn, &format!("VACUUM INTO '{}'", into.display()));
        // Online backup in both directions between this VFS and plain SQLite.
        let copy = dir.join("backup.db");
        {
            let mut dst = open(&copy, v);
            let b = rusqlite::backup::Backup::new(&conn, &mut dst).unwrap();
            b.run_to_completion(7, std::time::Duration::ZERO, None).unwrap();
        }
        let plain_copy = dir.join("plain-backup.db");
        {
            let mut dst = open(&plain_copy, None);
            let b = rusqlite::backup::Backup::new(&conn, &mut dst).unwrap();
            b.run_to_completion(5, std::time::Duration::ZERO, None).unwrap();
        }
        let restored = dir.join("restored.db");
        {
            let src = open(&plain_copy, None);
            let mut dst = open(&restored, v);
            exec(&dst, "CREATE TABLE junk(x); INSERT INTO junk VALUES (1);");
            let b = rusqlite::backup::Backup::new(&src, &mut dst).unwrap();
            b.run_to_completion(3, std::time::Duration::ZERO, None).unwrap();
        }
        let mut out = vec![vec![vec![rusqlite::types::Value::Integer(after)]]];
        for p in [&path, &into, &copy, &plain_copy, &restored] {
            // Read each copy through the VFS under test and through plain SQLite.
            for (_, r) in dump(&open(p, v), "main") {
                out.push(r);
            }
            for (_, r) in dump(&open(p, None), "main") {
                out.push(r);
            }
        }
        out
    });
    let s = vfs.stats();
    // main.db, into.db, backup.db, restored.db, plus the reopenings.
    assert!(s.opens_of(FileKind::MainDb) >= 8, "{}", s.summary());
    assert!(s.opens_of(FileKind::TempDb) >= 1, "VACUUM's copy: {}", s.summary());
    assert_links(&s);
    assert_all_closed(&s);
}

/// A transaction spanning two rollback-journal databases commits through a super-journal.
#[test]
fn attach_with_super_journal() {
    let vfs = passthrough("attach", PassThroughConfig::default());
    compare(&vfs, |dir, v| {
        let conn = open(&dir.join("main.db"), v);
        let aux = dir.join("aux.db");
        exec(&conn, &format!("ATTACH '{}' AS aux", aux.display()));
        exec(&conn, "PRAGMA main.journal_mode=DELETE; PRAGMA aux.journal_mode=DELETE;");
        exec(&conn, &fill_sql("t", 500));
        exec(&conn, "CREATE TABLE aux.u(id INTEGER PRIMARY KEY, v TEXT);");
        exec(
            &conn,
            "BEGIN;
             INSERT INTO aux.u SELECT id, k FROM main.t WHERE grp < 40;
             UPDATE main.t SET grp = -grp WHERE grp < 40;
             COMMIT;",
        );
        exec(&conn, "BEGIN; DELETE FROM aux.u; DELETE FROM main.t; ROLLBACK;");
        let mut out = vec![
            rows(&conn, "SELECT count(*), sum(grp) FROM main.t"),
            rows(&conn, "SELECT count(*), max(v) FROM aux.u"),
        ];
        out.extend(dump(&conn, "aux").into_iter().map(|(_, r)| r));
        exec(&conn, "DETACH aux");
        out
    });
    let s = vfs.stats();
    assert!(s.opens_of(FileKind::SuperJournal) >= 1, "{}", s.summary());
    assert!(s.opens_of(FileKind::MainJournal) >= 2, "{}", s.summary());
    assert!(s.deletes >= 1, "{}", s.summary());
    assert_links(&s);
    assert_all_closed(&s);
}

/// Two connections on one file, in rollback and WAL mode: each sees the other's commits.
#[test]
fn two_connections() {
    for mode in ["DELETE", "WAL"] {
        let vfs = passthrough(&format!("two-{}", mode.to_lowercase()), PassThroughConfig::default());
        compare(&vfs, |dir, v| {
            let path = dir.join("main.db");
            let a = open(&path, v);
            exec(&a, &format!("PRAGMA journal_mode={mode}; PRAGMA cache_size=10;"));
            exec(&a, &fill_sql("t", 800));
            let b = open(&path, v);
            // No busy waiting: in rollback mode the write below must fail at once.
            exec(&b, "PRAGMA cache_size=10; PRAGMA busy_timeout=0;");
            let mut out = vec![rows(&b, "SELECT count(*) FROM t")];
            exec(&b, "BEGIN IMMEDIATE; UPDATE t SET grp = grp + 100 WHERE id <= 400; COMMIT;");
            out.push(rows(&a, "SELECT count(*) FROM t WHERE grp >= 100"));
            // A reader holds a snapshot (WAL) or a shared lock (rollback) while the other writes.
            exec(&a, "BEGIN; SELECT count(*) FROM t;");
            let write = b.execute("DELETE FROM t WHERE id > 700", []);
            out.push(vec![vec![rusqlite::types::Value::Integer(write.is_ok().into())]]);
            out.push(rows(&a, "SELECT count(*) FROM t"));
            exec(&a, "COMMIT;");
            out.push(rows(&a, "SELECT count(*), sum(grp) FROM t"));
            out.push(rows(&b, "SELECT count(*), sum(grp) FROM t"));
            out
        });
        let s = vfs.stats();
        assert!(s.opens_of(FileKind::MainDb) >= 2, "{}", s.summary());
        if mode == "WAL" {
            assert!(s.opens_of(FileKind::Wal) >= 2, "each connection opens the WAL: {}", s.summary());
        }
        assert_links(&s);
        assert_all_closed(&s);
    }
}

/// Copy a database in the middle of a transaction (rollback: hot journal) or with committed but
/// un-checkpointed frames (WAL), as a crash would leave it, and open the copy: recovery reads
/// the journal / WAL through the shim.
#[test]
fn crash_recovery() {
    for (mode, suffix) in [("DELETE", "-journal"), ("WAL", "-wal")] {
        let vfs = passthrough(&format!("crash-{}", mode.to_lowercase()), PassThroughConfig::default());
        compare(&vfs, |dir, v| {
            let path = dir.join("live.db");
            let conn = open(&path, v);
            exec(&conn, &format!("PRAGMA journal_mode={mode}; PRAGMA cache_size=5;"));
            if mode == "WAL" {
                exec(&conn, "PRAGMA wal_autocheckpoint=0;");
            }
            exec(&conn, &fill_sql("t", 1000));
            let committed = rows(&conn, "SELECT count(*), sum(grp) FROM t");
            if mode == "WAL" {
                exec(&conn, "UPDATE t SET grp = grp + 1000 WHERE id % 2 = 0;");
            } else {
                // Spills (tiny cache), so the journal is on disk and the database half-written.
                exec(&conn, "BEGIN; UPDATE t SET payload = zeroblob(300), grp = 0;");
            }
            let crashed = dir.join("main.db");
            std::fs::copy(&path, &crashed).unwrap();
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let mut crashed_side = crashed.as_os_str().to_owned();
            crashed_side.push(suffix);
            std::fs::copy(&side, &crashed_side).unwrap();
            let recovered = open(&crashed, v);
            let mut out = vec![
                committed,
                rows(&recovered, "SELECT count(*), sum(grp) FROM t"),
                rows(&recovered, "PRAGMA integrity_check"),
            ];
            drop(recovered);
            exec(&conn, if mode == "WAL" { "SELECT 1" } else { "ROLLBACK" });
            out.push(rows(&conn, "SELECT count(*), sum(grp) FROM t"));
            out
        });
        let s = vfs.stats();
        assert_links(&s);
        assert_all_closed(&s);
    }
}
