//! Reading and validating a policies folder (or a single file).

use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use hyper::{Method, Uri, header::HeaderName};

use super::model::{
    AgentLimits, AgentLimitsSection, AgentPolicy, AllowedBy, CgroupRelPath, CredentialPolicy,
    CredentialSection, DnsMode, HostPattern, InjectSection, Injection, JwtSource, MethodSet, Mode,
    OAuth2Source, PassthroughRule, PathPattern, PolicyFile, PolicySet, SecretRef, SecretRefSection,
    SecretSource, SourceSection, ToolPolicy, ToolSection, ToolTimeouts, ToolTimeoutsSection,
    UnixSocketAddr, ValueSection, ValueSource, validate_agent_name,
};
use super::systemd::SystemdUnit;
use super::{
    CallRules, Condition, DEFAULT_MAX_BODY, MAX_MAX_BODY, NamePattern, Protocol, RatePer, RateRule,
    RateSpec, model::Spanned,
};

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A problem at a known place in a file. `line` and `column` are 1-based.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: no policy files (*.toml) found")]
    NoPolicies { path: PathBuf },
}

/// All errors found in a policy set: operators fix them in one pass.
pub type PolicyErrors = crate::error_list::ErrorList<PolicyError>;

/// Loads a policy set from a folder (every `*.toml` in it, sorted by name) or
/// from one file. Every file is checked; any error refuses the whole set.
pub fn load_path(path: &Path) -> Result<PolicySet, PolicyErrors> {
    let files = policy_files(path).map_err(|e| crate::error_list::ErrorList(vec![e]))?;
    let mut errors = Vec::new();
    let mut agents: Vec<(AgentPolicy, Span)> = Vec::new();
    let mut hasher = Sha256::new();

    for file in &files {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(source) => {
                errors.push(PolicyError::Read {
                    path: file.clone(),
                    source,
                });
                continue;
            }
        };
        // Name and length prefix each file so that moving bytes between files
        // changes the version.
        let name = file.file_name().unwrap_or_default().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());

        match parse_file(file, &text) {
            Ok(agent) => agents.push(agent),
            Err(e) => errors.push(e),
        }
    }

    check_conflicts(&agents, &mut errors);
    if !errors.is_empty() {
        return Err(crate::error_list::ErrorList(errors));
    }
    Ok(PolicySet {
        agents: agents.into_iter().map(|(a, _)| a).collect(),
        version: format!("{:x}", hasher.finalize()).into(),
    })
}

