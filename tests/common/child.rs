//! Child processes for crash tests: the test binary re-executes itself with an environment
//! variable naming a role; the parent kills it with SIGKILL at a time of its choosing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

pub const ROLE_VAR: &str = "SQLITE_TDE_TEST_CHILD_ROLE";

/// Spawn this test binary running only `entry_test` with the given role and variables.
pub fn spawn(entry_test: &str, role: &str, vars: &[(&str, &Path)]) -> (Child, BufReader<ChildStdout>) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", entry_test, "--nocapture", "--test-threads", "1"])
        .env(ROLE_VAR, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Read lines until one contains `prefix` (returns the line from there on), or EOF.
pub fn wait_for(out: &mut BufReader<ChildStdout>, prefix: &str) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // libtest prints "test NAME ... " without a newline before the test's own output.
        if let Some(at) = line.find(prefix) {
            return Some(line[at..].trim_end().to_string());
        }
    }
}

/// A VFS over `keystore` registered under a name derived from the keystore path, so a parent
/// and the child processes it spawns agree on it without passing it around.
#[allow(dead_code)] // not every test binary that includes this module spawns tde children
pub fn tde_for(prefix: &str, keystore: &Path) -> sqlite_tde::Tde {
    let name = format!("{prefix}-{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        keystore.hash(&mut h);
        h.finish()
    });
    sqlite_tde::Tde::builder().keystore(keystore).vfs_name(name).register().unwrap()
}
