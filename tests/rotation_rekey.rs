//! Rekey (DEK rotation) end to end: a child process runs a rekey and is killed (abort, no
//! cleanup, like kill -9) at every step of the protocol, in WAL and DELETE modes with page
//! sizes 1024, 4096 and 65536; the next open must finish the rekey by itself with content
//! identical to before and integrity_check ok. Also: crashes during that recovery, kill -9
//! at random times, other processes using the database during a rekey, read-only files,
//! Ctrl-C and `rekey --resume` through the CLI.

mod common;
mod rotation_support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::child::{self, ROLE_VAR};
use rotation_support::{copy_db, open, populate, side, snapshot, status, tde_for, DB, KS};
use sqlite_tde::inspect::read_header;
use sqlite_tde::rotation::{self, RekeyOptions, Step, ENV_CRASH_AT};

const CHUNK_VAR: &str = "SQLITE_TDE_TEST_CHUNK";
const SECONDS_VAR: &str = "SQLITE_TDE_TEST_SECONDS";

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap())
}

/// Entry point of the child processes (does nothing in a normal test run).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let ks = env_path(KS);
    let db = env_path(DB);
    let tde = tde_for(&ks);
    let chunk = std::env::var(CHUNK_VAR).ok().and_then(|c| c.parse().ok());
    let opts = RekeyOptions { chunk, busy_timeout: Duration::from_secs(20), ..RekeyOptions::default() };
    match role.as_str() {
        "rekey" => match rotation::rekey(&tde, &db, &opts) {
            Ok(r) => println!("rekey-done {}", r.status),
            Err(e) => println!("rekey-error {e}"),
        },
        "rekey-loop" => loop {
            let r = rotation::rekey(&tde, &db, &opts).unwrap();
            println!("rekeyed {}", r.status);
        },
        "open" => {
            let c = open(&tde, &db);
            let n: i64 = c.query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap();
            println!("opened {n}");
        }
        "worker" => worker(&tde, &db),
        "holder" => {
            let c = open(&tde, &db);
            let n: i64 = c.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0)).unwrap();
            println!("holding {n}");
            std::thread::sleep(Duration::from_secs(std::env::var(SECONDS_VAR).unwrap().parse().unwrap()));
            let n: i64 = c.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
            println!("holder ok {n}");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Transfers between accounts (the total is invariant) plus a log row per transaction, for
/// SQLITE_TDE_TEST_SECONDS; prints `worker ok N` (committed transactions) or `worker BAD`.
fn worker(tde: &sqlite_tde::Tde, db: &Path) {
    let secs: u64 = std::env::var(SECONDS_VAR).unwrap().parse().unwrap();
    let c = open(tde, db);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut committed = 0u64;
    let mut i = std::process::id() as i64;
    while Instant::now() < deadline {
        i += 1;
        let r = (|| -> rusqlite::Result<()> {
            let tx = c.unchecked_transaction()?;
            let total: i64 = tx.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))?;
            if total != 100 * 1000 {
                println!("worker BAD total {total}");
                std::process::exit(2);
            }
            tx.execute("UPDATE accounts SET balance = balance - 7 WHERE id = ?1", [i % 100])?;
            tx.execute("UPDATE accounts SET balance = balance + 7 WHERE id = ?1", [(i * 7) % 100])?;
            tx.execute("INSERT INTO log(who, pad) VALUES(?1, randomblob(200))", [std::process::id()])?;
            tx.commit()
        })();
        match r {
            Ok(()) => committed += 1,
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            Err(e) => {
                println!("worker BAD error {e}");
                std::process::exit(2);
            }
        }
    }
    let ok: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    println!("worker ok {committed} {ok}");
}

struct Template {
    db: PathBuf,
    snap: Vec<String>,
    kcv: [u8; 32],
}

