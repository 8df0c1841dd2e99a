//! Loading, attaching and pinning the kernel programs, and reading their maps.
//! The one module that talks to the BPF syscall.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/agentguard`):
//!
//! ```text
//! maps-v2/<MAP NAME>            (one file per map in MAPS)
//! links/cg<cgroup id>-<program>-<link id>
//! ```
//!
//! cgroup bpf_links detach when their last fd closes, so a crashed daemon would
//! leave agents connecting directly (fail open). Pinned links stay attached:
//! with the daemon gone, agents' connections go to a port nobody serves and
//! are refused (fail closed). A restarted daemon reuses the pinned maps, so
//! records of connections made meanwhile are not lost, attaches fresh
//! programs and only then unpins the old links.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use agentguard_common::{ConnRecord, PeerKey, ProxyConfig, STAT_EVENTS_LOST, UnixKey, v4_mapped};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, Program, ProgramError, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use thiserror::Error;

use crate::cgroup::Cgroup;

mod layout;
mod sockopt_link;

/// The running kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The compiled kernel programs, built by build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentguard"));

/// How a program attaches to a cgroup.
#[derive(Clone, Copy)]
enum Kind {
    SockAddr,
    Sock,
    SockOps,
    Sockopt,
    SkbEgress,
}

/// One kernel hook the daemon needs. Every one is required: running without
/// any of them would leave a way around the proxy. The Unix-socket hooks
/// (Linux 6.7) are the one exception, and only when the operator says so
/// ([`UnixGuard::Optional`]).
struct Hook {
    program: &'static str,
    hook: &'static str,
    kind: Kind,
}

/// The hooks that guard Unix sockets.
const UNIX_HOOKS: [&str; 2] = ["cgroup/connect_unix", "cgroup/sendmsg_unix"];

/// Whether a kernel without the Unix-socket hooks may run agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixGuard {
    /// Refuse to start without them (the default): agents could otherwise
    /// reach any Unix socket, the container engine's included.
    Required,
    /// Start without them, saying so at start, in `status` and in the audit
    /// record (`--allow-unguarded-unix-sockets`, for kernels before 6.7).
    Optional,
}

const HOOKS: [Hook; 14] = [
    Hook {
        program: "agentguard_connect4",
        hook: "cgroup/connect4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_connect6",
        hook: "cgroup/connect6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg4",
        hook: "cgroup/sendmsg4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg6",
        hook: "cgroup/sendmsg6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_recvmsg4",
        hook: "cgroup/recvmsg4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_recvmsg6",
        hook: "cgroup/recvmsg6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_getpeername4",
        hook: "cgroup/getpeername4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_getpeername6",
        hook: "cgroup/getpeername6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sock_create",
        hook: "cgroup/sock_create",
        kind: Kind::Sock,
    },
    Hook {
        program: "agentguard_sockops",
        hook: "sockops",
        kind: Kind::SockOps,
    },
    Hook {
        program: "agentguard_setsockopt",
        hook: "cgroup/setsockopt",
        kind: Kind::Sockopt,
    },
    Hook {
        program: "agentguard_egress",
        hook: "cgroup_skb/egress",
        kind: Kind::SkbEgress,
    },
    Hook {
        program: "agentguard_connect_unix",
        hook: "cgroup/connect_unix",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg_unix",
        hook: "cgroup/sendmsg_unix",
        kind: Kind::SockAddr,
    },
];

