//! The bench upstream (`agentguard-bench upstream`): one HTTPS server on
//! 127.0.0.7 that every path reaches, with the bench CA it was made with,
//! and the DNS stand-in agentguard forwards the agent's lookups to.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::process::{Running, SERVER_CPU, pinned};
use crate::cmd;

/// Loopback addresses, one per server, so that a connection's destination
/// says which server it is for.
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
pub const NGINX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 8);
pub const MITMPROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// The upstream's names: intercepted, passthrough, and JWT-bound tools
/// are told apart by name (SNI), as an agent's real tools would be.
pub const HOST: &str = "bench.test";
pub const PASS_HOST: &str = "pass.bench.test";
pub const JWT_HOST: &str = "jwt.bench.test";
/// A tool whose credential is a token exchanged (RFC 8693) for the agent.
pub const EXCHANGE_HOST: &str = "exchange.bench.test";
/// A tool whose credential re-signs the agent's SigV4 requests: an S3
/// bucket, virtual-hosted (`<bucket>.s3.<...>`), so `GET /1k` is
/// `s3:GetObject` on key `1k`.
pub const SIGV4_HOST: &str = "reports.s3.bench.test";

pub struct Upstream {
    pub port: u16,
    pub dns: SocketAddr,
    /// The bench CA (PEM), which the upstream's leaf chains to.
    pub ca: PathBuf,
    /// The upstream's leaf chain and key, which nginx presents too.
    pub leaf: PathBuf,
    pub leaf_key: PathBuf,
    _process: Running,
}

impl Upstream {
    pub fn start(helper: &Path, dir: &Path) -> Result<Self> {
        let mut c = cmd::new(helper);
        c.args(["upstream", "--ip", &UPSTREAM_IP.to_string(), "--names"])
            .arg([HOST, PASS_HOST, JWT_HOST, EXCHANGE_HOST, SIGV4_HOST].join(","))
            .arg("--dir")
            .arg(dir);
        let mut process = Running::spawn(
            "bench upstream",
            pinned(SERVER_CPU, c),
            &dir.join("upstream.log"),
        )?;
        let line = process.read_line(Duration::from_secs(10))?;
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("upstream said {line:?}"))?;
        let port = ready["https_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("upstream ready line without https_port")?;
        let dns = ready["dns"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("upstream ready line without dns")?;
        Ok(Self {
            port,
            dns,
            ca: dir.join("ca.pem"),
            leaf: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
            _process: process,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(UPSTREAM_IP), self.port)
    }

    /// The token endpoint the exchange path's credential uses (the
    /// upstream's `/token`, by address: the daemon resolves names with the
    /// host's resolver, which the bench leaves alone).
    pub fn token_url(&self) -> String {
        format!("https://{}/token", self.addr())
    }
}