/// A populated database in `mode` with `page_size`; in WAL mode part of the content is still
/// in the WAL (the rekey must checkpoint it first).
fn template(dir: &Path, ks: &Path, mode: &str, page_size: u32) -> Template {
    let tde = tde_for(ks);
    let tdir = dir.join(format!("tpl-{mode}-{page_size}"));
    std::fs::create_dir_all(&tdir).unwrap();
    let db = tdir.join("t.db");
    let c = tde.open(&db).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={page_size}; PRAGMA journal_mode={mode}; PRAGMA wal_autocheckpoint=0;"))
        .unwrap();
    populate(&c, 1500);
    c.execute_batch("UPDATE items SET name = name || '-u' WHERE id % 5 = 0; DELETE FROM kv WHERE length(v) % 3 = 0;")
        .unwrap();
    let snap = snapshot(&c);
    assert_eq!(snap[4], "ok");
    let ps: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(ps, page_size as i64);
    // Copy while open: in WAL mode the WAL keeps frames that were never checkpointed.
    let out = dir.join(format!("copy-{mode}-{page_size}"));
    std::fs::create_dir_all(&out).unwrap();
    let copy = copy_db(&db, &out);
    if mode == "wal" {
        assert!(std::fs::metadata(side(&copy, "-tdewal")).unwrap().len() > 0);
    }
    drop(c);
    let (h, _) = read_header(&copy).unwrap();
    Template { db: copy, snap, kcv: h.kcv }
}

fn run_child(role: &str, ks: &Path, db: &Path, crash: Option<&str>, chunk: u64) -> (Option<i32>, Vec<String>) {
    let chunk_s = chunk.to_string();
    let mut vars: Vec<(&str, &Path)> = vec![(KS, ks), (DB, db), (CHUNK_VAR, Path::new(&chunk_s))];
    if let Some(c) = crash {
        vars.push((ENV_CRASH_AT, Path::new(c)));
    }
    let (mut ch, out) = child::spawn("child_entry", role, &vars);
    let lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
    let st = ch.wait().unwrap();
    (st.code(), lines)
}

fn position(step: Step) -> usize {
    Step::REKEY.iter().position(|s| *s == step).unwrap()
}

/// After a crash: open (which finishes the rekey), compare, check the header is
/// unambiguous and the key is the new one once the rekey state was written.
fn verify_after_crash(tpl: &Template, ks: &Path, db: &Path, what: &str, expect_new: Option<bool>) {
    let tde = tde_for(ks);
    {
        let c = open(&tde, db);
        assert_eq!(snapshot(&c), tpl.snap, "content after {what}");
        let st = status(&c);
        assert_eq!(st["state"], "open", "{what}: {st}");
    }
    let (h, _) = read_header(db).unwrap();
    assert!(h.rekey.is_none(), "{what}: rekey still in progress after open");
    match expect_new {
        Some(true) => assert_ne!(h.kcv, tpl.kcv, "{what}: the rekey was durable and must have finished"),
        Some(false) => assert_eq!(h.kcv, tpl.kcv, "{what}: nothing was written, the old key stays"),
        None => {}
    }
}

fn crash_matrix(mode: &str) {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let chunk = 256 << 10;
    let mut cases = 0;
    let started = Instant::now();
    for page_size in [1024u32, 4096, 65536] {
        let tpl = template(env.dir.path(), &ks, mode, page_size);
        for step in Step::REKEY {
            if matches!(step, Step::RecoverRestored | Step::RecoverSynced) {
                continue;
            }
            let per_chunk = matches!(
                step,
                Step::JournalDataWritten
                    | Step::JournalDataSynced
                    | Step::JournalWritten
                    | Step::JournalSynced
                    | Step::DataHalfWritten
                    | Step::DataWritten
                    | Step::DataSynced
                    | Step::ProgressWritten
                    | Step::ProgressSynced
            );
            for n in if per_chunk { vec![0u64, 2] } else { vec![0] } {
                let dir = env.dir.path().join(format!("case-{mode}-{page_size}-{}-{n}", step.name()));
                std::fs::create_dir_all(&dir).unwrap();
                let db = copy_db(&tpl.db, &dir);
                let spec = format!("rekey:{}@{n}", step.name());
                let (code, lines) = run_child("rekey", &ks, &db, Some(&spec), chunk);
                assert_eq!(code, None, "{spec}: the child should have died at the crash point: {lines:?}");
                // The child died with SQLite's locks held: the kernel released them.
                let (h, _) = read_header(&db).unwrap();
                let in_progress = h.rekey.is_some();
                let after_begin = position(step) >= position(Step::BeginHeaderWritten);
                assert_eq!(
                    in_progress,
                    after_begin && position(step) < position(Step::FinalWritten),
                    "{spec}: header state"
                );
                let stale_journal_ok = position(step) >= position(Step::FinalWritten) && step != Step::JournalRemoved;
                verify_after_crash(
                    &tpl,
                    &ks,
                    &db,
                    &format!("{spec} ({mode}, page size {page_size})"),
                    Some(after_begin),
                );
                let journal = side(&db, "-tderekey").exists();
                assert!(!journal || stale_journal_ok, "{spec}: rekey journal left behind");
                cases += 1;
            }
        }
    }
    eprintln!("rekey crash matrix {mode}: {cases} crashes at every step, recovered at open ({:?})", started.elapsed());
}

