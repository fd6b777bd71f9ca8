//! Harness 2: multi-process torture. Four writer and two reader processes (this test binary,
//! re-executed with a role) share one encrypted database; in WAL mode a seventh process runs
//! checkpoints (PASSIVE, FULL, RESTART, TRUNCATE in turn) as fast as it can. Writers move money
//! between accounts (the total never changes) and log each transfer in a ledger row, in one
//! transaction, and print `commit W S` only after COMMIT returned. Readers check the total in
//! read transactions (and run `quick_check` now and then) and print any violation. Every 5-200
//! ms the parent SIGKILLs a random child and starts a new one in its place.
//!
//! At the end: `integrity_check` ok, the total holds, every commit any child reported is in
//! the ledger, and replaying the ledger over the initial balances gives exactly the balances
//! in the table (each transfer committed atomically with its ledger row).

mod common;
mod reliability_support;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::child::ROLE_VAR;
use reliability_support::model::{integrity, Rng};
use reliability_support::{report, soak_from_env};
use sqlite_tde::Tde;

const KS: &str = "SQLITE_TDE_TORTURE_KEYSTORE";
const DB: &str = "SQLITE_TDE_TORTURE_DB";
const ACCOUNTS: i64 = 64;
const START_BALANCE: i64 = 1000;
const TOTAL: i64 = ACCOUNTS * START_BALANCE;

