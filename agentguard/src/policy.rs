//! Per-agent policies: one TOML file per agent in the policies folder.
//!
//! `model` is the file format, `load` reads and validates a folder as a whole
//! (a policy set is accepted or refused as one, never half-applied).

mod eval;
mod explain;
mod load;
mod model;
mod pattern;
mod unix;

pub use eval::{RequestFacts, Verdict};
pub use explain::{Explanation, explain};
pub use load::{PolicyError, PolicyErrors, load_path};
pub use model::{
    AgentLimits, AgentPolicy, CgroupRelPath, CredentialPolicy, DnsMode, HostPattern, Injection,
    Mode, OAuth2Source, PassthroughRule, PathPattern, PolicySet, SecretRef, SecretSource,
    ToolPolicy, ToolTimeouts, ValueSource,
};
pub use pattern::normalize_path;
pub use unix::UnixSocketAddr;
