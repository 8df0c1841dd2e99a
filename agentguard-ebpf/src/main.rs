//! agentguard's kernel programs: redirect every TCP connect of a guarded cgroup
//! to the local proxy and remember, in the kernel, who made it and where it was
//! going. Each hook is a thin entry point over a `try_*` function.
#![no_std]
#![no_main]

mod connect;
mod maps;
mod sockops;

use aya_ebpf::{
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};

/// cgroup/connect4 verdicts: 1 lets the (possibly rewritten) connect proceed,
/// 0 makes connect() fail with EPERM.
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

#[sock_ops]
pub fn agentguard_sockops(ctx: SockOpsContext) -> u32 {
    // sockops return values are advisory for the callbacks used here.
    sockops::try_sockops(&ctx).unwrap_or(0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
