//! The kernel's records of connections waiting for the proxy
//! (`PEER_RECORDS`): taken by the proxy as it accepts, cleared at start,
//! and forgotten when they have waited too long.
//!
//! The kernel's programs write and remove entries too (`sockops`: a newer
//! connection from the same address replaces an entry; a socket that goes
//! before the proxy could have it removes its own), and each removal gives
//! the entry back to its agent's share, counted by whoever removed it. So
//! every removal here takes the entry out whole and returns what it held
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`): a lookup followed by a removal could
//! remove an entry the kernel put there in between, count the old one
//! twice and the new one never, and shift two agents' shares for good
//! (they are pinned, and outlive the daemon).

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Arc,
};

use agentguard_common::{ConnRecord, MAX_TRACKED_CONNECTIONS, PeerKey, v4_mapped};
use aya::maps::{HashMap, Map, MapData};
use nix::libc;

use super::{EbpfError, maps::Shares};

const NAME: &str = "PEER_RECORDS";

/// The kernel's per-connection records, shared with the proxy's tasks.
pub struct PeerRecords {
    /// The map's descriptor, for the element commands aya does not offer
    /// on hash maps.
    fd: OwnedFd,
    /// The same map as aya reads it, for walking its entries.
    walk: HashMap<MapData, PeerKey, ConnRecord>,
    /// Each record removed here goes back to its agent's share.
    shares: Arc<Shares>,
}

impl PeerRecords {
    pub(super) fn new(map: Map, shares: Arc<Shares>) -> Result<Self, EbpfError> {
        let Map::HashMap(data) = &map else {
            return Err(EbpfError::MapHandle {
                name: NAME,
                source: io::Error::other("not a hash map"),
            });
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| EbpfError::MapHandle { name: NAME, source })?;
        let walk =
            HashMap::try_from(map).map_err(|source| EbpfError::Map { name: NAME, source })?;
        Ok(Self { fd, walk, shares })
    }

    /// Takes the kernel's record for the connection whose agent-side address
    /// is `peer` (the peer of the accepted socket) in the network namespace
    /// with cookie `netns` (the listener's), removing it so that the map
    /// holds only connections not yet accepted. None if there is none: the
    /// kernel removed it as the agent's socket went (the connection is
    /// dead), or it was forgotten ([`Self::expire`]), or the connection is
    /// not an agent's.
    pub fn take(&self, netns: u64, peer: SocketAddr) -> Option<ConnRecord> {
        let record = self.take_entry(&peer_key(netns, peer))?;
        self.shares.release(record.cgroup_id, 1, 0);
        Some(record)
    }

    /// Forgets every record: for a daemon starting, before the kernel
    /// sends it connections. Any record then left belongs to a connection
    /// an earlier daemon never accepted, now gone, and must not be claimed
    /// by whoever binds its address next. Returns how many were removed.
    pub fn clear(&self) -> usize {
        let keys: Vec<PeerKey> = self.keys();
        let mut removed = 0;
        for key in keys {
            if let Some(record) = self.take_entry(&key) {
                self.shares.release(record.cgroup_id, 1, 0);
                removed += 1;
            }
        }
        removed
    }

    /// Forgets the records that have waited for the proxy since before
    /// `cutoff_s` (seconds of the boot-time clock, as the kernel stamps
    /// them), each given back to its agent's share: their connections were
    /// never accepted (a handshake the proxy's side never completed) or
    /// are accepted so late that refusing them is the safe answer. Returns
    /// the records forgotten, with their keys.
    ///
    /// An entry the kernel replaced between the walk and the removal (a
    /// newer connection from the same address: another cookie) is put
    /// back; should the kernel have written yet another meanwhile, the one
    /// taken is counted as forgotten, and its connection refused.
    pub fn expire(&self, cutoff_s: u32) -> Vec<(PeerKey, ConnRecord)> {
        let stale: Vec<(PeerKey, u64)> = self
            .keys()
            .into_iter()
            .filter_map(|key| Some((key, self.walk.get(&key, 0).ok()?)))
            .filter(|(_, record)| record.waiting_since_s < cutoff_s)
            .map(|(key, record)| (key, record.cookie))
            .collect();
        let mut forgotten = Vec::new();
        for (key, cookie) in stale {
            let Some(record) = self.take_entry(&key) else {
                // The proxy took it, or the kernel removed it, meanwhile.
                continue;
            };
            if record.cookie != cookie && self.put_back(&key, &record).is_ok() {
                continue;
            }
            self.shares.release(record.cgroup_id, 1, 0);
            forgotten.push((key, record));
        }
        forgotten
    }

    /// Every key in the map. A walk whose current key is removed under it
    /// starts over from the first (the kernel's get-next-key), so a table
    /// that churns could keep it going: it stops at twice the table's
    /// keys (a record it misses is found by the next walk).
    fn keys(&self) -> Vec<PeerKey> {
        self.walk
            .keys()
            .take(walk_limit())
            .filter_map(Result::ok)
            .collect()
    }

    /// Removes `key`'s entry and returns it, in one step; None if there
    /// was none.
    fn take_entry(&self, key: &PeerKey) -> Option<ConnRecord> {
        let mut record = std::mem::MaybeUninit::<ConnRecord>::uninit();
        let done = self.element_command(
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            key,
            record.as_mut_ptr() as u64,
            0,
        );
        match done {
            // SAFETY: the kernel wrote the whole value (the map's value
            // size is ConnRecord's, checked when aya opened it).
            Ok(()) => Some(unsafe { record.assume_init() }),
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(error = %e, "could not take a kernel connection record");
                }
                None
            }
        }
    }

    /// Writes `record` back under `key` unless an entry is there already.
    fn put_back(&self, key: &PeerKey, record: &ConnRecord) -> io::Result<()> {
        self.element_command(
            BPF_MAP_UPDATE_ELEM,
            key,
            std::ptr::from_ref(record) as u64,
            BPF_NOEXIST,
        )
    }

    /// One of `bpf(2)`'s map element commands on this map.
    fn element_command(
        &self,
        cmd: libc::c_long,
        key: &PeerKey,
        value: u64,
        flags: u64,
    ) -> io::Result<()> {
        let attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value,
            flags,
        };
        // SAFETY: `attr` is the layout the kernel reads for these commands,
        // its size given; `key` and `value` point at a PeerKey and a
        // ConnRecord, the map's key and value types, valid for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_ref(&attr),
                std::mem::size_of::<MapElemAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Entries a walk reads at most (see [`PeerRecords::keys`]).
fn walk_limit() -> usize {
    2 * MAX_TRACKED_CONNECTIONS as usize
}

/// `enum bpf_cmd` and the update flag (include/uapi/linux/bpf.h). aya 0.14
/// keeps its lookup-and-delete for queues and stacks; hash maps have it
/// since Linux 5.14 (agentguard needs 6.7).
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_NOEXIST: u64 = 1;

/// The part of `union bpf_attr` that the map element commands read.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The kernel's key for the agent socket whose address is `peer` in the
/// network namespace with cookie `netns`: the peer of a socket the proxy
/// accepted there, as sockops wrote it.
pub fn peer_key(netns: u64, peer: SocketAddr) -> PeerKey {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    PeerKey::new(netns, ip, peer.port())
}

/// The agent socket's address a key names (IPv4 unmapped): what
/// [`peer_key`] was given.
pub fn peer_addr(key: &PeerKey) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::from(key.ip).to_canonical(), key.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_address_survives_its_key() {
        for peer in ["127.0.0.2:40000", "[::1]:40001", "[2001:db8::7]:9"] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(peer_addr(&peer_key(7, peer)), peer);
        }
    }
}
