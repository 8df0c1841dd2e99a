//! Passthrough's direct way, the daemon's part (`--passthrough-relay
//! direct`). The kernel (agentguard-ebpf's `direct.rs`) lets an agent
//! connect straight to an address agentguard's resolver gave it for a
//! passthrough name, and checks the connection's first send is a
//! ClientHello for that name. The daemon:
//!
//! - opens the ways from its resolver's answers ([`Direct::bound`]): an
//!   address goes direct for an agent only while the one name it resolved
//!   to for that agent is a passthrough host (an address shared with a
//!   host the proxy intercepts goes through the proxy, which tells them
//!   apart by SNI); a policy reload closes every way;
//! - writes each connection's audit event from the kernel's report, as the
//!   proxy writes a relayed one's (relay `direct`), and closes a refused
//!   connection or one it cannot attribute ([`Direct::run`]);
//! - closes the open connections of a revoked agent, and all of them when
//!   it stops ([`Direct::close_revoked`], [`Direct::stop`]), through
//!   sock_diag, since it holds no descriptor of them;
//! - renews its lease on the way while it runs ([`Direct::start_lease`]):
//!   a daemon that dies without its clean stop leaves the ways it opened
//!   usable for a few seconds ([`crate::ebpf::LEASE`]), not until their
//!   DNS answers expire, and its open connections stall until a daemon
//!   starts again.
//!
//! None of it is on the proxy's path: a direct-way connection's bytes
//! never reach the daemon.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use agentguard_common::{DirectEvent, DirectSocket, direct_refusal, event_kind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ProxyContext, connection, decide::ConnPlan, refusal::ConnRefusal, relay::Path};
use crate::{
    dns::Bound,
    ebpf::{DirectMaps, LEASE_RENEWAL, monotonic_ns, socket_addrs, way_key},
    identity::original_destination,
    live::Live,
    netns::{Netns, NetnsListeners},
    policy::PolicySet,
    revoke::Revocations,
    sockdiag::{Destroyed, SockDiag, TcpSocketId},
};

/// Reports queued between the kernel's ring and the audit writer; the
/// ring's reader waits while it is full.
pub const REPORT_QUEUE: usize = 1024;

/// Why the kernel refused a direct-way connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KernelRefusal {
    #[error("the first send was not a whole TLS ClientHello up to its server name")]
    NotAHello,
    #[error("TLS ClientHello without SNI (server name)")]
    NoSni,
    #[error("the ClientHello names another host than the one the address was resolved for")]
    OtherName,
    #[error("the address's DNS answer expired (or the policy changed) before the ClientHello")]
    WayGone,
    #[error("no room to track the connection (the agent's share of kernel records is full)")]
    NoRoom,
    #[error("the kernel could not watch the connection's sends")]
    Unchecked,
    #[error("the agent was revoked")]
    Revoked,
    #[error("agentguard was not running, or its lease on the direct way had run out")]
    DaemonStopped,
    #[error("refused in the kernel (reason {0})")]
    Other(u32),
}

impl KernelRefusal {
    fn from_reason(reason: u32) -> Self {
        match reason {
            direct_refusal::NOT_A_HELLO => Self::NotAHello,
            direct_refusal::NO_SNI => Self::NoSni,
            direct_refusal::OTHER_NAME => Self::OtherName,
            direct_refusal::WAY_GONE => Self::WayGone,
            direct_refusal::NO_ROOM => Self::NoRoom,
            direct_refusal::UNCHECKED => Self::Unchecked,
            direct_refusal::REVOKED => Self::Revoked,
            direct_refusal::DAEMON_STOPPED => Self::DaemonStopped,
            other => Self::Other(other),
        }
    }

    /// The short code the audit record carries, as for the proxy's own
    /// refusals of the same kind.
    pub fn rule(self) -> &'static str {
        match self {
            Self::NotAHello | Self::NoSni | Self::OtherName | Self::WayGone => "protocol",
            Self::NoRoom => "connection-share-exceeded",
            Self::Unchecked | Self::DaemonStopped | Self::Other(_) => "direct-unchecked",
            Self::Revoked => "agent-revoked",
        }
    }
}

/// The daemon's part of the direct way.
pub struct Direct {
    maps: Arc<DirectMaps>,
    /// The namespaces agents run in, to close their connections there.
    netns: Arc<NetnsListeners>,
    /// The policy in force, read as ways open; set once it is built (no
    /// way opens before).
    live: std::sync::OnceLock<Arc<Live>>,
    own_netns: u64,
    /// sock_diag sockets by namespace cookie, opened on first use.
    diags: Mutex<HashMap<u64, Arc<SockDiag>>>,
    /// Held while ways open or close: opening under a policy and closing
    /// them all for the next never interleave.
    ways: Mutex<()>,
}

