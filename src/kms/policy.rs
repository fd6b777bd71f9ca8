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

    /// Separation-of-duties findings: principals that may both decrypt and destroy or
    /// disable the key.
    pub fn lint(&self) -> Vec<LintFinding> {
        let mut out = Vec::new();
        for p in self.principals() {
            if !self.allows(&p, DECRYPT) {
                continue;
            }
            let lifecycle: Vec<String> = [SCHEDULE_KEY_DELETION, DISABLE_KEY]
                .iter()
                .filter(|a| self.allows(&p, a))
                .map(|a| a.to_string())
                .collect();
            if !lifecycle.is_empty() {
                out.push(LintFinding {
                    principal: p.clone(),
                    message: format!(
                        "principal {p} holds kms:Decrypt and {}: separate key users from key administrators",
                        lifecycle.join(" and ")
                    ),
                    actions: lifecycle,
                });
            }
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
}
