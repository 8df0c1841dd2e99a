//! Every credential of every agent in a policy set, resolved at load.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing::warn;

use super::{
    CredentialError, CredentialErrors, ExchangeError, Redactor, Requester, Secret, TokenFetcher,
    exchange::Exchanger,
    oauth2::OAuth2Client,
    process::Helper,
    redact::MIN_REDACT_LEN,
    sigv4::{AwsCredentials, AwsSigner, LoadError},
    source,
};
use crate::policy::{AgentPolicy, CredentialPolicy, PolicySet, SecretSource, ValueSource};

/// Every credential of every agent in a policy set, ready to use.
///
/// File and env secrets, and OAuth2 client ids and secrets, are read when the
/// store is built, so that a policy reload with a missing or insecure secret
/// file is refused as a whole and the running store stays in place. OAuth2
/// tokens are fetched on first use and cached.
pub struct CredentialStore {
    /// Agent name → credential id → credential.
    agents: HashMap<String, HashMap<String, Credential>>,
    /// Each agent's redactor, made again only when its secrets change.
    redactors: HashMap<String, AgentRedactor>,
    fetcher: Arc<dyn TokenFetcher>,
    fetches: AtomicU64,
}

#[derive(Debug)]
enum Credential {
    /// A file or env secret, read at load.
    Static(Secret),
    /// Boxed: the client with its lock and cache is much larger than a
    /// secret.
    OAuth2(Box<OAuth2Client>),
    /// Minted per request by the proxy (`crate::token`): nothing to hold.
    Minted,
    /// A credential helper's output, cached.
    Process(Box<Helper>),
    /// Token exchange or JWT-bearer grant, cached per (agent, subject).
    Exchange(Box<Exchanger>),
    /// AWS keys that re-sign the agent's requests.
    Aws(Box<AwsSigner>),
}

/// An agent's redactor, kept between its responses.
enum AgentRedactor {
    /// Its secrets are all read at load (file and env secrets; minted
    /// tokens hold none): made at the first response, then shared.
    Fixed(OnceLock<Option<Arc<Redactor>>>),
    /// Its secrets change as tokens are fetched: the last one made, with
    /// the secrets it was made from.
    Changing(Mutex<Option<MadeFrom>>),
}

/// A redactor (`None`: nothing to look for) and the secrets it cuts.
type MadeFrom = (Vec<Secret>, Option<Arc<Redactor>>);

