//! Key policies: which principal may perform which action on a CMK (separation of duties).
//!
//! A policy is a list of statements, each allowing or denying actions to principals. An
//! action is allowed when some `allow` statement matches it and no `deny` statement does.
//! Patterns: an action ending in `*` matches by prefix (`kms:GenerateDataKey*`, `kms:*`), the
//! principal `*` matches everyone.
//!
//! Built-in roles: *key-user* (cryptographic operations) and *key-admin* (lifecycle and
//! policy, no cryptographic operation).

use serde::{Deserialize, Serialize};

/// Action names (cloud-KMS spelling).
pub mod actions {
    pub const ENCRYPT: &str = "kms:Encrypt";
    pub const DECRYPT: &str = "kms:Decrypt";
    pub const GENERATE_DATA_KEY: &str = "kms:GenerateDataKey";
    pub const GENERATE_DATA_KEY_WITHOUT_PLAINTEXT: &str = "kms:GenerateDataKeyWithoutPlaintext";
    pub const RE_ENCRYPT_FROM: &str = "kms:ReEncryptFrom";
    pub const RE_ENCRYPT_TO: &str = "kms:ReEncryptTo";
    pub const DESCRIBE_KEY: &str = "kms:DescribeKey";
    pub const ENABLE_KEY: &str = "kms:EnableKey";
    pub const DISABLE_KEY: &str = "kms:DisableKey";
    pub const SCHEDULE_KEY_DELETION: &str = "kms:ScheduleKeyDeletion";
    pub const CANCEL_KEY_DELETION: &str = "kms:CancelKeyDeletion";
    pub const ROTATE_KEY: &str = "kms:RotateKey";
    pub const ENABLE_KEY_ROTATION: &str = "kms:EnableKeyRotation";
    pub const DISABLE_KEY_ROTATION: &str = "kms:DisableKeyRotation";
    pub const GET_KEY_POLICY: &str = "kms:GetKeyPolicy";
    pub const PUT_KEY_POLICY: &str = "kms:PutKeyPolicy";
    pub const CREATE_ALIAS: &str = "kms:CreateAlias";
    pub const UPDATE_ALIAS: &str = "kms:UpdateAlias";
    pub const DELETE_ALIAS: &str = "kms:DeleteAlias";
    pub const GET_PARAMETERS_FOR_IMPORT: &str = "kms:GetParametersForImport";
    pub const IMPORT_KEY_MATERIAL: &str = "kms:ImportKeyMaterial";
    pub const DELETE_IMPORTED_KEY_MATERIAL: &str = "kms:DeleteImportedKeyMaterial";
    /// Read the audit records of this key (key-admin role; operators read every record).
    pub const READ_AUDIT: &str = "kms:ReadAudit";
    /// Not an operation: lets a holder of `kms:PutKeyPolicy` give itself rights it does not
    /// hold (cryptographic use, or this one). Outside both built-in roles, so a key-admin
    /// cannot turn itself into a key-user.
    pub const GRANT_SELF: &str = "kms:GrantSelf";
}

/// Account-level actions: not in key policies, held by the keystore's operators
/// (`LocalKms::is_operator`). Listings (keys, aliases, lint, the audit log) are not refused
/// to anyone else but filtered to what its key policies let it use or read; verifying the
/// whole audit trail is refused.
pub mod account {
    pub const VERIFY_AUDIT: &str = "kms:VerifyAudit";
}

use actions::*;

/// Every action a policy can name (for validation and lint).
pub const ALL_ACTIONS: &[&str] = &[
    ENCRYPT,
    DECRYPT,
    GENERATE_DATA_KEY,
    GENERATE_DATA_KEY_WITHOUT_PLAINTEXT,
    RE_ENCRYPT_FROM,
    RE_ENCRYPT_TO,
    DESCRIBE_KEY,
    ENABLE_KEY,
    DISABLE_KEY,
    SCHEDULE_KEY_DELETION,
    CANCEL_KEY_DELETION,
    ROTATE_KEY,
    ENABLE_KEY_ROTATION,
    DISABLE_KEY_ROTATION,
    GET_KEY_POLICY,
    PUT_KEY_POLICY,
    CREATE_ALIAS,
    UPDATE_ALIAS,
    DELETE_ALIAS,
    GET_PARAMETERS_FOR_IMPORT,
    IMPORT_KEY_MATERIAL,
    DELETE_IMPORTED_KEY_MATERIAL,
    READ_AUDIT,
    GRANT_SELF,
];

