//! The `agentguard` command: daemon and CLI. All logic lives in the library.

/// The proxy allocates per request (headers, audit events, TLS buffers) from
/// several threads; glibc's malloc spent 17% of the daemon's CPU on it, in
/// the profile of `cargo xtask bench`, and mimalloc (Microsoft's allocator,
/// the usual choice for Rust servers) much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agentguard::cli::main()
}
