//! Per-agent policies: one TOML file per agent in the policies folder.
//!
//! `model` is the file format, `load` reads and validates a folder as a whole
//! (a policy set is accepted or refused as one, never half-applied).

mod approval;
mod calls;
mod cases;
mod condition;
mod containers;
mod decide;
mod explain;
mod listen;
mod load;
mod model;
mod names;
pub mod overrides;
mod pattern;
mod rate;
mod replay;
mod schema;
mod sources;
mod spanned;
mod systemd;
mod tools;
mod unix;

pub use approval::ApprovalPolicy;
pub use calls::{
    CallRules, DEFAULT_MAX_BODY, MAX_MAX_BODY, MCP_SESSION_METHODS, MessageMatch, Protocol,
};
pub use cases::{Case, CaseFile, CaseResult, Decided, Outcome, read_cases, run_cases};
pub use condition::{AgentIdentity, Bound, Condition, McpView, RequestView, Uses, Vars};
pub use containers::{ContainerFacts, ContainerRuntime, ContainerSelector};
pub use decide::{
    Allowed, ArgumentsRecord, BodyNeed, CallInfo, Decider, Decision, Denied, DenyRule,
    RequestFacts, RequestInput, digest as arguments_digest, one_credential,
};
pub use explain::{Explanation, explain, explain_case};
pub use listen::ListenAddr;
pub use load::{PolicyError, PolicyErrors, check_text, load_path};
pub use model::{
    AgentLimits, AgentPolicy, CgroupRelPath, CredentialPolicy, DnsMode, HostPattern, Injection,
    MethodSet, Mode, NetnsSource, OAuth2Source, PassthroughRule, PathPattern, PolicySet, SecretRef,
    SecretSource, ToolPolicy, ToolTimeouts, UpstreamNetns, ValueSource,
};
pub use names::NamePattern;
pub use pattern::normalize_path;
pub use rate::{Admission, RateCheck, RateKey, RateLimiter, RatePer, RateRule, RateSpec};
pub use replay::{Change, Replayed, Report as ReplayReport, Side, replay};
pub use schema::{cases_schema, policy_schema};
pub use sources::{
    AssumeRole, AwsBase, AwsSource, ClientAuth, JwtBearerSource, MAX_PROCESS_TIMEOUT,
    ProcessSource, Subject, TOKEN_EXCHANGE_GRANT, TokenExchangeSource, aws_action_matches,
};
pub use systemd::SystemdUnit;
pub use tools::Tools;
pub use unix::UnixSocketAddr;