/// Rights a principal may not give itself through `kms:PutKeyPolicy` unless the current
/// policy already lets it ([`GRANT_SELF`]): every use of the key material, and the permission
/// to self-grant. Without this a key-admin edits itself into a key-user.
pub const SELF_GRANT_GUARDED: &[&str] = &[
    ENCRYPT,
    DECRYPT,
    GENERATE_DATA_KEY,
    GENERATE_DATA_KEY_WITHOUT_PLAINTEXT,
    RE_ENCRYPT_FROM,
    RE_ENCRYPT_TO,
    GRANT_SELF,
];

/// The key-user role: cryptographic operations only.
pub const KEY_USER_ACTIONS: &[&str] = &[ENCRYPT, DECRYPT, "kms:ReEncrypt*", "kms:GenerateDataKey*", DESCRIBE_KEY];

/// The key-admin role: lifecycle, rotation, aliases, policy and import; no cryptographic
/// operation.
pub const KEY_ADMIN_ACTIONS: &[&str] = &[
    DESCRIBE_KEY,
    ENABLE_KEY,
    DISABLE_KEY,
    SCHEDULE_KEY_DELETION,
    CANCEL_KEY_DELETION,
    ROTATE_KEY,
    ENABLE_KEY_ROTATION,
    DISABLE_KEY_ROTATION,
    GET_KEY_POLICY,
    PUT_KEY_POLICY,
    CREATE_ALIAS,
    UPDATE_ALIAS,
    DELETE_ALIAS,
    GET_PARAMETERS_FOR_IMPORT,
    IMPORT_KEY_MATERIAL,
    DELETE_IMPORTED_KEY_MATERIAL,
    READ_AUDIT,
];

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// One statement of a key policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Free-form statement name (`key-admin`, `key-user` for the built-in roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default)]
    pub effect: Effect,
    pub principals: Vec<String>,
    pub actions: Vec<String>,
}

/// A key policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    #[serde(default = "one")]
    pub version: u32,
    pub statements: Vec<Statement>,
}

fn one() -> u32 {
    1
}

fn action_matches(pattern: &str, action: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => pattern == action,
    }
}

fn principal_matches(pattern: &str, principal: &str) -> bool {
    pattern == "*" || pattern == principal
}

impl KeyPolicy {
    /// The policy of a key created with `--admin`/`--user`; with neither, the creator holds
    /// both roles (the default policy of a cloud KMS).
    pub fn for_new_key(creator: &str, admins: &[String], users: &[String]) -> KeyPolicy {
        if admins.is_empty() && users.is_empty() {
            return KeyPolicy::with_roles(&[creator.to_string()], &[creator.to_string()]);
        }
        KeyPolicy::with_roles(admins, users)
    }

    /// Statements granting the two built-in roles.
    pub fn with_roles(admins: &[String], users: &[String]) -> KeyPolicy {
        let mut statements = Vec::new();
        if !admins.is_empty() {
            statements.push(Statement {
                sid: Some("key-admin".into()),
                effect: Effect::Allow,
                principals: admins.to_vec(),
                actions: KEY_ADMIN_ACTIONS.iter().map(|s| s.to_string()).collect(),
            });
        }
        if !users.is_empty() {
            statements.push(Statement {
                sid: Some("key-user".into()),
                effect: Effect::Allow,
                principals: users.to_vec(),
                actions: KEY_USER_ACTIONS.iter().map(|s| s.to_string()).collect(),
            });
        }
        KeyPolicy { version: 1, statements }
    }

    /// The fixed policy of the service-managed default key: everyone may use it; lifecycle
    /// actions are refused for it whatever a policy says.
    pub fn service_default() -> KeyPolicy {
        KeyPolicy::with_roles(&[], &["*".to_string()])
    }

    /// Is `principal` allowed `action`?
    pub fn allows(&self, principal: &str, action: &str) -> bool {
        let hit = |s: &Statement| {
            s.principals.iter().any(|p| principal_matches(p, principal))
                && s.actions.iter().any(|a| action_matches(a, action))
        };
        let allowed = self.statements.iter().any(|s| s.effect == Effect::Allow && hit(s));
        allowed && !self.statements.iter().any(|s| s.effect == Effect::Deny && hit(s))
    }

