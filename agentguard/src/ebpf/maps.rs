//! Reading and writing the kernel programs' maps: the redirect target, each
//! agent's resolver port and Unix-socket allow-list, the connection records
//! the proxy takes, and the counters `status` and `/metrics` show.

use std::sync::{Arc, Mutex};

use agentguard_common::{
    AgentReleased, AgentUsage, ConnRecord, ListenKey, PeerKey, ProxyConfig, STAT_EVENTS_LOST,
    TaskLayout, UnixKey,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
};

use super::{EbpfError, map_failure::MapFailure as _, peer_records::PeerRecords, pins::PinDir};

/// The maps the daemon writes or reads while it runs.
pub struct Maps {
    config: Array<MapData, ProxyConfig>,
    agent_dns: HashMap<MapData, u64, u16>,
    unix_allow: HashMap<MapData, UnixKey, u8>,
    stats: PerCpuArray<MapData, u64>,
    task_layout: Array<MapData, TaskLayout>,
    listen_allow: HashMap<MapData, ListenKey, u8>,
    revoked: HashMap<MapData, u64, u8>,
    usage: HashMap<MapData, u64, AgentUsage>,
}

/// What the daemon gives back of each agent's share of the kernel's
/// shared tables (`AGENT_RELEASED`): records the proxy took, event bytes
/// the reader read. The daemon is that map's one writer; this mutex makes
/// its read-modify-writes whole.
pub struct Shares {
    released: Mutex<HashMap<MapData, u64, AgentReleased>>,
}

impl Shares {
    /// Adds to what agent `cgroup_id` got back. A failed write (the map
    /// full) leaves the agent with less room, never more.
    pub fn release(&self, cgroup_id: u64, records: u64, event_bytes: u64) {
        let mut map = self.released.lock().unwrap_or_else(|p| p.into_inner());
        let mut released = map.get(&cgroup_id, 0).unwrap_or_default();
        released.records_taken += records;
        released.event_bytes_read += event_bytes;
        let _ = map.insert(cgroup_id, released, 0);
    }

    fn get(&self, cgroup_id: u64) -> AgentReleased {
        self.released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cgroup_id, 0)
            .unwrap_or_default()
    }
}

/// One agent's use of the kernel's shared tables, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentKernelUsage {
    /// Its connections whose records wait for the proxy.
    pub records_waiting: u64,
    /// Its connects refused because that many were waiting.
    pub records_refused: u64,
    /// Its events the kernel could not queue (its share of the ring full).
    pub events_lost: u64,
}

impl Maps {
    /// Takes the maps the daemon uses out of the loaded object, with the
    /// proxy's records and the event ring buffer handed out separately.
    pub fn take(
        ebpf: &mut Ebpf,
    ) -> Result<(Self, PeerRecords, RingBuf<MapData>, Arc<Shares>), EbpfError> {
        let config = EbpfError::take_map(ebpf, "PROXY_CONFIG")?;
        // Untyped: `PeerRecords` opens it as the hash map it is.
        let peers = ebpf
            .take_map("PEER_RECORDS")
            .ok_or(EbpfError::MissingMap("PEER_RECORDS"))?;
        let agent_dns = EbpfError::take_map(ebpf, "AGENT_DNS")?;
        let unix_allow = EbpfError::take_map(ebpf, "UNIX_ALLOW")?;
        let stats = EbpfError::take_map(ebpf, "EVENT_STATS")?;
        let events = EbpfError::take_map(ebpf, "KERNEL_EVENTS")?;
        let task_layout = EbpfError::take_map(ebpf, "TASK_LAYOUT")?;
        let listen_allow = EbpfError::take_map(ebpf, "LISTEN_ALLOW")?;
        let revoked = EbpfError::take_map(ebpf, "REVOKED")?;
        let usage = EbpfError::take_map(ebpf, "AGENT_USAGE")?;
        let shares = Arc::new(Shares {
            released: Mutex::new(EbpfError::take_map(ebpf, "AGENT_RELEASED")?),
        });
        Ok((
            Self {
                config,
                agent_dns,
                unix_allow,
                stats,
                task_layout,
                listen_allow,
                revoked,
                usage,
            },
            PeerRecords::new(peers, shares.clone())?,
            events,
            shares,
        ))
    }

    /// Tells the process-access program where to read a task's cgroup.
    pub fn set_task_layout(&mut self, layout: TaskLayout) -> Result<(), EbpfError> {
        self.task_layout
            .set(0, layout, 0)
            .map_err(EbpfError::of_map("TASK_LAYOUT"))
    }

