//! Passthrough's direct way, the kernel maps' side (`--passthrough-relay
//! direct`; agentguard-ebpf's `direct.rs` has the programs): the ways the
//! daemon opens from its resolver's answers (`DIRECT_WAYS`), the sockets
//! waiting for their first send under the message program
//! (`DIRECT_SOCKETS`), and the open connections the kernel tracks
//! (`DIRECT_OPEN`), which the daemon closes on revocation and at stop, and
//! the daemon's lease on the way (`DIRECT_LEASE`), which it renews while it
//! runs.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use agentguard_common::{
    AF_INET, DIRECT_NAME_MAX, DirectKey, DirectSocket, DirectWay, is_v4_mapped,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, SockHash},
    programs::SkMsg,
};
use thiserror::Error;

use super::{PassthroughRelay, map_failure::MapFailure};

const PROGRAM: &str = "agentguard_direct_send";
const WAYS_MAP: &str = "DIRECT_WAYS";
const SOCKETS_MAP: &str = "DIRECT_SOCKETS";
const OPEN_MAP: &str = "DIRECT_OPEN";
const LEASE_MAP: &str = "DIRECT_LEASE";

/// How far ahead the daemon's lease on the direct way runs: how long the
/// kernel goes on taking ways after the daemon died without its clean stop.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the running daemon renews it: a renewal late by less than
/// `LEASE - LEASE_RENEWAL` (a busy runtime) costs nothing.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum DirectError {
    #[error("passthrough goes through the proxy (--passthrough-relay is not `direct`)")]
    Off,
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {PROGRAM} is missing from the object")]
    MissingProgram,
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("the name {0:?} is longer than a direct way holds")]
    NameTooLong(String),
}

/// The direct way's maps, with the message program attached.
pub struct DirectMaps {
    /// (agent, address, port) → name and expiry; written here only.
    ways: Mutex<HashMap<MapData, DirectKey, DirectWay>>,
    /// Sockets waiting for their first send; only removed here.
    waiting: Mutex<SockHash<MapData, u64>>,
    /// Open connections by socket cookie; only read here.
    open: Mutex<HashMap<MapData, u64, DirectSocket>>,
    /// Until when the daemon vouches for the way ([`LEASE`]).
    lease: Mutex<Lease>,
}

struct Lease {
    until: Array<MapData, u64>,
    /// Given up for good (the daemon stops): a renewal racing the stop
    /// must not take it back.
    ended: bool,
}

impl MapFailure for DirectError {
    fn missing(name: &'static str) -> Self {
        Self::MissingMap(name)
    }

    fn failed(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map { name, source }
    }
}

impl DirectMaps {
    /// With `relay` [`PassthroughRelay::Direct`]: takes the maps out of
    /// `ebpf`, forgets the ways an earlier daemon opened (its resolver's
    /// answers are not this one's), and attaches the message program to
    /// `DIRECT_SOCKETS` before any socket can go there (the kernel only
    /// takes the direct way once the caller sets the config flag).
    pub(super) fn attach(ebpf: &mut Ebpf, relay: PassthroughRelay) -> Result<Self, DirectError> {
        if relay != PassthroughRelay::Direct {
            return Err(DirectError::Off);
        }
        let mut ways: HashMap<MapData, DirectKey, DirectWay> =
            DirectError::take_map(ebpf, WAYS_MAP)?;
        let waiting: SockHash<MapData, u64> = DirectError::take_map(ebpf, SOCKETS_MAP)?;
        let open: HashMap<MapData, u64, DirectSocket> = DirectError::take_map(ebpf, OPEN_MAP)?;
        let lease: Array<MapData, u64> = DirectError::take_map(ebpf, LEASE_MAP)?;
        let program: &mut SkMsg = ebpf
            .program_mut(PROGRAM)
            .ok_or(DirectError::MissingProgram)?
            .try_into()?;
        program.load()?;
        program.attach(waiting.fd())?;
        let stale: Vec<DirectKey> = ways.keys().filter_map(Result::ok).collect();
        for key in stale {
            ways.remove(&key).map_err(DirectError::of_map(WAYS_MAP))?;
        }
        // No lease yet (a new map holds zero): until the daemon starts it,
        // just before it sends agents to its proxy, no way is taken, even
        // where an earlier daemon's configuration in the pinned map still
        // has the way on (a crash).
        Ok(Self {
            ways: Mutex::new(ways),
            waiting: Mutex::new(waiting),
            open: Mutex::new(open),
            lease: Mutex::new(Lease {
                until: lease,
                ended: false,
            }),
        })
    }

    /// Vouches for the way for [`LEASE`] from now; the running daemon calls
    /// it every [`LEASE_RENEWAL`]. Does nothing once
    /// [`DirectMaps::end_lease`] ran.
    pub fn renew_lease(&self) -> Result<(), DirectError> {
        let mut lease = lock(&self.lease);
        if lease.ended {
            return Ok(());
        }
        let until = monotonic_ns().saturating_add(LEASE.as_nanos() as u64);
        lease
            .until
            .set(0, until, 0)
            .map_err(DirectError::of_map(LEASE_MAP))
    }

