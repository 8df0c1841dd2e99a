//! AWS Signature Version 4: the agent runs an unmodified AWS SDK or CLI
//! with placeholder keys; its request is checked (service, region, action)
//! and signed again with real credentials, which the agent never holds.
//!
//! `request` reads the agent's signature (never trusting it), `action`
//! tells the IAM action, `sign` signs again with AWS's own signer, `sts`
//! gets per-agent session credentials with AssumeRole. The credentials
//! come from files or the environment, or a `credential_process` helper,
//! optionally exchanged for a role's session credentials narrowed to the
//! agent's tools; those are cached until shortly before they expire.

mod action;
mod request;
mod sign;
mod sts;

use std::time::Duration;

pub use action::action;
pub use request::{AwsRequest, CONTENT_SHA256, Payload, inspect};
pub use sign::{SignError, SignSpec, resign};
use thiserror::Error;
use tracing::info;

use super::{ProcessError, Secret, TokenFetcher, cache::ExpiringCache, process, source};
use crate::policy::{
    AgentPolicy, AssumeRole, AwsBase, AwsSource, CredentialPolicy, Injection, ProcessSource,
    ValueSource,
};

/// An access key, its secret, and a session token if it is temporary.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials([redacted])")
    }
}

/// Why no AWS credentials could be had. Holds no key.
#[derive(Debug, Clone, Error)]
pub enum AwsError {
    #[error("credential helper: {0}")]
    Process(#[from] ProcessError),
    #[error("STS {url}: {reason}")]
    Sts { url: String, reason: String },
}

enum Base {
    Static(AwsCredentials),
    Process(ProcessSource),
}

/// One agent's AWS credential: where its keys come from, the role it
/// assumes, and what it fetched.
pub(super) struct AwsSigner {
    base: Base,
    role: Option<(AssumeRole, Option<String>)>,
    cache: ExpiringCache<(), AwsCredentials, AwsError>,
}

impl std::fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSigner")
            .field("role", &self.role.as_ref().map(|(r, _)| &r.role_arn))
            .finish_non_exhaustive()
    }
}

/// What failed while loading: which value, and why.
pub(super) enum LoadError {
    Source(&'static str, super::SourceError),
    Process(ProcessError),
}

impl AwsSigner {
    /// Reads static keys now (so a reload with a missing key file is
    /// refused) and checks a helper's executable.
    pub(super) fn load(
        agent: &AgentPolicy,
        credential: &CredentialPolicy,
        source: &AwsSource,
    ) -> Result<Self, LoadError> {
        let base = match &source.base {
            AwsBase::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Base::Static(AwsCredentials {
                access_key_id: match access_key_id {
                    ValueSource::Literal(v) => Secret::new(v.clone()),
                    ValueSource::Secret(r) => {
                        source::resolve(r).map_err(|e| LoadError::Source("aws access key id", e))?
                    }
                },
                secret_access_key: source::resolve(secret_access_key)
                    .map_err(|e| LoadError::Source("aws secret access key", e))?,
                session_token: session_token
                    .as_ref()
                    .map(source::resolve)
                    .transpose()
                    .map_err(|e| LoadError::Source("aws session token", e))?,
            }),
            AwsBase::Process(p) => {
                process::check_executable(p).map_err(LoadError::Process)?;
                Base::Process(p.clone())
            }
        };
        let role = source.assume_role.as_ref().map(|role| {
            let policy = role
                .session_policy
                .then(|| session_policy(agent, credential));
            (role.clone(), policy)
        });
        Ok(Self {
            base,
            role,
            cache: ExpiringCache::new(1),
        })
    }

    /// The credentials to sign with: the static keys, or the helper's, or
    /// the role's session credentials (cached until 30 s before they
    /// expire).
    pub(super) async fn credentials(
        &self,
        agent: &str,
        id: &str,
        fetcher: &dyn TokenFetcher,
    ) -> Result<AwsCredentials, AwsError> {
        if let (Base::Static(keys), None) = (&self.base, &self.role) {
            return Ok(keys.clone());
        }
        self.cache
            .get(&(), || async {
                let (base, lifetime) = match &self.base {
                    Base::Static(keys) => (keys.clone(), None),
                    Base::Process(p) => {
                        let output = process::run(p, agent, id).await?;
                        let c = process::parse_aws(p, &output)?;
                        let lifetime = c.lifetime.unwrap_or(p.ttl);
                        (
                            AwsCredentials {
                                access_key_id: c.access_key_id,
                                secret_access_key: c.secret_access_key,
                                session_token: c.session_token,
                            },
                            Some(lifetime),
                        )
                    }
                };
                match &self.role {
                    None => Ok((base, lifetime.unwrap_or(Duration::from_secs(300)))),
                    Some((role, policy)) => {
                        let (creds, lifetime) =
                            sts::assume_role(role, agent, policy.as_deref(), &base, fetcher)
                                .await?;
                        info!(
                            agent,
                            credential = id,
                            role = %role.role_arn,
                            lifetime = ?lifetime,
                            "assumed an AWS role for the agent"
                        );
                        Ok((creds, lifetime))
                    }
                }
            })
            .await
    }

    /// Values that could only reach a response by a leak.
    pub(super) fn known_secrets(&self) -> Vec<Secret> {
        let mut secrets = Vec::new();
        let mut add = |c: &AwsCredentials| {
            secrets.push(c.secret_access_key.clone());
            secrets.extend(c.session_token.clone());
        };
        if let Base::Static(keys) = &self.base {
            add(keys);
        }
        for c in self.cache.current() {
            add(&c);
        }
        secrets
    }

    pub(super) fn forget(&self) {
        self.cache.forget(|_| true);
    }

    pub(super) fn fetches(&self) -> u64 {
        self.cache.fetches()
    }
}

/// The session policy for `credential` of `agent`: allow the actions its
/// tools name (a tool that names none allows its services, `svc:*`), on
/// every resource (the proxy holds requests to the tools' hosts and
/// paths). Session credentials are then worth no more than the tools.
pub(super) fn session_policy(agent: &AgentPolicy, credential: &CredentialPolicy) -> String {
    let services: &[String] = match &credential.inject {
        Injection::AwsSigV4 { services, .. } => services,
        _ => &[],
    };
    let mut actions: Vec<String> = Vec::new();
    for tool in agent
        .tools
        .iter()
        .filter(|t| t.credential.as_deref() == Some(&credential.id))
    {
        if tool.aws_actions.is_empty() {
            actions.extend(services.iter().map(|s| format!("{s}:*")));
        } else {
            actions.extend(tool.aws_actions.iter().cloned());
        }
    }
    if actions.is_empty() {
        actions.extend(services.iter().map(|s| format!("{s}:*")));
    }
    actions.sort();
    actions.dedup();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AgentguardTools",
            "Effect": "Allow",
            "Action": actions,
            "Resource": "*",
        }],
    })
    .to_string()
}