#[test]
fn rekey_killed_at_every_step_wal() {
    crash_matrix("wal");
}

#[test]
fn rekey_killed_at_every_step_delete() {
    crash_matrix("delete");
}

/// A second crash, during the recovery of the first, at every recovery step.
fn recovery_crashes(mode: &str) {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tpl = template(env.dir.path(), &ks, mode, 4096);
    let mut cases = 0;
    for step in Step::REKEY {
        if matches!(step, Step::BeginGenerated | Step::BeginHeaderWritten | Step::BeginHeaderSynced) {
            continue;
        }
        let dir = env.dir.path().join(format!("rcase-{}", step.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl.db, &dir);
        let (code, _) = run_child("rekey", &ks, &db, Some("rekey:data-half-written@1"), 256 << 10);
        assert_eq!(code, None);
        let spec = format!("recover:{}@0", step.name());
        let (code, lines) = run_child("open", &ks, &db, Some(&spec), 0);
        assert_eq!(code, None, "{spec}: the recovering open should have died: {lines:?}");
        verify_after_crash(&tpl, &ks, &db, &format!("{spec} after a torn chunk ({mode})"), Some(true));
        cases += 1;
    }
    eprintln!("rekey recovery crashes {mode}: {cases}");
}

#[test]
fn recovery_killed_at_every_step_wal() {
    recovery_crashes("wal");
}

#[test]
fn recovery_killed_at_every_step_delete() {
    recovery_crashes("delete");
}

/// kill -9 from outside at random moments of back-to-back rekeys.
#[test]
fn kill9_at_random_times() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let mut kills = 0;
    for mode in ["wal", "delete"] {
        let tpl = template(env.dir.path(), &ks, mode, 4096);
        let dir = env.dir.path().join(format!("kill-{mode}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl.db, &dir);
        let mut seed = 0x9E3779B97F4A7C15u64 ^ mode.len() as u64;
        for round in 0..5 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let chunk = (64u64 << 10).to_string();
            let (mut ch, mut out) =
                child::spawn("child_entry", "rekey-loop", &[(KS, &ks), (DB, &db), (CHUNK_VAR, Path::new(&chunk))]);
            if round > 0 {
                // Let at least one rekey start.
                let _ = child::wait_for(&mut out, "rekeyed");
            }
            std::thread::sleep(Duration::from_millis(20 + seed % 300));
            ch.kill().unwrap();
            ch.wait().unwrap();
            kills += 1;
            verify_after_crash(&tpl, &ks, &db, &format!("kill -9 round {round} ({mode})"), None);
        }
    }
    eprintln!("kill -9 at random times: {kills} kills, content identical after each");
}

fn accounts_db(dir: &Path, ks: &Path, mode: &str) -> PathBuf {
    let tde = tde_for(ks);
    let db = dir.join(format!("accounts-{mode}.db"));
    let c = tde.open(&db).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode};
         CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE log(n INTEGER PRIMARY KEY, who INTEGER, pad BLOB);
         WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM r WHERE i<99) INSERT INTO accounts SELECT i, 1000 FROM r;
         WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM r WHERE i<3000) INSERT INTO log(who, pad) SELECT 0, randomblob(300) FROM r;"
    ))
    .unwrap();
    db
}

