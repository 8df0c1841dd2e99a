//! The `agentguard` command: daemon and CLI. All logic lives in the library.
fn main() -> std::process::ExitCode {
    agentguard::cli::main()
}
