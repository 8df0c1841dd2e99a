//! The kernel side of agentguard, as the daemon drives it: the one module
//! that talks to the BPF syscall. Three parts:
//!
//! - [`hooks`]: which programs exist, and how each is loaded and attached
//!   to an agent's cgroup;
//! - [`pins`]: what is left in bpffs so that agents stay guarded (fail
//!   closed) while the daemon is down, and how a restarted daemon adopts it;
//! - [`maps`]: the maps the daemon reads and writes while it runs.
//!
//! [`Kernel`] ties them together: load once, then guard each agent's cgroup.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
};
use thiserror::Error;

use crate::cgroup::Cgroup;

mod btf;
mod direct;
mod hooks;
mod layout;
mod map_failure;
mod maps;
mod peer_records;
mod pins;
mod processes;
mod sockopt_link;
mod splice;

pub use direct::{
    DirectError, DirectMaps, LEASE, LEASE_RENEWAL, monotonic_ns, socket_addrs, way_key,
};
pub use hooks::UNSUPPORTED_HOOKS_ENV;
use hooks::{HOOKS, PROCESS_HOOK, UNIX_HOOKS};
use maps::Maps;
pub use maps::{AgentKernelUsage, Shares};
pub use peer_records::{PeerRecords, peer_addr, peer_key};
pub use pins::detach_all;
use pins::{MAPS, PinDir, SCRATCH_SUFFIX};
pub use splice::{PassthroughRelay, SpliceError, Spliced, Splicer};

impl map_failure::MapFailure for EbpfError {
    fn missing(name: &'static str) -> Self {
        Self::MissingMap(name)
    }

    fn failed(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map { name, source }
    }
}

/// The running kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The compiled kernel programs, built by build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentguard"));

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

/// Whether a kernel without the BPF LSM may run agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessGuard {
    /// Refuse to start without it (the default): an agent could otherwise
    /// ptrace, or write the memory of, any process of its uid outside its
    /// cgroup and make it connect for it.
    Required,
    /// Start without it, saying so at start, in `status` and in the audit
    /// record (`--allow-unguarded-processes`). `agentguard exec` then
    /// installs a seccomp filter against the worst of it instead.
    Optional,
}

/// How the daemon runs the kernel side, beyond where it pins.
#[derive(Debug, Clone, Copy)]
pub struct KernelOptions {
    pub processes: ProcessGuard,
    /// Most connections one agent may have waiting for the proxy (records
    /// in the shared PEER_RECORDS table); past it its connects get EPERM.
    pub records_per_agent: u32,
    /// Most bytes of the kernel event ring one agent's unread events may
    /// take; past it its events are dropped and counted as its losses.
    pub event_bytes_per_agent: u32,
    /// Whether passthrough agents' sends go straight upstream in the kernel.
    pub passthrough_relay: PassthroughRelay,
    /// How long a record may wait for the proxy before the daemon forgets
    /// it (`PeerRecords::expire`); None: until the daemon restarts.
    pub record_max_wait: Option<std::time::Duration>,
}

/// Defaults: 16 agents fit whole in the shared table (65,536 records)
/// and in the ring (1 MiB: 819 socket refusal records each).
pub const DEFAULT_RECORDS_PER_AGENT: u32 = 4096;
pub const DEFAULT_EVENT_BYTES_PER_AGENT: u32 = 64 * 1024;
/// The proxy accepts a connection within milliseconds; one whose record
/// has waited a minute was never going to be, or is better refused.
pub const DEFAULT_RECORD_MAX_WAIT: &str = "60s";
pub const MAX_RECORD_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            processes: ProcessGuard::Required,
            records_per_agent: DEFAULT_RECORDS_PER_AGENT,
            event_bytes_per_agent: DEFAULT_EVENT_BYTES_PER_AGENT,
            passthrough_relay: PassthroughRelay::default(),
            record_max_wait: humantime::parse_duration(DEFAULT_RECORD_MAX_WAIT).ok(),
        }
    }
}

