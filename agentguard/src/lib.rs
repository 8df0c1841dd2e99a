//! agentguard: a Linux daemon that takes secrets out of AI agents' hands. eBPF
//! programs on each agent's cgroup send every outbound connection to a local
//! proxy that knows, from the kernel, who opened it; the proxy decides, relays
//! and records.

pub mod admin;
pub mod approvals;
pub mod atomic_file;
pub mod audit;
pub mod ca;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod connlog;
pub mod containers;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod ebpf;
pub mod error_list;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod kernel_events;
pub mod live;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod netns;
pub mod oversight;
pub mod percent;
pub mod policy;
pub mod port_owner;
pub mod preflight;
pub mod procfs;
pub mod proxy;
pub mod random;
pub mod revoke;
pub mod sockdiag;
pub mod tls_provider;
pub mod token;
pub mod verify_proxy;
pub mod web;
