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
    upstream::{EXCHANGE_HOST, HOST, JWT_HOST, PASS_HOST, SIGV4_HOST, Upstream},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Passthrough,
    /// The passthrough path on a second daemon opted in to the kernel
    /// relay (`AGENTGUARD_PASSTHROUGH_RELAY=kernel`: the agent's sends go
    /// straight into the upstream socket), beside the default user-space
    /// relay of [`PathKind::Passthrough`].
    PassthroughKernel,
    /// The passthrough path on a third daemon opted in to the direct way
    /// (`AGENTGUARD_PASSTHROUGH_RELAY=direct`: the agent connects to the
    /// upstream itself, its ClientHello checked in the kernel).
    PassthroughDirect,
    Full,
    Jwt,
    Exchange,
    Sigv4,
    Mitmproxy,
    Nginx,
}

/// The dummy keys oha signs with as the SigV4 path's agent: agentguard
/// replaces its signature, so they need not be real (and are not).
pub const AGENT_AWS_KEYS: &str = "AKIDAGENTPLACEHOLDER:agent-placeholder-secret";
/// What oha signs for (`aws:amz:<region>:<service>`).
pub const AGENT_AWS_SIGV4: &str = "aws:amz:us-east-1:s3";

impl PathKind {
    pub const ALL: [PathKind; 10] = [
        PathKind::Direct,
        PathKind::Passthrough,
        PathKind::PassthroughKernel,
        PathKind::PassthroughDirect,
        PathKind::Full,
        PathKind::Jwt,
        PathKind::Exchange,
        PathKind::Sigv4,
        PathKind::Mitmproxy,
        PathKind::Nginx,
    ];

    /// agentguard's paths: the client runs as the agent.
    pub fn is_agentguard(self) -> bool {
        matches!(
            self,
            PathKind::Passthrough
                | PathKind::PassthroughKernel
                | PathKind::PassthroughDirect
                | PathKind::Full
                | PathKind::Jwt
                | PathKind::Exchange
                | PathKind::Sigv4
        )
    }

    pub fn id(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Passthrough => "passthrough",
            PathKind::PassthroughKernel => "passthrough_kernel",
            PathKind::PassthroughDirect => "passthrough_direct",
            PathKind::Full => "full",
            PathKind::Jwt => "jwt",
            PathKind::Exchange => "exchange",
            PathKind::Sigv4 => "sigv4",
            PathKind::Mitmproxy => "mitmproxy",
            PathKind::Nginx => "nginx",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Passthrough => "agentguard passthrough, user-space relay (default)",
            PathKind::PassthroughKernel => {
                "agentguard passthrough, agent's sends in the kernel (opt-in)"
            }
            PathKind::PassthroughDirect => "agentguard passthrough, direct way (opt-in)",
            PathKind::Full => "agentguard full path",
            PathKind::Jwt => "agentguard full path, JWT tool",
            PathKind::Exchange => "agentguard full path, exchanged token",
            PathKind::Sigv4 => "agentguard full path, SigV4 re-signed",
            PathKind::Mitmproxy => "mitmproxy (explicit proxy)",
            PathKind::Nginx => "nginx (reverse proxy)",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathKind::Direct => "the client connects to the upstream itself",
            PathKind::Passthrough => {
                "agent cgroup; kernel redirect to agentguard, which relays the TLS bytes untouched \
                 through its own buffers (the default relay)"
            }
            PathKind::PassthroughKernel => {
                "as passthrough, on a second daemon opted in to the kernel relay \
                 (`AGENTGUARD_PASSTHROUGH_RELAY=kernel`): after the ClientHello, an sk_msg \
                 program pushes the agent's sends straight into the upstream socket in the \
                 agent's own system call; the upstream's answers are copied by agentguard"
            }
            PathKind::PassthroughDirect => {
                "agent cgroup, on a third daemon opted in to the direct way \
                 (`AGENTGUARD_PASSTHROUGH_RELAY=direct`): the agent's connect to the address \
                 agentguard's resolver gave it for the passthrough name is left as it is, its \
                 first send checked in the kernel (a ClientHello for that name) and reported \
                 for the audit event; no byte passes through agentguard"
            }
            PathKind::Full => {
                "agent cgroup; kernel redirect, TLS terminated with an agentguard leaf, policy \
                 decision, static credential injected, TLS re-originated (verified), audit event"
            }
            PathKind::Jwt => {
                "as the full path, with a request-bound JWT (EdDSA, the default) minted and injected per request"
            }
            PathKind::Exchange => {
                "as the full path, the credential an RFC 8693 token exchanged for the agent at the \
                 upstream's /token (client secret), fetched once and served from the cache"
            }
            PathKind::Sigv4 => {
                "as the full path, oha signing S3 GetObject requests with SigV4 and dummy keys; \
                 agentguard reads the signature, tells the action (checked against the tool's \
                 aws_actions), strips it and signs again with the real keys"
            }
            PathKind::Mitmproxy => {
                "mitmdump 11 as an explicit proxy (CONNECT); the client trusts its CA"
            }
            PathKind::Nginx => {
                "nginx 1.22 terminating TLS (1.3, the suite agentguard picks), proxying over TLS with upstream keep-alive, header injected"
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
    /// The daemon of [`PathKind::PassthroughKernel`].
    pub kernel_daemon: Daemon,
    /// The daemon of [`PathKind::PassthroughDirect`].
    pub direct_daemon: Daemon,
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
    /// The client signs its requests with SigV4 ([`AGENT_AWS_KEYS`]).
    pub aws_sigv4: bool,
}

impl Route {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.port)
    }

    /// `HOST:PORT:IP:PORT` for curl's and oha's `--connect-to`: the URL
    /// keeps the name (SNI, Host), the connection goes where it is dialled.
    pub fn connect_to(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.host,
            self.port,
            self.dial.ip(),
            self.dial.port()
        )
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
            aws_sigv4: false,
        };
        match path {
            PathKind::Direct => via_upstream(HOST, &self.upstream.ca),
            PathKind::Passthrough | PathKind::PassthroughKernel | PathKind::PassthroughDirect => {
                via_upstream(PASS_HOST, &self.upstream.ca)
            }
            PathKind::Full => via_upstream(HOST, &self.daemon.ca()),
            PathKind::Jwt => via_upstream(JWT_HOST, &self.daemon.ca()),
            PathKind::Exchange => via_upstream(EXCHANGE_HOST, &self.daemon.ca()),
            PathKind::Sigv4 => Route {
                aws_sigv4: true,
                ..via_upstream(SIGV4_HOST, &self.daemon.ca())
            },
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
            PathKind::PassthroughKernel => self.kernel_daemon.exec(cmd),
            PathKind::PassthroughDirect => self.direct_daemon.exec(cmd),
            p if p.is_agentguard() => self.daemon.exec(cmd),
            _ => cmd,
        };
        self.names.wrap(pinned(CLIENT_CPU, cmd))
    }

    /// The processes whose CPU and memory count as the path's proxy.
    pub fn proxy_pids(&self, path: PathKind) -> Vec<u32> {
        match path {
            PathKind::Direct => Vec::new(),
            PathKind::Passthrough
            | PathKind::Full
            | PathKind::Jwt
            | PathKind::Exchange
            | PathKind::Sigv4 => vec![self.daemon.pid()],
            PathKind::PassthroughKernel => vec![self.kernel_daemon.pid()],
            PathKind::PassthroughDirect => vec![self.direct_daemon.pid()],
            PathKind::Mitmproxy => vec![self.mitmproxy.pid()],
            PathKind::Nginx => self.nginx.pids(),
        }
    }
}
