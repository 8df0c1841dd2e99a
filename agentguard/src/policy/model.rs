//! The policy file format and the validated in-memory form.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use hyper::{Method, Uri, header::HeaderName};
use schemars::JsonSchema;
use serde::Deserialize;

pub use super::calls::CallRules;
pub use super::spanned::Spanned;

pub use super::unix::UnixSocketAddr;

pub use super::pattern::{HostPattern, PathPattern};

/// What a policy file may contain. Unknown keys are an error: a typo in a
/// security policy must not be silently ignored.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub agent: AgentSection,
    #[serde(default)]
    pub credential: Vec<CredentialSection>,
    #[serde(default)]
    pub tool: Vec<ToolSection>,
    #[serde(default)]
    pub passthrough: Vec<PassthroughSection>,
}

/// `[[credential]]`: a secret the proxy holds for the agent, and how it is
/// put into a request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialSection {
    pub id: Spanned<String>,
    pub source: Spanned<SourceSection>,
    pub inject: Spanned<InjectSection>,
    /// An environment variable `agentguard exec` sets to this credential's
    /// placeholder, for SDKs that refuse to start without a key.
    pub placeholder_env: Option<Spanned<String>>,
}

/// Where a secret comes from. Externally tagged: `{ file = "..." }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum SourceSection {
    File(String),
    Env(String),
    Oauth2(OAuth2Section),
    Jwt(JwtSection),
    Process(super::sources::ProcessSection),
    #[serde(rename = "token_exchange")]
    TokenExchange(super::sources::TokenExchangeSection),
    #[serde(rename = "jwt_bearer")]
    JwtBearer(super::sources::JwtBearerSection),
    Aws(super::sources::AwsSection),
}

/// `{ jwt = { audience = "...", scope = "...", ttl = "60s" } }`: a token
/// minted per request and bound to it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtSection {
    pub audience: String,
    pub scope: Option<String>,
    pub ttl: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OAuth2Section {
    pub token_url: String,
    pub client_id: ValueSection,
    pub client_secret: SecretRefSection,
    pub scope: Option<String>,
}

/// A value given inline or read from a secret source (client ids are not
/// secret; client secrets are, and may only come from a file or the env).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(super) enum ValueSection {
    Literal(String),
    Source(SecretRefSection),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum SecretRefSection {
    File(String),
    Env(String),
}

/// `inject = { header = "...", format = "Bearer {secret}" }`,
/// `{ basic = { username = "..." } }` or `{ query = "api_key" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InjectSection {
    pub header: Option<String>,
    pub format: Option<String>,
    pub basic: Option<BasicSection>,
    pub query: Option<String>,
    pub aws_sigv4: Option<super::sources::AwsSigV4Section>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BasicSection {
    pub username: String,
}