impl std::fmt::Display for KernelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process_guard={:?} kernel_agent_records={} kernel_record_max_wait={}s kernel_agent_event_bytes={} passthrough_relay={:?}",
            self.processes,
            self.records_per_agent,
            self.record_max_wait.map_or(0, |d| d.as_secs()),
            self.event_bytes_per_agent,
            self.passthrough_relay
        )
    }
}

/// The kernel → daemon events: the ring buffer, and where what is read of
/// it goes back to each agent's share.
pub struct KernelEvents {
    pub ring: RingBuf<MapData>,
    pub shares: std::sync::Arc<Shares>,
}

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
    #[error("too many listen entries: {wanted} over all agents, the kernel map holds {capacity}")]
    ListenAllowFull { wanted: usize, capacity: u32 },
    #[error("failed to read the kernel's BTF: {0}")]
    Btf(String),
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
    #[error("eBPF map {name}: no second handle on it: {source}")]
    MapHandle {
        name: &'static str,
        source: std::io::Error,
    },
}

/// The loaded programs and the maps the daemon uses while it runs.
pub struct Kernel {
    ebpf: Ebpf,
    maps: Maps,
    /// The kernel → daemon event ring buffer, until its reader takes it.
    events: Option<KernelEvents>,
    shares: std::sync::Arc<Shares>,
    options: KernelOptions,
    /// Optional hooks this kernel lacks, which are not attached.
    skipped: Vec<&'static str>,
    /// `CONFIG_*` bits written with every configure().
    flags: u32,
    pins: PinDir,
}

