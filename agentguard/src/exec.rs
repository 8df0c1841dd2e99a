//! `agentguard exec`: start a program inside an agent's cgroup.
//!
//! The process joins the cgroup *before* exec: the kernel hooks follow the
//! cgroup a socket was created in, so a socket opened before joining would
//! escape the redirect.

mod domain;
mod seccomp;

use std::{
    convert::Infallible,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, AgentView},
    cgroup::{Cgroup, CgroupError, CgroupRoot},
    preflight::{self, PreflightError},
};

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{0}")]
    Admin(#[from] AdminError),
    #[error("unknown agent {0:?}: not in the running daemon's policy")]
    UnknownAgent(String),
    #[error(
        "file descriptor {fd} is an {family} socket this process inherited: it was made outside the agent's cgroup, so agentguard's kernel programs would never see its traffic; close it before agentguard exec"
    )]
    InheritedSocket { fd: i32, family: &'static str },
    #[error("agent {0:?} is known but its cgroup is not guarded; refusing to start it unguarded")]
    NotGuarded(String),
    #[error(
        "agent {agent:?}: cgroup {path} is not the one the daemon guards (id {actual}, daemon says {expected})"
    )]
    CgroupMismatch {
        agent: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "agent {agent:?} is the systemd service {unit}: start it from that unit (ExecStartPre=+agentguard attach --agent {agent}, then ExecStart=agentguard exec ...); this process runs in cgroup {cgroup}"
    )]
    OutsideUnit {
        agent: String,
        unit: String,
        cgroup: String,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    OnBehalfOf(String),
    #[error("no command given: agentguard exec --agent NAME -- CMD [ARGS...]")]
    NoCommand,
    #[error("failed to execute {cmd:?}: {source}")]
    Exec {
        cmd: OsString,
        source: std::io::Error,
    },
    #[error(
        "refusing to run agent {0:?} as root: a uid-0 agent, even without capabilities, owns the files that keep it contained (bpffs pins, cgroup.procs, secret files); pass --user USER, or --allow-root to accept that"
    )]
    RootRefused(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("failed to switch to {what}: {source}")]
    Switch { what: String, source: nix::Error },
    #[error("failed to drop capabilities: {0}")]
    Caps(String),
    #[error("failed to set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("failed to install the seccomp filter (no namespaces, no mounts): {0}")]
    Seccomp(String),
    #[error("failed to put the agent in a Landlock domain of its own: {0}")]
    Landlock(String),
}

/// Who the agent runs as, and with what.
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// `USER[:GROUP]`, names or numbers.
    pub user: Option<String>,
    /// Explicitly accept running the agent as uid 0.
    pub allow_root: bool,
    /// Opt out of dropping capabilities and setting no_new_privs.
    pub keep_capabilities: bool,
    /// Opt out of the seccomp filter that refuses new user and mount
    /// namespaces and mounts.
    pub allow_namespaces: bool,
    /// The human or session the agent acts for: the `act` claim of its
    /// request-bound tokens.
    pub on_behalf_of: Option<String>,
}

/// Variables through which common runtimes and tools take their trusted CA
/// bundle. Each is pointed at the bundle of system roots plus the agentguard
/// CA, so unmodified clients trust intercepted connections and still every
/// public CA.
const CA_BUNDLE_VARS: [&str; 10] = [
    "SSL_CERT_FILE",       // OpenSSL (Python ssl/urllib, Ruby, curl with OpenSSL), Go
    "REQUESTS_CA_BUNDLE",  // Python requests
    "CURL_CA_BUNDLE",      // curl
    "NODE_EXTRA_CA_CERTS", // Node.js (fetch, https)
    "GIT_SSL_CAINFO",      // git over HTTPS
    "PIP_CERT",            // pip
    "AWS_CA_BUNDLE",       // AWS CLI and SDKs
    "CARGO_HTTP_CAINFO",   // cargo
    "DENO_CERT",           // Deno
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", // gRPC core (Python, Ruby, C++)
];