/// `[[tool]]`: one capability: host, methods and paths, and the credential
/// bound to it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolSection {
    pub name: Spanned<String>,
    pub host: Spanned<String>,
    pub port: Option<Spanned<u16>>,
    pub methods: Spanned<Vec<String>>,
    pub paths: Spanned<Vec<String>>,
    pub credential: Option<Spanned<String>>,
    /// Override headers (and `_method`) let through to this tool's upstream;
    /// see `policy::overrides`. Optional; default none.
    pub allow_overrides: Option<Spanned<Vec<String>>>,
    /// IAM actions (`ec2:DescribeInstances`) the tool allows, for tools
    /// whose credential re-signs AWS requests.
    pub aws_actions: Option<Spanned<Vec<String>>>,
    /// `"http"` (the default), `"mcp"` (MCP over Streamable HTTP) or
    /// `"jsonrpc"` (any JSON-RPC 2.0 endpoint): the body of such a tool's
    /// POSTs is parsed and each message decided on its own.
    #[schemars(extend("enum" = ["http", "mcp", "jsonrpc"]))]
    pub protocol: Option<Spanned<String>>,
    /// MCP tools (`tools/call`) this tool allows: exact names or `*`
    /// globs. None unless listed.
    pub mcp_tools: Option<Spanned<Vec<String>>>,
    /// MCP tools this tool never allows, even where `mcp_tools` matches.
    pub mcp_tools_except: Option<Spanned<Vec<String>>>,
    /// Resource URIs (`resources/read`, `subscribe`) this tool allows.
    pub mcp_resources: Option<Spanned<Vec<String>>>,
    /// Prompts (`prompts/get`) this tool allows.
    pub mcp_prompts: Option<Spanned<Vec<String>>>,
    /// JSON-RPC methods this tool allows (for `"mcp"`: beyond the MCP
    /// methods above and the session methods every client needs).
    pub rpc_methods: Option<Spanned<Vec<String>>>,
    /// A CEL expression that must hold for the tool to allow a call.
    pub when: Option<Spanned<String>>,
    /// At most this many calls: `"20/min"`, `"5/s"`, `"100/hour"`,
    /// `"1000/day"`, or in a window of several units: `"20/10s"`.
    #[schemars(regex(
        pattern = r"^\s*[0-9]+\s*/\s*[0-9]*(s|sec|second|min|minute|h|hour|d|day)\s*$"
    ))]
    pub rate: Option<Spanned<String>>,
    /// Whom the rate counts separately: `"agent"` (the default) or
    /// `"on_behalf_of"` (each agent and person it acts for).
    #[schemars(extend("enum" = ["agent", "on_behalf_of"]))]
    pub rate_per: Option<Spanned<String>>,
    /// Record call arguments in the audit record (they may hold personal
    /// data); by default only their SHA-256 is.
    pub record_arguments: Option<bool>,
    /// Most bytes of a body read to decide, e.g. `"1M"` (the default) up
    /// to `"16M"`: a longer body is refused.
    pub max_body: Option<Spanned<String>>,
    /// `approval = { timeout = "5m" }`: each allowed request waits for a
    /// person's approval.
    pub approval: Option<Spanned<super::approval::ApprovalSection>>,
    /// `timeouts = { response_head = "5m", body_idle = "15m" }`.
    pub timeouts: Option<Spanned<ToolTimeoutsSection>>,
}

/// A tool's time limits toward its upstream, overriding the daemon's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolTimeoutsSection {
    /// Longest wait for the upstream's response head, e.g. `"5m"` (1 s to
    /// 24 h); past it the agent gets 504.
    pub response_head: Option<String>,
    /// Longest silence between two pieces of a response body once its
    /// head arrived, e.g. `"15m"` (1 s to 24 h).
    pub body_idle: Option<String>,
}

/// `[agent.limits]`: what one agent may hold at once, overriding the
/// daemon's defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentLimitsSection {
    /// Most connections the agent may hold open through the proxy at once
    /// (at least 1).
    pub connections: Option<Spanned<u32>>,
    /// Most requests the agent may have in flight at once (at least 1).
    pub requests: Option<Spanned<u32>>,
}

/// `[[passthrough]]`: TLS to these hosts is relayed untouched (pinned
/// clients, non-HTTP protocols over TLS); the proxy never sees inside.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PassthroughSection {
    pub host: Spanned<String>,
    pub ports: Option<Vec<u16>>,
}

/// `[agent]`. It needs a `cgroup`, a `systemd_unit` (or both) or
/// `[agent.containers]`; the schema says so, as the loader does.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{ "required": ["cgroup"] }, { "required": ["systemd_unit"] }, { "required": ["containers"] }]))]
pub(super) struct AgentSection {
    pub name: Spanned<String>,
    /// Required unless `systemd_unit` names the agent's unit.
    pub cgroup: Option<Spanned<String>>,
    /// The agent is this systemd service: its cgroup is the unit's.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+\.service$"))]
    pub systemd_unit: Option<Spanned<String>>,
    #[schemars(extend("enum" = ["enforce", "audit"]))]
    pub mode: Option<Spanned<String>>,
    #[schemars(extend("enum" = ["policy", "any"]))]
    pub dns: Option<Spanned<String>>,
    pub unix_sockets: Option<Vec<Spanned<String>>>,
    pub listen: Option<Vec<Spanned<String>>>,
    pub limits: Option<AgentLimitsSection>,
    /// The agent's network namespace, when it is not the daemon's (a
    /// container's): a path such as `/run/netns/NAME`, or `"cgroup"` for
    /// the namespaces of the processes in the agent's cgroup.
    pub netns: Option<Spanned<String>>,
    /// Where the agent's upstream connections are dialled from: its own
    /// network namespace (the default) or the host's (the daemon's).
    #[schemars(extend("enum" = ["agent", "host"]))]
    pub upstream_netns: Option<Spanned<String>>,
    /// The containers this agent is, selected when their runtime creates
    /// them (see README, Containers).
    pub containers: Option<Spanned<super::containers::ContainersSection>>,
}

