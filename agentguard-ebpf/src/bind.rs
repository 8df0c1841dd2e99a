//! cgroup/bind4 and cgroup/bind6: an agent listens only where its policy
//! says (`listen`), so it cannot squat a port that others dial (the
//! daemon's JWKS during a restart, a local collector, a tool server's
//! upstream). A bind to port 0 (the kernel picks a free ephemeral port,
//! as clients do before connecting) is always allowed: nobody dials a port
//! no one knew. The allow-list is keyed by the caller's exact cgroup, like
//! the Unix-socket one.

use agentguard_common::{ListenKey, event_kind};
use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, programs::SockAddrContext};

use crate::{
    ALLOW, DENY,
    connect::{facts4, facts6},
    events::{SocketFacts, emit},
    maps::LISTEN_ALLOW,
    revoke,
};

pub fn check4(ctx: &SockAddrContext) -> i32 {
    check(&facts4(ctx.sock_addr))
}

pub fn check6(ctx: &SockAddrContext) -> i32 {
    check(&facts6(ctx.sock_addr))
}

fn check(facts: &SocketFacts) -> i32 {
    if revoke::check(facts).is_err() {
        return DENY;
    }
    if facts.dst_port == 0 {
        return ALLOW;
    }
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let exact = ListenKey::exact(cgroup_id, facts.dst_ip, facts.dst_port);
    let any = ListenKey::any_address(cgroup_id, facts.dst_port);
    // SAFETY: plain reads of u8 values; the map is only updated whole.
    let listed = unsafe { LISTEN_ALLOW.get(exact).is_some() || LISTEN_ALLOW.get(any).is_some() };
    if listed {
        return ALLOW;
    }
    emit(event_kind::BIND_DENIED, facts);
    DENY
}
