//! The tools people would use instead, configured as they would be:
//! nginx as a TLS-terminating reverse proxy with upstream keep-alive (the
//! efficient-proxy reference), and mitmproxy as an explicit proxy the
//! client trusts (the tool people reach for to intercept TLS).

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    process::{Running, SERVER_CPU, pinned, wait_listening},
    procfs,
    resolve::Resolution,
    upstream::{HOST, MITMPROXY_IP, NGINX_IP, Upstream},
};
use crate::cmd;

pub struct Nginx {
    pub addr: SocketAddr,
    process: Running,
}

impl Nginx {
    pub fn start(dir: &Path, upstream: &Upstream) -> Result<Self> {
        Self::start_under(dir, upstream, &[])
    }

    /// As [`Nginx::start`], run by `wrapper` (a program and its arguments,
    /// e.g. valgrind for the instruction counts), which execs in the same
    /// process. Under a wrapper nginx runs without a master
    /// (`master_process off`): the one process that serves is then the
    /// wrapper's own pid.
    pub fn start_under(dir: &Path, upstream: &Upstream, wrapper: &[&str]) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let addr = free_port(IpAddr::V4(NGINX_IP))?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(dir, addr, upstream, wrapper.is_empty()))?;
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = cmd::new(program);
                c.args(args).arg("nginx");
                c
            }
            None => cmd::new("nginx"),
        };
        c.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        let mut process = Running::spawn("nginx", pinned(SERVER_CPU, c), &dir.join("stderr.log"))?;
        // Under a wrapper that runs it 50 times slower, start-up takes
        // longer.
        let ready = if wrapper.is_empty() { 10 } else { 120 };
        wait_listening(addr, "nginx", Duration::from_secs(ready))
            .and_then(|()| process.ensure_alive())
            .with_context(|| fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(Self { addr, process })
    }

    /// The master and its workers: the master only manages, but its CPU
    /// counts too.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.pid();
        let mut pids = vec![master];
        pids.extend(procfs::children(master));
        pids
    }

    /// The first process: the master, or the only one without a master.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Nginx {
    /// SIGKILL on the master alone would orphan the worker, which keeps
    /// serving: SIGTERM lets the master stop its workers; any left after
    /// that are killed by pid.
    fn drop(&mut self) {
        let workers = procfs::children(self.process.pid());
        self.process.signal("TERM");
        self.process.wait_exit(Duration::from_secs(5));
        for pid in workers {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = cmd::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// nginx's TLS 1.3 suites in agentguard's order where the CPU has AES
/// instructions.
const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// One worker (one CPU, like the other proxies here), access log on but
/// buffered as production configurations have it, upstream keep-alive, and
/// the upstream's certificate verified for its name. It injects the same
/// header agentguard does, so both do that much per request.
/// `master`: off only for the instruction counts, where one process does
/// the worker's work.
fn nginx_conf(dir: &Path, addr: SocketAddr, upstream: &Upstream, master: bool) -> String {
    let d = dir.display();
    let master = if master { "on" } else { "off" };
    format!(
        r#"# Written by cargo xtask bench.
daemon off;
master_process {master};
worker_processes 1;
# Root: the temporary files live in the bench's own folder.
user root;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log {d}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # nginx closes a client connection after 1000 requests by default
    # (and one to the upstream too): that would measure reconnections, not
    # keep-alive, and end h2load's sessions early.
    keepalive_requests 1000000;
    upstream bench {{
        server {up};
        # Above the 128 requests h2load keeps in flight: a request that
        # finds no idle upstream connection opens (and later closes) one.
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr} ssl http2;
        server_name {HOST};
        ssl_certificate {leaf};
        ssl_certificate_key {key};
        # TLS 1.3 as agentguard speaks it (nginx 1.22 offers only up to
        # 1.2 by default, whose resumption skips the key exchange), with
        # the suite agentguard picks where the CPU has AES instructions
        # (agentguard::tls_provider): both proxies do the same
        # cryptographic work, whatever oha lists first. The bench's facts
        # show what curl negotiates with each.
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers on;
        ssl_conf_command Ciphersuites {SUITES};
        location / {{
            proxy_pass https://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-secret-not-real";
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_conf_command Ciphersuites {SUITES};
        }}
        # What an SSE endpoint behind nginx needs, or events wait in
        # nginx's buffers.
        location /sse {{
            proxy_pass https://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_conf_command Ciphersuites {SUITES};
        }}
    }}
}}
"#,
        up = upstream.addr(),
        leaf = upstream.leaf.display(),
        key = upstream.leaf_key.display(),
        ca = upstream.ca.display(),
    )
}

pub struct Mitmproxy {
    pub addr: SocketAddr,
    /// The CA mitmproxy made, which its clients trust.
    pub ca: PathBuf,
    process: Running,
}

impl Mitmproxy {
    /// mitmdump (no UI), quiet (printing every flow would slow it down
    /// further), verifying the upstream against the bench CA. It resolves
    /// the upstream's name through the private /etc/hosts.
    pub fn start(
        mitmdump: &Path,
        dir: &Path,
        upstream: &Upstream,
        names: &Resolution,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let addr = free_port(IpAddr::V4(MITMPROXY_IP))?;
        let mut c = cmd::new(mitmdump);
        c.args(["-q", "--listen-host", &addr.ip().to_string()])
            .args(["--listen-port", &addr.port().to_string()])
            .arg("--set")
            .arg(format!("confdir={}", dir.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream.ca.display()
            ));
        let mut process = Running::spawn(
            "mitmdump",
            names.wrap(pinned(SERVER_CPU, c)),
            &dir.join("mitmdump.log"),
        )?;
        wait_listening(addr, "mitmdump", Duration::from_secs(30))
            .and_then(|()| process.ensure_alive())
            .with_context(|| fs::read_to_string(dir.join("mitmdump.log")).unwrap_or_default())?;
        let ca = dir.join("mitmproxy-ca-cert.pem");
        anyhow::ensure!(ca.exists(), "mitmdump made no CA at {}", ca.display());
        Ok(Self { addr, ca, process })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A port nothing listens on at `ip`, for a server that cannot report the
/// one it bound (the kernel could reuse it in between; unlikely here).
fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("failed to bind {ip}:0"))?;
    Ok(l.local_addr()?)
}