/// A cgroup path relative to the cgroup v2 mount, e.g. `agentguard/support-bot`.
/// Validated: no leading `/`, no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupRelPath(String);

impl CgroupRelPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("cgroup must not be empty".into());
        }
        if raw.starts_with('/') {
            return Err(format!(
                "cgroup {raw:?} must be relative to the cgroup v2 mount (no leading '/')"
            ));
        }
        for component in raw.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(format!(
                    "cgroup {raw:?} has an empty, '.' or '..' path component"
                ));
            }
            if !component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "cgroup {raw:?}: components may only use ASCII letters, digits, '-', '_' and '.'"
                ));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `other` or one of its ancestors. Programs attached to
    /// a cgroup also run for its descendants, so nested agents would be
    /// ambiguous.
    pub fn contains(&self, other: &CgroupRelPath) -> bool {
        other.0 == self.0
            || other
                .0
                .strip_prefix(&self.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl std::fmt::Display for CgroupRelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Agent names appear in paths, logs and URLs: keep them boring.
pub(super) fn validate_agent_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

/// A host whose TLS is relayed without interception.
#[derive(Debug, Clone)]
pub struct PassthroughRule {
    pub host: HostPattern,
    /// `None`: any port.
    pub ports: Option<Vec<u16>>,
}

impl PassthroughRule {
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host.matches(host) && self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
}

/// `enforce` refuses denied requests; `audit` decides and records
/// everything but lets denied requests through (without credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// Which names agentguard's resolver answers for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// Only the hosts of the agent's tools and passthrough entries: other
    /// names do not resolve (NXDOMAIN), so DNS is no exfiltration channel.
    #[default]
    Policy,
    /// Any name (queries are still recorded).
    Any,
}

/// Where an agent's network namespace is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSource {
    /// A namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(std::path::PathBuf),
    /// Every namespace the processes in the agent's cgroup live in,
    /// looked at again as they change.
    Cgroup,
}

/// Which network namespace an agent's upstream connections leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamNetns {
    /// The agent's own (its routes, its source address).
    #[default]
    Agent,
    /// The daemon's.
    Host,
}

