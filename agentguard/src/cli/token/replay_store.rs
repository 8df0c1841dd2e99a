//! `verify-proxy --replay-store`: where spent tokens are kept.

use std::{
    fmt,
    net::SocketAddr,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use agentguard_verify::replay::{
    FileReplayStore, MemoryReplayStore, RedisOptions, RedisReplayStore, ReplayError, ReplayStore,
};
use sha2::{Digest as _, Sha256};

use super::TokenCliError;

/// The store as asked for, before it is opened.
pub enum Spec {
    Memory,
    File(PathBuf),
    Redis {
        url: String,
        password: Option<String>,
        ca_pem: Option<Vec<u8>>,
    },
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::File(p) => write!(f, "{}", p.display()),
            // Only scheme and host: a URL may carry a password.
            Self::Redis { url, .. } => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
                let host = rest.rsplit('@').next().unwrap_or(rest);
                let host = host.split('/').next().unwrap_or(host);
                write!(f, "{scheme}://{host}")
            }
        }
    }
}

impl Spec {
    /// `value` as given, or the default: a file of its own under
    /// `<state_dir>/verify-proxy/`, named after the audience and listen
    /// address, so that a restarted verify-proxy finds its spent tokens and
    /// two on one host do not share (and lock) one file.
    pub fn parse(
        value: Option<&str>,
        state_dir: &Path,
        audience: &str,
        listen: SocketAddr,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, TokenCliError> {
        let usage = TokenCliError::Usage;
        let is_redis =
            value.is_some_and(|v| v.starts_with("redis://") || v.starts_with("rediss://"));
        if !is_redis && (password_file.is_some() || ca_file.is_some()) {
            return Err(usage(
                "--replay-store-password-file and --replay-store-ca are for a redis:// or rediss:// store".into(),
            ));
        }
        Ok(match value {
            Some("memory") => Self::Memory,
            Some(url) if is_redis => {
                // A password in the URL would be on the command line, for
                // every local user to read in /proc.
                if url
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
                {
                    return Err(usage(
                        "--replay-store: put the Redis password in --replay-store-password-file, not in the URL (command lines are readable by every local user)".into(),
                    ));
                }
                let password = password_file
                    .map(|f| {
                        std::fs::read_to_string(f)
                            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                            .map_err(|e| {
                                usage(format!("--replay-store-password-file {}: {e}", f.display()))
                            })
                    })
                    .transpose()?;
                let ca_pem = ca_file
                    .map(|f| {
                        std::fs::read(f)
                            .map_err(|e| usage(format!("--replay-store-ca {}: {e}", f.display())))
                    })
                    .transpose()?;
                Self::Redis {
                    url: url.to_owned(),
                    password,
                    ca_pem,
                }
            }
            Some(path) => Self::File(PathBuf::from(path)),
            None => {
                let key = format!("{audience}\n{listen}");
                let name = hex::encode(&Sha256::digest(key.as_bytes())[..8]);
                Self::File(
                    state_dir
                        .join("verify-proxy")
                        .join(format!("replay-{name}.redb")),
                )
            }
        })
    }

    pub async fn open(&self, capacity: usize) -> Result<Arc<dyn ReplayStore>, TokenCliError> {
        Ok(match self {
            Self::Memory => Arc::new(MemoryReplayStore::new(capacity)),
            Self::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| {
                            ReplayError::Open(format!(
                                "{}: {e} (choose another place with --replay-store or --state-dir)",
                                dir.display()
                            ))
                        })?;
                }
                Arc::new(FileReplayStore::open(path, capacity)?)
            }
            Self::Redis {
                url,
                password,
                ca_pem,
            } => Arc::new(
                RedisReplayStore::connect(
                    url,
                    RedisOptions {
                        password: password.clone(),
                        ca_pem: ca_pem.clone(),
                        ..RedisOptions::default()
                    },
                )
                .await?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_parsed_and_passwords_kept_off_the_command_line() {
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let state = Path::new("/var/lib/agentguard");
        let parse = |v: Option<&str>| Spec::parse(v, state, "itsm", listen, None, None);
        let Ok(Spec::File(default)) = parse(None) else {
            panic!("default is a file");
        };
        let shown = default.display().to_string();
        assert!(
            shown.starts_with("/var/lib/agentguard/verify-proxy/replay-"),
            "{shown}"
        );
        // The same audience and address: the same file after a restart.
        let Ok(Spec::File(again)) = parse(None) else {
            panic!()
        };
        assert_eq!(default, again);
        let other = Spec::parse(None, state, "billing", listen, None, None).unwrap();
        assert_ne!(other.to_string(), default.display().to_string());
        assert!(matches!(parse(Some("memory")), Ok(Spec::Memory)));
        let redis = parse(Some("rediss://redis.internal:6380/2")).unwrap();
        assert_eq!(redis.to_string(), "rediss://redis.internal:6380");
        assert!(parse(Some("redis://:hunter2@redis.internal")).is_err());
        assert!(
            Spec::parse(
                Some("/x.redb"),
                state,
                "a",
                listen,
                Some(Path::new("/p")),
                None
            )
            .is_err()
        );
    }
}