/// Rollback mode: two other processes keep reading and writing while the database is rekeyed
/// three times. They wait (busy handler) during each rekey and continue under the new key:
/// no invariant broken, no error but SQLITE_BUSY, nothing lost.
#[test]
fn rekey_while_other_processes_read_and_write_rollback() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let db = accounts_db(env.dir.path(), &ks, "delete");
    let secs = Path::new("6");
    let workers: Vec<_> =
        (0..2).map(|_| child::spawn("child_entry", "worker", &[(KS, &ks), (DB, &db), (SECONDS_VAR, secs)])).collect();
    let tde = tde_for(&ks);
    std::thread::sleep(Duration::from_millis(500));
    let mut kcvs = vec![read_header(&db).unwrap().0.kcv];
    for _ in 0..3 {
        let r = rotation::rekey(
            &tde,
            &db,
            &RekeyOptions { busy_timeout: Duration::from_secs(20), chunk: Some(64 << 10), ..Default::default() },
        )
        .unwrap();
        assert_eq!(r.status, "done");
        kcvs.push(read_header(&db).unwrap().0.kcv);
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut total = 0u64;
    for (mut ch, mut out) in workers {
        let line = child::wait_for(&mut out, "worker ").unwrap();
        ch.wait().unwrap();
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts[1], "ok", "{line}");
        assert_eq!(parts[3], "ok", "{line}");
        total += parts[2].parse::<u64>().unwrap();
    }
    kcvs.dedup();
    assert_eq!(kcvs.len(), 4, "three distinct new keys");
    let c = open(&tde, &db);
    let (sum, logged): (i64, i64) = c
        .query_row("SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM log WHERE who != 0)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(sum, 100_000);
    assert_eq!(logged as u64, total, "every acknowledged commit is there");
    let ic: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ic, "ok");
    assert!(total > 10, "workers made progress ({total})");
    eprintln!("rollback mode: 3 rekeys while 2 processes committed {total} transactions");
}

/// WAL mode: a connection in another process holds a shared lock for its life, so a rekey
/// gets SQLITE_BUSY (clearly) instead of waiting forever or touching anything; once the
/// other process is gone it succeeds.
#[test]
fn rekey_in_wal_mode_is_refused_while_others_are_connected() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let db = accounts_db(env.dir.path(), &ks, "wal");
    let tde = tde_for(&ks);
    let before = snapshot_accounts(&tde, &db);
    let (mut ch, mut out) =
        child::spawn("child_entry", "holder", &[(KS, &ks), (DB, &db), (SECONDS_VAR, Path::new("4"))]);
    assert!(child::wait_for(&mut out, "holding").is_some());
    let (h0, _) = read_header(&db).unwrap();
    let t = Instant::now();
    let err =
        rotation::rekey(&tde, &db, &RekeyOptions { busy_timeout: Duration::from_millis(800), ..Default::default() })
            .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("in use") || msg.contains("locked") || msg.contains("busy"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(4), "the refusal took {:?}", t.elapsed());
    let (h1, _) = read_header(&db).unwrap();
    assert_eq!(h0, h1, "a refused rekey changes nothing");
    let line = child::wait_for(&mut out, "holder ok").unwrap();
    assert_eq!(line, "holder ok 100000");
    ch.wait().unwrap();
    let r = rotation::rekey(&tde, &db, &RekeyOptions::default()).unwrap();
    assert_eq!(r.status, "done");
    assert_eq!(snapshot_accounts(&tde, &db), before);
}

fn snapshot_accounts(tde: &sqlite_tde::Tde, db: &Path) -> (i64, i64, String) {
    let c = open(tde, db);
    c.query_row(
        "SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM log), (SELECT hex(sha) FROM (SELECT group_concat(hex(pad)) AS sha FROM (SELECT pad FROM log ORDER BY n LIMIT 50)))",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// Connections of the same process: an idle rollback-mode connection picks up the new key at
/// its next transaction; a WAL-mode connection makes the rekey refuse.
#[test]
fn same_process_connections() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let db = accounts_db(env.dir.path(), &ks, "delete");
    let a = open(&tde, &db);
    let s0 = status(&a)["cipher_generation"].as_u64().unwrap();
    rotation::rekey(&tde, &db, &RekeyOptions::default()).unwrap();
    let sum: i64 = a.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, 100_000);
    a.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1", []).unwrap();
    a.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2", []).unwrap();
    assert!(status(&a)["cipher_generation"].as_u64().unwrap() > s0, "the idle connection switched to the new key");
    drop(a);
    let c = open(&tde, &db);
    let ic: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ic, "ok");
    drop(c);

    let wal = accounts_db(env.dir.path(), &ks, "wal");
    let holder = open(&tde, &wal);
    let _: i64 = holder.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0)).unwrap();
    let e =
        rotation::rekey(&tde, &wal, &RekeyOptions { busy_timeout: Duration::from_millis(300), ..Default::default() })
            .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    let sum: i64 = holder.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, 100_000);
}

