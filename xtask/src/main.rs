//! `cargo xtask`: sets a Linux machine up for agentguard, then builds, runs and tests it.
//!
//! The eBPF crate is not built here: `agentguard/build.rs` builds it with aya-build.
//! xtask only makes sure the toolchain that build needs is on the machine.

mod bench;
mod cmd;
mod debian_root;
mod fuzz;
mod image;
mod manifests;
mod package;
mod paths;
mod privilege;
mod release;
mod run;
mod screenshots;
mod setup;
mod soak;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test agentguard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing agentguard needs (idempotent).
    Setup,
    /// Set up, build agentguard (release) and run it in the foreground with ./policies.
    Run {
        /// Extra arguments for `agentguard run`, given after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, lint, and run the whole test suite (privileged end-to-end tests included).
    Test {
        /// Skip setup, for a machine that is already set up.
        #[arg(long)]
        no_setup: bool,
    },
    /// Screenshots of the web view's pages, taken by its browser test, into
    /// docs/web/.
    Screenshots {
        /// Skip setup, for a machine that is already set up.
        #[arg(long)]
        no_setup: bool,
    },
    /// Build the Debian package (target/debian/); with --check, install it
    /// here, check it and purge it again.
    Package(package::Options),
    /// The container image (podman, from a debootstrap root, no registry);
    /// with --check, run it as the Kubernetes DaemonSet would.
    Image(image::Options),
    /// Validate deploy/kubernetes against the Kubernetes schema, and its
    /// policies and config against agentguard.
    Manifests,
    /// Benchmarks: the direct path, agentguard's paths, mitmproxy and nginx
    /// side by side; writes docs/benchmarks.md and target/bench/.
    Bench(bench::Options),
    /// Load and fault cases too long for the test suite (slow ClientHellos,
    /// reloads, a 200 MiB response); writes docs/soak.md.
    Soak(soak::Options),
    /// Every fuzz target (cargo-fuzz, libFuzzer) for a bounded time each,
    /// from the seeds in fuzz/seeds/.
    Fuzz(fuzz::Options),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Setup => "setup",
            Command::Run { .. } => "run",
            Command::Test { .. } => "test",
            Command::Screenshots { .. } => "screenshots",
            Command::Package(_) => "package",
            Command::Image(_) => "image",
            Command::Manifests => "manifests",
            Command::Bench(_) => "bench",
            Command::Soak(_) => "soak",
            Command::Fuzz(_) => "fuzz",
        }
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        // `{:#}` prints the whole context chain on one line. Returning the error
        // from main would print its Debug form, which adds a backtrace whenever
        // RUST_BACKTRACE is set: noise for a message meant for the user.
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    privilege::ensure_root(cli.command.name())?;
    let root = paths::workspace_root();
    match cli.command {
        Command::Setup => setup::run()?,
        // `run` replaces this process with agentguard, so it only comes back on failure.
        Command::Run { args } => match run::run(&root, &args)? {},
        Command::Test { no_setup } => test::run(&root, !no_setup)?,
        Command::Screenshots { no_setup } => screenshots::run(&root, !no_setup)?,
        Command::Package(opts) => package::run(&root, &opts)?,
        Command::Image(opts) => image::run(&root, &opts)?,
        Command::Manifests => manifests::run(&root)?,
        Command::Bench(opts) => bench::run(&root, &opts)?,
        Command::Soak(opts) => soak::run(&root, &opts)?,
        Command::Fuzz(opts) => fuzz::run(&root, &opts)?,
    }
    Ok(ExitCode::SUCCESS)
}