/// One policy file's text, checked as [`load_path`] checks each file (but
/// not against the other files); `path` names it in errors. The fuzz
/// target's way in: no file to write per input.
pub fn check_text(path: &Path, text: &str) -> Result<AgentPolicy, PolicyError> {
    parse_file(path, text).map(|(agent, _)| agent)
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml")
            && entry.file_type().is_ok_and(|t| !t.is_dir())
        {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::NoPolicies {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// Where a value sits in its file, for errors found after parsing.
#[derive(Debug, Clone)]
struct Span {
    path: PathBuf,
    line: usize,
    column: usize,
}

fn span_of(path: &Path, text: &str, offset: usize) -> Span {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Span {
        path: path.to_owned(),
        line,
        column,
    }
}

fn invalid(span: &Span, message: String) -> PolicyError {
    PolicyError::Invalid {
        path: span.path.clone(),
        line: span.line,
        column: span.column,
        message,
    }
}

fn parse_file(path: &Path, text: &str) -> Result<(AgentPolicy, Span), PolicyError> {
    let parsed: PolicyFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        invalid(&span_of(path, text, offset), e.message().trim().to_owned())
    })?;
    let name_span = span_of(path, text, parsed.agent.name.span().start);
    let name = parsed.agent.name.into_inner();
    validate_agent_name(&name).map_err(|m| invalid(&name_span, format!("agent.name: {m}")))?;
    let containers = match parsed.agent.containers {
        None => None,
        Some(section) => {
            let offset = section.span().start;
            Some(
                super::containers::parse(section.into_inner(), offset)
                    .map_err(|(at, m)| invalid(&span_of(path, text, at), m))?,
            )
        }
    };
    // An agent that is containers needs no cgroup of its own; it still
    // gets one (`agentguard exec` can start processes there).
    let default_cgroup = containers
        .as_ref()
        .and_then(|_| CgroupRelPath::parse(&format!("agentguard/{name}")).ok());
    let (cgroup, systemd_unit) = parse_agent_cgroup(
        path,
        text,
        parsed.agent.cgroup.as_ref(),
        parsed.agent.systemd_unit.as_ref(),
        &name_span,
        default_cgroup,
    )?;
    let mode = match &parsed.agent.mode {
        None => Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => {
                return Err(invalid(
                    &span_of(path, text, m.span().start),
                    format!("agent.mode: {other:?} must be \"enforce\" or \"audit\""),
                ));
            }
        },
    };
    let dns = match &parsed.agent.dns {
        None => DnsMode::Policy,
        Some(d) => match d.get_ref().as_str() {
            "policy" => DnsMode::Policy,
            "any" => DnsMode::Any,
            other => {
                return Err(invalid(
                    &span_of(path, text, d.span().start),
                    format!("agent.dns: {other:?} must be \"policy\" or \"any\""),
                ));
            }
        },
    };
    let mut unix_sockets: Vec<UnixSocketAddr> = Vec::new();
    for entry in parsed.agent.unix_sockets.iter().flatten() {
        let span = span_of(path, text, entry.span().start);
        let addr = UnixSocketAddr::parse(entry.get_ref())
            .map_err(|m| invalid(&span, format!("agent.unix_sockets: {m}")))?;
        if unix_sockets.contains(&addr) {
            return Err(invalid(
                &span,
                format!("agent.unix_sockets: {addr} is listed twice"),
            ));
        }
        unix_sockets.push(addr);
    }
    let mut listen: Vec<super::ListenAddr> = Vec::new();
    for entry in parsed.agent.listen.iter().flatten() {
        let span = span_of(path, text, entry.span().start);
        let addr = super::ListenAddr::parse(entry.get_ref())
            .map_err(|m| invalid(&span, format!("agent.listen: {m}")))?;
        if listen.contains(&addr) {
            return Err(invalid(
                &span,
                format!("agent.listen: {addr} is listed twice"),
            ));
        }
        listen.push(addr);
    }
    let limits = agent_limits(path, text, parsed.agent.limits)?;
    let netns = match &parsed.agent.netns {
        None => None,
        Some(n) => Some(parse_netns(n.get_ref()).map_err(|m| {
            invalid(
                &span_of(path, text, n.span().start),
                format!("agent.netns: {m}"),
            )
        })?),
    };
    let upstream_netns = match &parsed.agent.upstream_netns {
        None => super::UpstreamNetns::Agent,
        Some(u) => match u.get_ref().as_str() {
            "agent" => super::UpstreamNetns::Agent,
            "host" => super::UpstreamNetns::Host,
            other => {
                return Err(invalid(
                    &span_of(path, text, u.span().start),
                    format!("agent.upstream_netns: {other:?} must be \"agent\" or \"host\""),
                ));
            }
        },
    };
    let mut credentials: Vec<CredentialPolicy> = Vec::new();
    for section in parsed.credential {
        let id_span = span_of(path, text, section.id.span().start);
        let credential = parse_credential(path, text, section)?;
        if credentials.iter().any(|c| c.id == credential.id) {
            return Err(invalid(
                &id_span,
                format!("credential.id: {:?} is defined twice", credential.id),
            ));
        }
        credentials.push(credential);
    }
    let mut tools: Vec<ToolPolicy> = Vec::new();
    for section in parsed.tool {
        let name_span = span_of(path, text, section.name.span().start);
        let tool = parse_tool(path, text, section, &credentials)?;
        if tools.iter().any(|t| t.name == tool.name) {
            return Err(invalid(
                &name_span,
                format!("tool.name: {:?} is defined twice", tool.name),
            ));
        }
        tools.push(tool);
    }
    let mut passthrough = Vec::new();
    for entry in parsed.passthrough {
        let span = span_of(path, text, entry.host.span().start);
        let host = HostPattern::parse(entry.host.get_ref())
            .map_err(|m| invalid(&span, format!("passthrough.host: {m}")))?;
        if entry
            .ports
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.contains(&0))
        {
            return Err(invalid(
                &span,
                "passthrough.ports: list ports 1-65535, or leave ports out for any port".into(),
            ));
        }
        passthrough.push(PassthroughRule {
            host,
            ports: entry.ports,
        });
    }
    Ok((
        AgentPolicy {
            name,
            cgroup,
            systemd_unit,
            mode,
            dns,
            unix_sockets,
            listen,
            netns,
            upstream_netns,
            containers,
            credentials,
            tools: super::tools::Tools::new(tools),
            passthrough,
            limits,
            source: path.to_owned(),
        },
        name_span,
    ))
}

/// `agent.netns`: `"cgroup"`, or an absolute, clean path to a namespace
/// file.
fn parse_netns(raw: &str) -> Result<super::NetnsSource, String> {
    if raw == "cgroup" {
        return Ok(super::NetnsSource::Cgroup);
    }
    // Checked on the text: Path::components() drops "." silently.
    let clean = raw.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
    });
    if !clean {
        return Err(format!(
            "{raw:?} must be \"cgroup\" or an absolute path without '.' or '..' (e.g. /run/netns/NAME)"
        ));
    }
    Ok(super::NetnsSource::Path(PathBuf::from(raw)))
}