    /// Check a policy document before storing it.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("unsupported policy version {}", self.version));
        }
        for (i, s) in self.statements.iter().enumerate() {
            if s.principals.is_empty() || s.actions.is_empty() {
                return Err(format!("statement {i} needs at least one principal and one action"));
            }
            for p in &s.principals {
                if p.is_empty() || p.chars().any(char::is_control) {
                    return Err(format!("statement {i}: invalid principal {p:?}"));
                }
            }
            for a in &s.actions {
                if !ALL_ACTIONS.iter().any(|known| action_matches(a, known)) {
                    return Err(format!("statement {i}: unknown action {a:?}"));
                }
            }
        }
        Ok(())
    }

    /// Every principal (or `*`) the policy names.
    pub fn principals(&self) -> Vec<String> {
        let mut out: Vec<String> = self.statements.iter().flat_map(|s| s.principals.iter().cloned()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Rights `new` would give `principal` that `self` (the current policy) does not, among
    /// those nobody may give itself ([`SELF_GRANT_GUARDED`]); empty when `self` allows
    /// self-grants.
    pub fn self_grants(&self, new: &KeyPolicy, principal: &str) -> Vec<&'static str> {
        if self.allows(principal, GRANT_SELF) {
            return Vec::new();
        }
        SELF_GRANT_GUARDED.iter().copied().filter(|a| new.allows(principal, a) && !self.allows(principal, a)).collect()
    }

    /// What `principal` can end up doing: what the policy allows it, and what it may grant
    /// itself with `kms:PutKeyPolicy` (any right outside [`SELF_GRANT_GUARDED`]; those too
    /// with `kms:GrantSelf`).
    fn effective(&self, principal: &str, action: &str) -> bool {
        self.allows(principal, action)
            || (self.allows(principal, PUT_KEY_POLICY)
                && (!SELF_GRANT_GUARDED.contains(&action) || self.allows(principal, GRANT_SELF)))
    }

    /// Separation-of-duties findings: principals that can use the key material and also
    /// disable or destroy the key, directly or by granting themselves the missing rights
    /// through `kms:PutKeyPolicy`; and policies every principal may rewrite.
    pub fn lint(&self) -> Vec<LintFinding> {
        let mut out = Vec::new();
        for p in self.principals() {
            if p == "*" && self.allows("*", PUT_KEY_POLICY) {
                out.push(LintFinding {
                    principal: p.clone(),
                    message: "every principal (*) holds kms:PutKeyPolicy: anyone can rewrite this policy".into(),
                    actions: vec![PUT_KEY_POLICY.to_string()],
                });
                continue;
            }
            // kms:ReEncryptFrom decrypts too: re-encrypt to a key one holds, decrypt there.
            // kms:DeleteImportedKeyMaterial destroys a BYOK key at once.
            let destructive: Vec<&str> = [SCHEDULE_KEY_DELETION, DISABLE_KEY, DELETE_IMPORTED_KEY_MATERIAL]
                .into_iter()
                .filter(|a| self.effective(&p, a))
                .collect();
            let Some(decrypt) = [DECRYPT, RE_ENCRYPT_FROM]
                .into_iter()
                .find(|a| self.allows(&p, a))
                .or_else(|| self.effective(&p, DECRYPT).then_some(DECRYPT))
            else {
                continue;
            };
            if destructive.is_empty() {
                continue;
            }
            let granted: Vec<&str> =
                std::iter::once(decrypt).chain(destructive.iter().copied()).filter(|a| !self.allows(&p, a)).collect();
            let (message, actions) = if granted.is_empty() {
                (
                    format!(
                        "principal {p} holds {decrypt} and {}: separate key users from key administrators",
                        destructive.join(" and ")
                    ),
                    destructive.iter().map(|a| a.to_string()).collect(),
                )
            } else {
                let mut via = vec![PUT_KEY_POLICY];
                if granted.iter().any(|a| SELF_GRANT_GUARDED.contains(a)) {
                    via.push(GRANT_SELF);
                }
                (
                    format!(
                        "principal {p} holds {} and can grant itself {}: it can both decrypt and {}; separate key users from key administrators",
                        via.join(" and "),
                        granted.join(" and "),
                        destructive.join(" and ")
                    ),
                    via.iter().chain(granted.iter()).map(|a| a.to_string()).collect(),
                )
            };
            out.push(LintFinding { principal: p.clone(), message, actions });
        }
        out
    }
}

