//! Agents in network namespaces of their own (containers, pods).
//!
//! The kernel programs send an agent's connections to `127.0.0.1:<proxy
//! port>` (and its DNS to `127.0.0.1:<its resolver port>`) in whatever
//! namespace the agent's socket lives in. For an agent in a container that
//! is the container's own loopback, so the daemon opens the same listeners
//! there too: a thread enters the namespace, binds, and hands the sockets
//! back; sockets keep their namespace for life, so the daemon serves them
//! from its own threads like any other. Upstream connections of such an
//! agent are dialled from its namespace (its routes, its source address)
//! by a thread that lives there ([`Dialer`]), unless its policy says
//! `upstream_netns = "host"`.
//!
//! `listeners` keeps the namespaces the policy names, and their sockets.

mod dialer;
mod listeners;

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

pub use dialer::Dialer;
pub use listeners::{NetnsListeners, Origin};
use nix::sched::{CloneFlags, setns};
use thiserror::Error;
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace, or it cannot be entered: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("in network namespace {path}: {source}")]
    Inside { path: PathBuf, source: io::Error },
    #[error(
        "in network namespace {path}: {addr} is taken; agentguard's listener must be the one there (another process holding it would receive the agent's connections)"
    )]
    Taken { path: PathBuf, addr: SocketAddr },
}

/// What identifies a network namespace for as long as it lives: the
/// device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    pub path: PathBuf,
    pub id: NetnsId,
    /// The kernel's cookie for it: what the kernel programs key agents'
    /// connection records by (`bpf_get_netns_cookie`).
    pub cookie: u64,
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), checking that it is one by entering it.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        Self::open_unprobed(path)?.probed()
    }

    /// Opens the file only: its id is known, its cookie not yet (0).
    fn open_unprobed(path: &Path) -> Result<Self, NetnsError> {
        let open_err = |source| NetnsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            id: NetnsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            cookie: 0,
        })
    }

    /// Enters the namespace (which checks that it is one) to learn its
    /// cookie.
    fn probed(mut self) -> Result<Self, NetnsError> {
        self.cookie = self.enter(|| {
            let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            netns_cookie(probe.as_fd())
        })?;
        Ok(self)
    }

    /// The namespace the daemon itself runs in. Its cookie is read from a
    /// socket made here, without entering it: a service may be forbidden
    /// `setns` altogether (systemd's `RestrictNamespaces=`), and a daemon
    /// whose agents all live in its own namespace never needs it.
    pub fn own() -> Result<Self, NetnsError> {
        let mut own = Self::open_unprobed(Path::new("/proc/self/ns/net"))?;
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|source| own.inside(source))?;
        own.cookie = netns_cookie(probe.as_fd()).map_err(|source| own.inside(source))?;
        Ok(own)
    }

    /// Runs `f` on a thread of its own inside this namespace, and waits for
    /// it. Sockets `f` creates belong to this namespace for their lifetime,
    /// wherever they are used afterwards. The thread ends with `f`, so no
    /// thread of the daemon's runtime ever changes namespace.
    pub fn enter<T: Send>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send,
    ) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("agentguard-netns".into())
                .spawn_scoped(scope, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    f().map_err(|source| self.inside(source))
                })
                .map_err(|source| self.inside(source))?;
            thread
                .join()
                .unwrap_or_else(|_| Err(self.inside(io::Error::other("thread panicked"))))
        })
    }

    fn inside(&self, source: io::Error) -> NetnsError {
        NetnsError::Inside {
            path: self.path.clone(),
            source,
        }
    }

    /// A second handle on the same namespace (for a thread that lives
    /// there).
    fn try_clone(&self) -> Result<Self, NetnsError> {
        Ok(Self {
            file: self
                .file
                .try_clone()
                .map_err(|source| self.inside(source))?,
            path: self.path.clone(),
            id: self.id,
            cookie: self.cookie,
        })
    }
}

/// The id of the network namespace at `path`, without entering it.
pub fn id_of(path: &Path) -> io::Result<NetnsId> {
    let meta = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The cookie of the network namespace a socket lives in
/// (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    use nix::libc;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (8) into `cookie`, a
    // live u64, and the new length into `len`; `fd` is a borrowed, open
    // descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<u64>() {
        return Err(io::Error::other("SO_NETNS_COOKIE: unexpected length"));
    }
    Ok(cookie)
}

/// Where an agent's upstream connections are dialled from.
#[derive(Debug, Clone, Default)]
pub enum Dial {
    /// The daemon's own namespace.
    #[default]
    Host,
    /// The agent's namespace, through the thread that lives there.
    In(Arc<Dialer>),
}

impl Dial {
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        match self {
            Self::Host => TcpStream::connect(dst).await,
            Self::In(dialer) => dialer.connect(dst).await,
        }
    }

    /// The cookie of the namespace dialled from, if not the daemon's:
    /// upstream connections are pooled per namespace too (by cookie, which
    /// a later namespace never gets again; inode numbers are reused).
    pub fn netns_cookie(&self) -> Option<u64> {
        match self {
            Self::Host => None,
            Self::In(dialer) => Some(dialer.cookie()),
        }
    }

    /// A handle that does not keep the namespace's dialer thread (and so
    /// the namespace) alive: for the upstream pools, which outlive
    /// containers.
    pub fn downgrade(&self) -> WeakDial {
        match self {
            Self::Host => WeakDial::Host,
            Self::In(dialer) => WeakDial::In(Arc::downgrade(dialer)),
        }
    }
}

/// [`Dial`] without ownership of the namespace's dialer.
#[derive(Debug, Clone)]
pub enum WeakDial {
    Host,
    In(std::sync::Weak<Dialer>),
}

impl WeakDial {
    /// Dials as [`Dial::connect`]; fails once no agent is served in the
    /// namespace any more.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        match self {
            Self::Host => TcpStream::connect(dst).await,
            Self::In(weak) => match weak.upgrade() {
                Some(dialer) => dialer.connect(dst).await,
                None => Err(io::Error::other(
                    "the agent's network namespace is no longer served",
                )),
            },
        }
    }
}

/// How deep below an agent's cgroup its processes are looked for.
const MAX_CGROUP_DEPTH: usize = 16;

/// The network namespaces the processes in the cgroup at `dir` (and the
/// cgroups below it) live in: one `/proc/PID/ns/net` path per namespace.
/// A process that exits while it is read is skipped.
pub fn of_cgroup(dir: &Path) -> Vec<(PathBuf, NetnsId)> {
    let mut found: Vec<(PathBuf, NetnsId)> = Vec::new();
    let mut dirs = vec![(dir.to_owned(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                if let Ok(id) = id_of(&path)
                    && !found.iter().any(|(_, seen)| *seen == id)
                {
                    found.push((path, id));
                }
            }
        }
        if depth >= MAX_CGROUP_DEPTH {
            continue;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    found
}
