//! Who may do what with a secret: a resource policy per secret (the statement shape of key
//! policies, with `secrets:` actions), as a cloud secrets manager has.
//!
//! A principal may use a secret only if the secret's policy allows the action **and** the key
//! policy of the secret's CMK allows the cryptographic operation behind it (`kms:Decrypt` to
//! read, `kms:Encrypt` to write; checked when the KMS seals or opens). The creator of a secret
//! becomes its owner with every `secrets:` action; nobody else has any until the owner grants
//! it (`secrets put-policy`). The shared namespace therefore cannot be squatted: a name created
//! by someone else refuses your writes instead of sealing your value under their key.
//!
//! Secrets made before policies existed (`policy: None`, from format-1 files) are judged by
//! their key's policy alone, action by action ([`key_action_for`]), which is what they always
//! were; `put-policy` gives them one.

use crate::policy::{Effect, KeyPolicy, Statement};

/// Action names (cloud spelling).
pub mod actions {
    pub const GET_SECRET_VALUE: &str = "secrets:GetSecretValue";
    pub const PUT_SECRET_VALUE: &str = "secrets:PutSecretValue";
    pub const ROTATE_SECRET: &str = "secrets:RotateSecret";
    pub const DESCRIBE_SECRET: &str = "secrets:DescribeSecret";
    pub const LIST_SECRET_VERSION_IDS: &str = "secrets:ListSecretVersionIds";
    pub const GET_SECRET_POLICY: &str = "secrets:GetSecretPolicy";
    pub const PUT_SECRET_POLICY: &str = "secrets:PutSecretPolicy";
}
use actions::*;

/// Every action a secret policy can name.
pub const SECRET_ACTIONS: &[&str] = &[
    GET_SECRET_VALUE,
    PUT_SECRET_VALUE,
    ROTATE_SECRET,
    DESCRIBE_SECRET,
    LIST_SECRET_VERSION_IDS,
    GET_SECRET_POLICY,
    PUT_SECRET_POLICY,
];

/// The policy a new secret gets: its creator may do everything with it.
pub fn owner_policy(owner: &str) -> KeyPolicy {
    KeyPolicy {
        version: 1,
        statements: vec![Statement {
            sid: Some("secret-owner".into()),
            effect: Effect::Allow,
            principals: vec![owner.to_string()],
            actions: vec!["secrets:*".into()],
        }],
    }
}

fn matches(pattern: &str, action: &str) -> bool {
    pattern == "*" || pattern.strip_suffix('*').map_or(pattern == action, |p| action.starts_with(p))
}

/// Check a secret policy before storing it: known actions only, and somebody must still be
/// able to change it (the lockout check of cloud resource policies).
pub fn validate(policy: &KeyPolicy) -> Result<(), String> {
    if policy.version != 1 {
        return Err(format!("unsupported policy version {}", policy.version));
    }
    for (i, s) in policy.statements.iter().enumerate() {
        if s.principals.is_empty() || s.actions.is_empty() {
            return Err(format!("statement {i} needs at least one principal and one action"));
        }
        if let Some(p) = s.principals.iter().find(|p| p.is_empty() || p.chars().any(char::is_control)) {
            return Err(format!("statement {i}: invalid principal {p:?}"));
        }
        if let Some(a) = s.actions.iter().find(|a| !SECRET_ACTIONS.iter().any(|known| matches(a, known))) {
            return Err(format!("statement {i}: unknown secret action {a:?} (secret policies name secrets:* actions)"));
        }
    }
    if !policy.principals().iter().any(|p| policy.allows(p, PUT_SECRET_POLICY)) {
        return Err(format!("the policy grants {PUT_SECRET_POLICY} to nobody: the secret could never be re-policied"));
    }
    Ok(())
}

/// The key-policy action that decides `action` for a secret without a policy of its own.
pub fn key_action_for(action: &str) -> &'static str {
    use crate::policy::actions as k;
    match action {
        GET_SECRET_VALUE => k::DECRYPT,
        PUT_SECRET_VALUE | ROTATE_SECRET => k::ENCRYPT,
        GET_SECRET_POLICY => k::GET_KEY_POLICY,
        PUT_SECRET_POLICY => k::PUT_KEY_POLICY,
        _ => k::DESCRIBE_KEY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_has_everything_others_nothing() {
        let p = owner_policy("alice");
        for a in SECRET_ACTIONS {
            assert!(p.allows("alice", a) && !p.allows("mallory", a), "{a}");
        }
        assert!(validate(&p).is_ok());
    }

    #[test]
    fn validation_refuses_unknown_actions_and_lockout() {
        let mut p = owner_policy("alice");
        p.statements[0].actions = vec!["kms:Decrypt".into()];
        assert!(validate(&p).unwrap_err().contains("unknown secret action"));
        p.statements[0].actions = vec![GET_SECRET_VALUE.into()];
        assert!(validate(&p).unwrap_err().contains("nobody"));
    }
}
