//! The end-to-end scenarios, one file per capability.

mod approvals;
mod audit;
mod audit_anchor;
mod bypass;
mod cli_errors;
mod credentials;
mod dns;
mod egress;
mod exec_confinement;
mod exports;
mod fail_closed;
mod interception;
mod kernel_paths;
mod mcp;
mod redirect;
mod replay_store;
mod revoke_now;
mod root_required;
mod tokens;
mod tool_server_example;
mod unix_sockets;
mod web_view;