#[test]
fn read_only_file_and_connection_get_clear_errors() {
    use std::os::unix::fs::PermissionsExt;
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let db = accounts_db(env.dir.path(), &ks, "delete");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = rotation::rekey(&tde, &db, &RekeyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A read-only connection cannot finish an interrupted rekey: it says so.
    let (code, _) = run_child("rekey", &ks, &db, Some("rekey:progress-synced@0"), 16 << 10);
    assert_eq!(code, None);
    let ro = tde.open_with(
        &db,
        &sqlite_tde::OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() },
    );
    let e = ro.expect_err("a read-only open of a half-rekeyed database must fail");
    assert!(e.to_string().contains("read-only") && e.to_string().contains("rekey"), "{e}");
    // A read-write open finishes it.
    let c = open(&tde, &db);
    let sum: i64 = c.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, 100_000);
}

fn cli(ks: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlite-tde"));
    for v in
        ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE", ENV_CRASH_AT]
    {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(ks);
    c
}

/// Ctrl-C stops a rekey cleanly (exit 130, rekey state recorded), `rekey --resume` finishes
/// it, `info` reports both states, `--json` prints progress lines.
#[test]
fn cli_ctrl_c_and_resume() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let db = env.path("big.db");
    {
        let c = tde.open(&db).unwrap();
        populate(&c, 12_000);
    }
    let snap = snapshot(&open(&tde, &db));
    let mut child = cli(&ks)
        .args(["--json", "rekey", "--chunk-size", "4096"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut progress_lines = 0;
    while progress_lines < 3 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no progress line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "progress");
        progress_lines += 1;
    }
    let t = Instant::now();
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(130), "exit code after Ctrl-C");
    assert!(t.elapsed() < Duration::from_secs(5), "stopping took {:?}", t.elapsed());
    let info = cli(&ks).args(["--json", "info"]).arg(&db).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["rekey_in_progress"], true, "{v}");
    assert!(v["rekey_progress"].as_u64().unwrap() > 0);
    let out = cli(&ks).args(["rekey", "--resume"]).arg(&db).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("finished the interrupted rekey"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let info = cli(&ks).args(["--json", "info"]).arg(&db).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["rekey_in_progress"], false);
    assert_eq!(snapshot(&open(&tde, &db)), snap);
    let out = cli(&ks).args(["rekey", "--resume"]).arg(&db).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no rekey in progress"));
    // A plain rekey prints one line.
    let out = cli(&ks).args(["rekey"]).arg(&db).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rekeyed "), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Every way a database must stay readable after a failed rekey: same bytes as `before`,
/// no rekey journal, read-only and read-write opens and the already open `held` connection
/// all see `snap`, and the key did not change.
fn assert_untouched(tde: &sqlite_tde::Tde, db: &Path, before: &[u8; 32], snap: &[String], held: &rusqlite::Connection) {
    assert_eq!(&rotation_support::file_hash(db), before, "the database file changed");
    assert!(!side(db, "-tderekey").exists(), "rekey journal left behind");
    let ro = tde
        .open_with(db, &sqlite_tde::OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() })
        .unwrap();
    assert_eq!(snapshot(&ro), snap, "read-only open");
    drop(ro);
    assert_eq!(snapshot(&open(tde, db)), snap, "read-write open");
    assert_eq!(snapshot(held), snap, "already open connection");
    assert_eq!(&rotation_support::file_hash(db), before, "reading changed the file");
}