fn parse_credential(
    path: &Path,
    text: &str,
    section: CredentialSection,
) -> Result<CredentialPolicy, PolicyError> {
    let at = |offset: usize| span_of(path, text, offset);
    let id_span = at(section.id.span().start);
    let id = section.id.into_inner();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            &id_span,
            format!("credential.id: {id:?} may only use letters, digits, '-', '_' and '.'"),
        ));
    }
    let source_span = at(section.source.span().start);
    let source = match section.source.into_inner() {
        SourceSection::File(file) => SecretSource::File(
            secret_file(&file)
                .map_err(|m| invalid(&source_span, format!("credential.source: {m}")))?,
        ),
        SourceSection::Env(var) => SecretSource::Env(
            env_name(&var).map_err(|m| invalid(&source_span, format!("credential.source: {m}")))?,
        ),
        SourceSection::Oauth2(o) => SecretSource::OAuth2(
            oauth2(o)
                .map_err(|m| invalid(&source_span, format!("credential.source.oauth2: {m}")))?,
        ),
        SourceSection::Jwt(j) => SecretSource::Jwt(
            jwt(j).map_err(|m| invalid(&source_span, format!("credential.source.jwt: {m}")))?,
        ),
        other => super::sources::parse_source(other).map_err(|m| invalid(&source_span, m))?,
    };
    let inject_span = at(section.inject.span().start);
    let inject = injection(section.inject.into_inner())
        .map_err(|m| invalid(&inject_span, format!("credential.inject: {m}")))?;
    super::sources::check_pairing(&source, &inject)
        .map_err(|m| invalid(&inject_span, format!("credential.inject: {m}")))?;
    // The token binds the query: a token in the query would change what it
    // binds.
    if matches!(source, SecretSource::Jwt(_)) && !matches!(inject, Injection::Header { .. }) {
        return Err(invalid(
            &inject_span,
            "credential.inject: a jwt credential goes in a header (e.g. header = \"Authorization\", format = \"Bearer {secret}\")".into(),
        ));
    }
    let placeholder_env = match section.placeholder_env {
        None => None,
        Some(var) => {
            let span = at(var.span().start);
            Some(
                env_name(var.get_ref())
                    .map_err(|m| invalid(&span, format!("credential.placeholder_env: {m}")))?,
            )
        }
    };
    Ok(CredentialPolicy {
        id,
        source,
        inject,
        placeholder_env,
    })
}

fn secret_file(file: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(file);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("secret file {file:?} must be an absolute path"))
    }
}

fn env_name(var: &str) -> Result<String, String> {
    let ok = !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(var.to_owned())
    } else {
        Err(format!("{var:?} is not an environment variable name"))
    }
}

pub(super) fn secret_ref(section: SecretRefSection) -> Result<SecretRef, String> {
    Ok(match section {
        SecretRefSection::File(f) => SecretRef::File(secret_file(&f)?),
        SecretRefSection::Env(v) => SecretRef::Env(env_name(&v)?),
    })
}

fn oauth2(section: super::model::OAuth2Section) -> Result<OAuth2Source, String> {
    let token_url: Uri = section
        .token_url
        .parse()
        .map_err(|e| format!("token_url {:?}: {e}", section.token_url))?;
    let host = token_url.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match token_url.scheme_str() {
        Some("https") => {}
        // The client secret must not cross a network in clear text.
        Some("http") if loopback => {}
        _ => {
            return Err(format!(
                "token_url {token_url} must be https (http only on loopback)"
            ));
        }
    }
    Ok(OAuth2Source {
        token_url,
        client_id: match section.client_id {
            ValueSection::Literal(v) => ValueSource::Literal(v),
            ValueSection::Source(s) => ValueSource::Secret(secret_ref(s)?),
        },
        client_secret: secret_ref(section.client_secret)?,
        scope: section.scope,
    })
}

fn jwt(section: super::model::JwtSection) -> Result<JwtSource, String> {
    let audience = section.audience.trim();
    if audience.is_empty() {
        return Err("audience must not be empty".into());
    }
    let ttl = match &section.ttl {
        None => crate::token::DEFAULT_TTL,
        Some(t) => humantime::parse_duration(t)
            .map_err(|_| format!("ttl {t:?} is not a duration (like 60s)"))?,
    };
    if ttl < std::time::Duration::from_secs(1) || ttl > crate::token::MAX_TTL {
        return Err(format!(
            "ttl must be between 1s and {}s: a token is for one call",
            crate::token::MAX_TTL.as_secs()
        ));
    }
    let scope = section.scope.unwrap_or_default();
    if scope.contains(['"', '\\']) || scope.chars().any(char::is_control) {
        return Err(format!(
            "scope {scope:?} has characters scopes may not (RFC 6749 §3.3)"
        ));
    }
    Ok(JwtSource {
        audience: audience.to_owned(),
        scope,
        ttl,
    })
}

/// Headers that are the proxy's to manage, never a credential's.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