fn tde_for(keystore: &Path) -> Tde {
    let name = format!("tde-torture-{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        keystore.hash(&mut h);
        h.finish()
    });
    Tde::builder().keystore(keystore).vfs_name(name).register().unwrap()
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Entry point of the child processes (does nothing in a normal test run).
#[test]
fn torture_child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let tde = tde_for(&ks);
    let c = tde.open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    let out = std::io::stdout();
    let mut rng = Rng(std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ 0xABCDEF);
    let parts: Vec<&str> = role.split(':').collect();
    match parts[0] {
        "writer" => {
            let w: i64 = parts[1].parse().unwrap();
            let mut seq: i64 = loop {
                match c.query_row("SELECT coalesce(max(seq), 0) FROM ledger WHERE writer = ?1", [w], |r| r.get(0)) {
                    Ok(s) => break s,
                    Err(e) if is_busy(&e) => continue,
                    Err(e) => panic!("{e}"),
                }
            };
            loop {
                let a = rng.range(1, ACCOUNTS as u64 + 1) as i64;
                let b = rng.range(1, ACCOUNTS as u64 + 1) as i64;
                let amt = rng.range(1, 50) as i64;
                let r = (|| -> rusqlite::Result<()> {
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    c.execute("UPDATE accounts SET bal = bal - ?2 WHERE id = ?1", [a, amt])?;
                    c.execute("UPDATE accounts SET bal = bal + ?2 WHERE id = ?1", [b, amt])?;
                    c.execute(
                        "INSERT INTO ledger(writer, seq, src, dst, amt, pad) VALUES(?1, ?2, ?3, ?4, ?5, randomblob(?6))",
                        rusqlite::params![w, seq + 1, a, b, amt, rng.range(0, 1500) as i64],
                    )?;
                    c.execute_batch("COMMIT")
                })();
                match r {
                    Ok(()) => {
                        seq += 1;
                        writeln!(out.lock(), "commit {w} {seq}").unwrap();
                    }
                    Err(e) if is_busy(&e) => {
                        let _ = c.execute_batch("ROLLBACK");
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
        }
        "reader" => {
            let mut n = 0u64;
            loop {
                let r = (|| -> rusqlite::Result<(i64, i64)> {
                    c.execute_batch("BEGIN")?;
                    let s: (i64, i64) =
                        c.query_row("SELECT sum(bal), count(*) FROM accounts", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    let _: i64 = c.query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))?;
                    c.execute_batch("COMMIT")?;
                    Ok(s)
                })();
                match r {
                    Ok((sum, cnt)) => {
                        if sum != TOTAL || cnt != ACCOUNTS {
                            writeln!(out.lock(), "violation total {sum} accounts {cnt}").unwrap();
                        }
                    }
                    Err(e) if is_busy(&e) => {
                        let _ = c.execute_batch("ROLLBACK");
                    }
                    Err(e) => writeln!(out.lock(), "violation error {e}").unwrap(),
                }
                n += 1;
                if n.is_multiple_of(40) {
                    match c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
                        Ok(s) if s == "ok" => {}
                        Ok(s) => writeln!(out.lock(), "violation quick_check {s}").unwrap(),
                        Err(e) if is_busy(&e) => {}
                        Err(e) => writeln!(out.lock(), "violation quick_check error {e}").unwrap(),
                    }
                }
                writeln!(out.lock(), "read {n}").unwrap();
            }
        }
        "checkpointer" => {
            let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
            for i in 0usize.. {
                match c.query_row(&format!("PRAGMA wal_checkpoint({})", modes[i % 4]), [], |r| r.get::<_, i64>(0)) {
                    Ok(_) => writeln!(out.lock(), "checkpoint {i}").unwrap(),
                    Err(e) if is_busy(&e) => {}
                    Err(e) => writeln!(out.lock(), "violation checkpoint error {e}").unwrap(),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

struct Kid {
    role: String,
    child: Child,
}

fn spawn(role: &str, ks: &Path, db: &Path, slot: usize, tx: &mpsc::Sender<(usize, String)>) -> Kid {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "torture_child_entry", "--nocapture", "--test-threads", "1"])
        .env(ROLE_VAR, role)
        .env(KS, ks)
        .env(DB, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            // libtest prints "test NAME ... " without a newline before the test's own output.
            for key in ["commit ", "violation ", "read ", "checkpoint "] {
                if let Some(at) = line.find(key) {
                    let _ = tx.send((slot, line[at..].to_string()));
                    break;
                }
            }
        }
    });
    Kid { role: role.to_string(), child }
}

fn torture(mode: &str, secs: u64) {
    let env = common::Env::new();
    let ks = env.dir.path().join("torture-ks");
    let db = env.path("bank.sqlite");
    {
        let tde = tde_for(&ks);
        let c = tde.open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL;
             CREATE TABLE accounts(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
             CREATE TABLE ledger(writer INTEGER, seq INTEGER, src INTEGER, dst INTEGER, amt INTEGER, pad BLOB, PRIMARY KEY(writer, seq));
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {ACCOUNTS})
             INSERT INTO accounts SELECT i, {START_BALANCE} FROM n;"
        ))
        .unwrap();
    }
    let mut roles: Vec<String> =
        (1..=4).map(|w| format!("writer:{w}")).chain(["reader".into(), "reader".into()]).collect();
    if mode == "WAL" {
        roles.push("checkpointer".into());
    }
    let (tx, rx) = mpsc::channel();
    let mut kids: Vec<Kid> = roles.iter().enumerate().map(|(i, r)| spawn(r, &ks, &db, i, &tx)).collect();
    let mut rng = Rng(secs ^ mode.len() as u64);
    let mut kills = 0u64;
    let mut kills_by_role: BTreeMap<String, u64> = BTreeMap::new();
    let mut commits: HashSet<(i64, i64)> = HashSet::new();
    let mut violations = Vec::new();
    let (mut reads, mut checkpoints) = (0u64, 0u64);
    let mut absorb = |line: String, commits: &mut HashSet<(i64, i64)>, violations: &mut Vec<String>| {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("commit") => {
                let w: i64 = it.next().unwrap().parse().unwrap();
                let s: i64 = it.next().unwrap().parse().unwrap();
                commits.insert((w, s));
            }
            Some("violation") => violations.push(line),
            Some("read") => reads += 1,
            Some("checkpoint") => checkpoints += 1,
            _ => {}
        }
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let pause = Instant::now() + Duration::from_millis(rng.range(5, 201));
        while let Some(left) = pause.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((_, line)) => absorb(line, &mut commits, &mut violations),
                Err(_) => break,
            }
        }
        let i = rng.range(0, kids.len() as u64) as usize;
        let _ = kids[i].child.kill();
        let status = kids[i].child.wait().unwrap();
        // A child that exits by itself (panic) is a failure, not a kill.
        if status.code().is_some() {
            violations.push(format!("child {} exited by itself: {status}", kids[i].role));
        }
        kills += 1;
        *kills_by_role.entry(kids[i].role.split(':').next().unwrap().to_string()).or_default() += 1;
        let role = kids[i].role.clone();
        kids[i] = spawn(&role, &ks, &db, i, &tx);
    }
    for k in &mut kids {
        let _ = k.child.kill();
        let _ = k.child.wait();
    }
    drop(tx);
    // Reader threads end at EOF of their pipe; drain everything they forwarded.
    while let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(5)) {
        absorb(line, &mut commits, &mut violations);
    }

    let tde = tde_for(&ks);
    let c = tde.open(&db).unwrap();
    let ic = integrity(&c).unwrap();
    let total: i64 = c.query_row("SELECT sum(bal) FROM accounts", [], |r| r.get(0)).unwrap();
    let mut in_db: HashSet<(i64, i64)> = HashSet::new();
    let mut replay: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|i| (i, START_BALANCE)).collect();
    {
        let mut st = c.prepare("SELECT writer, seq, src, dst, amt FROM ledger").unwrap();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            in_db.insert((r.get(0).unwrap(), r.get(1).unwrap()));
            let (src, dst, amt): (i64, i64, i64) = (r.get(2).unwrap(), r.get(3).unwrap(), r.get(4).unwrap());
            *replay.get_mut(&src).unwrap() -= amt;
            *replay.get_mut(&dst).unwrap() += amt;
        }
    }
    let table: BTreeMap<i64, i64> = {
        let mut st = c.prepare("SELECT id, bal FROM accounts").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    };
    let lost: Vec<_> = commits.iter().filter(|k| !in_db.contains(k)).take(10).collect();
    let lost_n = commits.iter().filter(|k| !in_db.contains(k)).count();
    let gaps = {
        // Per writer, ledger sequence numbers must be 1..=max without holes.
        let mut by_w: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (w, s) in &in_db {
            by_w.entry(*w).or_default().push(*s);
        }
        by_w.values().filter(|v| v.len() as i64 != *v.iter().max().unwrap()).count()
    };
    let invariant_violations = violations.len() as u64 + u64::from(total != TOTAL) + u64::from(replay != table);
    report(
        "torture",
        &format!(
            "journal_mode={mode}, {secs}s, {} processes: kills {kills} {kills_by_role:?}, reported commits {}, commits in the ledger {}, lost {lost_n}, \
             invariant violations {invariant_violations}, ledger gaps {gaps}, reader transactions {reads}, checkpoints {checkpoints}, integrity {ic}",
            roles.len(),
            commits.len(),
            in_db.len()
        ),
    );
    assert_eq!(ic, "ok");
    assert_eq!(total, TOTAL, "total balance changed");
    assert_eq!(replay, table, "balances do not match the ledger: a transfer was committed partially");
    assert!(lost.is_empty(), "{lost_n} reported commits lost, e.g. {lost:?}");
    assert!(violations.is_empty(), "violations: {:?}", &violations[..violations.len().min(10)]);
    assert_eq!(gaps, 0, "a writer's ledger has holes");
    assert!(kills > 0 && !commits.is_empty(), "nothing happened");
}

fn secs() -> u64 {
    if soak_from_env() {
        120
    } else {
        8
    }
}

#[test]
fn torture_wal() {
    torture("WAL", secs());
}

#[test]
fn torture_delete() {
    torture("DELETE", secs());
}

#[test]
#[ignore = "soak: 10 minutes per journal mode; run with --ignored"]
fn soak_torture() {
    torture("WAL", 600);
    torture("DELETE", 600);
}
