//! `cargo xtask test`: set up, then every check CI runs, in order, stopping at the
//! first failure. The same command runs locally and in `.ci/run`, so a green
//! local run means a green CI run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{cmd, setup};

struct Step {
    header: &'static str,
    cargo_args: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        header: "rustfmt",
        cargo_args: &["fmt", "--all", "--", "--check"],
    },
    // No --workspace: default-members leave the eBPF crate out, which only
    // builds for the bpf target and gets its own pass below.
    Step {
        header: "clippy (host crates)",
        cargo_args: &[
            "clippy",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    },
    // The eBPF crate needs nightly for -Z build-std=core: there is no prebuilt
    // core for bpfel-unknown-none. Clippy only checks, so bpf-linker is not used.
    Step {
        header: "clippy (eBPF crate)",
        cargo_args: &[
            "+nightly",
            "clippy",
            "--locked",
            "-p",
            "agentguard-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    },
    // Unit tests only (--lib --bins): these need no privileges.
    Step {
        header: "unit tests",
        cargo_args: &[
            "test",
            "--locked",
            "--workspace",
            "--exclude",
            "agentguard-ebpf",
            "--lib",
            "--bins",
        ],
    },
    // The tool side's crate on its own: its README's tool server (a doc
    // test), the `cargo tree` check that it pulls in nothing of the
    // daemon's, and docs that build without a warning.
    Step {
        header: "agentguard-verify (doc tests, dependency check)",
        cargo_args: &["test", "--locked", "-p", "agentguard-verify"],
    },
    Step {
        header: "agentguard-verify docs",
        cargo_args: &[
            "rustdoc",
            "--locked",
            "-p",
            "agentguard-verify",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
    },
    // The end-to-end tests attach real eBPF programs to real cgroups, but
    // each test daemon to cgroups, a bpffs folder and ports of its own, so
    // they run beside each other; they mostly wait (for daemons, clients,
    // timeouts), so three at a time fit 2 cores. Tests that load the machine
    // or bound a latency run alone (tests/common/machine.rs).
    Step {
        header: "end-to-end tests (privileged)",
        cargo_args: &[
            "test",
            "--locked",
            "-p",
            "agentguard",
            "--test",
            "integration",
            "--",
            "--test-threads=3",
        ],
    },
    // deploy/kubernetes against the Kubernetes schema of each supported
    // release (offline, kubernetes-validate), its policies and config
    // against agentguard.
    Step {
        header: "Kubernetes manifests (schema, policies, config)",
        cargo_args: &["xtask", "manifests"],
    },
    // The Debian package, installed here with dpkg, checked (files, modes,
    // conffile, unit verified, changes kept on reinstall) and purged; then
    // installed in a Debian container booted with systemd-nspawn, where its
    // units run under a real systemd.
    //
    // Of a plain release build (--no-pgo). The profile-guided build that
    // ships (xtask/src/release.rs) is two whole-program builds and two
    // trainings: 29 of the 50 minutes of a cold run of this suite here
    // (2026-12-07; 35 with this step plain), and it had taken CI to 73
    // minutes of the 60 it may use. The same checks of the profile-guided
    // package are `cargo xtask package --check --nspawn`, which the README
    // asks for before shipping it.
    Step {
        header: "Debian package of a plain release build (install, check, purge; systemd container)",
        cargo_args: &[
            "xtask",
            "package",
            "--no-pgo",
            "--check",
            "--nspawn",
            "--no-setup",
        ],
    },
    // The container image, built from the release binary the package step
    // just built, and run as the DaemonSet runs it (its daemon with only
    // the DaemonSet's capabilities). About 30 s here once the Debian root
    // is cached; debootstrap makes it on the first run (about 2 minutes).
    Step {
        header: "container image (build, run as the DaemonSet would)",
        cargo_args: &["xtask", "image", "--no-pgo", "--check", "--no-setup"],
    },
    // The benchmark harness with five requests per path and scenario, so
    // it cannot rot: it checks only that every path answered 200, never a
    // time. It installs the bench's own tools (oha, nginx, h2load,
    // mitmproxy) if missing (oha's compile is most of this step on a
    // fresh machine); setup has just run, so it skips its own.
    Step {
        header: "benchmark harness (smoke)",
        cargo_args: &["xtask", "bench", "--smoke", "--no-setup"],
    },
    // The soak's cases, small, against the debug build: what must hold is
    // checked, no figure is.
    Step {
        header: "soak harness (smoke)",
        cargo_args: &["xtask", "soak", "--smoke", "--no-setup"],
    },
    // Every fuzz target briefly, so none can rot: its seeds first, then a
    // few seconds of new inputs (the unit tests replay the seeds too).
    Step {
        header: "fuzz targets (briefly)",
        cargo_args: &["xtask", "fuzz", "--seconds", "5", "--dev", "--no-setup"],
    },
];

pub fn run(root: &Path, with_setup: bool) -> Result<()> {
    let started = Instant::now();
    if with_setup {
        setup::run()?;
    } else {
        println!("setup: skipped (--no-setup)");
    }
    println!(
        "setup took {}; {}",
        minutes(started.elapsed()),
        free_disk(root)
    );
    let mut took = Vec::new();
    for step in STEPS {
        println!("==> {}", step.header);
        let step_started = Instant::now();
        let result = cmd::run(cmd::cargo(root).args(step.cargo_args));
        let elapsed = step_started.elapsed();
        took.push((step.header, elapsed));
        // After every step, failed or not: CI's budget is time, and a
        // step that fills the disk fails in whatever runs next (a linker
        // killed by SIGBUS), far from its cause.
        println!(
            "<== {}: {}; {}",
            step.header,
            minutes(elapsed),
            free_disk(root)
        );
        if result.is_err() {
            print_times(&took, started.elapsed());
        }
        result.with_context(|| format!("step `{}` failed", step.header))?;
    }
    print_times(&took, started.elapsed());
    println!("==> all checks passed");
    Ok(())
}

fn print_times(took: &[(&str, Duration)], total: Duration) {
    println!("==> time per step (all: {})", minutes(total));
    for (header, elapsed) in took {
        println!("{:>9}  {header}", minutes(*elapsed));
    }
}

fn minutes(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// What `df` says is left on the file system the build writes to, for
/// the log; a note, never a failure.
fn free_disk(root: &Path) -> String {
    let avail = cmd::probe(cmd::new("df").args(["-h", "--output=avail"]).arg(root));
    match avail.as_deref().and_then(|out| out.lines().nth(1)) {
        Some(avail) => format!("{} free on disk", avail.trim()),
        None => "free disk unknown (df failed)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_times_read_as_minutes_and_seconds() {
        assert_eq!(minutes(Duration::from_secs(0)), "0m00s");
        assert_eq!(minutes(Duration::from_millis(61_900)), "1m01s");
        assert_eq!(minutes(Duration::from_secs(3094)), "51m34s");
    }

    #[test]
    fn free_disk_reads_df() {
        let here = free_disk(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(here.ends_with(" free on disk"), "{here}");
        assert_eq!(
            free_disk(Path::new("/no/such/dir")),
            "free disk unknown (df failed)"
        );
    }
}
