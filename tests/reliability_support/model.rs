//! Deterministic transaction workloads and their plain-SQLite model: the digest of the
//! database content after every committed transaction.

use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// A small deterministic PRNG (splitmix64), so workloads are reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A list of transactions (SQL bodies without BEGIN/COMMIT); transaction `i` (1-based) takes
/// the content from state `i-1` to state `i`. State 0 is the empty database.
#[derive(Debug, Clone)]
pub struct Workload {
    pub txns: Vec<String>,
    /// `digests[i]` = content digest of state `i`.
    pub digests: Vec<String>,
}

/// Content digest: schema and every row of every table, or "EMPTY" when there is no table.
pub fn digest(c: &Connection) -> rusqlite::Result<String> {
    let mut h = Sha256::new();
    let mut tables = Vec::new();
    {
        let mut st = c.prepare("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY name")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (ty, name, _tbl, sql): (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            h.update(format!("{ty}|{name}|{sql}\n").as_bytes());
            if ty == "table" {
                tables.push(name);
            }
        }
    }
    if tables.is_empty() {
        return Ok("EMPTY".into());
    }
    for t in tables {
        let mut st = c.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))?;
        let n = st.column_count();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..n {
                match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => h.update(b"N"),
                    rusqlite::types::ValueRef::Integer(v) => h.update(format!("I{v}").as_bytes()),
                    rusqlite::types::ValueRef::Real(v) => h.update(format!("R{v}").as_bytes()),
                    rusqlite::types::ValueRef::Text(t) => {
                        h.update(b"T");
                        h.update(t)
                    }
                    rusqlite::types::ValueRef::Blob(b) => {
                        h.update(b"B");
                        h.update((b.len() as u64).to_le_bytes());
                        h.update(b)
                    }
                }
            }
            h.update(b"\n");
        }
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// The power-loss workload: a table with an index, rows of 10..5000-byte blobs (overflow
/// pages at small page sizes), then `n` transactions mixing inserts, updates and deletes.
pub fn powerloss_workload(seed: u64, n: usize) -> Workload {
    let mut rng = Rng(seed);
    let mut txns = Vec::new();
    let mut next_id = 1u64;
    let mut live: Vec<u64> = Vec::new();
    let blob = |rng: &mut Rng| {
        let n = match rng.range(0, 10) {
            0..=5 => rng.range(10, 300),
            6..=8 => rng.range(300, 1500),
            _ => rng.range(1500, 5000),
        } as usize;
        format!("x'{}'", hex::encode(rng.bytes(n)))
    };
    let mut first = String::from("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, w TEXT); CREATE INDEX t_w ON t(w);");
    for _ in 0..6 {
        let b = blob(&mut rng);
        first.push_str(&format!("INSERT INTO t VALUES({next_id}, {b}, 'w{}');", rng.next() % 1000));
        live.push(next_id);
        next_id += 1;
    }
    txns.push(first);
    for _ in 1..n {
        let mut t = String::new();
        for _ in 0..rng.range(1, 6) {
            let b = blob(&mut rng);
            t.push_str(&format!("INSERT INTO t VALUES({next_id}, {b}, 'w{}');", rng.next() % 1000));
            live.push(next_id);
            next_id += 1;
        }
        for _ in 0..rng.range(0, 3) {
            let id = live[rng.range(0, live.len() as u64) as usize];
            let b = blob(&mut rng);
            t.push_str(&format!("UPDATE t SET v = {b}, w = w || 'u' WHERE id = {id};"));
        }
        if rng.range(0, 3) == 0 && live.len() > 3 {
            let i = rng.range(0, live.len() as u64) as usize;
            let id = live.remove(i);
            t.push_str(&format!("DELETE FROM t WHERE id = {id};"));
        }
        txns.push(t);
    }
    let model = Connection::open_in_memory().unwrap();
    let mut digests = vec![digest(&model).unwrap()];
    for t in &txns {
        model.execute_batch(&format!("BEGIN; {t} COMMIT;")).unwrap();
        digests.push(digest(&model).unwrap());
    }
    Workload { txns, digests }
}

/// `PRAGMA integrity_check` as one string ("ok" when healthy).
pub fn integrity(c: &Connection) -> rusqlite::Result<String> {
    let mut st = c.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows.join("; "))
}