impl Direct {
    /// Fails where the kernel cannot close a connection by sock_diag
    /// (`CONFIG_INET_DIAG_DESTROY`, CAP_NET_ADMIN): revocation and stop
    /// could not cut a direct-way connection, so there must be none; and
    /// where the daemon's monotonic clock is not the kernel's
    /// ([`check_clock`]).
    pub fn new(maps: Arc<DirectMaps>, netns: Arc<NetnsListeners>) -> Result<Self, String> {
        check_clock()?;
        let own_netns = Netns::own().map_err(|e| e.to_string())?.cookie;
        let diag = SockDiag::open().map_err(|e| e.to_string())?;
        probe_destroy(&diag)?;
        Ok(Self {
            maps,
            netns,
            live: std::sync::OnceLock::new(),
            own_netns,
            diags: Mutex::new(HashMap::from([(own_netns, Arc::new(diag))])),
            ways: Mutex::new(()),
        })
    }

    /// Gives the direct way the policy in force.
    pub fn set_live(&self, live: Arc<Live>) {
        let _ = self.live.set(live);
    }

    /// An agent's resolver (port `agent_port`) bound a name to an address
    /// ([`Bound`]). Opens the way to the address on the ports the policy in
    /// force passes the name through on, or closes every way to it when it
    /// no longer stands for that one passthrough name alone. The policy is
    /// read here, not when the query came: a reload in between closes
    /// every way, and this must not open one after it under the old one.
    pub fn bound(&self, bound: &Bound<'_>, agent_port: u16) {
        let Bound {
            agent,
            name,
            ip,
            expires,
            ref names,
        } = *bound;
        let _ways = lock(&self.ways);
        let Some(live) = self.live.get() else {
            return;
        };
        let state = live.load();
        let ports = passthrough_ports(&state.policy, agent, name);
        let alone = names.len() == 1 && names[0] == name;
        if ports.is_empty() || !alone || !reachable_directly(ip) {
            self.maps
                .close_ways_to(agent_port, way_key(agent_port, ip, 0).ip);
            return;
        }
        let expires_ns = monotonic_ns()
            .saturating_add(expires.saturating_duration_since(Instant::now()).as_nanos() as u64);
        for port in ports {
            let key = way_key(agent_port, ip, port);
            let opened = self.maps.open_way(key, name, expires_ns).or_else(|_| {
                // Full: of ways whose answers expired, most likely.
                self.maps
                    .close_ways(|_, way| way.expires_ns <= monotonic_ns());
                self.maps.open_way(key, name, expires_ns)
            });
            if let Err(e) = opened {
                // The way stays shut: the agent's connects go through the
                // proxy, as without it.
                warn!(agent, name, %ip, error = %e, "direct way not opened");
            }
        }
    }

    /// Closes every way (the policy changed: names, ports and agents may
    /// all have). Agents' connects go through the proxy until their
    /// resolver answers again.
    pub fn close_ways(&self) {
        let _ways = lock(&self.ways);
        self.maps.close_ways(|_, _| true);
    }

