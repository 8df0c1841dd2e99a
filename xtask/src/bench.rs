//! `cargo xtask bench`: a labelled stub until the benchmarks exist.

use std::process::ExitCode;

/// Exits with status 2 rather than 0 so that nothing (a CI job, a script) can
/// mistake the missing benchmarks for a passing run.
pub fn run() -> ExitCode {
    eprintln!("bench: not implemented yet (issue 8)");
    ExitCode::from(2)
}
