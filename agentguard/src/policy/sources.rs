//! The credential kinds beyond a static secret, as policy files write them
//! and as the daemon holds them once validated: credential helpers
//! (`process`), RFC 8693 token exchange (`token_exchange`), the RFC 7523
//! JWT-bearer grant (`jwt_bearer`), and AWS credentials re-signing the
//! agent's requests with Signature Version 4 (`aws`, with `inject = {
//! aws_sigv4 = ... }` and the tools' `aws_actions`).

use std::{path::PathBuf, time::Duration};

use hyper::Uri;
use schemars::JsonSchema;
use serde::Deserialize;

use super::model::{SecretRef, SecretRefSection, ValueSection, ValueSource};

/// The longest a credential helper may run: it holds up the requests that
/// wait for its secret.
pub const MAX_PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper's plain output (no expiry of its own) is used.
const DEFAULT_PROCESS_TTL: Duration = Duration::from_secs(300);
/// AssumeRole's own bounds (15 minutes to 12 hours).
const MIN_ROLE_DURATION: Duration = Duration::from_secs(900);
const MAX_ROLE_DURATION: Duration = Duration::from_secs(12 * 3600);
/// The URN of the token-exchange grant (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

// ---- the file format ----

/// `{ process = ["/usr/local/bin/get-secret", "itsm"] }` or `{ process = {
/// command = [...], timeout = "10s", ttl = "5m" } }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(super) enum ProcessSection {
    Command(Vec<String>),
    Table(ProcessTable),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ProcessTable {
    /// argv: an absolute path to a root-owned executable, then arguments.
    command: Vec<String>,
    /// How long it may run (default 10 s, at most 60 s), e.g. `"10s"`.
    timeout: Option<String>,
    /// How long plain output is used (default 5 min), e.g. `"5m"`.
    ttl: Option<String>,
}

/// The client of the token endpoint: its id and how it authenticates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenExchangeSection {
    /// The authorization server's token endpoint (`https`, or `http` on
    /// loopback).
    token_url: String,
    /// agentguard's client id at the token endpoint.
    client_id: Option<ValueSection>,
    /// `client_secret_basic` authentication.
    client_secret: Option<SecretRefSection>,
    /// `private_key_jwt` authentication (RFC 7523 §2.2): a PEM key.
    client_key: Option<SecretRefSection>,
    /// The `kid` of `client_key`.
    client_key_id: Option<String>,
    /// `"agent"` (the default) or `"on-behalf-of"`.
    #[schemars(extend("enum" = ["agent", "on-behalf-of"]))]
    subject: Option<String>,
    /// For `"on-behalf-of"`: the folder of each person's token file.
    subject_tokens: Option<String>,
    /// RFC 8693 `audience` of the token asked for.
    audience: Option<String>,
    /// RFC 8693 `resource` (an absolute URI).
    resource: Option<String>,
    /// The scope asked for.
    scope: Option<String>,
    /// RFC 8693 `requested_token_type`.
    requested_token_type: Option<String>,
    /// The `aud` of agentguard's identity token (default: the token URL).
    assertion_audience: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtBearerSection {
    /// The authorization server's token endpoint.
    token_url: String,
    /// agentguard's client id, if the endpoint wants client authentication.
    client_id: Option<ValueSection>,
    /// `client_secret_basic` authentication.
    client_secret: Option<SecretRefSection>,
    /// `private_key_jwt` authentication: a PEM key.
    client_key: Option<SecretRefSection>,
    /// The `kid` of `client_key`.
    client_key_id: Option<String>,
    /// The scope asked for.
    scope: Option<String>,
    /// The `aud` of the assertion (default: the token URL).
    assertion_audience: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsSection {
    /// The access key id (with `secret_access_key`).
    access_key_id: Option<ValueSection>,
    /// The secret access key: from a file or the environment only.
    secret_access_key: Option<SecretRefSection>,
    /// A session token, for temporary keys.
    session_token: Option<SecretRefSection>,
    /// Or a helper printing AWS's `credential_process` JSON.
    process: Option<ProcessSection>,
    /// Exchange the keys at STS for session credentials per agent.
    assume_role: Option<AssumeRoleSection>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AssumeRoleSection {
    /// The role assumed.
    role_arn: String,
    /// STS's URL (default: `https://sts.amazonaws.com`).
    sts_endpoint: Option<String>,
    /// The region STS requests are signed for (default `us-east-1`).
    sts_region: Option<String>,
    /// The sessions' duration, 15 min (the default) to 12 h.
    duration: Option<String>,
    /// The role's `ExternalId` condition.
    external_id: Option<String>,
    /// `"tools"` (default: only the actions of the tools binding the
    /// credential) or `"none"`.
    #[schemars(extend("enum" = ["tools", "none"]))]
    session_policy: Option<String>,
}

/// `inject = { aws_sigv4 = { regions = ["eu-west-1"], services = ["ec2"] } }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsSigV4Section {
    /// The regions requests may be signed for.
    regions: Vec<String>,
    /// The services (signing names: `ec2`, `s3`, `sts`) requests may be
    /// for.
    services: Vec<String>,
}

// ---- the validated form ----

/// A credential helper: a root-owned executable whose standard output is
/// the secret (see `crate::credentials::process`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSource {
    /// argv; `command[0]` is an absolute path.
    pub command: Vec<String>,
    pub timeout: Duration,
    /// How long plain output is used (JSON output may say otherwise).
    pub ttl: Duration,
}

