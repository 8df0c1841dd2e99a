//! The end-to-end scenarios, one file per capability.

mod audit;
mod bypass;
mod cli_errors;
mod credentials;
mod dns;
mod egress;
mod exec_confinement;
mod fail_closed;
mod interception;
mod kernel_paths;
mod redaction;
mod redirect;
mod request_checks;
mod root_required;
mod tokens;
mod unix_sockets;
