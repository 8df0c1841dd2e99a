//! A fresh instance of a path's proxy, for the memory measurement: a
//! process that has served load keeps the memory it freed resident, which
//! would hide what a new connection costs.

use std::{
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::Result;

use super::{
    agentguard::Daemon,
    paths::{Env, PathKind, Route},
    process::{CLIENT_CPU, pinned},
    proxies::{Mitmproxy, Nginx},
};

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// The fresh daemon's allocator returns freed memory to the kernel at
/// once, so that its resident set follows what is in use. By default
/// mimalloc returns it a second after it was freed (its purge delay): the
/// first half's handshakes, freed while the second half opened, left the
/// process between the two readings or not: five runs of one build
/// measured from -13.8 to 24.7 KiB per connection, and 17.2 to 20.0 with
/// no delay. Never returning it (`-1`) is no better: the second half then
/// lives in what the first half's handshakes freed, and grows by ~2 KiB.
const RETURN_FREED_AT_ONCE: &[(&str, &str)] = &[("MIMALLOC_PURGE_DELAY", "0")];

pub enum Fresh {
    Agentguard(Daemon),
    Nginx(Nginx),
    Mitmproxy(Mitmproxy),
}

impl Fresh {
    /// `None` for the direct path, which has no proxy.
    pub fn start(env: &Env, path: PathKind) -> Result<Option<Self>> {
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let dir = env.work.join(format!("fresh-{n}"));
        Ok(Some(match path {
            PathKind::Direct => return Ok(None),
            PathKind::Passthrough
            | PathKind::Full
            | PathKind::Jwt
            | PathKind::Exchange
            | PathKind::Sigv4 => {
                let d = Daemon::start_with(
                    &env.agentguard,
                    &dir,
                    &env.upstream,
                    &format!("-fresh{n}"),
                    RETURN_FREED_AT_ONCE,
                )?;
                d.resolve_passthrough(&env.names)?;
                Fresh::Agentguard(d)
            }
            PathKind::PassthroughKernel | PathKind::PassthroughDirect => {
                let relay = match path {
                    PathKind::PassthroughKernel => super::agentguard::KERNEL_RELAY,
                    _ => super::agentguard::DIRECT_RELAY,
                };
                let d = Daemon::start_with(
                    &env.agentguard,
                    &dir,
                    &env.upstream,
                    &format!("-fresh{n}"),
                    &[relay, RETURN_FREED_AT_ONCE].concat(),
                )?;
                d.resolve_passthrough(&env.names)?;
                Fresh::Agentguard(d)
            }
            PathKind::Nginx => Fresh::Nginx(Nginx::start(&dir, &env.upstream)?),
            PathKind::Mitmproxy => Fresh::Mitmproxy(Mitmproxy::start(
                &env.mitmdump,
                &dir,
                &env.upstream,
                &env.names,
            )?),
        }))
    }

    /// The path's route, through this instance.
    pub fn route(&self, env: &Env, path: PathKind) -> Route {
        let mut r = env.route(path);
        match self {
            Fresh::Agentguard(d)
                if !matches!(
                    path,
                    PathKind::Passthrough
                        | PathKind::PassthroughKernel
                        | PathKind::PassthroughDirect
                ) =>
            {
                r.ca = d.ca()
            }
            Fresh::Agentguard(_) => {}
            Fresh::Nginx(n) => {
                r.port = n.addr.port();
                r.dial = n.addr;
            }
            Fresh::Mitmproxy(m) => {
                r.proxy = Some(m.addr);
                r.ca = m.ca.clone();
            }
        }
        r
    }

    /// `cmd` as a client of this instance (as its agent, for agentguard).
    pub fn client(&self, env: &Env, _path: PathKind, cmd: Command) -> Command {
        let cmd = match self {
            Fresh::Agentguard(d) => d.exec(cmd),
            _ => cmd,
        };
        env.names.wrap(pinned(CLIENT_CPU, cmd))
    }

    /// What the instance logged last, where it keeps a log of its own.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        match self {
            Fresh::Agentguard(d) => Some(d.log_tail(lines)),
            _ => None,
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        match self {
            Fresh::Agentguard(d) => vec![d.pid()],
            Fresh::Nginx(n) => n.pids(),
            Fresh::Mitmproxy(m) => vec![m.pid()],
        }
    }
}