/// How agentguard authenticates to a token endpoint (RFC 6749 §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client authentication (a public client, or one the endpoint
    /// recognises by the assertion alone).
    None { client_id: Option<ValueSource> },
    /// `client_secret_basic`.
    Secret {
        client_id: ValueSource,
        secret: SecretRef,
    },
    /// `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a JWT
    /// signed with the client's key, made for each request.
    PrivateKeyJwt {
        client_id: ValueSource,
        key: SecretRef,
        key_id: Option<String>,
    },
}

/// Whose token is exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The agent itself: an identity token agentguard signs for it,
    /// verifiable through agentguard's JWKS.
    Agent,
    /// The person the agent acts for (`agentguard exec --on-behalf-of
    /// WHO`): that person's token, as the operator put it in
    /// `<dir>/<WHO>`; the agent's identity token is the actor token.
    OnBehalfOf { tokens: PathBuf },
}

/// RFC 8693 token exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchangeSource {
    pub token_url: Uri,
    pub client: ClientAuth,
    pub subject: Subject,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    /// The `aud` of the identity tokens agentguard signs for this exchange
    /// (default: the token URL, as RFC 7523 §3 suggests).
    pub assertion_audience: String,
}

/// RFC 7523 §2.1: the agent's identity token as the authorization grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtBearerSource {
    pub token_url: Uri,
    pub client: ClientAuth,
    pub scope: Option<String>,
    pub assertion_audience: String,
}

/// Where AWS credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSource {
    pub base: AwsBase,
    pub assume_role: Option<AssumeRole>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsBase {
    Keys {
        access_key_id: ValueSource,
        secret_access_key: SecretRef,
        session_token: Option<SecretRef>,
    },
    /// A helper printing AWS's `credential_process` JSON.
    Process(ProcessSource),
}

/// STS AssumeRole, made with the base credentials for each agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub sts_endpoint: Uri,
    pub sts_region: String,
    pub duration: Duration,
    pub external_id: Option<String>,
    /// Whether a session policy narrowing the role to the tools' actions is
    /// sent (the default), or none.
    pub session_policy: bool,
}

// ---- validation ----

fn duration(what: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{what} {text:?} is not a duration (like 10s)"))
}

pub(super) fn process(section: ProcessSection) -> Result<ProcessSource, String> {
    let (command, timeout, ttl) = match section {
        ProcessSection::Command(c) => (c, None, None),
        ProcessSection::Table(t) => (t.command, t.timeout, t.ttl),
    };
    let Some(program) = command.first() else {
        return Err("the command is empty: give the helper's absolute path first".into());
    };
    if !program.starts_with('/') {
        return Err(format!(
            "the helper {program:?} must be an absolute path (no search in PATH)"
        ));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err("an argument holds a NUL byte".into());
    }
    let timeout = match timeout {
        None => DEFAULT_PROCESS_TIMEOUT,
        Some(t) => duration("timeout", &t)?,
    };
    if timeout.is_zero() || timeout > MAX_PROCESS_TIMEOUT {
        return Err(format!(
            "timeout must be between 1s and {}s",
            MAX_PROCESS_TIMEOUT.as_secs()
        ));
    }
    let ttl = match ttl {
        None => DEFAULT_PROCESS_TTL,
        Some(t) => duration("ttl", &t)?,
    };
    if ttl < Duration::from_secs(1) {
        return Err("ttl must be at least 1s".into());
    }
    Ok(ProcessSource {
        command,
        timeout,
        ttl,
    })
}

