//! agentguard's privileged end-to-end tests: real cgroups, real eBPF loaded
//! into the running kernel, the real `agentguard` binary, and unmodified
//! clients (curl, python3) talking to loopback test servers.
//!
//! They need root and fail (never skip) without it. They share kernel state
//! (cgroups, bpffs), so run them one at a time: `--test-threads=1`.

mod common;
mod tests;