/// The same secret values in the same order (a different order only
/// makes the redactor again).
fn same_values(a: &[Secret], b: &[Secret]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.expose() == y.expose())
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only; the values' own Debug would be redacted anyway.
        let mut agents: Vec<(&String, Vec<&String>)> = self
            .agents
            .iter()
            .map(|(agent, creds)| (agent, creds.keys().collect()))
            .collect();
        agents.sort();
        f.debug_struct("CredentialStore")
            .field("agents", &agents)
            .field("token_fetches", &self.token_fetches())
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// Resolves every file and env secret of `policy` now. Any error refuses
    /// the whole set; all of them are reported, each naming agent, credential
    /// and problem, never a value.
    pub fn load(
        policy: &PolicySet,
        fetcher: Arc<dyn TokenFetcher>,
    ) -> Result<Self, CredentialErrors> {
        let mut errors = Vec::new();
        let mut agents = HashMap::new();
        for agent in &policy.agents {
            let mut credentials = HashMap::new();
            for credential in &agent.credentials {
                match resolve(agent, credential) {
                    Ok(c) => {
                        credentials.insert(credential.id.clone(), c);
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
            agents.insert(agent.name.clone(), credentials);
        }
        if !errors.is_empty() {
            return Err(crate::error_list::ErrorList(errors));
        }
        let redactors = agents
            .iter()
            .map(|(agent, credentials)| {
                let fixed = credentials
                    .values()
                    .all(|c| matches!(c, Credential::Static(_) | Credential::Minted));
                let redactor = if fixed {
                    AgentRedactor::Fixed(OnceLock::new())
                } else {
                    AgentRedactor::Changing(Mutex::default())
                };
                (agent.clone(), redactor)
            })
            .collect();
        Ok(Self {
            agents,
            redactors,
            fetcher,
            fetches: AtomicU64::new(0),
        })
    }

    /// The secret for `agent`'s credential `credential_id`. For OAuth2, a
    /// cached access token, or a fresh one if the cached one expires within
    /// 30 s; concurrent callers share one fetch.
    pub async fn secret(
        &self,
        agent: &str,
        credential_id: &str,
    ) -> Result<Secret, CredentialError> {
        /// Exchanges need the caller's identity: [`Self::secret_for`].
        struct NoIssuer;
        impl super::IdentityIssuer for NoIssuer {
            fn identity_token(&self, _: &super::IdentityRequest<'_>) -> Result<String, String> {
                Err("no identity issuer for this lookup".into())
            }
        }
        let nobody = || None;
        let requester = Requester {
            agent,
            kernel: None,
            on_behalf_of: &nobody,
            issuer: &NoIssuer,
        };
        self.secret_for(&requester, credential_id).await
    }

    /// The secret of `who.agent`'s credential `credential_id` for the
    /// caller `who`: as [`Self::secret`], and for a delegated token, the
    /// caller's own (exchanged for its identity, or for the person it acts
    /// for), cached per caller.
    pub async fn secret_for(
        &self,
        who: &Requester<'_>,
        credential_id: &str,
    ) -> Result<Secret, CredentialError> {
        let agent = who.agent;
        match self.credential(agent, credential_id)? {
            Credential::Process(helper) => {
                helper.secret(agent, credential_id).await.map_err(|source| {
                    CredentialError::Process {
                        agent: agent.to_owned(),
                        credential: credential_id.to_owned(),
                        source,
                    }
                })
            }
            Credential::Aws(_) => Err(CredentialError::SignsAws {
                agent: agent.to_owned(),
                credential: credential_id.to_owned(),
            }),
            Credential::Exchange(exchanger) => exchanger
                .token(who, self.fetcher.as_ref())
                .await
                .map_err(|source| CredentialError::Exchange {
                    agent: agent.to_owned(),
                    credential: credential_id.to_owned(),
                    source,
                }),
            Credential::Static(secret) => Ok(secret.clone()),
            Credential::OAuth2(client) => client
                .token(self.fetcher.as_ref(), &self.fetches)
                .await
                .map_err(|source| CredentialError::Token {
                    agent: agent.to_owned(),
                    credential: credential_id.to_owned(),
                    source,
                }),
            Credential::Minted => Err(CredentialError::MintedPerRequest {
                agent: agent.to_owned(),
                credential: credential_id.to_owned(),
            }),
        }
    }

    /// What cuts `agent`'s secrets and `per_request`'s (a minted token)
    /// out of a response; `None` when there is nothing to look for. The
    /// agent's part is made once where its secrets are all read at load,
    /// and again whenever the secrets known for it differ from those it
    /// was made from (fetched tokens: OAuth2, helpers, exchanges, AWS).
    pub fn redactor(&self, agent: &str, per_request: &[Secret]) -> Option<Arc<Redactor>> {
        let base = match self.redactors.get(agent) {
            None => None,
            Some(AgentRedactor::Fixed(made)) => made
                .get_or_init(|| Redactor::new(&self.known_secrets(agent), &[]))
                .clone(),
            Some(AgentRedactor::Changing(last)) => {
                let secrets = self.known_secrets(agent);
                let lock = || {
                    last.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                };
                // The guard goes at the end of this statement: the arm
                // that makes a new one locks again.
                let kept = match &*lock() {
                    Some((held, made)) if same_values(held, &secrets) => Some(made.clone()),
                    _ => None,
                };
                match kept {
                    Some(made) => made,
                    None => {
                        // Made outside the lock: a new automaton takes up
                        // to milliseconds, and the agent's other requests
                        // need not wait for it.
                        let made = Redactor::new(&secrets, &[]);
                        *lock() = Some((secrets, made.clone()));
                        made
                    }
                }
            }
        };
        if per_request.is_empty() {
            return base;
        }
        Redactor::with_request(base.as_ref(), per_request)
    }

    /// Every secret value currently known for `agent`, to cut out of
    /// responses: file and env secrets, OAuth2 client secrets and the latest
    /// tokens. Empty for an unknown agent.
    pub fn known_secrets(&self, agent: &str) -> Vec<Secret> {
        let Some(credentials) = self.agents.get(agent) else {
            return Vec::new();
        };
        let mut secrets = Vec::new();
        for credential in credentials.values() {
            match credential {
                Credential::Static(secret) => secrets.push(secret.clone()),
                Credential::OAuth2(client) => secrets.extend(client.known_secrets()),
                // Each response is checked against its own request's token.
                Credential::Minted => {}
                Credential::Process(helper) => secrets.extend(helper.known_secrets()),
                Credential::Exchange(exchanger) => secrets.extend(exchanger.known_secrets()),
                Credential::Aws(signer) => secrets.extend(signer.known_secrets()),
            }
        }
        secrets
    }

    /// The AWS credentials of `agent`'s credential `credential_id`, to sign
    /// its requests with.
    pub async fn aws_credentials(
        &self,
        agent: &str,
        credential_id: &str,
    ) -> Result<AwsCredentials, CredentialError> {
        match self.credential(agent, credential_id)? {
            Credential::Aws(signer) => signer
                .credentials(agent, credential_id, self.fetcher.as_ref())
                .await
                .map_err(|source| CredentialError::Aws {
                    agent: agent.to_owned(),
                    credential: credential_id.to_owned(),
                    source,
                }),
            _ => Err(CredentialError::NotAws {
                agent: agent.to_owned(),
                credential: credential_id.to_owned(),
            }),
        }
    }

    /// Drops everything fetched for `agent`: its cached OAuth2 access
    /// tokens, exchanged tokens, helper output and AWS credentials; its
    /// next request fetches anew. For revocation: nothing fetched for a
    /// revoked agent before the decision is used after it. Static secrets
    /// stay: they are the policy's. Returns how many were dropped.
    pub async fn forget_agent(&self, agent: &str) -> usize {
        let mut dropped = 0;
        for credential in self.agents.get(agent).into_iter().flat_map(HashMap::values) {
            dropped += match credential {
                Credential::OAuth2(client) => usize::from(client.forget().await),
                Credential::Process(helper) => helper.forget(),
                Credential::Exchange(exchanger) => exchanger.forget_agent(agent),
                Credential::Aws(signer) => signer.forget(),
                Credential::Static(_) | Credential::Minted => 0,
            };
        }
        dropped
    }

    /// Token exchanges (and JWT-bearer grants) and helper runs started so
    /// far.
    pub fn exchanges(&self) -> u64 {
        self.agents
            .values()
            .flat_map(|c| c.values())
            .map(|c| match c {
                Credential::Process(helper) => helper.runs(),
                Credential::Exchange(exchanger) => exchanger.exchanges(),
                Credential::Aws(signer) => signer.fetches(),
                _ => 0,
            })
            .sum()
    }

    /// OAuth2 token fetches performed so far.
    pub fn token_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn credential(&self, agent: &str, id: &str) -> Result<&Credential, CredentialError> {
        self.agents
            .get(agent)
            .ok_or_else(|| CredentialError::UnknownAgent {
                agent: agent.to_owned(),
            })?
            .get(id)
            .ok_or_else(|| CredentialError::UnknownCredential {
                agent: agent.to_owned(),
                credential: id.to_owned(),
            })
    }
}

/// Reads what `credential` needs now. Every error is returned, so that an
/// OAuth2 credential with a bad id and a bad secret is fixed in one pass.
fn resolve(
    agent_policy: &AgentPolicy,
    credential: &CredentialPolicy,
) -> Result<Credential, Vec<CredentialError>> {
    let agent = agent_policy.name.as_str();
    let context = |what: &'static str| {
        move |source| CredentialError::Source {
            agent: agent.to_owned(),
            credential: credential.id.clone(),
            what,
            source,
        }
    };
    match &credential.source {
        SecretSource::File(path) => {
            let secret = source::read_file(path).map_err(|e| vec![context("secret")(e)])?;
            warn_if_short(agent, &credential.id, &secret);
            Ok(Credential::Static(secret))
        }
        SecretSource::Env(var) => {
            let secret = source::read_env(var).map_err(|e| vec![context("secret")(e)])?;
            warn_if_short(agent, &credential.id, &secret);
            Ok(Credential::Static(secret))
        }
        SecretSource::OAuth2(oauth2) => {
            let id = match &oauth2.client_id {
                ValueSource::Literal(id) => Ok(Secret::new(id.clone())),
                ValueSource::Secret(r) => source::resolve(r).map_err(context("oauth2 client id")),
            };
            let secret =
                source::resolve(&oauth2.client_secret).map_err(context("oauth2 client secret"));
            match (id, secret) {
                (Ok(id), Ok(secret)) => Ok(Credential::OAuth2(Box::new(OAuth2Client::new(
                    oauth2.token_url.clone(),
                    id,
                    secret,
                    oauth2.scope.clone(),
                )))),
                (id, secret) => Err(id.err().into_iter().chain(secret.err()).collect()),
            }
        }
        SecretSource::Jwt(_) => Ok(Credential::Minted),
        SecretSource::Process(p) => Helper::new(p)
            .map(|h| Credential::Process(Box::new(h)))
            .map_err(|source| {
                vec![CredentialError::Process {
                    agent: agent.to_owned(),
                    credential: credential.id.clone(),
                    source,
                }]
            }),
        SecretSource::TokenExchange(t) => Exchanger::token_exchange(t)
            .map(|e| Credential::Exchange(Box::new(e)))
            .map_err(|e| exchange_error(agent, &credential.id, e)),
        SecretSource::JwtBearer(j) => Exchanger::jwt_bearer(j)
            .map(|e| Credential::Exchange(Box::new(e)))
            .map_err(|e| exchange_error(agent, &credential.id, e)),
        SecretSource::Aws(aws) => AwsSigner::load(agent_policy, credential, aws)
            .map(|s| Credential::Aws(Box::new(s)))
            .map_err(|e| {
                vec![match e {
                    LoadError::Source(what, source) => CredentialError::Source {
                        agent: agent.to_owned(),
                        credential: credential.id.clone(),
                        what,
                        source,
                    },
                    LoadError::Process(source) => CredentialError::Process {
                        agent: agent.to_owned(),
                        credential: credential.id.clone(),
                        source,
                    },
                }]
            }),
    }
}

fn exchange_error(
    agent: &str,
    credential: &str,
    e: super::exchange::ClientError,
) -> Vec<CredentialError> {
    vec![CredentialError::Exchange {
        agent: agent.to_owned(),
        credential: credential.to_owned(),
        source: ExchangeError::Client(e),
    }]
}

/// Such a secret still works, but is not cut out of responses.
fn warn_if_short(agent: &str, credential: &str, secret: &Secret) {
    if secret.expose().len() < MIN_REDACT_LEN {
        warn!(
            agent,
            credential,
            "secret is shorter than {MIN_REDACT_LEN} bytes: it will not be redacted from responses"
        );
    }
}

#[cfg(test)]
mod tests;