/// An https URL (http only to loopback): client secrets and tokens cross it.
pub(super) fn endpoint(what: &str, url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{what} {url:?}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{what} {url:?} has no host"));
    }
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        _ => Err(format!(
            "{what} {uri} must be https (http only on loopback)"
        )),
    }
}

fn value_source(section: ValueSection) -> Result<ValueSource, String> {
    Ok(match section {
        ValueSection::Literal(v) => ValueSource::Literal(v),
        ValueSection::Source(s) => ValueSource::Secret(super::load::secret_ref(s)?),
    })
}

fn client_auth(
    client_id: Option<ValueSection>,
    secret: Option<SecretRefSection>,
    key: Option<SecretRefSection>,
    key_id: Option<String>,
) -> Result<ClientAuth, String> {
    let client_id = client_id.map(value_source).transpose()?;
    match (secret, key) {
        (Some(_), Some(_)) => {
            Err("give client_secret or client_key (private_key_jwt), not both".into())
        }
        (Some(secret), None) => Ok(ClientAuth::Secret {
            client_id: client_id.ok_or("client_secret needs a client_id")?,
            secret: super::load::secret_ref(secret)?,
        }),
        (None, Some(key)) => Ok(ClientAuth::PrivateKeyJwt {
            client_id: client_id.ok_or("client_key needs a client_id")?,
            key: super::load::secret_ref(key)?,
            key_id,
        }),
        (None, None) if key_id.is_some() => Err("client_key_id without a client_key".into()),
        (None, None) => Ok(ClientAuth::None { client_id }),
    }
}

/// Scopes and the like travel in a form body and end up in tokens: no
/// control characters, quotes or backslashes (RFC 6749 §3.3).
fn plain(what: &str, value: Option<String>) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.is_empty() || v.contains(['"', '\\']) || v.chars().any(char::is_control) => {
            Err(format!(
                "{what} {v:?} is empty or has characters it may not"
            ))
        }
        v => Ok(v),
    }
}

pub(super) fn token_exchange(section: TokenExchangeSection) -> Result<TokenExchangeSource, String> {
    let token_url = endpoint("token_url", &section.token_url)?;
    let client = client_auth(
        section.client_id,
        section.client_secret,
        section.client_key,
        section.client_key_id,
    )?;
    let subject = match (section.subject.as_deref(), section.subject_tokens) {
        (None | Some("agent"), None) => Subject::Agent,
        (None | Some("agent"), Some(_)) => {
            return Err("subject_tokens is for subject = \"on-behalf-of\"".into());
        }
        (Some("on-behalf-of"), Some(dir)) => {
            let tokens = PathBuf::from(&dir);
            if !tokens.is_absolute() {
                return Err(format!("subject_tokens {dir:?} must be an absolute path"));
            }
            Subject::OnBehalfOf { tokens }
        }
        (Some("on-behalf-of"), None) => {
            return Err(
                "subject = \"on-behalf-of\" needs subject_tokens, the folder of the people's tokens"
                    .into(),
            );
        }
        (Some(other), _) => {
            return Err(format!(
                "subject {other:?} must be \"agent\" or \"on-behalf-of\""
            ));
        }
    };
    if let Some(resource) = &section.resource {
        // RFC 8693 §2.1: an absolute URI, without a fragment.
        let uri: Uri = resource
            .parse()
            .map_err(|e| format!("resource {resource:?}: {e}"))?;
        if uri.scheme().is_none() || resource.contains('#') {
            return Err(format!(
                "resource {resource:?} must be an absolute URI without a fragment"
            ));
        }
    }
    Ok(TokenExchangeSource {
        assertion_audience: plain("assertion_audience", section.assertion_audience)?
            .unwrap_or_else(|| token_url.to_string()),
        token_url,
        client,
        subject,
        audience: plain("audience", section.audience)?,
        resource: section.resource,
        scope: plain("scope", section.scope)?,
        requested_token_type: plain("requested_token_type", section.requested_token_type)?,
    })
}

pub(super) fn jwt_bearer(section: JwtBearerSection) -> Result<JwtBearerSource, String> {
    let token_url = endpoint("token_url", &section.token_url)?;
    Ok(JwtBearerSource {
        client: client_auth(
            section.client_id,
            section.client_secret,
            section.client_key,
            section.client_key_id,
        )?,
        scope: plain("scope", section.scope)?,
        assertion_audience: plain("assertion_audience", section.assertion_audience)?
            .unwrap_or_else(|| token_url.to_string()),
        token_url,
    })
}

