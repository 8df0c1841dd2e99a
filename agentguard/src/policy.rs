//! Per-agent policies: one TOML file per agent in the policies folder.
//!
//! `model` is the file format, `load` reads and validates a folder as a whole
//! (a policy set is accepted or refused as one, never half-applied).

mod load;
mod model;

pub use load::{PolicyError, PolicyErrors, load_path};
pub use model::{AgentPolicy, CgroupRelPath, HostPattern, PassthroughRule, PolicySet};
