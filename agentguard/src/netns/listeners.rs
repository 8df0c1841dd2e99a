//! The proxy's listeners inside agents' network namespaces: one pair
//! (127.0.0.1 and ::1, on the proxy's port) per namespace a policy names,
//! opened when the policy is applied and closed when no policy names the
//! namespace any more. Each listener's connections carry their
//! [`Origin`]: the namespace's cookie (half of the kernel record's key)
//! and the way to dial from it.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::info;

use super::{Dial, Dialer, Netns, NetnsError, NetnsId};
use crate::proxy::{ProxyContext, accept_loop, bind_std};

/// Where a connection was accepted: the namespace of the listener (the
/// agent's), and how its upstream connections are dialled unless its
/// policy says otherwise.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Cookie of the listener's network namespace.
    pub netns: u64,
    pub dial: Dial,
}

/// One guarded namespace's listeners; dropping it closes them.
struct Entry {
    netns: Arc<Netns>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The namespaces agents live in, besides the daemon's own.
pub struct NetnsListeners {
    port: u16,
    own: NetnsId,
    runtime: tokio::runtime::Handle,
    /// The proxy's shared context, once it exists (listeners are opened
    /// while the first policy is applied, before it does; connections
    /// wait in the backlog meanwhile, and the kernel sends none before
    /// the daemon is ready).
    ctx: watch::Sender<Option<Arc<ProxyContext>>>,
    entries: Mutex<HashMap<NetnsId, Entry>>,
}

impl NetnsListeners {
    /// For a proxy on `port`; must be called inside the tokio runtime.
    pub fn new(port: u16) -> Result<Self, NetnsError> {
        Ok(Self {
            port,
            own: Netns::own()?.id,
            runtime: tokio::runtime::Handle::current(),
            ctx: watch::Sender::new(None),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Starts serving the listeners' connections with `ctx`.
    pub fn serve(&self, ctx: Arc<ProxyContext>) {
        self.ctx.send_replace(Some(ctx));
    }

    /// Opens the proxy's listeners in the namespace at `path`, unless they
    /// are open already. `None`: it is the daemon's own namespace, whose
    /// listeners the daemon opened at start.
    pub fn ensure(&self, path: &Path) -> Result<Option<Arc<Netns>>, NetnsError> {
        let netns = Netns::open_unprobed(path)?;
        if netns.id == self.own {
            return Ok(None);
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&netns.id) {
            return Ok(Some(entry.netns.clone()));
        }
        let netns = netns.probed()?;
        let port = self.port;
        let v4_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let bound = netns.enter(|| {
            let v4 = bind_std(v4_addr)?;
            // A namespace without IPv6 (disabled, or no ::1 on its
            // loopback) has nothing for the kernel to redirect to there.
            let v6 = match bind_std(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
                Ok(v6) => Some(v6),
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => None,
                Err(e) => return Err(e),
            };
            Ok((v4, v6))
        });
        let (v4, v6) = match bound {
            Ok(bound) => bound,
            Err(NetnsError::Inside { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                return Err(NetnsError::Taken {
                    path: path.to_owned(),
                    addr: v4_addr,
                });
            }
            Err(e) => return Err(e),
        };
        let dialer = Dialer::start(&netns)?;
        let origin = Arc::new(Origin {
            netns: netns.cookie,
            dial: Dial::In(dialer),
        });
        let _runtime = self.runtime.enter();
        let mut tasks = Vec::new();
        for listener in std::iter::once(v4).chain(v6) {
            let listener =
                TcpListener::from_std(listener).map_err(|source| NetnsError::Inside {
                    path: path.to_owned(),
                    source,
                })?;
            let (origin, mut ctx) = (origin.clone(), self.ctx.subscribe());
            tasks.push(tokio::spawn(async move {
                let Ok(ctx) = ctx.wait_for(Option::is_some).await.map(|c| c.clone()) else {
                    return;
                };
                if let Some(ctx) = ctx {
                    accept_loop(listener, origin, ctx).await;
                }
            }));
        }
        info!(netns = %path.display(), id = %netns.id, port, "proxy listening in the agent's network namespace");
        let netns = Arc::new(netns);
        entries.insert(
            netns.id,
            Entry {
                netns: netns.clone(),
                tasks,
            },
        );
        Ok(Some(netns))
    }

    /// Closes the listeners of namespaces not in `keep`.
    pub fn retain(&self, keep: &[NetnsId]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|id, entry| {
            let kept = keep.contains(id);
            if !kept {
                info!(netns = %entry.netns.path.display(), id = %id, "no agent in this network namespace any more; its listeners are closed");
            }
            kept
        });
    }

    /// The served namespace whose cookie is `cookie`.
    pub fn by_cookie(&self, cookie: u64) -> Option<Arc<Netns>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .find(|e| e.netns.cookie == cookie)
            .map(|e| e.netns.clone())
    }

    /// The namespaces served, by the path they were opened at.
    pub fn served(&self) -> Vec<(PathBuf, NetnsId)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .map(|e| (e.netns.path.clone(), e.netns.id))
            .collect()
    }
}
