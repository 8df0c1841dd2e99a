//! The replay store shared by replicas: Redis, with `SET key 1 NX EX ttl`
//! (set only if absent, with expiry, in one atomic command), so that of two
//! replicas offered one token at once exactly one records it first.
//!
//! The expiry is relative (`EX`), counted by Redis's own clock from when it
//! stores the key, so clocks of replicas and Redis need not agree: the key
//! lives at least until the end of the token's last valid second as the
//! replica that spent it counts.
//!
//! A Redis that evicts keys under memory pressure would forget spent
//! tokens, and every key here has an expiry, so the `volatile-*` policies
//! evict them too: [`RedisReplayStore::connect`] refuses a Redis whose
//! `maxmemory-policy` is not `noeviction` (when it may ask).

use std::time::Duration;

use redis::{AsyncCommands as _, aio::ConnectionManager};
use tracing::warn;

use super::{BoxFuture, ReplayError, ReplayStore, Spend};

/// Each command gets this long before the store counts as unavailable.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys are `<prefix><jti>`.
const DEFAULT_PREFIX: &str = "agentguard:jti:";

/// How to reach Redis beyond its URL.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// The password (`AUTH`), kept out of the URL so that it is not on a
    /// command line.
    pub password: Option<String>,
    /// CA certificates (PEM) that a `rediss://` server's certificate must
    /// chain to, instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Key prefix (default `agentguard:jti:`).
    pub prefix: Option<String>,
    /// Per-command time limit (default 2 s).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Spent `jti`s in Redis (`redis://` or, over TLS, `rediss://`).
pub struct RedisReplayStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// `host:port`, for messages: the URL may carry a password.
    server: String,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// Connects (and authenticates) now, so that a wrong URL or password
    /// stops a verifier from starting rather than refusing every token.
    /// Later the connection is re-made as needed; while it cannot be, every
    /// token is refused ([`ReplayError::Unavailable`]).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, ReplayError> {
        use redis::IntoConnectionInfo as _;
        let open = |e: redis::RedisError| ReplayError::Open(redacted(&e));
        let mut info = url.into_connection_info().map_err(open)?;
        let server = info.addr().to_string();
        if let Some(password) = &options.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        // redis-rs builds its rustls config from the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &options.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(open)?;
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry inside a command; beyond that the request is
            // refused and the next one reconnects.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = tokio::time::timeout(
            timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ReplayError::Open(format!("{server}: timed out connecting")))?
        .map_err(|e| ReplayError::Open(format!("{server}: {}", redacted(&e))))?;
        let store = Self {
            conn,
            prefix: options.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            timeout,
            server,
        };
        store.check_eviction_policy().await?;
        Ok(store)
    }

    /// Refuses a Redis that may evict spent tokens (see the module docs).
    async fn check_eviction_policy(&self) -> Result<(), ReplayError> {
        let mut conn = self.conn.clone();
        let answer: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match answer {
            Ok(kv) => match kv.get(1).map(String::as_str) {
                Some("noeviction") | None => Ok(()),
                Some(policy) => Err(ReplayError::Open(format!(
                    "{}: maxmemory-policy is {policy}: Redis could evict spent tokens, which could then be replayed; set it to noeviction",
                    self.server
                ))),
            },
            // Managed Redis often forbids CONFIG: say what to check.
            Err(e) => {
                warn!(server = %self.server, error = %redacted(&e), "cannot read Redis's maxmemory-policy: make sure it is noeviction, or spent tokens may be evicted and replayed");
                Ok(())
            }
        }
    }

    fn key(&self, jti: &str) -> String {
        format!("{}{jti}", self.prefix)
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ReplayError {
        ReplayError::Unavailable(format!("redis {}: {e}", self.server))
    }

    async fn spend_inner(
        &self,
        jti: &str,
        last_valid: u64,
        now: u64,
    ) -> Result<Spend, ReplayError> {
        // Through the end of second last_valid, as this replica counts.
        let ttl = last_valid.saturating_add(1).saturating_sub(now).max(1);
        let mut conn = self.conn.clone();
        let set: Option<String> = tokio::time::timeout(
            self.timeout,
            redis::cmd("SET")
                .arg(self.key(jti))
                .arg(last_valid)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| self.unavailable("timed out"))?
        .map_err(|e| self.unavailable(redacted(&e)))?;
        Ok(match set {
            Some(_) => Spend::Fresh,
            None => Spend::Replayed,
        })
    }

    async fn seen_inner(&self, jti: &str) -> Result<bool, ReplayError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, conn.exists::<_, bool>(self.key(jti)))
            .await
            .map_err(|_| self.unavailable("timed out"))?
            .map_err(|e| self.unavailable(redacted(&e)))
    }
}

/// A Redis error's text, without anything that could be the password (the
/// errors name the server, never the URL, but be sure).
fn redacted(e: &redis::RedisError) -> String {
    let text = e.to_string();
    match text.find("://") {
        Some(i) => match text[i + 3..].find('@') {
            Some(at) => format!("{}://[redacted]{}", &text[..i], &text[i + 3 + at..]),
            None => text,
        },
        None => text,
    }
}

impl ReplayStore for RedisReplayStore {
    fn spend<'a>(
        &'a self,
        jti: &'a str,
        last_valid: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Spend, ReplayError>> {
        Box::pin(self.spend_inner(jti, last_valid, now))
    }

    fn seen<'a>(&'a self, jti: &'a str, _now: u64) -> BoxFuture<'a, Result<bool, ReplayError>> {
        // Redis expires the key itself.
        Box::pin(self.seen_inner(jti))
    }
}