/// AWS region names: lowercase letters, digits and dashes.
fn region_name(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{region:?} is not an AWS region name"))
    }
}

pub(super) fn aws(section: AwsSection) -> Result<AwsSource, String> {
    let base = match (
        section.access_key_id,
        section.secret_access_key,
        section.process,
    ) {
        (Some(id), Some(secret), None) => AwsBase::Keys {
            access_key_id: value_source(id)?,
            secret_access_key: super::load::secret_ref(secret)?,
            session_token: section
                .session_token
                .map(super::load::secret_ref)
                .transpose()?,
        },
        (None, None, Some(process)) if section.session_token.is_none() => {
            AwsBase::Process(self::process(process)?)
        }
        _ => {
            return Err(
                "give access_key_id and secret_access_key (and optionally session_token), or process"
                    .into(),
            );
        }
    };
    let assume_role = match section.assume_role {
        None => None,
        Some(r) => {
            if !r.role_arn.starts_with("arn:") || r.role_arn.contains(char::is_whitespace) {
                return Err(format!(
                    "assume_role.role_arn {:?} is not an ARN",
                    r.role_arn
                ));
            }
            let sts_region = r.sts_region.unwrap_or_else(|| "us-east-1".to_owned());
            region_name(&sts_region).map_err(|e| format!("assume_role.sts_region: {e}"))?;
            let sts_endpoint = endpoint(
                "assume_role.sts_endpoint",
                r.sts_endpoint
                    .as_deref()
                    .unwrap_or("https://sts.amazonaws.com"),
            )?;
            let duration = match r.duration {
                None => MIN_ROLE_DURATION,
                Some(d) => duration("assume_role.duration", &d)?,
            };
            if duration < MIN_ROLE_DURATION || duration > MAX_ROLE_DURATION {
                return Err("assume_role.duration must be between 15m and 12h".into());
            }
            let session_policy = match r.session_policy.as_deref() {
                None | Some("tools") => true,
                Some("none") => false,
                Some(other) => {
                    return Err(format!(
                        "assume_role.session_policy {other:?} must be \"tools\" or \"none\""
                    ));
                }
            };
            Some(AssumeRole {
                role_arn: r.role_arn,
                sts_endpoint,
                sts_region,
                duration,
                external_id: plain("assume_role.external_id", r.external_id)?,
                session_policy,
            })
        }
    };
    Ok(AwsSource { base, assume_role })
}

pub(super) fn aws_sigv4(section: AwsSigV4Section) -> Result<(Vec<String>, Vec<String>), String> {
    if section.regions.is_empty() || section.services.is_empty() {
        return Err("aws_sigv4 needs at least one region and one service".into());
    }
    for region in &section.regions {
        region_name(region)?;
    }
    for service in &section.services {
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("{service:?} is not an AWS service signing name"));
        }
    }
    Ok((section.regions, section.services))
}

/// `service:Action` (IAM's spelling), e.g. `ec2:DescribeInstances`,
/// `s3:GetObject`; `*` may end the action (`ec2:Describe*`).
pub(super) fn aws_action(action: &str) -> Result<(), String> {
    let Some((service, name)) = action.split_once(':') else {
        return Err(format!(
            "{action:?} is not service:Action (like ec2:DescribeInstances)"
        ));
    };
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let body = name.strip_suffix('*').unwrap_or(name);
    let name_ok =
        (!body.is_empty() || name == "*") && body.bytes().all(|b| b.is_ascii_alphanumeric());
    if service_ok && name_ok {
        Ok(())
    } else {
        Err(format!(
            "{action:?} is not service:Action (like ec2:DescribeInstances)"
        ))
    }
}

/// Whether the IAM-style pattern `pattern` (`ec2:Describe*`) names
/// `action` (`ec2:DescribeInstances`). Services compare exactly, actions
/// case-insensitively, as IAM does.
pub fn aws_action_matches(pattern: &str, action: &str) -> bool {
    let (Some((ps, pa)), Some((s, a))) = (pattern.split_once(':'), action.split_once(':')) else {
        return false;
    };
    if ps != s {
        return false;
    }
    match pa.strip_suffix('*') {
        Some(prefix) => a
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        None => pa.eq_ignore_ascii_case(a),
    }
}