    /// Starts the daemon's lease on the way, just before the kernel sends
    /// agents to this daemon, and renews it every [`LEASE_RENEWAL`] until
    /// [`Direct::stop`] ends it. Until then the kernel takes no way, even
    /// where a crashed daemon's configuration still has it on. A renewal
    /// that fails is said in the log: once the lease runs out, connects go
    /// to the proxy and open connections wait (fail closed).
    pub fn start_lease(self: &Arc<Self>) {
        self.renew_lease();
        let direct = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEWAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                direct.renew_lease();
            }
        });
    }

    fn renew_lease(&self) {
        if let Err(e) = self.maps.renew_lease() {
            warn!(error = %e, "could not renew the direct way's lease: once it runs out, passthrough connections go through the proxy");
        }
    }

    /// The daemon stops (the kernel already refuses agents' connects):
    /// every way closes, every open connection is aborted (its reset goes
    /// out while the lease holds), then the lease is given up. Returns how
    /// many connections were aborted.
    pub fn stop(&self) -> usize {
        self.close_ways();
        let closed = self.close_all();
        if let Err(e) = self.maps.end_lease() {
            warn!(error = %e, "could not give up the direct way's lease: it runs out within seconds");
        }
        closed
    }

    /// Records the kernel's reports until `reports` ends.
    pub async fn run(
        self: Arc<Self>,
        ctx: Arc<ProxyContext>,
        mut reports: mpsc::Receiver<DirectEvent>,
    ) {
        while let Some(report) = reports.recv().await {
            self.record(&ctx, &report).await;
        }
    }

    async fn record(self: &Arc<Self>, ctx: &ProxyContext, report: &DirectEvent) {
        // Decided either way: its later sends need no program.
        self.maps.release(report.cookie);
        let state = ctx.live.load();
        let identity = state.agents.resolve(&report.record).ok();
        let dst = original_destination(&report.record);
        let (local, _) = socket_addrs(&report.socket);
        let len = (report.name_len as usize).min(report.name.len());
        let name = String::from_utf8_lossy(&report.name[..len]).into_owned();
        // Decided in the kernel on the ways as they were; the policy in
        // force must still pass it (a reload may have come in between).
        let still_passed = |agent: &str, name: &str| {
            state.policy.is_passthrough(agent, name, dst.port())
                && ctx.resolvers.resolved_to(agent, name, dst.ip())
        };
        let plan = match (report.kind, &identity) {
            (event_kind::DIRECT_OPENED, Some(identity))
                if !still_passed(&identity.agent, &name) =>
            {
                ConnPlan::Refuse(ConnRefusal::Direct {
                    name,
                    why: KernelRefusal::WayGone,
                })
            }
            (event_kind::DIRECT_OPENED, Some(identity))
                if ctx.revocations.revoked(&identity.agent).is_none() =>
            {
                ConnPlan::Passthrough {
                    reason: format!(
                        "{name}:{} is a passthrough host in agent {:?}'s policy",
                        dst.port(),
                        identity.agent
                    ),
                    sni: name,
                }
            }
            (event_kind::DIRECT_OPENED, Some(_)) => ConnPlan::Refuse(ConnRefusal::Direct {
                name,
                why: KernelRefusal::Revoked,
            }),
            (event_kind::DIRECT_OPENED, None) => ConnPlan::Refuse(ConnRefusal::Direct {
                name,
                why: KernelRefusal::Unchecked,
            }),
            (_, _) => ConnPlan::Refuse(ConnRefusal::Direct {
                name,
                why: KernelRefusal::from_reason(report.reason),
            }),
        };
        let opened = matches!(plan, ConnPlan::Passthrough { .. });
        if !opened && report.socket.local_port != 0 {
            // Refused in the kernel (no byte of it went), or opened for an
            // agent the daemon no longer knows, no longer passes through
            // or has revoked: closed. (A report without the socket's
            // addresses is of one the kernel refused before it was
            // watched; the egress check holds its data back.)
            let (this, cookie, socket) = (self.clone(), report.cookie, report.socket);
            let _ = tokio::task::spawn_blocking(move || this.close(cookie, &socket)).await;
        }
        connection::record_direct(
            ctx,
            local,
            identity.as_ref(),
            dst,
            &plan,
            opened.then_some(Path::Direct),
            &state.policy.version,
        )
        .await;
    }

    /// Closes the open direct-way connections of every revoked agent;
    /// returns how many. Called once the kernel marks them revoked, so no
    /// new one opens.
    pub fn close_revoked(&self, live: &Live, revocations: &Revocations) -> usize {
        let state = live.load();
        // A connection whose cgroup no agent owns any more (a sub-cgroup
        // removed since) can no longer be told apart: it goes too.
        self.close_where(|cgroup_id| {
            state
                .agents
                .locate(cgroup_id)
                .is_none_or(|(agent, _)| revocations.revoked(&agent).is_some())
        })
    }

    /// Closes every open direct-way connection (the daemon stops: as the
    /// relayed ones close with it).
    fn close_all(&self) -> usize {
        self.close_where(|_| true)
    }

    fn close_where(&self, doomed: impl Fn(u64) -> bool) -> usize {
        self.maps
            .open_connections()
            .into_iter()
            .filter(|(_, socket)| doomed(socket.cgroup_id))
            .filter(|(cookie, socket)| self.close(*cookie, socket))
            .count()
    }

    /// Aborts one connection (the agent gets ECONNABORTED, the upstream a
    /// reset). `false` if it was gone already or could not be closed
    /// (said in the log).
    fn close(&self, cookie: u64, socket: &DirectSocket) -> bool {
        let (local, remote) = socket_addrs(socket);
        let Some(diag) = self.diag(socket.netns) else {
            warn!(%local, %remote, "cannot close a direct-way connection: its network namespace is not served any more");
            return false;
        };
        match diag.destroy_tcp(&TcpSocketId {
            local,
            remote,
            cookie,
        }) {
            Ok(Destroyed::Closed) => {
                info!(%local, %remote, "direct-way connection closed");
                true
            }
            Ok(Destroyed::Gone) => false,
            Err(e) => {
                warn!(%local, %remote, error = %e, "cannot close a direct-way connection");
                false
            }
        }
    }

    /// The sock_diag socket of the namespace with cookie `netns`.
    fn diag(&self, netns: u64) -> Option<Arc<SockDiag>> {
        let mut diags = self.diags.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(diag) = diags.get(&netns) {
            return Some(diag.clone());
        }
        let opened = if netns == self.own_netns {
            SockDiag::open().map_err(|e| e.to_string())
        } else {
            let ns = self.netns.by_cookie(netns)?;
            ns.enter(|| SockDiag::open().map_err(std::io::Error::other))
                .map_err(|e| e.to_string())
        };
        match opened {
            Ok(diag) => {
                let diag = Arc::new(diag);
                diags.insert(netns, diag.clone());
                Some(diag)
            }
            Err(e) => {
                warn!(error = %e, "cannot open sock_diag to close direct-way connections");
                None
            }
        }
    }
}