fn injection(section: InjectSection) -> Result<Injection, String> {
    if let Some(aws) = section.aws_sigv4 {
        if section.header.is_some()
            || section.basic.is_some()
            || section.query.is_some()
            || section.format.is_some()
        {
            return Err("aws_sigv4 goes alone: the request is signed, nothing is added".into());
        }
        let (regions, services) = super::sources::aws_sigv4(aws)?;
        return Ok(Injection::AwsSigV4 { regions, services });
    }
    match (section.header, section.basic, section.query) {
        (Some(header), None, None) => {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("header {header:?} is not a valid header name"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!("header {header:?} cannot carry a credential"));
            }
            let format = section.format.unwrap_or_else(|| "{secret}".to_owned());
            if format.matches("{secret}").count() != 1 {
                return Err(format!(
                    "format {format:?} must contain {{secret}} exactly once"
                ));
            }
            Ok(Injection::Header { name, format })
        }
        (None, Some(basic), None) if section.format.is_none() => {
            if basic.username.contains(':') {
                return Err("basic.username may not contain ':' (RFC 7617 §2)".into());
            }
            Ok(Injection::Basic {
                username: basic.username,
            })
        }
        (None, None, Some(param)) if section.format.is_none() => {
            if param.is_empty() || param.contains(['&', '=', '#', ' ']) {
                return Err(format!("query parameter {param:?} is not a plain name"));
            }
            Ok(Injection::Query { param })
        }
        _ => Err(
            "give exactly one of header (with optional format), basic = { username }, or query"
                .into(),
        ),
    }
}

fn parse_tool(
    path: &Path,
    text: &str,
    section: ToolSection,
    credentials: &[CredentialPolicy],
) -> Result<ToolPolicy, PolicyError> {
    let at = |offset: usize| span_of(path, text, offset);
    let calls = parse_calls(path, text, &section)?;
    let name_span = at(section.name.span().start);
    let name = section.name.into_inner();
    if name.is_empty() {
        return Err(invalid(&name_span, "tool.name: must not be empty".into()));
    }
    let host_span = at(section.host.span().start);
    let host = HostPattern::parse(section.host.get_ref())
        .map_err(|m| invalid(&host_span, format!("tool.host: {m}")))?;
    let port = match section.port {
        Some(p) if *p.get_ref() == 0 => {
            return Err(invalid(
                &at(p.span().start),
                "tool.port: must be 1-65535".into(),
            ));
        }
        p => p.map(|p| p.into_inner()),
    };
    let methods_span = at(section.methods.span().start);
    let mut methods = MethodSet::default();
    for m in section.methods.get_ref() {
        // Methods are case-sensitive tokens (RFC 9110 §9.1); policies name
        // the standard upper-case ones.
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                &methods_span,
                format!("tool.methods: {m:?} must be an upper-case method name such as \"GET\""),
            ));
        }
        methods.insert(Method::from_bytes(m.as_bytes()).map_err(|_| {
            invalid(
                &methods_span,
                format!("tool.methods: {m:?} is not a method"),
            )
        })?);
    }
    if methods.is_empty() {
        return Err(invalid(
            &methods_span,
            "tool.methods: list at least one method".into(),
        ));
    }
    let paths_span = at(section.paths.span().start);
    let paths = section
        .paths
        .get_ref()
        .iter()
        .map(|p| PathPattern::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| invalid(&paths_span, format!("tool.paths: {m}")))?;
    if paths.is_empty() {
        return Err(invalid(
            &paths_span,
            "tool.paths: list at least one path".into(),
        ));
    }
    let credential = match section.credential {
        None => None,
        Some(c) => {
            if !credentials.iter().any(|k| k.id == *c.get_ref()) {
                return Err(invalid(
                    &at(c.span().start),
                    format!(
                        "tool.credential: no [[credential]] with id {:?} in this file",
                        c.get_ref()
                    ),
                ));
            }
            Some(c.into_inner())
        }
    };
    let timeouts = match section.timeouts {
        None => ToolTimeouts::default(),
        Some(t) => {
            let span = at(t.span().start);
            tool_timeouts(t.into_inner())
                .map_err(|m| invalid(&span, format!("tool.timeouts: {m}")))?
        }
    };
    let allow_overrides = match section.allow_overrides {
        None => Vec::new(),
        Some(list) => {
            let span = at(list.span().start);
            list.get_ref()
                .iter()
                .map(|e| super::overrides::parse_entry(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid(&span, format!("tool.allow_overrides: {m}")))?
        }
    };
    let aws_actions = match section.aws_actions {
        None => Vec::new(),
        Some(actions) => {
            let span = at(actions.span().start);
            super::sources::tool_aws_actions(
                actions.into_inner(),
                credential.as_deref(),
                credentials,
            )
            .map_err(|m| invalid(&span, format!("tool.aws_actions: {m}")))?
        }
    };
    let approval = match &section.approval {
        None => None,
        Some(a) => Some(
            super::approval::parse(a.get_ref(), &calls)
                .map_err(|m| invalid(&at(a.span().start), format!("tool.approval: {m}")))?,
        ),
    };
    Ok(ToolPolicy {
        allowed: AllowedBy::new(&name),
        name,
        host,
        port,
        methods,
        paths,
        credential,
        allow_overrides,
        aws_actions,
        calls,
        approval,
        timeouts,
    })
}