/// Issue 12.3: a rekey on a full disk fails with a clear "no space" error before it writes
/// the rekey state, and the database stays readable by everyone; with space back, it works.
#[test]
fn rekey_on_a_full_disk_fails_before_touching_the_database() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let Some(fs) = rotation_support::SmallFs::mount(
        "rekey_on_a_full_disk_fails_before_touching_the_database",
        env.dir.path(),
        8192,
    ) else {
        return;
    };
    let db = fs.dir.join("t.db");
    {
        let c = tde.open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
        populate(&c, 1500);
    }
    let held = open(&tde, &db);
    let snap = snapshot(&held);
    let (h0, _) = read_header(&db).unwrap();
    let before = rotation_support::file_hash(&db);
    // The journal needs one record of the whole (small) database; leave half of that.
    let journal = 128 + std::fs::metadata(&db).unwrap().len() - 8192;
    fs.fill_leaving(journal / 2);
    assert!(fs.free_bytes() < journal, "{} bytes free, the journal needs {journal}", fs.free_bytes());

    let e = rotation::rekey(&tde, &db, &RekeyOptions::default()).unwrap_err();
    assert!(matches!(e, sqlite_tde::Error::NoSpace { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("no space left on device") && msg.contains("nothing was changed"), "{msg}");
    assert_untouched(&tde, &db, &before, &snap, &held);

    fs.free();
    drop(held);
    let r = rotation::rekey(&tde, &db, &RekeyOptions::default()).unwrap();
    assert_eq!(r.status, "done");
    let (h1, _) = read_header(&db).unwrap();
    assert_ne!(h1.kcv, h0.kcv, "the rekey with space back must rotate the key");
    assert_eq!(snapshot(&open(&tde, &db)), snap);
}

/// Issue 12.3: space runs out after the rekey state was written but before the first chunk
/// was committed (injected at each step in between): the rekey is rolled back, the database
/// file is byte for byte as before and readable. A failure once the first chunk's progress
/// is being written is not undone: the next open finishes the rekey.
#[test]
fn rekey_failing_before_the_first_chunk_commits_is_rolled_back() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let tpl = template(env.dir.path(), &ks, "delete", 4096);
    let chunk = (256u64 << 10).to_string();
    for step in [
        Step::BeginHeaderWritten,
        Step::BeginHeaderSynced,
        Step::JournalDataWritten,
        Step::JournalWritten,
        Step::JournalSynced,
        Step::DataHalfWritten,
        Step::DataSynced,
        Step::ProgressWritten,
    ] {
        let dir = env.dir.path().join(format!("fail-{}", step.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl.db, &dir);
        let held = open(&tde, &db);
        let before = rotation_support::file_hash(&db);
        let spec = format!("rekey:{}@0", step.name());
        let vars: Vec<(&str, &Path)> =
            vec![(KS, &ks), (DB, &db), (CHUNK_VAR, Path::new(&chunk)), (rotation::ENV_FAIL_AT, Path::new(&spec))];
        let (mut ch, out) = child::spawn("child_entry", "rekey", &vars);
        let lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
        assert_eq!(ch.wait().unwrap().code(), Some(0), "{spec}: {lines:?}");
        let line = lines.iter().find(|l| l.contains("rekey-")).unwrap_or_else(|| panic!("{spec}: {lines:?}"));
        assert!(line.contains("test fault injection"), "{spec}: the injected fault must surface: {line}");
        if step == Step::ProgressWritten {
            assert!(!line.contains("rolled back"), "{spec}: a committed chunk is not undone: {line}");
            drop(held);
            verify_after_crash(&tpl, &ks, &db, &spec, Some(true));
            continue;
        }
        assert!(line.contains("rolled back") && line.contains("unchanged"), "{spec}: {line}");
        assert_untouched(&tde, &db, &before, &tpl.snap, &held);
        let (h, _) = read_header(&db).unwrap();
        assert_eq!(h.kcv, tpl.kcv, "{spec}: the old key stays");
    }
}

/// The rollback of a failed rekey is itself crash-safe: killed after each of its steps, the
/// next open finds either the rekey still recorded at progress 0 (and finishes it) or the
/// original header (the file byte for byte as before); the content is the same either way.
#[test]
fn rekey_rollback_killed_at_every_step() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tpl = template(env.dir.path(), &ks, "delete", 4096);
    let chunk = (256u64 << 10).to_string();
    for crash in [Step::RollbackHotzoneRestored, Step::RollbackHeaderRestored] {
        let dir = env.dir.path().join(format!("rb-{}", crash.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl.db, &dir);
        let before = rotation_support::file_hash(&db);
        let fail = "rekey:data-synced@0";
        let spec = format!("rekey:{}@0", crash.name());
        let vars: Vec<(&str, &Path)> = vec![
            (KS, &ks),
            (DB, &db),
            (CHUNK_VAR, Path::new(&chunk)),
            (rotation::ENV_FAIL_AT, Path::new(fail)),
            (ENV_CRASH_AT, Path::new(&spec)),
        ];
        let (mut ch, out) = child::spawn("child_entry", "rekey", &vars);
        let lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
        assert_eq!(ch.wait().unwrap().code(), None, "{spec}: the child should have died in the rollback: {lines:?}");
        let restored = crash == Step::RollbackHeaderRestored;
        if restored {
            assert_eq!(rotation_support::file_hash(&db), before, "{spec}: the header slot is back");
        }
        verify_after_crash(&tpl, &ks, &db, &format!("{fail} then {spec}"), Some(!restored));
    }
}