/// Where a credential's secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file owned by root and not readable by group or others.
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
    /// OAuth 2.0 client credentials grant (RFC 6749 §4.4).
    OAuth2(OAuth2Source),
    /// A JWT minted by agentguard for each request and bound to it (see
    /// `crate::token`).
    Jwt(JwtSource),
    /// A credential helper's output (`crate::credentials::process`).
    Process(super::sources::ProcessSource),
    /// RFC 8693 token exchange, per agent and subject.
    TokenExchange(super::sources::TokenExchangeSource),
    /// RFC 7523 JWT-bearer grant with the agent's identity token.
    JwtBearer(super::sources::JwtBearerSource),
    /// AWS credentials that re-sign the agent's requests (SigV4).
    Aws(super::sources::AwsSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSource {
    pub audience: String,
    /// Space-separated; may be empty.
    pub scope: String,
    pub ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Source {
    pub token_url: Uri,
    pub client_id: ValueSource,
    pub client_secret: SecretRef,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    Literal(String),
    Secret(SecretRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

/// How a secret goes into a request. Whatever the agent itself sent in that
/// place is removed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// A header whose value is `format` with `{secret}` replaced.
    Header { name: HeaderName, format: String },
    /// `Authorization: Basic base64(username:secret)` (RFC 7617).
    Basic { username: String },
    /// A query parameter.
    Query { param: String },
    /// The agent's AWS request is signed again (Signature Version 4) for
    /// one of these regions and services.
    AwsSigV4 {
        regions: Vec<String>,
        services: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct CredentialPolicy {
    pub id: String,
    pub source: SecretSource,
    pub inject: Injection,
    pub placeholder_env: Option<String>,
}

/// A tool's own time limits toward its upstream; `None`: the daemon's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolTimeouts {
    /// From the end of the request body to the response head.
    pub response_head: Option<std::time::Duration>,
    /// Between two pieces of the response body.
    pub body_idle: Option<std::time::Duration>,
}

/// What one agent may hold at once; `None`: the daemon's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentLimits {
    /// Open connections, intercepted or passed through.
    pub connections: Option<u32>,
    /// Requests in flight.
    pub requests: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ToolPolicy {
    pub name: String,
    pub host: HostPattern,
    pub port: Option<u16>,
    pub methods: MethodSet,
    pub paths: Vec<PathPattern>,
    /// Id of the credential injected into this tool's requests.
    pub credential: Option<String>,
    /// Override headers (lowercase) and `_method` this tool lets through;
    /// every other one is stripped (see `policy::overrides`).
    pub allow_overrides: Vec<String>,
    /// IAM actions the tool allows (`service:Action`, `*` at the end);
    /// empty: no action check. A request's action comes from
    /// `X-Amz-Target`, the `Action` parameter or the S3 path.
    pub aws_actions: Vec<String>,
    /// Protocol, MCP names, condition, rate, recording, body bound.
    pub calls: CallRules,
    /// Requests this tool allows are held until a person approves them.
    pub approval: Option<super::approval::ApprovalPolicy>,
    pub timeouts: ToolTimeouts,
    /// What the record says of a request this tool allows.
    pub allowed: AllowedBy,
}

/// The rule and reason recorded for every request a tool allows, written
/// once when the policy loads rather than formatted for each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedBy {
    /// The tool's name, shared by the records.
    pub tool: Arc<str>,
    /// `tool:NAME`.
    pub rule: Arc<str>,
    /// `allowed by tool "NAME"`.
    pub reason: Arc<str>,
}

impl AllowedBy {
    pub fn new(tool: &str) -> Self {
        Self {
            tool: tool.into(),
            rule: format!("tool:{tool}").into(),
            reason: format!("allowed by tool {tool:?}").into(),
        }
    }
}

/// The methods a tool allows. Requests are matched against many tools'
/// (and `Tools` indexes the tools by them), so the standard methods are
/// bits kept in the tool itself, read without following a pointer to a
/// list (a list per tool showed as cache misses in the bench's 55-tool
/// policy); others are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodSet {
    standard: u16,
    other: Vec<Method>,
}

impl MethodSet {
    pub const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];

    /// How many methods are kept as bits.
    pub const STANDARD_COUNT: usize = Self::STANDARD.len();

    /// `m`'s place among the standard methods, if it is one.
    pub fn standard_index(m: &Method) -> Option<usize> {
        Self::STANDARD.iter().position(|s| s == m)
    }

    fn bit(m: &Method) -> Option<u16> {
        Self::standard_index(m).map(|i| 1 << i)
    }

    /// Whether the set holds the standard method at `index`.
    pub fn has_standard(&self, index: usize) -> bool {
        self.standard & (1 << index) != 0
    }

    /// Whether the set names any method outside the standard ones.
    pub fn has_other(&self) -> bool {
        !self.other.is_empty()
    }

    pub fn insert(&mut self, m: Method) {
        match Self::bit(&m) {
            Some(bit) => self.standard |= bit,
            None if !self.other.contains(&m) => self.other.push(m),
            None => {}
        }
    }

    pub fn contains(&self, m: &Method) -> bool {
        match Self::bit(m) {
            Some(bit) => self.standard & bit != 0,
            None => self.other.contains(m),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.standard == 0 && self.other.is_empty()
    }
}

/// One agent's validated policy.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    pub name: String,
    pub cgroup: CgroupRelPath,
    /// Set when the agent is a systemd service: `cgroup` is then the
    /// unit's, created and removed by systemd, never by agentguard.
    pub systemd_unit: Option<super::systemd::SystemdUnit>,
    pub mode: Mode,
    pub dns: DnsMode,
    /// The Unix sockets the agent may connect or send to; the kernel
    /// refuses every other.
    pub unix_sockets: Vec<UnixSocketAddr>,
    /// The addresses and ports the agent may bind (besides port 0); the
    /// kernel refuses every other.
    pub listen: Vec<super::ListenAddr>,
    /// The agent's network namespace if not the daemon's: the proxy and
    /// the agent's resolver listen there too.
    pub netns: Option<NetnsSource>,
    pub upstream_netns: UpstreamNetns,
    /// `[agent.containers]`: containers that are this agent, attached
    /// when their runtime creates them.
    pub containers: Option<super::containers::ContainerSelector>,
    pub credentials: Vec<CredentialPolicy>,
    pub tools: super::tools::Tools,
    pub passthrough: Vec<PassthroughRule>,
    pub limits: AgentLimits,
    /// The file it came from, for error messages and `status`.
    pub source: PathBuf,
}

/// Every agent's policy, accepted as a whole.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub agents: Vec<AgentPolicy>,
    /// SHA-256 over the files' names and contents (sorted by name), hex. It
    /// names the policy that made each decision.
    pub version: Arc<str>,
}