/// Whether a way may lead to `ip`: not to the unspecified address (a
/// connect to it reaches this host), nor to link-local, multicast or
/// broadcast addresses, which a name's answer may hold but which no
/// upstream needs. Those go through the proxy, as without the way.
/// (Loopback answers get ways, as the relay dials them too; the kernel
/// never lets a way lead to the proxy's own listener.)
fn reachable_directly(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// The daemon's `CLOCK_MONOTONIC` must be the kernel's
/// (`bpf_ktime_get_ns`, which the ways' expiries and the lease are compared
/// with): in a time namespace with an offset it is not, and a lease would
/// outlive a crash by the offset, or never hold.
fn check_clock() -> Result<(), String> {
    let offsets = match std::fs::read_to_string("/proc/self/timens_offsets") {
        Ok(text) => text,
        // A kernel without time namespaces: one clock.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read /proc/self/timens_offsets: {e}")),
    };
    match monotonic_offset(&offsets) {
        Some((0, 0)) => Ok(()),
        Some((secs, nanos)) => Err(format!(
            "agentguard runs in a time namespace whose monotonic clock is offset ({secs} s {nanos} ns) from the kernel's"
        )),
        None => Err(format!(
            "cannot read the monotonic clock's offset from /proc/self/timens_offsets: {offsets:?}"
        )),
    }
}

/// The `monotonic` line of `/proc/self/timens_offsets` (seconds,
/// nanoseconds; the kernel also names the clock by its number, 1).
fn monotonic_offset(offsets: &str) -> Option<(i64, i64)> {
    offsets.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let clock = fields.next()?;
        if clock != "monotonic" && clock != "1" {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// Closes one end of a loopback connection of its own through `diag`:
/// whether the kernel can close connections for revocation and stop.
fn probe_destroy(diag: &SockDiag) -> Result<(), String> {
    let probe = || -> std::io::Result<Destroyed> {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let _server = listener.accept()?;
        let id = TcpSocketId {
            local: client.local_addr()?,
            remote: client.peer_addr()?,
            cookie: crate::sockdiag::socket_cookie(std::os::fd::AsFd::as_fd(&client))?,
        };
        diag.destroy_tcp(&id).map_err(std::io::Error::other)
    };
    match probe() {
        Ok(Destroyed::Closed) => Ok(()),
        Ok(Destroyed::Gone) => Err(
            "the kernel did not close a test connection by sock_diag: revocation and stop could not cut a direct-way connection"
                .to_owned(),
        ),
        Err(e) => Err(format!(
            "the kernel cannot close connections by sock_diag ({e}): revocation and stop could not cut a direct-way connection"
        )),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ports `agent`'s policy passes `name` through on; `[0]` for any.
fn passthrough_ports(policy: &PolicySet, agent: &str, name: &str) -> Vec<u16> {
    let Some(agent) = policy.agent(agent) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for rule in agent.passthrough.iter().filter(|r| r.host.matches(name)) {
        match &rule.ports {
            None => return vec![0],
            Some(listed) => ports.extend_from_slice(listed),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_offset_is_read_from_timens_offsets() {
        let none = "monotonic           0         0\nboottime            0         0\n";
        assert_eq!(monotonic_offset(none), Some((0, 0)));
        let shifted = "boottime 0 0\nmonotonic -3600 500\n";
        assert_eq!(monotonic_offset(shifted), Some((-3600, 500)));
        assert_eq!(monotonic_offset("1 7 0\n"), Some((7, 0)));
        assert_eq!(monotonic_offset("boottime 0 0\n"), None);
    }
}