/// A tool's time limits: durations from 1 s to a day.
fn tool_timeouts(section: ToolTimeoutsSection) -> Result<ToolTimeouts, String> {
    let parse = |key: &str, value: Option<String>| -> Result<_, String> {
        let Some(v) = value else { return Ok(None) };
        let d = humantime::parse_duration(&v)
            .map_err(|_| format!("{key} {v:?} is not a duration (like 90s or 10m)"))?;
        if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(86_400) {
            return Err(format!("{key} must be between 1s and 24h"));
        }
        Ok(Some(d))
    };
    Ok(ToolTimeouts {
        response_head: parse("response_head", section.response_head)?,
        body_idle: parse("body_idle", section.body_idle)?,
    })
}

/// `[agent.limits]`: counts of at least 1.
fn agent_limits(
    path: &Path,
    text: &str,
    section: Option<AgentLimitsSection>,
) -> Result<AgentLimits, PolicyError> {
    let Some(section) = section else {
        return Ok(AgentLimits::default());
    };
    let count = |key: &str, value: Option<Spanned<u32>>| match value {
        Some(v) if *v.get_ref() == 0 => Err(invalid(
            &span_of(path, text, v.span().start),
            format!("agent.limits.{key}: must be at least 1"),
        )),
        v => Ok(v.map(Spanned::into_inner)),
    };
    Ok(AgentLimits {
        connections: count("connections", section.connections)?,
        requests: count("requests", section.requests)?,
    })
}

/// `cgroup`, or `systemd_unit` (whose cgroup is the unit's own, in
/// `system.slice` unless `cgroup` names another slice path).
fn parse_agent_cgroup(
    path: &Path,
    text: &str,
    cgroup: Option<&Spanned<String>>,
    unit: Option<&Spanned<String>>,
    name_span: &Span,
    default: Option<CgroupRelPath>,
) -> Result<(CgroupRelPath, Option<SystemdUnit>), PolicyError> {
    let cgroup = match cgroup {
        Some(c) => Some(CgroupRelPath::parse(c.get_ref()).map_err(|m| {
            invalid(
                &span_of(path, text, c.span().start),
                format!("agent.cgroup: {m}"),
            )
        })?),
        None => None,
    };
    let Some(unit) = unit else {
        return cgroup.or(default).map(|c| (c, None)).ok_or_else(|| {
            invalid(
                name_span,
                "agent: missing `cgroup` (or `systemd_unit` for an agent that is a systemd service, or `[agent.containers]` for one that is containers)"
                    .into(),
            )
        });
    };
    let span = span_of(path, text, unit.span().start);
    let unit = SystemdUnit::parse(unit.get_ref())
        .map_err(|m| invalid(&span, format!("agent.systemd_unit: {m}")))?;
    let cgroup = cgroup.unwrap_or_else(|| unit.default_cgroup());
    unit.check_cgroup(&cgroup)
        .map_err(|m| invalid(&span, format!("agent.systemd_unit: {m}")))?;
    Ok((cgroup, Some(unit)))
}