    /// Tells the kernel which resolver port serves the agent in `cgroup_id`.
    pub fn set_agent_dns(&mut self, cgroup_id: u64, port: u16) -> Result<(), EbpfError> {
        self.agent_dns
            .insert(cgroup_id, port, 0)
            .map_err(EbpfError::of_map("AGENT_DNS"))
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
                .map_err(EbpfError::of_map("UNIX_ALLOW"))?;
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
                .map_err(EbpfError::of_map("UNIX_ALLOW"))?;
        }
        Ok(())
    }

    /// Makes the kernel's listen allow-list exactly `wanted`, stale entries
    /// first (as [`Maps::set_unix_allow`] does).
    pub fn set_listen_allow(&mut self, wanted: &[ListenKey]) -> Result<(), EbpfError> {
        let capacity = agentguard_common::MAX_LISTEN_ALLOW_ENTRIES;
        if wanted.len() > capacity as usize {
            return Err(EbpfError::ListenAllowFull {
                wanted: wanted.len(),
                capacity,
            });
        }
        let stale: Vec<ListenKey> = self
            .listen_allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            self.listen_allow
                .remove(&key)
                .map_err(EbpfError::of_map("LISTEN_ALLOW"))?;
        }
        for key in wanted {
            self.listen_allow
                .insert(key, 1, 0)
                .map_err(EbpfError::of_map("LISTEN_ALLOW"))?;
        }
        Ok(())
    }

    /// Marks (or clears) cgroup `cgroup_id` as revoked: the kernel refuses
    /// its connects, datagrams and binds from the next call on.
    pub fn set_revoked(&mut self, cgroup_id: u64, revoked: bool) -> Result<(), EbpfError> {
        if revoked {
            self.revoked
                .insert(cgroup_id, 1, 0)
                .map_err(EbpfError::of_map("REVOKED"))
        } else {
            match self.revoked.remove(&cgroup_id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(EbpfError::of_map("REVOKED")(e)),
            }
        }
    }

    /// The revoked cgroup ids.
    pub fn revoked(&self) -> Vec<u64> {
        self.revoked.keys().filter_map(Result::ok).collect()
    }

    /// Ring-buffer records the kernel could not queue (buffer full), summed
    /// over CPUs. The refusals themselves still happened.
    pub fn events_lost(&self) -> u64 {
        self.stats
            .get(&STAT_EVENTS_LOST, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// What agent `cgroup_id` uses of the shared tables now.
    pub fn agent_usage(&self, cgroup_id: u64, shares: &Shares) -> AgentKernelUsage {
        let usage = self.usage.get(&cgroup_id, 0).unwrap_or_default();
        let released = shares.get(cgroup_id);
        AgentKernelUsage {
            records_waiting: usage
                .records_added
                .saturating_sub(usage.records_dropped)
                .saturating_sub(released.records_taken),
            records_refused: usage.records_refused,
            events_lost: usage.events_lost,
        }
    }

    /// Points the kernel's redirect at the proxy listener. A port of 0 makes
    /// the kernel refuse every guarded connect (used at shutdown).
    pub fn configure(
        &mut self,
        port: u16,
        daemon_tgid: u32,
        flags: u32,
        limits: &super::KernelOptions,
    ) -> Result<(), EbpfError> {
        let cfg = ProxyConfig {
            ip4: [127, 0, 0, 1],
            ip6: std::net::Ipv6Addr::LOCALHOST.octets(),
            port,
            _pad: 0,
            daemon_tgid,
            flags,
            records_per_agent: limits.records_per_agent,
            event_bytes_per_agent: limits.event_bytes_per_agent,
        };
        self.config
            .set(0, cfg, 0)
            .map_err(EbpfError::of_map("PROXY_CONFIG"))
    }
}

/// (name, entries, capacity) of the maps that fill with connections: the
/// records waiting for the proxy. (Connect-time records and original
/// destinations live in socket storage, which is not a shared table.)
/// Counting walks the keys: a few ms at 64k entries, fine per scrape.
pub fn occupancy(pins: &PinDir) -> Vec<(&'static str, u64, u64)> {
    let capacity = u64::from(agentguard_common::MAX_TRACKED_CONNECTIONS);
    // PEER_RECORDS belongs to the proxy: read it from its pin.
    let name = "PEER_RECORDS";
    let count = MapData::from_pin(pins.map(name))
        .ok()
        .and_then(|data| HashMap::<_, PeerKey, ConnRecord>::try_from(Map::HashMap(data)).ok())
        .map(|m| m.keys().filter(Result::is_ok).count())
        .unwrap_or(0);
    vec![(name, count as u64, capacity)]
}
