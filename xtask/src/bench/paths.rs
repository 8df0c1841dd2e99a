//! The paths measured, all to the same upstream, and how a client takes
//! each: what it dials, the name it asks for, the CA it trusts, whether it
//! goes through an explicit proxy, and whether it runs as the agent.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    agentguard::Daemon,
    process::{CLIENT_CPU, pinned},
    proxies::{Mitmproxy, Nginx},
    resolve::Resolution,
    upstream::{HOST, JWT_HOST, PASS_HOST, Upstream},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Passthrough,
    Full,
    Jwt,
    Mitmproxy,
    Nginx,
}

impl PathKind {
    pub const ALL: [PathKind; 6] = [
        PathKind::Direct,
        PathKind::Passthrough,
        PathKind::Full,
        PathKind::Jwt,
        PathKind::Mitmproxy,
        PathKind::Nginx,
    ];

    pub fn id(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Passthrough => "passthrough",
            PathKind::Full => "full",
            PathKind::Jwt => "jwt",
            PathKind::Mitmproxy => "mitmproxy",
            PathKind::Nginx => "nginx",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Passthrough => "agentguard passthrough",
            PathKind::Full => "agentguard full path",
            PathKind::Jwt => "agentguard full path, JWT tool",
            PathKind::Mitmproxy => "mitmproxy (explicit proxy)",
            PathKind::Nginx => "nginx (reverse proxy)",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathKind::Direct => "the client connects to the upstream itself",
            PathKind::Passthrough => {
                "agent cgroup; kernel redirect to agentguard, which relays the TLS bytes untouched"
            }
            PathKind::Full => {
                "agent cgroup; kernel redirect, TLS terminated with an agentguard leaf, policy \
                 decision, static credential injected, TLS re-originated (verified), audit event"
            }
            PathKind::Jwt => {
                "as the full path, with a request-bound JWT (ES256) minted and injected per request"
            }
            PathKind::Mitmproxy => {
                "mitmdump 11 as an explicit proxy (CONNECT); the client trusts its CA"
            }
            PathKind::Nginx => {
                "nginx 1.22 terminating TLS, proxying over TLS with upstream keep-alive, header injected"
            }
        }
    }

    pub fn parse_list(list: &str) -> anyhow::Result<Vec<PathKind>> {
        list.split(',')
            .map(|id| {
                PathKind::ALL
                    .into_iter()
                    .find(|p| p.id() == id.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown path {id:?}"))
            })
            .collect()
    }
}

/// Everything the paths need, started once for the whole bench.
pub struct Env {
    pub helper: PathBuf,
    pub agentguard: PathBuf,
    /// Where servers started during the bench keep their files.
    pub work: PathBuf,
    pub oha: PathBuf,
    pub mitmdump: PathBuf,
    pub names: Resolution,
    pub upstream: Upstream,
    pub daemon: Daemon,
    pub nginx: Nginx,
    pub mitmproxy: Mitmproxy,
}

/// How a client on one path reaches the upstream.
pub struct Route {
    /// Name in the URL, SNI and Host.
    pub host: &'static str,
    /// Port in the URL.
    pub port: u16,
    /// What the client dials (for agents: the upstream, which the kernel
    /// redirects to agentguard).
    pub dial: SocketAddr,
    /// The explicit proxy it talks CONNECT to.
    pub proxy: Option<SocketAddr>,
    pub ca: PathBuf,
}

impl Route {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.port)
    }
}

impl Env {
    pub fn route(&self, path: PathKind) -> Route {
        let up = self.upstream.addr();
        let via_upstream = |host, ca: &Path| Route {
            host,
            port: up.port(),
            dial: up,
            proxy: None,
            ca: ca.to_owned(),
        };
        match path {
            PathKind::Direct => via_upstream(HOST, &self.upstream.ca),
            PathKind::Passthrough => via_upstream(PASS_HOST, &self.upstream.ca),
            PathKind::Full => via_upstream(HOST, &self.daemon.ca()),
            PathKind::Jwt => via_upstream(JWT_HOST, &self.daemon.ca()),
            PathKind::Mitmproxy => Route {
                proxy: Some(self.mitmproxy.addr),
                ..via_upstream(HOST, &self.mitmproxy.ca)
            },
            PathKind::Nginx => Route {
                port: self.nginx.addr.port(),
                dial: self.nginx.addr,
                ..via_upstream(HOST, &self.upstream.ca)
            },
        }
    }

    /// `cmd` as a client of `path`: on the client CPU, as the agent where
    /// the path is agentguard's, with the bench's private name resolution.
    pub fn client(&self, path: PathKind, cmd: Command) -> Command {
        let cmd = match path {
            PathKind::Passthrough | PathKind::Full | PathKind::Jwt => self.daemon.exec(cmd),
            _ => cmd,
        };
        self.names.wrap(pinned(CLIENT_CPU, cmd))
    }

    /// The processes whose CPU and memory count as the path's proxy.
    pub fn proxy_pids(&self, path: PathKind) -> Vec<u32> {
        match path {
            PathKind::Direct => Vec::new(),
            PathKind::Passthrough | PathKind::Full | PathKind::Jwt => vec![self.daemon.pid()],
            PathKind::Mitmproxy => vec![self.mitmproxy.pid()],
            PathKind::Nginx => self.nginx.pids(),
        }
    }
}
