//! The end-to-end scenarios, one file per capability.

mod audit;
mod bypass;
mod cli_errors;
mod credentials;
mod dns;
mod egress;
mod exec_confinement;
mod exhaustion;
mod fail_closed;
mod interception;
mod kernel_paths;
mod redirect;
mod root_required;
mod tokens;
mod unix_sockets;