/// The keys of a `[[tool]]` about calls: `protocol`, `mcp_*`,
/// `rpc_methods`, `when`, `rate`, `rate_per`, `record_arguments` and
/// `max_body`.
fn parse_calls(path: &Path, text: &str, section: &ToolSection) -> Result<CallRules, PolicyError> {
    let at = |span: std::ops::Range<usize>| span_of(path, text, span.start);
    let protocol = match &section.protocol {
        None => Protocol::Http,
        Some(p) => match p.get_ref().as_str() {
            "http" => Protocol::Http,
            "mcp" => Protocol::Mcp,
            "jsonrpc" => Protocol::JsonRpc,
            other => {
                return Err(invalid(
                    &at(p.span()),
                    format!("tool.protocol: {other:?} must be \"http\", \"mcp\" or \"jsonrpc\""),
                ));
            }
        },
    };
    let names = |key: &str, list: &Option<Spanned<Vec<String>>>, allowed: bool| {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        if !allowed {
            return Err(invalid(
                &at(list.span()),
                format!(
                    "tool.{key}: only for protocol = {}",
                    if key == "rpc_methods" {
                        "\"mcp\" or \"jsonrpc\""
                    } else {
                        "\"mcp\""
                    }
                ),
            ));
        }
        list.get_ref()
            .iter()
            .map(|n| NamePattern::parse(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid(&at(list.span()), format!("tool.{key}: {m}")))
    };
    let mcp = protocol == Protocol::Mcp;
    let mut rules = CallRules {
        protocol,
        mcp_tools: names("mcp_tools", &section.mcp_tools, mcp)?,
        mcp_tools_except: names("mcp_tools_except", &section.mcp_tools_except, mcp)?,
        mcp_resources: names("mcp_resources", &section.mcp_resources, mcp)?,
        mcp_prompts: names("mcp_prompts", &section.mcp_prompts, mcp)?,
        rpc_methods: names("rpc_methods", &section.rpc_methods, protocol.is_rpc())?,
        when: None,
        rate: None,
        record_arguments: section.record_arguments.unwrap_or(false),
        max_body: DEFAULT_MAX_BODY,
    };
    if protocol.is_rpc() && !section.methods.get_ref().iter().any(|m| m == "POST") {
        return Err(invalid(
            &at(section.methods.span()),
            format!(
                "tool.methods: a protocol = {:?} tool needs \"POST\", which carries its calls",
                protocol.as_str()
            ),
        ));
    }
    if section.record_arguments.is_some() && !protocol.is_rpc() {
        return Err(invalid(
            &at(section.name.span()),
            "tool.record_arguments: only for protocol = \"mcp\" or \"jsonrpc\" (arguments are JSON-RPC params)".into(),
        ));
    }
    if let Some(w) = &section.when {
        let span = at(w.span());
        let condition = Condition::compile(w.get_ref())
            .map_err(|m| invalid(&span, format!("tool.when: {m}")))?;
        if condition.uses().mcp && !protocol.is_rpc() {
            return Err(invalid(
                &span,
                "tool.when: mcp is only set for protocol = \"mcp\" or \"jsonrpc\" tools".into(),
            ));
        }
        rules.when = Some(condition);
    }
    if let Some(r) = &section.rate {
        let spec = RateSpec::parse(r.get_ref())
            .map_err(|m| invalid(&at(r.span()), format!("tool.rate: {m}")))?;
        let per = match &section.rate_per {
            None => RatePer::Agent,
            Some(p) => match p.get_ref().as_str() {
                "agent" => RatePer::Agent,
                "on_behalf_of" => RatePer::OnBehalfOf,
                other => {
                    return Err(invalid(
                        &at(p.span()),
                        format!("tool.rate_per: {other:?} must be \"agent\" or \"on_behalf_of\""),
                    ));
                }
            },
        };
        rules.rate = Some(RateRule { spec, per });
    } else if let Some(p) = &section.rate_per {
        return Err(invalid(
            &at(p.span()),
            "tool.rate_per: give a rate too".into(),
        ));
    }
    if let Some(m) = &section.max_body {
        let span = at(m.span());
        let bytes = crate::config::parse_size("max_body", m.get_ref()).map_err(|_| {
            invalid(
                &span,
                format!(
                    "tool.max_body: {:?} is not a size such as \"1M\"",
                    m.get_ref()
                ),
            )
        })?;
        if bytes > MAX_MAX_BODY as u64 {
            return Err(invalid(
                &span,
                format!("tool.max_body: at most {} MiB", MAX_MAX_BODY >> 20),
            ));
        }
        if !rules.reads_body() {
            return Err(invalid(
                &span,
                "tool.max_body: only for tools that read bodies (protocol = \"mcp\" or \"jsonrpc\", or a when that reads request.body)".into(),
            ));
        }
        rules.max_body = bytes as usize;
    }
    Ok(rules)
}

/// Two agents may not share a name or a cgroup, and one agent's cgroup may
/// not contain another's (the kernel hooks of the outer one would also run for
/// the inner one, so the connection's agent would be ambiguous).
fn check_conflicts(agents: &[(AgentPolicy, Span)], errors: &mut Vec<PolicyError>) {
    for (i, (a, a_span)) in agents.iter().enumerate() {
        for (b, _) in &agents[..i] {
            if a.name == b.name {
                errors.push(invalid(
                    a_span,
                    format!(
                        "agent.name: agent {:?} is already defined in {}",
                        a.name,
                        b.source.display()
                    ),
                ));
            } else if a.cgroup.contains(&b.cgroup) || b.cgroup.contains(&a.cgroup) {
                errors.push(invalid(
                    a_span,
                    format!(
                        "agent.cgroup: {} overlaps agent {:?}'s cgroup {} ({}); agents' cgroups must be disjoint",
                        a.cgroup,
                        b.name,
                        b.cgroup,
                        b.source.display()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{NetnsSource, UpstreamNetns};

    fn write(dir: &Path, name: &str, body: &str) {
        fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn an_agent_can_be_containers_selected_by_name_image_annotations_or_labels() {
        let parse = |body: &str| {
            check_text(
                Path::new("a.toml"),
                &format!("[agent]\nname = \"dev\"\n{body}"),
            )
        };
        let a = parse("[agent.containers]\nruntime = \"podman\"\nname = \"dev-*\"\nimage = \"localhost/agent:*\"\nannotations = { team = \"red\" }\n").unwrap();
        // No cgroup of its own is needed: it gets agentguard/NAME.
        assert_eq!(a.cgroup.as_str(), "agentguard/dev");
        let sel = a.containers.unwrap();
        assert_eq!(sel.runtime, crate::policy::ContainerRuntime::Podman);
        assert!(sel.name.unwrap().matches("dev-1"));
        assert_eq!(sel.annotations.get("team").map(String::as_str), Some("red"));
        // Docker's containers by their labels.
        let a = parse("[agent.containers]\nruntime = \"docker\"\nlabels = { team = \"red\" }\n")
            .unwrap();
        let sel = a.containers.unwrap();
        assert_eq!(sel.runtime, crate::policy::ContainerRuntime::Docker);
        assert_eq!(sel.labels.get("team").map(String::as_str), Some("red"));
        // Kubernetes pods by namespace, name and labels.
        let a = parse("[agent.containers]\nruntime = \"kubernetes\"\nnamespace = \"agents\"\npod = \"coder-*\"\nlabels = { app = \"coder\" }\n")
            .unwrap();
        let sel = a.containers.unwrap();
        assert_eq!(sel.runtime, crate::policy::ContainerRuntime::Kubernetes);
        assert!(sel.namespace.unwrap().matches("agents"));
        assert!(sel.pod.unwrap().matches("coder-1"));
        assert_eq!(sel.labels.get("app").map(String::as_str), Some("coder"));
        let errors = [
            (
                "runtime = \"containerd\"\nname = \"x\"\n",
                "is not supported: containerd's and CRI-O's own containers",
            ),
            (
                "runtime = \"lxc\"\nname = \"x\"\n",
                "must be \"podman\", \"docker\" or \"kubernetes\"",
            ),
            ("runtime = \"kubernetes\"\n", "say which containers"),
            (
                "runtime = \"docker\"\nnamespace = \"agents\"\n",
                "namespace: only for runtime = \"kubernetes\"",
            ),
            (
                "runtime = \"podman\"\npod = \"x\"\n",
                "pod: only for runtime = \"kubernetes\"",
            ),
            (
                "runtime = \"kubernetes\"\nnamespace = \"\"\n",
                "must not be empty",
            ),
            ("runtime = \"docker\"\n", "say which containers"),
            ("runtime = \"podman\"\n", "say which containers"),
            ("runtime = \"podman\"\nname = \"[x\"\n", "not a valid glob"),
            ("runtime = \"podman\"\nname = \"\"\n", "must not be empty"),
            (
                "runtime = \"podman\"\nlabels = { team = \"red\" }\n",
                "labels: not supported",
            ),
            (
                "runtime = \"podman\"\nname = \"x\"\nimages = \"y\"\n",
                "unknown field",
            ),
        ];
        for (body, wanted) in errors {
            let e = parse(&format!("[agent.containers]\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(wanted), "{body}: {e}");
            assert!(e.contains("a.toml:"), "names the file and line: {e}");
        }
        // Without containers, a cgroup (or unit) is still required.
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("missing `cgroup`"), "{e}");
    }

    #[test]
    fn an_agents_network_namespace_is_a_clean_absolute_path_or_its_cgroups() {
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n";
        let parse = |extra: &str| check_text(Path::new("a.toml"), &format!("{head}{extra}"));
        let a = parse("").unwrap();
        assert_eq!((a.netns, a.upstream_netns), (None, UpstreamNetns::Agent));
        let a = parse("netns = \"/run/netns/dev\"\nupstream_netns = \"host\"\n").unwrap();
        assert_eq!(
            a.netns,
            Some(NetnsSource::Path(PathBuf::from("/run/netns/dev")))
        );
        assert_eq!(a.upstream_netns, UpstreamNetns::Host);
        assert_eq!(
            parse("netns = \"cgroup\"\n").unwrap().netns,
            Some(NetnsSource::Cgroup)
        );
        for bad in ["run/netns/dev", "/run/netns/../dev", "/run/./netns", ""] {
            let e = parse(&format!("netns = \"{bad}\"\n")).unwrap_err();
            assert!(e.to_string().contains("agent.netns"), "{bad}: {e}");
        }
        let e = parse("upstream_netns = \"container\"\n").unwrap_err();
        assert!(e.to_string().contains("agent.upstream_netns"), "{e}");
    }

    #[test]
    fn loads_a_folder_and_versions_it() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"b\"\ncgroup = \"agentguard/b\"\n",
        );
        write(dir.path(), "README.md", "not a policy");
        let set = load_path(dir.path()).unwrap();
        assert_eq!(set.agents.len(), 2);
        assert_eq!(set.agent("b").unwrap().cgroup.as_str(), "agentguard/b");
        assert_eq!(set.version.len(), 64);

        let before = set.version;
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"b\"\ncgroup = \"agentguard/bb\"\n",
        );
        assert_ne!(load_path(dir.path()).unwrap().version, before);
    }

    #[test]
    fn jwt_credentials_are_parsed_and_checked() {
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n[[credential]]\nid = \"t\"\n";
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            &format!(
                "{head}source = {{ jwt = {{ audience = \"itsm\", scope = \"tickets:write\", ttl = \"30s\" }} }}\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n"
            ),
        );
        let set = load_path(dir.path()).unwrap();
        let c = set.agent("a").unwrap().credential("t").unwrap();
        assert_eq!(
            c.source,
            SecretSource::Jwt(JwtSource {
                audience: "itsm".into(),
                scope: "tickets:write".into(),
                ttl: std::time::Duration::from_secs(30),
            })
        );
        for (source, inject, want) in [
            (
                "{ jwt = { audience = \"x\", ttl = \"1h\" } }",
                "{ header = \"Authorization\" }",
                "ttl must be",
            ),
            (
                "{ jwt = { audience = \"\" } }",
                "{ header = \"Authorization\" }",
                "audience",
            ),
            (
                "{ jwt = { audience = \"x\" } }",
                "{ query = \"token\" }",
                "goes in a header",
            ),
        ] {
            write(
                dir.path(),
                "a.toml",
                &format!("{head}source = {source}\ninject = {inject}\n"),
            );
            let err = load_path(dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.toml",
            "[agent]\nname = \"a\"\ncgroup = agentguard/a\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.toml:3:"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "typo.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\nmdoe = \"enforce\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("typo.toml:4:"), "{err}");
        assert!(err.contains("mdoe"), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "x.toml",
            "[agent]\nname = \"x\"\ncgroup = \"/abs\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("x.toml:3:10: agent.cgroup"), "{err}");
    }

    #[test]
    fn duplicate_and_nested_agents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/b\"\n",
        );
        write(
            dir.path(),
            "c.toml",
            "[agent]\nname = \"c\"\ncgroup = \"agentguard/a/c\"\n",
        );
        let errs = load_path(dir.path()).unwrap_err();
        assert_eq!(errs.0.len(), 2, "{errs}");
        let text = errs.to_string();
        assert!(text.contains("already defined"), "{text}");
        assert!(text.contains("must be disjoint"), "{text}");
    }

    #[test]
    fn passthrough_entries_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n\n\
             [[passthrough]]\nhost = \"pypi.org\"\n\n\
             [[passthrough]]\nhost = \"*.example.org\"\nports = [8443]\n",
        );
        let set = load_path(dir.path()).unwrap();
        assert!(set.is_passthrough("a", "pypi.org", 443));
        assert!(set.is_passthrough("a", "x.example.org", 8443));
        assert!(!set.is_passthrough("a", "x.example.org", 443));
        assert!(!set.is_passthrough("b", "pypi.org", 443));

        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n[[passthrough]]\nhost = \"bad host\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.toml:5:8: passthrough.host"), "{err}");
    }

    #[test]
    fn tools_and_credentials_are_validated_with_their_line() {
        let base = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n";
        let cases = [
            ("mode = \"relaxed\"\n", "agent.mode"),
            (
                "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"get\"]\npaths = [\"/\"]\n",
                "tool.methods",
            ),
            (
                "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"GET\"]\npaths = [\"/a/../b\"]\n",
                "tool.paths",
            ),
            (
                "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"GET\"]\npaths = [\"/\"]\ncredential = \"nope\"\n",
                "tool.credential",
            ),
            (
                "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"GET\"]\npaths = [\"/\"]\napproval = { timeout = \"1d\" }\n",
                "tool.approval",
            ),
            (
                "[[credential]]\nid = \"k\"\nsource = { file = \"relative\" }\ninject = { header = \"x-api-key\" }\n",
                "credential.source",
            ),
            (
                "[[credential]]\nid = \"k\"\nsource = { env = \"K\" }\ninject = { header = \"Authorization\", format = \"Bearer\" }\n",
                "credential.inject",
            ),
            (
                "[[credential]]\nid = \"k\"\nsource = { env = \"K\" }\ninject = { header = \"Host\" }\n",
                "credential.inject",
            ),
            (
                "[[credential]]\nid = \"k\"\nsource = { oauth2 = { token_url = \"http://auth.example.com/token\", client_id = \"c\", client_secret = { env = \"S\" } } }\ninject = { header = \"Authorization\", format = \"Bearer {secret}\" }\n",
                "credential.source.oauth2",
            ),
        ];
        for (extra, key) in cases {
            let dir = tempfile::tempdir().unwrap();
            let body = if extra.starts_with("mode") {
                base.replace("cgroup", &format!("{extra}cgroup"))
            } else {
                format!("{base}\n{extra}")
            };
            write(dir.path(), "a.toml", &body);
            let err = load_path(dir.path()).unwrap_err().to_string();
            assert!(err.contains("a.toml:") && err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn an_empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_path(dir.path()).unwrap_err().0[..],
            [PolicyError::NoPolicies { .. }]
        ));
    }

    /// Every example shipped in policies/ must stay valid.
    #[test]
    fn every_example_policy_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = load_path(&dir).unwrap_or_else(|e| panic!("policies/ invalid:\n{e}"));
        let files = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "toml")
            })
            .count();
        assert_eq!(
            set.agents.len(),
            files,
            "every policy file defines one agent"
        );
        assert!(files >= 2);
    }
}