impl Kernel {
    /// Loads the programs, reusing pinned maps if a previous daemon left them.
    /// Every hook must load: one the kernel lacks stops start-up, naming it.
    pub fn load(
        pin_dir: &Path,
        unix: UnixGuard,
        options: &KernelOptions,
    ) -> Result<(Self, PeerRecords), EbpfError> {
        let processes = options.processes;
        let pins = PinDir::prepare(pin_dir)?;
        let forced = hooks::forced_unsupported();
        let btf = btf::Btf::read(Path::new(VMLINUX_BTF)).map_err(EbpfError::Btf)?;
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| EbpfError::Btf(e.to_string()))?;
        let task_layout = processes::task_layout(&btf);
        let kernel = hooks::LoadContext {
            forced: &forced,
            btf: &btf,
            aya_btf: &aya_btf,
            bpf_lsm: &processes::require_bpf_lsm(),
            task_layout: &task_layout,
        };
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(EbpfError::Load)?;
        let mut skipped = Vec::new();
        for hook in &HOOKS {
            match hooks::load(&mut ebpf, hook, &kernel) {
                Ok(()) => {}
                Err(e) if unix == UnixGuard::Optional && UNIX_HOOKS.contains(&hook.hook) => {
                    tracing::warn!(hook = hook.hook, error = %e, "running without this hook: agents' Unix sockets are not guarded (--allow-unguarded-unix-sockets)");
                    skipped.push(hook.hook);
                }
                Err(e) if processes == ProcessGuard::Optional && hook.hook == PROCESS_HOOK => {
                    tracing::warn!(hook = hook.hook, error = %e, "running without this hook: agents may ptrace, read and write the memory of, and take descriptors from other processes of their uid (--allow-unguarded-processes)");
                    skipped.push(hook.hook);
                }
                Err(e) => return Err(e),
            }
        }
        let (mut maps, peers, ring, shares) = Maps::take(&mut ebpf)?;
        // Before any cgroup gets the program: until then it refuses all.
        if let Ok(layout) = task_layout {
            maps.set_task_layout(layout)?;
        }
        Ok((
            Self {
                ebpf,
                maps,
                events: Some(KernelEvents {
                    ring,
                    shares: shares.clone(),
                }),
                shares,
                options: *options,
                skipped,
                flags: 0,
                pins,
            },
            peers,
        ))
    }

    /// Whether agents' Unix sockets are guarded (the kernel has the hooks).
    pub fn unix_sockets_guarded(&self) -> bool {
        !self.skipped.iter().any(|h| UNIX_HOOKS.contains(h))
    }

    /// Whether agents are kept from other processes (the BPF LSM runs and
    /// the process-access hook is attached).
    pub fn processes_guarded(&self) -> bool {
        !self.skipped.contains(&PROCESS_HOOK)
    }

    /// Also report redirects (not only refusals) as kernel events; applied
    /// at the next configure().
    pub fn set_report_redirects(&mut self, on: bool) {
        self.set_flag(agentguard_common::CONFIG_REPORT_REDIRECTS, on);
    }

    fn set_flag(&mut self, flag: u32, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Takes passthrough's direct way out again (the daemon cannot close
    /// its connections, or stops); applied at the next configure().
    pub fn disable_direct(&mut self) {
        self.set_flag(agentguard_common::CONFIG_DIRECT_PASSTHROUGH, false);
    }

    /// The maps of passthrough's direct way, with its message program
    /// attached; the kernel takes the way from the next configure() on.
    /// `None` (said in the log) where it is not asked for
    /// ([`KernelOptions::passthrough_relay`]) or the kernel refuses it:
    /// passthrough then goes through the proxy. Call once.
    pub fn take_direct(&mut self) -> Option<std::sync::Arc<DirectMaps>> {
        match DirectMaps::attach(&mut self.ebpf, self.options.passthrough_relay) {
            Ok(maps) => {
                self.set_flag(agentguard_common::CONFIG_DIRECT_PASSTHROUGH, true);
                Some(std::sync::Arc::new(maps))
            }
            Err(DirectError::Off) => None,
            Err(e) => {
                tracing::warn!(error = %e, "passthrough connections go through the proxy: the direct way is unavailable");
                None
            }
        }
    }

    /// The maps that let passthrough agents send straight upstream, with
    /// the message program attached; `None` (said in the log) where
    /// the kernel refuses it or it is not asked for
    /// ([`KernelOptions::passthrough_relay`]): passthrough is then relayed
    /// in user space. Call once.
    pub fn take_splice(&mut self) -> Option<std::sync::Arc<Splicer>> {
        match Splicer::attach(&mut self.ebpf, self.options.passthrough_relay) {
            Ok(splicer) => Some(std::sync::Arc::new(splicer)),
            Err(SpliceError::Off) => None,
            Err(e) => {
                tracing::warn!(error = %e, "passthrough connections are relayed in user space: the kernel splice is unavailable");
                None
            }
        }
    }

    /// The event ring buffer, for the one task that reads it.
    pub fn take_events(&mut self) -> Option<KernelEvents> {
        self.events.take()
    }

    /// What agent `cgroup_id` uses of the kernel's shared tables.
    pub fn agent_usage(&self, cgroup_id: u64) -> AgentKernelUsage {
        self.maps.agent_usage(cgroup_id, &self.shares)
    }

    /// Whether `agents` agents' shares all fit in the shared tables at
    /// once; if not, one agent's flood can still crowd out another's.
    pub fn shares_fit(&self, agents: usize) -> bool {
        let agents = agents as u64;
        agents * u64::from(self.options.records_per_agent)
            <= u64::from(agentguard_common::MAX_TRACKED_CONNECTIONS)
            && agents * u64::from(self.options.event_bytes_per_agent)
                <= u64::from(agentguard_common::KERNEL_EVENTS_BYTES)
    }

    /// Tells the kernel which resolver port serves the agent in `cgroup_id`.
    pub fn set_agent_dns(&mut self, cgroup_id: u64, port: u16) -> Result<(), EbpfError> {
        self.maps.set_agent_dns(cgroup_id, port)
    }

    /// Drops resolver assignments of cgroups not in `keep`.
    pub fn retain_agent_dns(&mut self, keep: &[u64]) -> Result<(), EbpfError> {
        self.maps.retain_agent_dns(keep)
    }

    /// See [`Maps::set_unix_allow`].
    pub fn set_unix_allow(
        &mut self,
        wanted: &[agentguard_common::UnixKey],
    ) -> Result<(), EbpfError> {
        self.maps.set_unix_allow(wanted)
    }

    /// See [`Maps::revoke_unix_addresses`].
    pub fn revoke_unix_addresses(&mut self, addresses: &[Vec<u8>]) -> Result<(), EbpfError> {
        self.maps.revoke_unix_addresses(addresses)
    }

    /// See [`Maps::set_listen_allow`].
    pub fn set_listen_allow(
        &mut self,
        wanted: &[agentguard_common::ListenKey],
    ) -> Result<(), EbpfError> {
        self.maps.set_listen_allow(wanted)
    }

    /// Revokes (or restores) the agent in `cgroup_id` in the kernel: while
    /// revoked, each of its connects, datagrams and binds (and those of
    /// cgroups below it) fails with EPERM. Pinned: it outlives the daemon.
    pub fn set_revoked(&mut self, cgroup_id: u64, revoked: bool) -> Result<(), EbpfError> {
        self.maps.set_revoked(cgroup_id, revoked)
    }

    /// The cgroup ids that are revoked.
    pub fn revoked(&self) -> Vec<u64> {
        self.maps.revoked()
    }

    /// (name, entries, capacity) of the maps that fill with connections.
    pub fn map_occupancy(&self) -> Vec<(&'static str, u64, u64)> {
        maps::occupancy(&self.pins)
    }

    /// Ring-buffer records the kernel could not queue (buffer full), summed
    /// over CPUs. The refusals themselves still happened.
    pub fn events_lost(&self) -> u64 {
        self.maps.events_lost()
    }

    /// Points the kernel's redirect at the proxy listener. A port of 0 makes
    /// the kernel refuse every guarded connect (used at shutdown).
    pub fn configure(&mut self, port: u16, daemon_tgid: u32) -> Result<(), EbpfError> {
        self.maps
            .configure(port, daemon_tgid, self.flags, &self.options)
    }

    /// Whether links are pinned for the cgroup with this id: it was guarded
    /// before (by this daemon or an earlier one).
    pub fn has_links(&self, cgroup_id: u64) -> bool {
        self.pins.has_links(cgroup_id)
    }

    /// The cgroups with links pinned, this daemon's or an earlier one's.
    pub fn pinned_cgroups(&self) -> Result<std::collections::BTreeSet<u64>, EbpfError> {
        self.pins.pinned_cgroups()
    }

    /// Unpins the links of a cgroup that no longer exists (a systemd unit's,
    /// removed when the unit stopped): the kernel detached its programs
    /// when the cgroup went, and only the pins would be left. Never called
    /// for a cgroup that still exists. Returns how many were removed.
    pub fn forget(&mut self, cgroup_id: u64) -> Result<usize, EbpfError> {
        self.pins.forget(cgroup_id)
    }

    /// Attaches every program to `cgroup` and pins the links. Links a previous
    /// daemon pinned for this cgroup are removed only after the new ones are
    /// in place, so there is no instant without a redirect. (While both are
    /// attached, the second program sees a destination already pointing at the
    /// proxy with a record for the socket, and leaves it alone.)
    pub fn guard(&mut self, cgroup: &Cgroup) -> Result<(), EbpfError> {
        use std::os::fd::AsFd as _;
        let previous = self.pins.previous_links(cgroup.id)?;
        let cgroup_fd = std::fs::File::open(&cgroup.path).map_err(|source| EbpfError::PinDir {
            path: cgroup.path.clone(),
            source,
        })?;
        let mut new_links = Vec::new();
        for hook in HOOKS.iter().filter(|h| !self.skipped.contains(&h.hook)) {
            let link = hooks::attach(
                &mut self.ebpf,
                hook,
                cgroup_fd.as_fd(),
                cgroup.id,
                &cgroup.path,
                &self.pins.links(),
            )?;
            new_links.push((hook.program, link));
        }
        self.pins.replace(cgroup.id, new_links, previous)
    }
}
