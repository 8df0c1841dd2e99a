//! The end-to-end scenarios, one file per capability.

mod audit;
mod audit_anchor;
mod bypass;
mod cli_errors;
mod credentials;
mod dns;
mod egress;
mod exec_confinement;
mod exhaustion;
mod exports;
mod fail_closed;
mod interception;
mod kernel_paths;
mod listen;
mod mcp;
mod policy_cases;
mod processes;
mod redirect;
mod replay_store;
mod revoke;
mod root_required;
mod shares;
mod tokens;
mod tool_server_example;
mod unix_sockets;
