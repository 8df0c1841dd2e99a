//! `cargo xtask fuzz`: every fuzz target in `fuzz/` under libFuzzer
//! (cargo-fuzz, nightly) for a bounded time (and optionally a bounded
//! number of executions) each, one after another,
//! starting from the seeds kept in `fuzz/seeds/<target>/` and the working
//! corpus it grows in `fuzz/corpus/<target>/` (not in git). Prints, per
//! target, how many inputs ran and whether one failed; a failing input is
//! left in `fuzz/artifacts/<target>/` and fails the command.
//!
//! No sanitizer by default: the targets are safe Rust, where AddressSanitizer
//! finds little and costs about half the executions; `--sanitizer address`
//! turns it on. Debug assertions (and with them overflow checks) are always
//! on, so an arithmetic overflow is a finding too.

use std::{fs, path::Path, process::Stdio, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// The targets, in `fuzz/Cargo.toml`'s order.
pub const TARGETS: [&str; 10] = [
    "sniff",
    "http_head",
    "path",
    "policy",
    "dns",
    "placeholder",
    "redact",
    "jsonrpc",
    "sse",
    "jwt",
];

#[derive(clap::Args)]
pub struct Options {
    /// Seconds each target runs (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop each target after this many executions (libFuzzer's -runs), if
    /// that comes before --seconds.
    #[arg(long)]
    runs: Option<u64>,
    /// Only these targets (comma-separated).
    #[arg(long)]
    targets: Option<String>,
    /// libFuzzer's sanitizer: none or address.
    #[arg(long, default_value = "none")]
    sanitizer: String,
    /// Build without optimisations: about half the build time, fewer
    /// executions a second. What the test suite's brief pass uses, where
    /// the build is most of the cost.
    #[arg(long)]
    dev: bool,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
}

/// What one target's run came to.
struct Outcome {
    target: &'static str,
    executions: u64,
    seconds: f64,
    corpus: usize,
    failure: Option<String>,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if opts.runs == Some(0) {
        bail!("--runs must be at least 1");
    }
    if !["none", "address"].contains(&opts.sanitizer.as_str()) {
        bail!("--sanitizer is none or address");
    }
    let targets = selected(opts.targets.as_deref())?;
    if opts.no_setup {
        println!("setup: skipped (--no-setup)");
    } else {
        setup::run()?;
    }
    let fuzz_dir = root.join("fuzz");
    // cargo-fuzz has no --locked and would rewrite fuzz/Cargo.lock after a
    // change to agentguard's dependencies, so a stale lock file passed the
    // suite unnoticed; this fails instead, as the workspace's --locked
    // builds do.
    cmd::run(
        cmd::cargo(root)
            .args(["fetch", "--locked", "--manifest-path", "fuzz/Cargo.toml"])
            .args(["--target", &host_triple()?]),
    )
    .context(
        "fuzz/Cargo.lock is not up to date: `cargo update --workspace \
         --manifest-path fuzz/Cargo.toml` updates it; commit the result",
    )?;
    // One build for all targets. The runs below start the built binaries
    // themselves rather than `cargo fuzz run`, which would rebuild every
    // target whose sources changed since: a long run stays one build.
    cmd::run(fuzz_cargo(root, "build", opts).args(["--fuzz-dir", "fuzz"]))?;
    let bin_dir = fuzz_dir
        .join("target")
        .join(host_triple()?)
        .join(if opts.dev { "debug" } else { "release" });
    let mut outcomes = Vec::new();
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        outcomes.push(run_target(root, &bin_dir, target, opts)?);
    }
    println!();
    println!("target        executions     exec/s   corpus  result");
    for o in &outcomes {
        println!(
            "{:<12} {:>11} {:>10.0} {:>8}  {}",
            o.target,
            o.executions,
            o.executions as f64 / o.seconds.max(0.001),
            o.corpus,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target)
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found failing inputs for {} (in fuzz/artifacts/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn selected(list: Option<&str>) -> Result<Vec<&'static str>> {
    let Some(list) = list else {
        return Ok(TARGETS.to_vec());
    };
    list.split(',')
        .map(|name| {
            TARGETS
                .iter()
                .find(|t| **t == name.trim())
                .copied()
                .with_context(|| format!("no fuzz target {name:?} (known: {})", TARGETS.join(", ")))
        })
        .collect()
}

/// `cargo +nightly fuzz <sub>` with the options every build and run shares.
fn fuzz_cargo(root: &Path, sub: &str, opts: &Options) -> std::process::Command {
    let mut c = cmd::cargo(root);
    c.args([
        "+nightly",
        "fuzz",
        sub,
        "--sanitizer",
        &opts.sanitizer,
        "--debug-assertions",
    ]);
    if opts.dev {
        c.arg("--dev");
    }
    c
}

/// The target triple cargo-fuzz builds for: nightly rustc's host.
fn host_triple() -> Result<String> {
    let out = std::process::Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc +nightly -vV named no host")
}

fn run_target(
    root: &Path,
    bin_dir: &Path,
    target: &'static str,
    opts: &Options,
) -> Result<Outcome> {
    let corpus = format!("fuzz/corpus/{target}");
    let seeds = format!("fuzz/seeds/{target}");
    let binary = bin_dir.join(target);
    if !binary.is_file() {
        bail!("the fuzz build left no {}", binary.display());
    }
    // Where cargo fuzz run would leave a failing input.
    let artifacts = root.join("fuzz/artifacts").join(target);
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let mut c = std::process::Command::new(&binary);
    c.current_dir(root)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([&corpus, &seeds]);
    if let Some(runs) = opts.runs {
        c.arg(format!("-runs={runs}"));
    }
    c.arg(format!("-max_total_time={}", opts.seconds))
        // Inputs up to 64 KiB: policy files and SSE streams are longer than
        // libFuzzer's default 4 KiB.
        .arg("-max_len=65536")
        .arg("-rss_limit_mb=4096")
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    println!("==> fuzz {target} ({} s)", opts.seconds);
    let started = Instant::now();
    let out = c
        .output()
        .with_context(|| format!("starting the fuzzer for {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    let executions = final_stat(&log, "stat::number_of_executed_units").unwrap_or(0);
    let corpus_size = fs::read_dir(root.join(&corpus)).map_or(0, Iterator::count);
    let failure = if out.status.success() {
        None
    } else {
        // The fuzzer's own report: the lines from the first "==" or
        // "panicked" on, enough to tell what failed.
        let report: Vec<&str> = log
            .lines()
            .skip_while(|l| !(l.contains("panicked") || l.starts_with("==")))
            .take(12)
            .collect();
        eprintln!(
            "{target}: fuzzer failed ({}):\n{}",
            out.status,
            report.join("\n")
        );
        if executions == 0 && report.is_empty() {
            eprintln!("{log}");
        }
        Some(format!("FAILED ({})", out.status))
    };
    Ok(Outcome {
        target,
        executions,
        seconds,
        corpus: corpus_size,
        failure,
    })
}

/// A number from libFuzzer's `-print_final_stats` lines (`name: value`).
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix(name)?
            .trim()
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read_from_libfuzzers_log() {
        let log = "#2\tINITED cov: 10\nDone 1234 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 1234\nstat::average_exec_per_sec:     411\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units"),
            Some(1234)
        );
        assert_eq!(final_stat(log, "stat::average_exec_per_sec"), Some(411));
        assert_eq!(final_stat(log, "stat::missing"), None);
    }

    #[test]
    fn targets_are_picked_by_name() {
        assert_eq!(selected(None).unwrap().len(), TARGETS.len());
        assert_eq!(selected(Some("sse, jwt")).unwrap(), ["sse", "jwt"]);
        assert!(selected(Some("nope")).is_err());
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let root = crate::paths::workspace_root();
        let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(
                root.join(format!("fuzz/fuzz_targets/{target}.rs"))
                    .is_file(),
                "{target}"
            );
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
            let seeds = fs::read_dir(root.join(format!("fuzz/seeds/{target}")))
                .unwrap()
                .count();
            assert!(seeds >= 3, "{target}: {seeds} seeds");
        }
    }
}
