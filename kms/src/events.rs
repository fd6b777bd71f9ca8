//! Key revocation events inside one process: when the embedded KMS disables a key, schedules
//! its deletion, deletes it, or removes its imported material, every key cache registered
//! here drops the data keys unwrapped under it at once, so no database under that key opens
//! from a cached key afterwards. Other processes see the change at their next KMS call.

use std::sync::{Arc, Mutex, Weak};

/// Something that holds data keys unwrapped under CMKs.
pub trait KeyEventListener: Send + Sync {
    /// The CMK named by `key_uri` (`local:<key id>`) may no longer be used.
    fn key_revoked(&self, key_uri: &str);
}

static LISTENERS: Mutex<Vec<Weak<dyn KeyEventListener>>> = Mutex::new(Vec::new());

/// Register a listener for the life of its `Arc` (dead ones are pruned on the next event).
pub fn subscribe(listener: Weak<dyn KeyEventListener>) {
    let mut l = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    l.retain(|w| w.strong_count() > 0);
    l.push(listener);
}

/// Tell every listener that `key_uri` is revoked. Returns how many listeners were told.
pub fn notify_revoked(key_uri: &str) -> usize {
    let live: Vec<Arc<dyn KeyEventListener>> = {
        let mut l = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(Weak::upgrade).collect()
    };
    for l in &live {
        l.key_revoked(key_uri);
    }
    live.len()
}

/// What a keystore creation reports: where it is and where its root key lives, so the front
/// end can tell the operator what to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreCreated {
    /// The keystore directory.
    pub dir: std::path::PathBuf,
    /// Where the root key is: a file (inside `dir` or the operator's), or `None` when it is
    /// derived from a passphrase.
    pub root_key_file: Option<std::path::PathBuf>,
}

type CreatedHook = Box<dyn Fn(&KeystoreCreated) + Send + Sync>;

static CREATED_HOOKS: Mutex<Vec<CreatedHook>> = Mutex::new(Vec::new());

/// Be told when this process creates a keystore (the CLI prints a notice; the library itself
/// never prints).
pub fn on_keystore_created(hook: impl Fn(&KeystoreCreated) + Send + Sync + 'static) {
    CREATED_HOOKS.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(hook));
}

/// Report a keystore this process just created.
pub fn notify_keystore_created(ev: &KeystoreCreated) {
    for h in CREATED_HOOKS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        h(ev);
    }
}

/// A keystore this process upgraded to a newer format (older builds can no longer read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreUpgraded {
    pub dir: std::path::PathBuf,
    pub from: u32,
    pub to: u32,
}

type UpgradedHook = Box<dyn Fn(&KeystoreUpgraded) + Send + Sync>;

static UPGRADED_HOOKS: Mutex<Vec<UpgradedHook>> = Mutex::new(Vec::new());

/// Be told when this process upgrades a keystore's format (the CLI prints a notice).
pub fn on_keystore_upgraded(hook: impl Fn(&KeystoreUpgraded) + Send + Sync + 'static) {
    UPGRADED_HOOKS.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(hook));
}

/// Report a keystore this process just upgraded.
pub fn notify_keystore_upgraded(ev: &KeystoreUpgraded) {
    for h in UPGRADED_HOOKS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        h(ev);
    }
}
