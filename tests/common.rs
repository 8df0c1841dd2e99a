//! Fixtures shared by the end-to-end tests.

mod daemon;
mod dns_upstream;
mod tls_upstream;
mod upstream;

pub use daemon::{Daemon, DaemonOptions};
pub use dns_upstream::DnsUpstream;
pub use tls_upstream::{SSE_EVENTS, TestCa, TlsUpstream};
pub use upstream::{BODY, Upstream};

/// Path of the agentguard binary cargo built for these tests.
pub const AGENTGUARD: &str = env!("CARGO_BIN_EXE_agentguard");

/// Every privileged test starts here. Without root it fails with a message
/// that says why: a privileged test that skipped would pass while proving
/// nothing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: must run as root (it loads eBPF programs and creates cgroups); run `sudo -E cargo xtask test`"
    );
}

/// The output of a finished command, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