    /// Gives the lease up for good (the daemon stops): no connect takes a
    /// way, no connection opens, from now on.
    pub fn end_lease(&self) -> Result<(), DirectError> {
        let mut lease = lock(&self.lease);
        lease.ended = true;
        lease
            .until
            .set(0, 0, 0)
            .map_err(DirectError::of_map(LEASE_MAP))
    }

    /// Opens (or renews) the way to `key` for `name` until `expires_ns`
    /// (`CLOCK_MONOTONIC`). Fails when the map is full; connects to the
    /// address then go to the proxy.
    pub fn open_way(&self, key: DirectKey, name: &str, expires_ns: u64) -> Result<(), DirectError> {
        let bytes = name.as_bytes();
        if bytes.len() > DIRECT_NAME_MAX {
            return Err(DirectError::NameTooLong(name.to_owned()));
        }
        let mut way = DirectWay {
            expires_ns,
            name_len: bytes.len() as u32,
            _pad: 0,
            name: [0; DIRECT_NAME_MAX],
        };
        way.name[..bytes.len()].copy_from_slice(bytes);
        lock(&self.ways)
            .insert(key, way, 0)
            .map_err(DirectError::of_map(WAYS_MAP))
    }

    /// Closes every way to `ip` for the agent behind `agent_port` (any
    /// port): connects to it go to the proxy from now on.
    pub fn close_ways_to(&self, agent_port: u16, ip: [u8; 16]) {
        self.close_ways(|k, _| k.agent_port == agent_port && k.ip == ip);
    }

    /// Closes every way `doomed` picks (the daemon's policy changed, the
    /// ways expired).
    pub fn close_ways(&self, doomed: impl Fn(&DirectKey, &DirectWay) -> bool) {
        let mut ways = lock(&self.ways);
        let keys: Vec<DirectKey> = ways
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, w)| doomed(k, w))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let _ = ways.remove(&key);
        }
    }

    /// Takes a socket out from under the message program once its first
    /// send is decided: its later sends pay for no program. Missing is
    /// fine (it closed).
    pub fn release(&self, cookie: u64) {
        let _ = lock(&self.waiting).remove(&cookie);
    }

    /// The open direct-way connections, by socket cookie.
    pub fn open_connections(&self) -> Vec<(u64, DirectSocket)> {
        lock(&self.open).iter().filter_map(Result::ok).collect()
    }
}

/// The key for a way to `ip` (any form) on `port` (0: any).
pub fn way_key(agent_port: u16, ip: IpAddr, port: u16) -> DirectKey {
    let ip = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    DirectKey {
        agent_port,
        dst_port: port,
        _pad: 0,
        ip,
    }
}

/// The socket's local and remote address in its own family's form: what
/// sock_diag finds it by.
pub fn socket_addrs(socket: &DirectSocket) -> (SocketAddr, SocketAddr) {
    let addr = |ip: [u8; 16], port: u16| {
        let v6 = Ipv6Addr::from(ip);
        match (socket.family, is_v4_mapped(&ip)) {
            (AF_INET, true) => SocketAddr::new(
                IpAddr::V4(
                    v6.to_ipv4_mapped()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                ),
                port,
            ),
            _ => SocketAddr::new(IpAddr::V6(v6), port),
        }
    };
    (
        addr(socket.local_ip, socket.local_port),
        addr(socket.remote_ip, socket.remote_port),
    )
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the kernel's `bpf_ktime_get_ns`,
/// which the ways' expiries and the lease are compared with.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
    now.unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentguard_common::AF_INET6;

    #[test]
    fn keys_hold_addresses_v4_mapped() {
        let v4 = way_key(5300, "127.0.0.7".parse().unwrap(), 443);
        let mapped = way_key(5300, "::ffff:127.0.0.7".parse().unwrap(), 443);
        assert_eq!(v4, mapped);
        assert_eq!(&v4.ip[10..], &[0xff, 0xff, 127, 0, 0, 7]);
    }

    #[test]
    fn sockets_are_named_in_their_own_family() {
        let mut socket = DirectSocket {
            netns: 1,
            cgroup_id: 2,
            local_ip: way_key(0, "127.0.0.1".parse().unwrap(), 0).ip,
            remote_ip: way_key(0, "127.0.0.7".parse().unwrap(), 0).ip,
            local_port: 40000,
            remote_port: 443,
            family: AF_INET,
            _pad: 0,
        };
        assert_eq!(
            socket_addrs(&socket),
            (
                "127.0.0.1:40000".parse().unwrap(),
                "127.0.0.7:443".parse().unwrap()
            )
        );
        // A v6 socket talking IPv4 keeps the mapped form.
        socket.family = AF_INET6;
        assert_eq!(
            socket_addrs(&socket).1,
            "[::ffff:127.0.0.7]:443".parse::<SocketAddr>().unwrap()
        );
    }
}
