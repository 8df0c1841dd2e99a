//! The web view's users file (`--web-users`): people with Argon2id password
//! hashes, and bearer tokens for programs (kept as SHA-256 hashes: a token
//! is 256 random bits, so a fast hash is enough, unlike a password). Each
//! has a role: `auditor` reads, `approver` also approves, denies, revokes
//! and restores.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! role = "approver"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # agentguard web hash-password
//!
//! [[token]]
//! name = "siem-dashboard"
//! role = "auditor"
//! sha256 = "9f86d0..."                                # agentguard web new-token
//! ```
//!
//! The file must not be writable by group or others (anyone who could
//! write it could make themselves an approver), nor readable by others
//! (the hashes are an offline guessing target).

use std::{os::unix::fs::MetadataExt as _, path::Path};

use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum UsersError {
    #[error("failed to read the web users file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "refusing the web users file {path}: its mode {mode:04o} lets group or others change it, or others read it (chmod 640 or 600)"
    )]
    Insecure { path: String, mode: u32 },
    #[error("the web users file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// What a signed-in person or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page.
    Auditor,
    /// Reads, and approves, denies, revokes and restores.
    Approver,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auditor => "auditor",
            Role::Approver => "approver",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<UserSection>,
    #[serde(default)]
    token: Vec<TokenSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSection {
    name: String,
    role: Role,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    name: String,
    role: Role,
    sha256: String,
}

struct User {
    name: String,
    role: Role,
    /// A PHC string, checked at load.
    password: String,
}

struct Token {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

/// Who someone is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// `password` or `token`.
    pub via: &'static str,
}

pub struct Users {
    users: Vec<User>,
    tokens: Vec<Token>,
    /// Checked for unknown names, so that a wrong name costs as much as a
    /// wrong password and the timing tells nothing.
    decoy: String,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let shown = path.display().to_string();
        let read = |source| UsersError::Read {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o026 != 0 {
            return Err(UsersError::Insecure { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|reason| UsersError::Invalid {
            path: shown,
            reason,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        let mut users = Vec::new();
        for u in file.user {
            check_name(&u.name)?;
            if !names.insert(u.name.clone()) {
                return Err(format!("{:?} is named twice", u.name));
            }
            PasswordHash::new(&u.password).map_err(|e| {
                format!(
                    "user {:?}: password is not a PHC hash ({e}); make one with `agentguard web hash-password`",
                    u.name
                )
            })?;
            users.push(User {
                name: u.name,
                role: u.role,
                password: u.password,
            });
        }
        let mut tokens = Vec::new();
        for t in file.token {
            check_name(&t.name)?;
            if !names.insert(t.name.clone()) {
                return Err(format!("{:?} is named twice", t.name));
            }
            let sha256 = hex::decode(&t.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!(
                        "token {:?}: sha256 must be 64 hex digits (`agentguard web new-token`)",
                        t.name
                    )
                })?;
            tokens.push(Token {
                name: t.name,
                role: t.role,
                sha256,
            });
        }
        if users.is_empty() && tokens.is_empty() {
            return Err("no [[user]] and no [[token]]: nobody could sign in".into());
        }
        let decoy = hash_password("agentguard decoy password").map_err(|e| e.to_string())?;
        Ok(Self {
            users,
            tokens,
            decoy,
        })
    }

    /// The user, if `password` is theirs. Slow on purpose (Argon2id): call
    /// it off the async threads.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Principal> {
        let user = self.users.iter().find(|u| u.name == name);
        let hash = user.map_or(self.decoy.as_str(), |u| u.password.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        let user = user.filter(|_| ok)?;
        Some(Principal {
            name: user.name.clone(),
            role: user.role,
            via: "password",
        })
    }

    /// The token's holder, if `token` is one of the file's.
    pub fn check_token(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry compared in full: no early exit to time.
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.sha256, &digest) {
                found = Some(t);
            }
        }
        found.map(|t| Principal {
            name: t.name.clone(),
            role: t.role,
            via: "token",
        })
    }
}

/// Names show in the record and the page: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.', '@'"
        ))
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An Argon2id PHC string for `password` (the crate's defaults: OWASP's
/// minimum of 19 MiB, 2 passes, 1 lane), with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// A new bearer token (256 random bits, base64url) and the SHA-256 (hex)
/// the users file keeps.
pub fn new_token() -> Result<(String, String), UsersError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| UsersError::Hash(e.to_string()))?;
    let token = format!(
        "agw_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_sign_in_with_their_role() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let (token, digest) = new_token().unwrap();
        let users = Users::parse(&format!(
            "[[user]]\nname = \"alice\"\nrole = \"approver\"\npassword = \"{hash}\"\n\
             [[token]]\nname = \"siem\"\nrole = \"auditor\"\nsha256 = \"{digest}\"\n"
        ))
        .unwrap();
        let alice = users.check_password("alice", "correct horse").unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Approver));
        assert!(users.check_password("alice", "wrong").is_none());
        assert!(users.check_password("mallory", "correct horse").is_none());
        let siem = users.check_token(&token).unwrap();
        assert_eq!((siem.name.as_str(), siem.role), ("siem", Role::Auditor));
        assert!(users.check_token("agw_guess").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "nobody could sign in"),
            (
                "[[user]]\nname = \"a\"\nrole = \"approver\"\npassword = \"hunter2\"\n",
                "not a PHC hash",
            ),
            (
                "[[user]]\nname = \"a\"\nrole = \"admin\"\npassword = \"x\"\n",
                "unknown variant",
            ),
            (
                "[[token]]\nname = \"t\"\nrole = \"auditor\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                "[[token]]\nname = \"a b\"\nrole = \"auditor\"\nsha256 = \"abc\"\n",
                "must be 1-64",
            ),
        ] {
            let err = Users::parse(text).err().unwrap();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_file_others_can_read_or_change_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let (_, digest) = new_token().unwrap();
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"t\"\nrole = \"auditor\"\nsha256 = \"{digest}\"\n"),
        )
        .unwrap();
        for mode in [0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(
                Users::load(&path),
                Err(UsersError::Insecure { .. })
            ));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Users::load(&path).is_ok());
    }
}
