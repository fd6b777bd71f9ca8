mod common;

#[test]
fn create_write_reopen_read() {
    let env = common::Env::new();
    let db = env.path("a.db");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x TEXT); INSERT INTO t VALUES('TOPSECRET-hello');")
            .unwrap();
    }
    let c = env.tde.open(&db).unwrap();
    let v: String = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "TOPSECRET-hello");
    let st: String = c.query_row("PRAGMA tde_status", [], |r| r.get(0)).unwrap();
    assert!(st.contains("aes-256-xts"), "{st}");
    drop(c);
    for (p, b) in common::files_under(env.dir.path()) {
        assert!(!common::contains(&b, b"TOPSECRET"), "plaintext in {}", p.display());
    }
}
