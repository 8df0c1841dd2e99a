//! agentguard's privileged end-to-end tests: real cgroups, real eBPF loaded
//! into the running kernel, the real `agentguard` binary, and unmodified
//! clients (curl, python3) talking to loopback test servers.
//!
//! They need root and fail (never skip) without it. They share almost no
//! kernel state (each daemon has its own cgroups, bpffs folder and ports;
//! see `common/machine.rs`), so they run in parallel (`cargo xtask test`
//! runs three at a time); tests that load the machine, bound a latency or
//! need a given loopback port run alone (`common::alone`).

mod common;
mod tests;
