//! agentguard's kernel programs: every socket an agent's cgroup creates is
//! redirected (TCP to the proxy, DNS to the agent's resolver), or refused
//! (other UDP, raw and ICMP sockets, other transports, routing options) and
//! reported; a packet that still heads off the loopback is dropped; an
//! agent binds only what its policy lists and reaches no process outside
//! its cgroup; a revoked agent gets nothing. Each hook is a thin entry
//! point over a `try_*`/`check` function.
#![no_std]
#![no_main]
// The atomic add of the per-agent counters (shares.rs); the crate is only
// ever built with nightly (aya-build).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod bind;
mod connect;
mod direct;
mod egress;
mod events;
mod maps;
mod process;
mod redirect;
mod revoke;
mod sendmsg;
mod shares;
mod sk_msg;
mod sock_create;
mod sockops;
mod sockopt;
mod splice;
mod transparency;
mod unix;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup, sock_ops},
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext,
    },
};

/// Verdicts of cgroup sock and sock_addr programs: 1 lets the (possibly
/// rewritten) operation proceed, 0 makes it fail with EPERM.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn agentguard_connect4(ctx: SockAddrContext) -> i32 {
    // Any unexpected state denies: a guarded socket is never sent out unseen.
    connect::try_connect4(&ctx).unwrap_or(DENY)
}

#[cgroup_sock_addr(connect6)]
pub fn agentguard_connect6(ctx: SockAddrContext) -> i32 {
    connect::try_connect6(&ctx).unwrap_or(DENY)
}

#[cgroup_sock_addr(bind4)]
pub fn agentguard_bind4(ctx: SockAddrContext) -> i32 {
    bind::check4(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn agentguard_bind6(ctx: SockAddrContext) -> i32 {
    bind::check6(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn agentguard_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg::try_sendmsg4(&ctx).unwrap_or(DENY)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn agentguard_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg::try_sendmsg6(&ctx).unwrap_or(DENY)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn agentguard_recvmsg4(ctx: SockAddrContext) -> i32 {
    transparency::rewrite_peer4(&ctx);
    // recvmsg programs must return 1 (the kernel rejects other values).
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn agentguard_recvmsg6(ctx: SockAddrContext) -> i32 {
    transparency::rewrite_peer6(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn agentguard_getpeername4(ctx: SockAddrContext) -> i32 {
    transparency::rewrite_peer4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn agentguard_getpeername6(ctx: SockAddrContext) -> i32 {
    transparency::rewrite_peer6(&ctx);
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn agentguard_sock_create(ctx: SockContext) -> i32 {
    sock_create::check(&ctx)
}

#[cgroup_sockopt(setsockopt)]
pub fn agentguard_setsockopt(ctx: SockoptContext) -> i32 {
    sockopt::check(&ctx)
}

#[cgroup_skb(egress)]
pub fn agentguard_egress(ctx: SkBuffContext) -> i32 {
    egress::check(&ctx)
}

// The Unix hooks are written out by hand: aya-ebpf's #[cgroup_sock_addr]
// macro does not know their attach types (Linux 6.7). What it would expand
// to: a `no_mangle` entry in the section libbpf names, taking the raw context.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn agentguard_connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    unix::check(&SockAddrContext::new(ctx), unix::Op::Connect)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
pub fn agentguard_sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    unix::check(&SockAddrContext::new(ctx), unix::Op::SendMsg)
}

#[sock_ops]
pub fn agentguard_sockops(ctx: SockOpsContext) -> u32 {
    // sockops return values are advisory for the callbacks used here.
    sockops::try_sockops(&ctx).unwrap_or(0)
}

#[lsm_cgroup(hook = "ptrace_access_check")]
pub fn agentguard_ptrace(ctx: LsmContext) -> i32 {
    process::check(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