/// The new source kinds, each validated, with errors naming the key.
pub(super) fn parse_source(
    section: super::model::SourceSection,
) -> Result<super::model::SecretSource, String> {
    use super::model::{SecretSource, SourceSection};
    fn key(k: &'static str) -> impl Fn(String) -> String {
        move |m| format!("credential.source.{k}: {m}")
    }
    Ok(match section {
        SourceSection::Process(p) => SecretSource::Process(process(p).map_err(key("process"))?),
        SourceSection::TokenExchange(t) => {
            SecretSource::TokenExchange(token_exchange(t).map_err(key("token_exchange"))?)
        }
        SourceSection::JwtBearer(j) => {
            SecretSource::JwtBearer(jwt_bearer(j).map_err(key("jwt_bearer"))?)
        }
        SourceSection::Aws(a) => SecretSource::Aws(aws(a).map_err(key("aws"))?),
        SourceSection::File(_)
        | SourceSection::Env(_)
        | SourceSection::Oauth2(_)
        | SourceSection::Jwt(_) => unreachable!("parsed by load.rs"),
    })
}

/// AWS credentials only sign, and only AWS credentials sign.
pub(super) fn check_pairing(
    source: &super::model::SecretSource,
    inject: &super::model::Injection,
) -> Result<(), String> {
    use super::model::{Injection, SecretSource};
    match (source, inject) {
        (SecretSource::Aws(_), Injection::AwsSigV4 { .. }) => Ok(()),
        (SecretSource::Aws(_), _) => Err(
            "an aws credential re-signs requests: inject = { aws_sigv4 = { regions = [...], services = [...] } }"
                .into(),
        ),
        (_, Injection::AwsSigV4 { .. }) => {
            Err("aws_sigv4 needs an aws source (credential.source.aws)".into())
        }
        _ => Ok(()),
    }
}

