//! Key inheritance: a database created from a tde connection (`VACUUM INTO`, `ATTACH` of a new
//! file) is created under that connection's CMK unless its URI names another key. Before, such
//! a copy of a database under a restricted key landed under the shared default key, readable
//! by every principal that may use the default key (issue 14, medium).

mod common;

use std::path::Path;

use sqlite_tde::inspect::read_header;
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::OpenOptions;

fn key_of(p: &Path) -> String {
    read_header(p).unwrap().0.key.uri
}

struct Fixture {
    env: common::Env,
    restricted: String,
    other: String,
    conn: rusqlite::Connection,
}

/// A database under a restricted key (`alias/restricted`), with data, open through tde.
fn fixture() -> Fixture {
    let env = common::Env::new();
    let kms = LocalKms::new(env.dir.path().join("keystore"));
    let restricted = format!("local:{}", kms.create_key(Some("alias/restricted"), "restricted").unwrap().key_id);
    let other = format!("local:{}", kms.create_key(Some("alias/other"), "other").unwrap().key_id);
    let opts = OpenOptions { key: Some("alias/restricted".into()), ..Default::default() };
    let conn = env.tde.open_with(env.path("src.db"), &opts).unwrap();
    conn.execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES('restricted data')").unwrap();
    assert_eq!(key_of(&env.path("src.db")), restricted);
    Fixture { env, restricted, other, conn }
}

#[test]
fn vacuum_into_a_new_file_keeps_the_connections_key() {
    let f = fixture();
    let copy = f.env.path("copy.db");
    f.conn.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    assert_eq!(key_of(&copy), f.restricted, "VACUUM INTO downgraded the copy to another key");
    // The copy is a real encrypted database with the data.
    let c = f.env.tde.open(&copy).unwrap();
    let v: String = c.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "restricted data");
}

#[test]
fn vacuum_into_a_uri_naming_a_key_uses_that_key() {
    let f = fixture();
    let copy = f.env.path("copy.db");
    let uri = format!("file:{}?key=alias/other", copy.display());
    f.conn.execute("VACUUM INTO ?1", [uri]).unwrap();
    assert_eq!(key_of(&copy), f.other);
}

#[test]
fn attach_of_a_new_file_keeps_the_connections_key() {
    let f = fixture();
    let aux = f.env.path("aux.db");
    f.conn.execute("ATTACH ?1 AS aux", [aux.to_str().unwrap()]).unwrap();
    f.conn.execute_batch("CREATE TABLE aux.t(v); INSERT INTO aux.t SELECT v FROM main.t").unwrap();
    assert_eq!(key_of(&aux), f.restricted, "ATTACH created the new database under another key");
    // PRAGMA tde_key on the pending attached database names the key it will be created under.
    let named = f.env.path("named.db");
    f.conn.execute("ATTACH ?1 AS named", [named.to_str().unwrap()]).unwrap();
    let pending: String = f.conn.query_row("PRAGMA named.tde_key", [], |r| r.get(0)).unwrap();
    assert_eq!(pending, format!("pending:{}", f.restricted.trim_start_matches("local:")));
    f.conn.query_row("PRAGMA named.tde_key='alias/other'", [], |_| Ok(())).unwrap();
    f.conn.execute_batch("CREATE TABLE named.t(v)").unwrap();
    assert_eq!(key_of(&named), f.other);
}

#[test]
fn attach_of_an_existing_database_keeps_its_own_key() {
    let f = fixture();
    let existing = f.env.path("existing.db");
    let c =
        f.env.tde.open_with(&existing, &OpenOptions { key: Some("alias/other".into()), ..Default::default() }).unwrap();
    c.execute_batch("CREATE TABLE t(v)").unwrap();
    drop(c);
    f.conn.execute("ATTACH ?1 AS e", [existing.to_str().unwrap()]).unwrap();
    f.conn.execute_batch("INSERT INTO e.t VALUES(1)").unwrap();
    assert_eq!(key_of(&existing), f.other);
}

#[test]
fn another_connection_does_not_inherit() {
    let f = fixture();
    // A separate connection in the same process creates under the default key as before.
    let fresh = f.env.path("fresh.db");
    let c = f.env.tde.open(&fresh).unwrap();
    c.execute_batch("CREATE TABLE t(v)").unwrap();
    assert_ne!(key_of(&fresh), f.restricted);
    // ... and its own VACUUM INTO follows its own key, not the other connection's.
    let copy = f.env.path("fresh-copy.db");
    c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    assert_eq!(key_of(&copy), key_of(&fresh));
}

#[test]
fn a_connection_opened_after_another_closed_starts_afresh() {
    let f = fixture();
    drop(f.conn);
    // The next connection may reuse the freed sqlite3 object's address: it must not inherit
    // the closed connection's key.
    for i in 0..20 {
        let p = f.env.path(&format!("later-{i}.db"));
        let c = f.env.tde.open(&p).unwrap();
        let copy = f.env.path(&format!("later-{i}-copy.db"));
        c.execute_batch("CREATE TABLE t(v)").unwrap();
        c.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
        assert_ne!(key_of(&copy), f.restricted, "round {i}");
    }
}
