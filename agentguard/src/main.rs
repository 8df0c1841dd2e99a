//! The `agentguard` command: daemon and CLI. All logic lives in the library.

/// mimalloc, the fast path for every layout (`agentguard::allocator`).
#[global_allocator]
static GLOBAL: agentguard::allocator::MiMalloc = agentguard::allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    agentguard::cli::main()
}
