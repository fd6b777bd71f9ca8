//! `openbao+http://` (no TLS) carries the OpenBao token and every data key in the clear, so it
//! is accepted for a loopback server only (the other OpenBao tests use 127.0.0.1); any other
//! host is refused before anything is sent, unless `SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP=1`, which
//! prints a warning. Real `sqlite-tde` processes; 192.0.2.1 is TEST-NET-1 (never routed).

mod kms_support;

use std::path::Path;

const FAR: &str = "openbao+http://192.0.2.1:8200/transit/k";

fn sql(dir: &Path, allow: Option<&str>) -> std::process::Output {
    let mut c = kms_support::cli_std(&dir.join("ks"));
    for v in ["BAO_TOKEN", "VAULT_TOKEN", "SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP"] {
        c.env_remove(v);
    }
    c.env("BAO_TOKEN", "s.not-a-real-token")
        .env("SQLITE_TDE_KMS_TIMEOUT_MS", "300")
        .env("SQLITE_TDE_KMS_RETRIES", "0")
        .args(["--kms", FAR, "sql"])
        .arg(dir.join("app.db"))
        .arg("CREATE TABLE t(x)");
    if let Some(a) = allow {
        c.env("SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP", a);
    }
    c.output().unwrap()
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for allow in [None, Some("0")] {
        let out = sql(dir.path(), allow);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("refusing http://192.0.2.1:8200: plain http to a host other than loopback"), "{err}");
        assert!(err.contains("SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP=1"), "{err}");
        assert!(!err.contains("cannot reach"), "it dialled the server: {err}");
        assert!(!dir.path().join("app.db").exists(), "a database was created");
    }
}

#[test]
fn plain_http_to_a_remote_host_when_allowed_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = sql(dir.path(), Some("1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARNING: SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP is set: talking plain http to http://192.0.2.1:8200"),
        "{err}"
    );
    // Accepted: it went on to try the server (which does not exist).
    assert!(err.contains("cannot reach OpenBao at http://192.0.2.1:8200"), "{err}");
    assert!(!out.status.success());
    let bad = sql(dir.path(), Some("maybe"));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP must be 1 or 0"));
}
