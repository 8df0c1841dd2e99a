//! The end-to-end scenarios, one file per capability.

mod audit;
mod audit_anchor;
mod aws;
mod bypass;
mod cli_errors;
mod credentials;
mod delegated;
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
mod root_required;
mod sdk_placeholders;
mod tokens;
mod tool_server_example;
mod unix_sockets;