impl AgentPolicy {
    pub fn credential(&self, id: &str) -> Option<&CredentialPolicy> {
        self.credentials.iter().find(|c| c.id == id)
    }

    /// Whether the resolver answers `name` for this agent.
    pub fn resolves(&self, name: &str) -> bool {
        self.dns == DnsMode::Any
            || self.tools.iter().any(|t| t.host.matches(name))
            || self.passthrough.iter().any(|p| p.host.matches(name))
    }
}

impl PolicySet {
    pub fn agent(&self, name: &str) -> Option<&AgentPolicy> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Whether `agent`'s policy relays TLS to `host:port` untouched.
    pub fn is_passthrough(&self, agent: &str, host: &str, port: u16) -> bool {
        self.agent(agent)
            .is_some_and(|a| a.passthrough.iter().any(|r| r.matches(host, port)))
    }

    pub fn sources(&self) -> impl Iterator<Item = &Path> {
        self.agents.iter().map(|a| a.source.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_relative_and_clean() {
        assert!(CgroupRelPath::parse("agentguard/support-bot").is_ok());
        for bad in [
            "",
            "/agentguard/x",
            "agentguard//x",
            "agentguard/../x",
            "a/./b",
            "a b",
        ] {
            assert!(CgroupRelPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn method_sets_hold_standard_and_extension_methods() {
        let mut set = MethodSet::default();
        assert!(set.is_empty());
        set.insert(Method::POST);
        set.insert(Method::from_bytes(b"PROPFIND").unwrap());
        assert!(!set.is_empty());
        assert!(set.contains(&Method::POST));
        assert!(set.contains(&Method::from_bytes(b"PROPFIND").unwrap()));
        for absent in [Method::GET, Method::PATCH, Method::HEAD] {
            assert!(!set.contains(&absent), "{absent}");
        }
        assert!(!set.contains(&Method::from_bytes(b"MKCOL").unwrap()));
        // Every standard method has its own bit.
        let mut all = MethodSet::default();
        for m in MethodSet::STANDARD {
            assert!(!all.contains(&m));
            all.insert(m.clone());
            assert!(all.contains(&m));
        }
        assert!(all.other.is_empty());
    }

    #[test]
    fn containment_is_by_component() {
        let a = CgroupRelPath::parse("agentguard/a").unwrap();
        assert!(a.contains(&CgroupRelPath::parse("agentguard/a").unwrap()));
        assert!(a.contains(&CgroupRelPath::parse("agentguard/a/child").unwrap()));
        assert!(!a.contains(&CgroupRelPath::parse("agentguard/ab").unwrap()));
    }

    #[test]
    fn passthrough_ports_are_optional() {
        let any = PassthroughRule {
            host: HostPattern::parse("x.org").unwrap(),
            ports: None,
        };
        assert!(any.matches("x.org", 8443));
        let only = PassthroughRule {
            ports: Some(vec![443]),
            ..any
        };
        assert!(only.matches("x.org", 443));
        assert!(!only.matches("x.org", 8443));
    }

    #[test]
    fn agent_names_are_restricted() {
        assert!(validate_agent_name("support-bot").is_ok());
        for bad in ["", "Support", "-x", "a/b", &"x".repeat(64)] {
            assert!(validate_agent_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