/// Test hook: a comma-separated list of hooks (e.g. `cgroup/sendmsg4`) to
/// treat as unsupported by the kernel, so the start-up probe's refusal can
/// be exercised on a kernel that has them all. It can only make the daemon
/// refuse to start, never weaken it.
pub const UNSUPPORTED_HOOKS_ENV: &str = "AGENTGUARD_TEST_UNSUPPORTED_HOOKS";
/// With bpf_link (kernel >= 5.7, which aya uses), the kernel refuses any
/// attach flag (EINVAL) and always attaches as BPF_F_ALLOW_MULTI
/// (kernel/bpf/cgroup.c, cgroup_bpf_link_attach): other tools' programs on the
/// same cgroup keep running, and old and new links can overlap during a
/// restart. `Single` is aya's name for "flags = 0".
const LINK_ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;
const MAPS: [&str; 8] = [
    "PROXY_CONFIG",
    "SOCKET_RECORDS",
    "PEER_RECORDS",
    "CONN_ORIG",
    "AGENT_DNS",
    "UNIX_ALLOW",
    "KERNEL_EVENTS",
    "EVENT_STATS",
];
/// Ends the name of a link pinned only until it is handed to aya (see
/// [`sockopt_link`]).
const SCRATCH_SUFFIX: &str = "-scratch";
/// Pinned maps live in a directory named for their layout: a daemon whose
/// map definitions changed starts fresh maps instead of adopting ones it
/// cannot read.
const MAPS_DIR: &str = "maps-v2";

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error("failed to prepare pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to load the eBPF programs: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error(
        "the running kernel does not support the {hook} hook agentguard needs ({source}); refusing to run with a way around the proxy"
    )]
    Unsupported {
        hook: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "the {0} hook is marked unsupported by {UNSUPPORTED_HOOKS_ENV}; refusing to run with a way around the proxy"
    )]
    ForcedUnsupported(&'static str),
    #[error(
        "the {hook} hook cannot run safely on this kernel: {reason}; refusing to run with a way around the proxy"
    )]
    Layout { hook: &'static str, reason: String },
    #[error(
        "too many Unix socket entries: {wanted} over all agents, the kernel map holds {capacity}"
    )]
    UnixAllowFull { wanted: usize, capacity: u32 },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach {name} to cgroup {cgroup}: {source}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("failed to pin link {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("failed to remove pinned link {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The loaded programs and the maps the daemon uses while it runs.
pub struct Kernel {
    ebpf: Ebpf,
    config: Array<MapData, ProxyConfig>,
    agent_dns: HashMap<MapData, u64, u16>,
    unix_allow: HashMap<MapData, UnixKey, u8>,
    stats: PerCpuArray<MapData, u64>,
    /// The kernel → daemon event ring buffer, until its reader takes it.
    events: Option<RingBuf<MapData>>,
    /// Optional hooks this kernel lacks, which are not attached.
    skipped: Vec<&'static str>,
    /// `CONFIG_*` bits written with every configure().
    flags: u32,
    pin_dir: PathBuf,
}

/// The kernel's per-connection records, shared with the proxy's tasks.
pub struct PeerRecords {
    // HashMap::remove needs &mut; the syscalls take microseconds, so a mutex
    // costs nothing next to a connect().
    map: Mutex<HashMap<MapData, PeerKey, ConnRecord>>,
}

impl Kernel {
    /// Loads the programs, reusing pinned maps if a previous daemon left them.
    /// Every hook must load: one the kernel lacks stops start-up, naming it.
    pub fn load(pin_dir: &Path, unix: UnixGuard) -> Result<(Self, PeerRecords), EbpfError> {
        let maps_dir = pin_dir.join(MAPS_DIR);
        for dir in [&maps_dir, &pin_dir.join("links")] {
            create_private_dir(dir)?;
        }
        let forced: Vec<String> = std::env::var(UNSUPPORTED_HOOKS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, maps_dir.join(m))).collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(EbpfError::Load)?;
        let mut skipped = Vec::new();
        for hook in &HOOKS {
            match load_hook(&mut ebpf, hook, &forced) {
                Ok(()) => {}
                Err(e) if unix == UnixGuard::Optional && UNIX_HOOKS.contains(&hook.hook) => {
                    tracing::warn!(hook = hook.hook, error = %e, "running without this hook: agents' Unix sockets are not guarded (--allow-unguarded-unix-sockets)");
                    skipped.push(hook.hook);
                }
                Err(e) => return Err(e),
            }
        }

        let map_err = |name| move |source| EbpfError::Map { name, source };
        let config = Array::try_from(take_map(&mut ebpf, "PROXY_CONFIG")?)
            .map_err(map_err("PROXY_CONFIG"))?;
        let peers = HashMap::try_from(take_map(&mut ebpf, "PEER_RECORDS")?)
            .map_err(map_err("PEER_RECORDS"))?;
        let agent_dns =
            HashMap::try_from(take_map(&mut ebpf, "AGENT_DNS")?).map_err(map_err("AGENT_DNS"))?;
        let unix_allow =
            HashMap::try_from(take_map(&mut ebpf, "UNIX_ALLOW")?).map_err(map_err("UNIX_ALLOW"))?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "EVENT_STATS")?)
            .map_err(map_err("EVENT_STATS"))?;
        let events = RingBuf::try_from(take_map(&mut ebpf, "KERNEL_EVENTS")?)
            .map_err(map_err("KERNEL_EVENTS"))?;
        Ok((
            Self {
                ebpf,
                config,
                agent_dns,
                unix_allow,
                stats,
                events: Some(events),
                skipped,
                flags: 0,
                pin_dir: pin_dir.to_owned(),
            },
            PeerRecords {
                map: Mutex::new(peers),
            },
        ))
    }

    /// Whether agents' Unix sockets are guarded (the kernel has the hooks).
    pub fn unix_sockets_guarded(&self) -> bool {
        !self.skipped.iter().any(|h| UNIX_HOOKS.contains(h))
    }

    /// Also report redirects (not only refusals) as kernel events; applied
    /// at the next configure().
    pub fn set_report_redirects(&mut self, on: bool) {
        self.flags = if on {
            agentguard_common::CONFIG_REPORT_REDIRECTS
        } else {
            0
        };
    }

    /// The event ring buffer, for the one task that reads it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Tells the kernel which resolver port serves the agent in `cgroup_id`.
    pub fn set_agent_dns(&mut self, cgroup_id: u64, port: u16) -> Result<(), EbpfError> {
        self.agent_dns
            .insert(cgroup_id, port, 0)
            .map_err(|source| EbpfError::Map {
                name: "AGENT_DNS",
                source,
            })
    }

    /// Drops resolver assignments of cgroups not in `keep`.
    pub fn retain_agent_dns(&mut self, keep: &[u64]) -> Result<(), EbpfError> {
        let stale: Vec<u64> = self
            .agent_dns
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !keep.contains(id))
            .collect();
        for id in stale {
            let _ = self.agent_dns.remove(&id);
        }
        Ok(())
    }

    /// Makes the kernel's Unix-socket allow-list exactly `wanted`. Stale
    /// entries go first: removing them only revokes what the new policy
    /// revokes (no entry in both lists is touched), and it keeps room for
    /// the new ones in the fixed-size map.
    pub fn set_unix_allow(&mut self, wanted: &[UnixKey]) -> Result<(), EbpfError> {
        let capacity = agentguard_common::MAX_UNIX_ALLOW_ENTRIES;
        if wanted.len() > capacity as usize {
            return Err(EbpfError::UnixAllowFull {
                wanted: wanted.len(),
                capacity,
            });
        }
        self.remove_unix_allow(|k| !wanted.contains(k))?;
        for key in wanted {
            self.unix_allow
                .insert(key, 1, 0)
                .map_err(|source| EbpfError::Map {
                    name: "UNIX_ALLOW",
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes every allow-list entry, of any agent, whose address is one
    /// of `addresses` (`sun_path` bytes): for sockets found unsafe, even
    /// while the policy that lists them stays in force.
    pub fn revoke_unix_addresses(&mut self, addresses: &[Vec<u8>]) -> Result<(), EbpfError> {
        self.remove_unix_allow(|k| addresses.iter().any(|a| a.as_slice() == k.sun_path()))
    }

    fn remove_unix_allow(&mut self, remove: impl Fn(&UnixKey) -> bool) -> Result<(), EbpfError> {
        let doomed: Vec<UnixKey> = self
            .unix_allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| remove(k))
            .collect();
        for key in doomed {
            self.unix_allow
                .remove(&key)
                .map_err(|source| EbpfError::Map {
                    name: "UNIX_ALLOW",
                    source,
                })?;
        }
        Ok(())
    }

    /// (name, entries, capacity) of the maps that fill with connections.
    /// Counting walks each map's keys: a few ms at 64k entries, fine per
    /// metrics scrape.
    pub fn map_occupancy(&self) -> Vec<(&'static str, u64, u64)> {
        let capacity = u64::from(agentguard_common::MAX_TRACKED_CONNECTIONS);
        let mut out = Vec::new();
        for name in ["SOCKET_RECORDS", "PEER_RECORDS", "CONN_ORIG"] {
            let count = match self.ebpf.map(name) {
                Some(map) => match name {
                    "CONN_ORIG" => HashMap::<_, u64, agentguard_common::OrigDst>::try_from(map)
                        .map(|m| m.keys().filter(Result::is_ok).count())
                        .unwrap_or(0),
                    _ => HashMap::<_, u64, ConnRecord>::try_from(map)
                        .map(|m| m.keys().filter(Result::is_ok).count())
                        .unwrap_or(0),
                },
                // PEER_RECORDS belongs to the proxy: read it from its pin.
                None => aya::maps::MapData::from_pin(self.pin_dir.join(MAPS_DIR).join(name))
                    .ok()
                    .and_then(|data| {
                        HashMap::<_, PeerKey, ConnRecord>::try_from(aya::maps::Map::LruHashMap(
                            data,
                        ))
                        .ok()
                    })
                    .map(|m| m.keys().filter(Result::is_ok).count())
                    .unwrap_or(0),
            };
            out.push((name, count as u64, capacity));
        }
        out
    }

    /// Ring-buffer records the kernel could not queue (buffer full), summed
    /// over CPUs. The refusals themselves still happened.
    pub fn events_lost(&self) -> u64 {
        self.stats
            .get(&STAT_EVENTS_LOST, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Points the kernel's redirect at the proxy listener. A port of 0 makes
    /// the kernel refuse every guarded connect (used at shutdown).
    pub fn configure(&mut self, port: u16, daemon_tgid: u32) -> Result<(), EbpfError> {
        let flags = self.flags;
        let cfg = ProxyConfig {
            ip4: [127, 0, 0, 1],
            ip6: std::net::Ipv6Addr::LOCALHOST.octets(),
            port,
            _pad: 0,
            daemon_tgid,
            flags,
        };
        self.config.set(0, cfg, 0).map_err(|source| EbpfError::Map {
            name: "PROXY_CONFIG",
            source,
        })
    }

    /// Attaches every program to `cgroup` and pins the links. Links a previous
    /// daemon pinned for this cgroup are removed only after the new ones are
    /// in place, so there is no instant without a redirect. (While both are
    /// attached, the second program sees a destination already pointing at the
    /// proxy with a record for the socket, and leaves it alone.)
    pub fn guard(&mut self, cgroup: &Cgroup) -> Result<(), EbpfError> {
        let links_dir = self.pin_dir.join("links");
        // A scratch pin left by a daemon that died in the instant between
        // pinning a sockopt link and renaming it: an extra copy of a
        // program that is attached anyway; it goes, and its name is free.
        let mut previous = Vec::new();
        for path in pinned_links(&links_dir, Some(cgroup.id))? {
            if path.to_string_lossy().ends_with(SCRATCH_SUFFIX) {
                unpin(&path)?;
            } else {
                previous.push(path);
            }
        }

        let cgroup_fd = fs::File::open(&cgroup.path).map_err(|source| EbpfError::PinDir {
            path: cgroup.path.clone(),
            source,
        })?;
        let attach_err = |name, source| EbpfError::Attach {
            name,
            cgroup: cgroup.path.clone(),
            source,
        };
        let mut new_links = Vec::new();
        for hook in HOOKS.iter().filter(|h| !self.skipped.contains(&h.hook)) {
            let name = hook.program;
            let fd = cgroup_fd.as_fd();
            let link = match hook.kind {
                Kind::SockAddr => {
                    let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
                    let id = prog
                        .attach(fd, LINK_ATTACH_MODE)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
                Kind::Sock => {
                    let prog = program::<CgroupSock>(&mut self.ebpf, name)?;
                    let id = prog
                        .attach(fd, LINK_ATTACH_MODE)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
                Kind::SockOps => {
                    let prog = program::<SockOps>(&mut self.ebpf, name)?;
                    let id = prog
                        .attach(fd, LINK_ATTACH_MODE)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
                Kind::Sockopt => {
                    let prog = program::<CgroupSockopt>(&mut self.ebpf, name)?;
                    let prog_fd = prog.fd().map_err(|e| attach_err(name, e))?;
                    // A `cg` link name, so that detach and the next guard()
                    // find it if the daemon dies before it is renamed (bpffs
                    // reserves names with dots).
                    let scratch = links_dir.join(format!("cg{}-{name}{SCRATCH_SUFFIX}", cgroup.id));
                    Ok(sockopt_link::attach(
                        prog_fd.as_fd(),
                        fd,
                        sockopt_link::BPF_CGROUP_SETSOCKOPT,
                        &scratch,
                    )
                    .map_err(|e| attach_err(name, ProgramError::IOError(e)))?)
                }
                Kind::SkbEgress => {
                    let prog = program::<CgroupSkb>(&mut self.ebpf, name)?;
                    let id = prog
                        .attach(fd, CgroupSkbAttachType::Egress, LINK_ATTACH_MODE)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
            }
            .map_err(|source| EbpfError::Link { name, source })?;
            new_links.push((name, link));
        }

        for (name, link) in new_links {
            let link_id = link
                .info()
                .map_err(|source| EbpfError::Link { name, source })?
                .id();
            let path = links_dir.join(format!("cg{}-{name}-{link_id}", cgroup.id));
            link.pin(&path)
                .map_err(|source| EbpfError::Pin { path, source })?;
        }
        for path in previous {
            unpin(&path)?;
        }
        Ok(())
    }
}

impl Kernel {
    /// Whether links are pinned for the cgroup with this id: it was guarded
    /// before (by this daemon or an earlier one).
    pub fn has_links(&self, cgroup_id: u64) -> bool {
        pinned_links(&self.pin_dir.join("links"), Some(cgroup_id)).is_ok_and(|l| !l.is_empty())
    }

    /// Unpins the links of a cgroup that no longer exists (a systemd unit's,
    /// removed when the unit stopped): the kernel detached its programs
    /// when the cgroup went, and only the pins would be left. Never called
    /// for a cgroup that still exists. Returns how many were removed.
    pub fn forget(&mut self, cgroup_id: u64) -> Result<usize, EbpfError> {
        let links = pinned_links(&self.pin_dir.join("links"), Some(cgroup_id))?;
        for path in &links {
            unpin(path)?;
        }
        Ok(links.len())
    }
}

impl PeerRecords {
    /// Forgets every record: for a daemon starting, before the kernel
    /// sends it connections. Any record then left belongs to a connection
    /// an earlier daemon never accepted, now gone, and must not be claimed
    /// by whoever binds its address next. Returns how many were removed.
    pub fn clear(&self) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<PeerKey> = map.keys().filter_map(Result::ok).collect();
        keys.into_iter()
            .filter(|key| map.remove(key).is_ok())
            .count()
    }

    /// Takes the kernel's record for the connection whose agent-side address
    /// is `peer` (the peer of the accepted socket), removing it so that the
    /// LRU holds only connections not yet accepted.
    pub fn take(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let ip = match peer.ip() {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        };
        let key = PeerKey::new(ip, peer.port());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let record = map.get(&key, 0).ok()?;
        // A failed remove leaves a stale entry the LRU will evict; the record
        // itself is still valid for this connection.
        let _ = map.remove(&key);
        Some(record)
    }
}

/// Removes every pinned link and map of a pin directory: the programs detach
/// from all cgroups and agents connect directly again. Used by
/// `agentguard detach` (an explicit uninstall) and by tests.
pub fn detach_all(pin_dir: &Path) -> Result<usize, EbpfError> {
    let mut removed = 0;
    for path in pinned_links(&pin_dir.join("links"), None)? {
        unpin(&path)?;
        removed += 1;
    }
    let _ = fs::remove_dir(pin_dir.join("links"));
    for name in MAPS {
        let path = pin_dir.join(MAPS_DIR).join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(EbpfError::Unpin { path, source }),
        }
    }
    let _ = fs::remove_dir(pin_dir.join(MAPS_DIR));
    let _ = fs::remove_dir(pin_dir);
    Ok(removed)
}

/// Loads one hook's program, after the checks that can refuse it first.
fn load_hook(ebpf: &mut Ebpf, hook: &Hook, forced: &[String]) -> Result<(), EbpfError> {
    if forced.iter().any(|f| f == hook.hook) {
        return Err(EbpfError::ForcedUnsupported(hook.hook));
    }
    // Both Unix hooks read the same struct: one check serves them.
    if UNIX_HOOKS.contains(&hook.hook) {
        layout::check_sock_addr_kern(Path::new(VMLINUX_BTF)).map_err(|reason| {
            EbpfError::Layout {
                hook: hook.hook,
                reason,
            }
        })?;
    }
    let name = hook.program;
    let loaded = match hook.kind {
        Kind::SockAddr => program::<CgroupSockAddr>(ebpf, name)?.load(),
        Kind::Sock => program::<CgroupSock>(ebpf, name)?.load(),
        Kind::SockOps => program::<SockOps>(ebpf, name)?.load(),
        Kind::Sockopt => program::<CgroupSockopt>(ebpf, name)?.load(),
        Kind::SkbEgress => program::<CgroupSkb>(ebpf, name)?.load(),
    };
    loaded.map_err(|source| EbpfError::Unsupported {
        hook: hook.hook,
        source,
    })
}

/// The program `name` as the type its hook needs.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))
}

fn create_private_dir(dir: &Path) -> Result<(), EbpfError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| EbpfError::PinDir {
            path: dir.to_owned(),
            source,
        })
}

/// Pinned link files, all or those of one cgroup, named
/// `cg<cgroup id>-<program>-<link id>`.
fn pinned_links(links_dir: &Path, cgroup_id: Option<u64>) -> Result<Vec<PathBuf>, EbpfError> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(EbpfError::PinDir {
                path: links_dir.to_owned(),
                source,
            });
        }
    };
    let mut links: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| match (link_cgroup_id(p), cgroup_id) {
            (Some(id), Some(want)) => id == want,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect();
    links.sort();
    Ok(links)
}

fn link_cgroup_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("cg")?;
    let (id, program) = rest.split_once('-')?;
    HOOKS
        .iter()
        .any(|h| program.starts_with(h.program))
        .then(|| id.parse().ok())
        .flatten()
}

/// Unpinning drops the last reference to the link: the program detaches.
fn unpin(path: &Path) -> Result<(), EbpfError> {
    let link = PinnedLink::from_pin(path).map_err(|source| EbpfError::Link {
        name: "pinned",
        source,
    })?;
    link.unpin().map_err(|source| EbpfError::Unpin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_carry_their_cgroup() {
        assert_eq!(
            link_cgroup_id(Path::new("/x/links/cg1234-agentguard_connect4-77")),
            Some(1234)
        );
        assert_eq!(
            link_cgroup_id(Path::new("/x/links/cgabc-agentguard_connect4-1")),
            None
        );
        assert_eq!(link_cgroup_id(Path::new("/x/links/cg12-other-1")), None);
        assert_eq!(link_cgroup_id(Path::new("/x/links/README")), None);
        // A scratch pin is found like any link of its cgroup.
        assert_eq!(
            link_cgroup_id(Path::new(&format!(
                "/x/links/cg77-agentguard_setsockopt{SCRATCH_SUFFIX}"
            ))),
            Some(77)
        );
    }
}