/// Joins `agent`'s cgroup and replaces this process with `cmd`. Returns only
/// on failure.
pub fn exec(
    admin_socket: &Path,
    agent: &str,
    privileges: &Privileges,
    cmd: &[OsString],
) -> Result<Infallible, ExecError> {
    preflight::require_root("exec")?;
    let (program, args) = cmd.split_first().ok_or(ExecError::NoCommand)?;
    refuse_inherited_sockets()?;
    let target = resolve_user(privileges.user.as_deref())?;
    if target.as_ref().is_none_or(|t| t.uid.is_root()) && !privileges.allow_root {
        return Err(ExecError::RootRefused(agent.to_owned()));
    }
    let view = match unit_view(admin_socket, agent) {
        Some(view) => view,
        None => fetch_agent(admin_socket, agent)?,
    };
    if !view.guarded {
        return Err(ExecError::NotGuarded(agent.to_owned()));
    }
    if let Some(who) = &privileges.on_behalf_of {
        if view.systemd_unit.is_some() {
            return Err(ExecError::OnBehalfOf(
                "--on-behalf-of needs the admin socket, which an agent's systemd unit cannot reach once guarded".into(),
            ));
        }
        register_on_behalf_of(admin_socket, who)?;
    }
    let root = CgroupRoot::discover()?;
    match &view.systemd_unit {
        // systemd started this process in the unit's cgroup, which the
        // unit's `agentguard attach` had guarded: it stays there. Moving
        // it would take the agent out of its unit (`systemctl stop` would
        // no longer stop it).
        Some(unit) => check_in_unit(&root, agent, unit, &view)?,
        None => {
            let cgroup = Cgroup::open(Path::new(&view.cgroup_path))?;
            if cgroup.id != view.cgroup_id {
                return Err(ExecError::CgroupMismatch {
                    agent: agent.to_owned(),
                    path: cgroup.path,
                    expected: view.cgroup_id,
                    actual: cgroup.id,
                });
            }
            cgroup.join_self(&root)?;
        }
    }
    // Only after joining: writing cgroup.procs needs the privileges dropped
    // here. The bounding set goes first: shrinking it needs CAP_SETPCAP,
    // which a switch to another user takes away.
    if !privileges.keep_capabilities {
        drop_bounding_set()?;
    }
    if let Some(target) = &target {
        switch_user(target)?;
    }
    if !privileges.keep_capabilities {
        drop_capabilities()?;
        // setuid binaries cannot give back what was dropped.
        nix::sys::prctl::set_no_new_privs().map_err(ExecError::NoNewPrivs)?;
    }
    // Last: the filters refuse mounts and sockets nothing above needs.
    seccomp::install(seccomp::socket_filters().map_err(ExecError::Seccomp)?)
        .map_err(ExecError::Seccomp)?;
    if !privileges.allow_namespaces {
        seccomp::install(seccomp::filters().map_err(ExecError::Seccomp)?)
            .map_err(ExecError::Seccomp)?;
    }
    // Where the kernel's own check is missing, the belt: a Landlock domain
    // of the agent's own (no other process's memory or descriptors, own
    // children still traceable); without Landlock, a seccomp filter that
    // refuses the system calls (but cannot see /proc/<pid>/mem).
    // Landlock refuses every mount inside a domain: with --allow-namespaces
    // (mounts in the agent's own namespaces, as bubblewrap makes) the
    // seccomp filter is the belt instead.
    if !view.processes_guarded {
        let set_no_new_privs = !privileges.keep_capabilities;
        let entered = match privileges.allow_namespaces {
            true => domain::Domain::Unavailable,
            false => domain::enter(set_no_new_privs).map_err(ExecError::Landlock)?,
        };
        match entered {
            domain::Domain::Entered => {}
            domain::Domain::Unavailable => {
                seccomp::install(seccomp::process_filters().map_err(ExecError::Seccomp)?)
                    .map_err(ExecError::Seccomp)?;
            }
        }
    }
    let mut command = Command::new(program);
    command.args(args);
    for var in CA_BUNDLE_VARS {
        command.env(var, &view.ca_bundle);
    }
    for (var, placeholder) in &view.placeholders {
        command.env(var, placeholder);
    }
    let source = command.exec();
    Err(ExecError::Exec {
        cmd: program.clone(),
        source,
    })
}

/// Where `agentguard attach` leaves an agent unit's view: beside the admin
/// socket, root's alone (`/run/agentguard/units/NAME.json`).
fn unit_view_path(admin_socket: &Path, agent: &str) -> Option<PathBuf> {
    Some(
        admin_socket
            .parent()?
            .join("units")
            .join(format!("{agent}.json")),
    )
}

/// Saves `view` for the unit's `ExecStart=agentguard exec` (see
/// [`unit_view`]). Written whole, then renamed: exec never reads half.
pub fn save_unit_view(admin_socket: &Path, view: &AgentView) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let Some(path) = unit_view_path(admin_socket, &view.name) else {
        return Ok(());
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{}.json.tmp", view.name));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, &serde_json::to_vec(view).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// The view the unit's gate saved, if this process runs in the very
/// cgroup it guarded (same id: cgroup ids are not reused within a boot, so
/// a view from an earlier start of the unit does not match). Inside a
/// guarded unit the admin socket cannot be reached: the kernel refuses it
/// like any Unix socket the policy does not list.
fn unit_view(admin_socket: &Path, agent: &str) -> Option<AgentView> {
    let text = std::fs::read(unit_view_path(admin_socket, agent)?).ok()?;
    let view: AgentView = serde_json::from_slice(&text).ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = CgroupRoot::discover().ok()?;
    let here = Cgroup::open(&root.mount().join(own.trim_start_matches('/'))).ok()?;
    (view.name == agent && view.systemd_unit.is_some() && here.id == view.cgroup_id).then_some(view)
}

/// For an agent that is a systemd service: this process must already be in
/// the unit's guarded cgroup (started by the unit).
fn check_in_unit(
    root: &CgroupRoot,
    agent: &str,
    unit: &str,
    view: &AgentView,
) -> Result<(), ExecError> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned();
    let here = Cgroup::open(&root.mount().join(own.trim_start_matches('/')))?;
    if here.id != view.cgroup_id {
        return Err(ExecError::OutsideUnit {
            agent: agent.to_owned(),
            unit: unit.to_owned(),
            cgroup: own,
        });
    }
    Ok(())
}