/// One `kms lint` finding for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LintFinding {
    pub principal: String,
    pub actions: Vec<String>,
    pub message: String,
}

/// The default principal in embedded mode: `$SQLITE_TDE_PRINCIPAL`, else the OS user name.
pub fn default_principal() -> String {
    if let Some(p) = std::env::var(super::ENV_PRINCIPAL).ok().filter(|p| !p.is_empty()) {
        return p;
    }
    principal_of_uid(nix::unistd::geteuid().as_raw())
}

/// The OS user name of `uid`, else `uid:N`.
pub fn principal_of_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_separated() {
        let p = KeyPolicy::for_new_key("carol", &["alice".into()], &["bob".into()]);
        assert!(p.allows("alice", DISABLE_KEY) && p.allows("alice", SCHEDULE_KEY_DELETION));
        assert!(!p.allows("alice", DECRYPT) && !p.allows("alice", GENERATE_DATA_KEY));
        assert!(
            p.allows("bob", DECRYPT)
                && p.allows("bob", GENERATE_DATA_KEY_WITHOUT_PLAINTEXT)
                && p.allows("bob", RE_ENCRYPT_TO)
        );
        assert!(!p.allows("bob", DISABLE_KEY) && !p.allows("bob", PUT_KEY_POLICY));
        assert!(!p.allows("carol", DESCRIBE_KEY));
        assert!(p.lint().is_empty());
        let d = KeyPolicy::for_new_key("carol", &[], &[]);
        assert_eq!(d.lint().len(), 1);
        assert!(d.lint()[0].actions.contains(&SCHEDULE_KEY_DELETION.to_string()));
    }

    #[test]
    fn deny_wins_and_validation() {
        let mut p = KeyPolicy::with_roles(&[], &["*".into()]);
        p.statements.push(Statement {
            sid: None,
            effect: Effect::Deny,
            principals: vec!["eve".into()],
            actions: vec!["kms:*".into()],
        });
        assert!(p.allows("bob", DECRYPT) && !p.allows("eve", DECRYPT));
        assert!(p.validate().is_ok());
        p.statements[0].actions.push("kms:Frobnicate".into());
        assert!(p.validate().is_err());
    }

    #[test]
    fn put_key_policy_counts_as_every_right_it_can_grant() {
        // A key-admin cannot give itself crypto rights (guarded), so the split is clean...
        let p = KeyPolicy::for_new_key("carol", &["ops".into()], &["app".into()]);
        assert!(p.lint().is_empty(), "{:?}", p.lint());
        assert_eq!(p.self_grants(&KeyPolicy::with_roles(&["ops".into()], &["ops".into()]), "ops").len(), 6);
        assert!(p.self_grants(&KeyPolicy::with_roles(&["ops".into()], &["app".into(), "x".into()]), "ops").is_empty());
        // ...unless a statement lets it self-grant: then it holds everything.
        let mut g = p.clone();
        g.statements[0].actions.push(GRANT_SELF.into());
        assert!(g.self_grants(&KeyPolicy::with_roles(&["ops".into()], &["ops".into()]), "ops").is_empty());
        let l = g.lint();
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].message.contains("can grant itself kms:Decrypt"), "{}", l[0].message);
        // A key-user with PutKeyPolicy can grant itself the destructive rights (not guarded).
        let mut u = p.clone();
        u.statements[1].actions.push(PUT_KEY_POLICY.into());
        let l = u.lint();
        assert_eq!(l[0].principal, "app");
        assert!(
            l[0].message.contains("can grant itself kms:ScheduleKeyDeletion and kms:DisableKey"),
            "{}",
            l[0].message
        );
        // `kms:*` includes kms:GrantSelf, and a wildcard principal's PutKeyPolicy is its own finding.
        let star = KeyPolicy {
            version: 1,
            statements: vec![Statement {
                sid: None,
                effect: Effect::Allow,
                principals: vec!["*".into()],
                actions: vec!["kms:*".into()],
            }],
        };
        assert!(star.lint().iter().any(|f| f.principal == "*" && f.message.contains("anyone can rewrite")));
        assert!(star.self_grants(&p, "ops").is_empty());
    }
}