/// A tool's `aws_actions`: each `service:Action`, on a tool whose
/// credential re-signs AWS requests.
pub(super) fn tool_aws_actions(
    actions: Vec<String>,
    credential: Option<&str>,
    credentials: &[super::model::CredentialPolicy],
) -> Result<Vec<String>, String> {
    let signs = credential
        .and_then(|id| credentials.iter().find(|c| c.id == id))
        .is_some_and(|c| matches!(c.inject, super::model::Injection::AwsSigV4 { .. }));
    if !signs {
        return Err(
            "only a tool whose credential is an aws one (inject = { aws_sigv4 = ... }) names actions"
                .into(),
        );
    }
    if actions.is_empty() {
        return Err("list at least one action, or leave aws_actions out".into());
    }
    for action in &actions {
        aws_action(action)?;
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Injection, SecretSource, load_path};

    const HEAD: &str =
        "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n\n[[credential]]\nid = \"c\"\n";

    /// Loads one credential (`body` after its id) and, optionally, a tool
    /// binding it.
    fn load(body: &str, tool: &str) -> Result<crate::policy::PolicySet, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), format!("{HEAD}{body}\n{tool}")).unwrap();
        load_path(dir.path()).map_err(|e| e.to_string())
    }

    fn source(set: &crate::policy::PolicySet) -> SecretSource {
        set.agents[0].credentials[0].source.clone()
    }

    #[test]
    fn new_sources_parse() {
        let set = load(
            "source = { process = [\"/usr/local/bin/get-secret\", \"itsm\"] }\ninject = { header = \"Authorization\", format = \"Bearer {secret}\" }",
            "",
        )
        .unwrap();
        assert_eq!(
            source(&set),
            SecretSource::Process(ProcessSource {
                command: vec!["/usr/local/bin/get-secret".into(), "itsm".into()],
                timeout: Duration::from_secs(10),
                ttl: Duration::from_secs(300),
            })
        );
        let set = load(
            "inject = { header = \"Authorization\", format = \"Bearer {secret}\" }\n[credential.source.token_exchange]\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"agentguard\"\nclient_key = { file = \"/etc/agentguard/secrets/idp.pem\" }\nsubject = \"on-behalf-of\"\nsubject_tokens = \"/etc/agentguard/people\"\naudience = \"tickets\"\nscope = \"tickets:read\"",
            "",
        )
        .unwrap();
        let SecretSource::TokenExchange(t) = source(&set) else {
            panic!("not an exchange")
        };
        assert_eq!(
            t.subject,
            Subject::OnBehalfOf {
                tokens: "/etc/agentguard/people".into()
            }
        );
        assert_eq!(t.assertion_audience, "https://idp.example.com/token");
        assert!(matches!(t.client, ClientAuth::PrivateKeyJwt { .. }));
        let set = load(
            "inject = { aws_sigv4 = { regions = [\"eu-west-1\"], services = [\"ec2\"] } }\n[credential.source.aws]\naccess_key_id = { file = \"/k\" }\nsecret_access_key = { file = \"/s\" }\nassume_role = { role_arn = \"arn:aws:iam::123456789012:role/r\", duration = \"1h\" }",
            "[[tool]]\nname = \"t\"\nhost = \"ec2.eu-west-1.amazonaws.com\"\nmethods = [\"POST\"]\npaths = [\"/\"]\ncredential = \"c\"\naws_actions = [\"ec2:Describe*\"]",
        )
        .unwrap();
        let SecretSource::Aws(aws) = source(&set) else {
            panic!("not aws")
        };
        assert_eq!(aws.assume_role.unwrap().duration, Duration::from_secs(3600));
        assert!(matches!(
            set.agents[0].credentials[0].inject,
            Injection::AwsSigV4 { .. }
        ));
        assert_eq!(set.agents[0].tools[0].aws_actions, ["ec2:Describe*"]);
    }

    #[test]
    fn bad_sources_are_refused_naming_the_key() {
        let bearer = "inject = { header = \"Authorization\" }";
        for (body, tool, want) in [
            (format!("source = {{ process = [\"get-secret\"] }}\n{bearer}"), "", "credential.source.process: the helper \"get-secret\" must be an absolute path"),
            (format!("source = {{ process = {{ command = [\"/x\"], timeout = \"2m\" }} }}\n{bearer}"), "", "timeout must be between"),
            (format!("{bearer}\n[credential.source.token_exchange]\ntoken_url = \"http://idp.example.com/t\""), "", "must be https"),
            (format!("{bearer}\n[credential.source.token_exchange]\ntoken_url = \"https://idp/t\"\nsubject = \"on-behalf-of\""), "", "needs subject_tokens"),
            (format!("{bearer}\n[credential.source.token_exchange]\ntoken_url = \"https://idp/t\"\nclient_secret = {{ env = \"S\" }}"), "", "needs a client_id"),
            (format!("{bearer}\n[credential.source.jwt_bearer]\ntoken_url = \"https://idp/t\"\nclient_id = \"x\"\nclient_secret = {{ env = \"S\" }}\nclient_key = {{ env = \"K\" }}"), "", "not both"),
            (format!("{bearer}\n[credential.source.aws]\naccess_key_id = \"AKID\""), "", "credential.source.aws: give access_key_id"),
            (format!("{bearer}\n[credential.source.aws]\naccess_key_id = \"AKID\"\nsecret_access_key = {{ env = \"S\" }}"), "", "credential.inject: an aws credential re-signs requests"),
            ("source = { env = \"K\" }\ninject = { aws_sigv4 = { regions = [\"eu-west-1\"], services = [\"ec2\"] } }".to_owned(), "", "needs an aws source"),
            (format!("source = {{ env = \"K\" }}\n{bearer}"), "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"GET\"]\npaths = [\"/\"]\ncredential = \"c\"\naws_actions = [\"ec2:X\"]", "tool.aws_actions: only a tool whose credential is an aws one"),
        ] {
            let err = load(&body, tool).unwrap_err();
            assert!(err.contains(want), "{want}:\n{err}");
            assert!(err.contains("a.toml:"), "{err}");
        }
    }

    #[test]
    fn aws_actions_are_validated_and_matched_as_iam_does() {
        for good in [
            "ec2:DescribeInstances",
            "s3:GetObject",
            "ec2:Describe*",
            "sts:*",
        ] {
            assert!(aws_action(good).is_ok(), "{good}");
        }
        for bad in [
            "DescribeInstances",
            "EC2:Describe",
            "ec2:",
            "ec2:Get Object",
            "s3:*Object",
        ] {
            assert!(aws_action(bad).is_err(), "{bad}");
        }
        assert!(aws_action_matches("ec2:Describe*", "ec2:DescribeRegions"));
        assert!(aws_action_matches("s3:getobject", "s3:GetObject"));
        assert!(!aws_action_matches("ec2:Describe*", "ec2:RunInstances"));
        assert!(!aws_action_matches("s3:GetObject", "s3:GetObjectAcl"));
        assert!(!aws_action_matches("ec2:*", "s3:GetObject"));
    }
}