/// A socket keeps the cgroup it was created in, and the cgroup programs
/// follow the socket's: an IPv4 or IPv6 socket handed down by whatever
/// started exec was never redirected and never will be. Refused rather
/// than closed, so the launcher's mistake is seen. (Unix sockets, such as
/// a journald stdout, are left alone: their peers are local.)
fn refuse_inherited_sockets() -> Result<(), ExecError> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Ok(());
    };
    // Collected first: the directory's own descriptor is among them, and
    // is closed once the listing ends.
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        // SAFETY: `fd` is open in this process for the duration of this
        // borrow (a closed one, the listing's own, makes the calls fail).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let family = match socket2::SockRef::from(&borrowed).domain() {
            Ok(socket2::Domain::IPV4) => "IPv4",
            Ok(socket2::Domain::IPV6) => "IPv6",
            _ => continue,
        };
        return Err(ExecError::InheritedSocket { fd, family });
    }
    Ok(())
}

/// A resolved `--user USER[:GROUP]`.
struct Target {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    name: String,
}

fn resolve_user(spec: Option<&str>) -> Result<Option<Target>, ExecError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let Some(spec) = spec else {
        return Ok(None);
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(user).ok().flatten(),
    };
    let (uid, mut gid, name) = match (found, user.parse::<u32>()) {
        (Some(u), _) => (u.uid, u.gid, u.name),
        // A numeric uid with no passwd entry is still a valid identity.
        (None, Ok(uid)) => (Uid::from_raw(uid), Gid::from_raw(uid), uid.to_string()),
        (None, Err(_)) => return Err(ExecError::UnknownUser(user.to_owned())),
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => Gid::from_raw(g),
            Err(_) => {
                Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ExecError::UnknownGroup(group.to_owned()))?
                    .gid
            }
        };
    }
    Ok(Some(Target { uid, gid, name }))
}

/// Groups first, then gid, then uid: once the uid changes, the rest can no
/// longer be changed.
fn switch_user(target: &Target) -> Result<(), ExecError> {
    let err = |what: &str| {
        let what = format!("{what} of {}", target.name);
        move |source| ExecError::Switch { what, source }
    };
    nix::unistd::setgroups(&[target.gid]).map_err(err("supplementary groups"))?;
    nix::unistd::setresgid(target.gid, target.gid, target.gid).map_err(err("gid"))?;
    nix::unistd::setresuid(target.uid, target.uid, target.uid).map_err(err("uid"))?;
    Ok(())
}

/// Empties the bounding set, so nothing can be regained through exec of a
/// file with capabilities. Needs CAP_SETPCAP: before the uid switch and
/// before the other sets are cleared.
fn drop_bounding_set() -> Result<(), ExecError> {
    use caps::CapSet;
    for cap in caps::all() {
        // A capability this kernel does not know is not in the set.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| ExecError::Caps(format!("bounding set, {cap}: {e}")))?;
        }
    }
    Ok(())
}

/// Empties every other capability set.
fn drop_capabilities() -> Result<(), ExecError> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| ExecError::Caps(e.to_string());
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(err)?;
    }
    Ok(())
}

/// Tells the daemon whom this process (the agent, after exec) acts for: its
/// request-bound tokens then carry `act`.
fn register_on_behalf_of(admin_socket: &Path, who: &str) -> Result<(), ExecError> {
    use base64::Engine as _;
    crate::token::validate_who(who).map_err(ExecError::OnBehalfOf)?;
    let who = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(who);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExecError::Runtime)?;
    let route = format!("/v1/on-behalf-of?pid={}&who={who}", std::process::id());
    runtime.block_on(AdminClient::new(admin_socket).post::<serde_json::Value>(&route))?;
    Ok(())
}

fn fetch_agent(admin_socket: &Path, agent: &str) -> Result<AgentView, ExecError> {
    // The name goes into a URL path: only names a policy could define.
    if !agent
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || agent.is_empty()
    {
        return Err(ExecError::UnknownAgent(agent.to_owned()));
    }
    // A current-thread runtime starts no worker threads, and it is dropped
    // before exec.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExecError::Runtime)?;
    let client = AdminClient::new(admin_socket);
    let result = runtime.block_on(client.get::<AgentView>(&format!("/v1/agents/{agent}")));
    match result {
        Ok(view) => Ok(view),
        Err(AdminError::Status { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            Err(ExecError::UnknownAgent(agent.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}
