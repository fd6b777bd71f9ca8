//! Key inheritance: a database that a tde connection creates without naming a key (`VACUUM
//! INTO`, `ATTACH` of a new file) is created under that connection's CMK, not under the
//! VFS's default key. Otherwise a copy of a database under a restricted key would land
//! under the shared default key, readable by every principal that may use it.
//!
//! SQLite tells the VFS which connection opened a file (`SQLITE_FCNTL_PDB`, right after
//! each B-tree open and before any I/O). The first tde main database a connection reports
//! (its `main` schema, opened by `sqlite3_open` before any `ATTACH`) becomes that
//! connection's *origin*; a later new database of the same connection with no key of its own
//! takes the origin's key. The entry lives as long as the origin's file handle: a closed
//! connection's address may be reused by the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlite_vfs::ConnectionId;

#[derive(Default)]
struct Entries {
    next_token: u64,
    origins: HashMap<ConnectionId, (u64, String)>,
}

/// The origins of the connections of one registered VFS.
#[derive(Default, Clone)]
pub struct Lineage {
    entries: Arc<Mutex<Entries>>,
}

/// What a newly reported file learns.
pub enum Reported {
    /// The file is its connection's origin; keep the registration while it is open.
    Origin(Registration),
    /// Another file is the origin, under this key.
    Inherit(String),
}

impl Lineage {
    /// `file_key`: the key the reporting file is (or will be created) under.
    pub fn report(&self, conn: ConnectionId, file_key: &str) -> Reported {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = e.origins.get(&conn) {
            return Reported::Inherit(key.clone());
        }
        e.next_token += 1;
        let token = e.next_token;
        e.origins.insert(conn, (token, file_key.to_string()));
        Reported::Origin(Registration { lineage: self.clone(), conn, token })
    }
}

/// An origin's entry; removed when dropped (the origin's file closed).
pub struct Registration {
    lineage: Lineage,
    conn: ConnectionId,
    token: u64,
}

impl Registration {
    /// The origin's key changed (its header was created or loaded, or `PRAGMA tde_key`).
    pub fn update(&self, key: &str) {
        let mut e = self.lineage.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = e.origins.get_mut(&self.conn).filter(|(t, _)| *t == self.token) {
            entry.1 = key.to_string();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut e = self.lineage.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.origins.get(&self.conn).is_some_and(|(t, _)| *t == self.token) {
            e.origins.remove(&self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_report_is_the_origin_and_later_ones_inherit_until_it_closes() {
        let l = Lineage::default();
        let c = ConnectionId::from_raw(0x1000);
        let Reported::Origin(origin) = l.report(c, "alias/restricted") else { panic!("first is the origin") };
        assert!(matches!(l.report(c, "alias/default"), Reported::Inherit(k) if k == "alias/restricted"));
        origin.update("local:k1");
        assert!(matches!(l.report(c, "x"), Reported::Inherit(k) if k == "local:k1"));
        // Another connection has its own origin.
        assert!(matches!(l.report(ConnectionId::from_raw(0x2000), "y"), Reported::Origin(_)));
        drop(origin);
        // A reused address starts afresh.
        assert!(matches!(l.report(c, "z"), Reported::Origin(_)));
    }
}
