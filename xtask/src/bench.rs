//! `cargo xtask bench`: the cost of interception, side by side with the
//! direct path and with the tools people would use instead (mitmproxy,
//! nginx), measured in one run, interleaved run by run, and written to
//! docs/benchmarks.md (raw results under target/bench/).
//!
//! `--smoke` runs every path and scenario with a handful of requests and
//! checks only that each returned 200s: `cargo xtask test` runs it so the
//! harness cannot rot. Nothing here ever asserts a time.

pub(crate) mod agentguard;
mod fresh;
mod instructions;
mod kernel_work;
mod load;
pub(crate) mod machine;
mod paths;
pub(crate) mod process;
pub(crate) mod procfs;
mod profile;
mod proxies;
mod report;
pub(crate) mod resolve;
mod scenario;
mod stats;
mod tools;
pub(crate) mod upstream;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use self::{
    load::Amount,
    paths::{Env, PathKind},
    scenario::{SCENARIOS, Size},
    stats::{Results, Run},
};
use crate::{paths as ws, release, setup};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// A few requests per path and scenario, checking only that they
    /// succeed; writes no report.
    #[arg(long)]
    smoke: bool,
    /// Runs (each measures every path in turn).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds per load measurement.
    #[arg(long, default_value_t = 4)]
    seconds: u32,
    /// Idle TLS connections held for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle_connections: u32,
    /// Only these paths (comma-separated ids: direct, passthrough,
    /// passthrough_kernel, full, jwt, exchange, sigv4, mitmproxy, nginx); direct is always added, since everything is
    /// compared with it. A partial run writes no docs/benchmarks.md.
    #[arg(long)]
    paths: Option<String>,
    /// Only these scenarios (comma-separated ids, e.g. ka_sat_1k,h2_sat),
    /// to look into one of them; a partial run writes no
    /// docs/benchmarks.md.
    #[arg(long)]
    scenarios: Option<String>,
    /// Skip `cargo xtask setup` (the bench's own tools are still checked).
    #[arg(long)]
    no_setup: bool,
    /// Measure the binaries already in target/ as they are, without
    /// building: target/pgo/agentguard (target/release/agentguard with
    /// --no-pgo) and target/release/agentguard-bench, e.g. a build kept
    /// from before a change, copied back there.
    #[arg(long)]
    no_build: bool,
    /// Measure a plain release build of the daemon rather than the
    /// profile-guided one that ships (xtask/src/release.rs).
    #[arg(long)]
    no_pgo: bool,
    /// Skip the perf profile of the full path.
    #[arg(long)]
    no_profile: bool,
    /// What the perf profile samples: a path and a scenario, e.g.
    /// `jwt:ka_sat_1k` or `full:new_sat`. The path need not be among
    /// `--paths`.
    #[arg(long, default_value = "full:ka_sat_1k")]
    profile_of: String,
    /// Skip the instruction counts (callgrind) of agentguard's paths.
    #[arg(long)]
    no_instructions: bool,
    /// Requests per scenario for the instruction counts.
    #[arg(long, default_value_t = 2000)]
    instruction_requests: u32,
    /// Skip the system call and context switch counts (perf stat).
    #[arg(long)]
    no_kernel_work: bool,
    /// Requests per scenario for the system call counts.
    #[arg(long, default_value_t = 20000)]
    kernel_work_requests: u32,
}

const SMOKE_REQUESTS: u32 = 5;

/// Set by Ctrl-C or SIGTERM. Dying on the signal would skip every Drop
/// that stops a server and unpins the bench cgroup, so the bench stops at
/// the next measurement instead and unwinds.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
const SSE_SAMPLES: u32 = 10;

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let started = Instant::now();
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to install the Ctrl-C handler")?;
    if opts.no_setup {
        println!("setup: skipped (--no-setup)");
    } else {
        setup::run()?;
    }
    let target = ws::target_dir(root);
    let tools = tools::ensure(&target)?;
    // The smoke checks the harness, not speed: the debug build that the
    // test suite has already made spares CI a release build of agentguard
    // (minutes on 2 cores). Measurements use release builds only, the
    // daemon's profile-guided unless --no-pgo (xtask/src/release.rs).
    let build = release::Build::from_no_pgo(opts.no_pgo);
    if opts.no_build {
        println!("bench: using the binaries in target/ as they are (--no-build)");
    }
    let bin = if opts.smoke {
        if !opts.no_build {
            release::cargo_build(root, "dev", &["agentguard", "agentguard-bench"], None)?;
        }
        target.join("debug")
    } else {
        if !opts.no_build {
            release::daemon(root, build)?;
            release::bench_tools(root)?;
        }
        release_bin_dir(root, build)?
    };
    let out = target.join("bench");
    let work = out.join(format!("work-{}", std::process::id()));
    fs::create_dir_all(&work)?;

    let quiet_before = machine::busy_processes();
    let load_before = machine::loadavg();
    if !opts.smoke && !quiet_before.is_empty() {
        println!(
            "bench: warning: other builds or tests are running ({}): numbers will be noisy",
            quiet_before.join(", ")
        );
    }

    let paths = selected_paths(opts)?;
    let result = measure_all(&bin, &tools, &work, &paths, opts);
    let Measured {
        tools: env_facts,
        results,
        profile,
        instructions,
        kernel_work,
    } = match result {
        Ok(r) => r,
        Err(e) => {
            // The logs of the daemon and servers explain most failures.
            bail!("{e:#}\n(logs kept in {})", work.display());
        }
    };

    if opts.smoke {
        fs::write(
            out.join("smoke.json"),
            serde_json::to_string_pretty(&results.to_json())?,
        )?;
        let _ = fs::remove_dir_all(&work);
        println!(
            "bench: smoke passed: every path answered 200 in every scenario ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    let mut machine = machine::facts();
    let described = if opts.no_build {
        build.describe_found(&bin.join("agentguard"))?
    } else {
        build.describe()
    };
    machine.push(("agentguard build".into(), described));
    machine.push(("load average at start (1, 5, 15 min)".into(), load_before));
    machine.push(("load average at end".into(), machine::loadavg()));
    machine.push((
        "other builds or tests running at start".into(),
        if quiet_before.is_empty() {
            "none (no cargo, rustc or test binary besides this bench)".into()
        } else {
            quiet_before.join(", ")
        },
    ));
    machine.push((
        "other builds or tests seen between runs".into(),
        if results.busy_during.is_empty() {
            "none".into()
        } else {
            results
                .busy_during
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    machine.push((
        "wall time of this bench".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    let ctx = report::Context {
        machine,
        tools: env_facts,
        runs: opts.runs,
        seconds: opts.seconds,
        idle_connections: opts.idle_connections,
        sse_samples: SSE_SAMPLES,
        pinned: process::pinning_possible(),
        profile,
        instructions,
        kernel_work,
    };
    let raw = serde_json::json!({
        "machine": ctx.machine,
        "tools": ctx.tools,
        "runs": results.to_json(),
    });
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&raw)?,
    )?;
    let md = report::markdown(&ctx, &results);
    if paths.len() == PathKind::ALL.len() && opts.scenarios.is_none() {
        let doc = root.join("docs").join("benchmarks.md");
        fs::create_dir_all(doc.parent().context("docs dir")?)?;
        fs::write(&doc, &md)?;
        println!("bench: wrote {}", doc.display());
    } else {
        fs::write(out.join("benchmarks-partial.md"), &md)?;
        println!(
            "bench: partial run: wrote {}",
            out.join("benchmarks-partial.md").display()
        );
    }
    println!(
        "bench: raw results in {}",
        out.join("results.json").display()
    );
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// `target/bench/bin`: the release daemon of `build` and the release
/// `agentguard-bench`, side by side as the bench runs them.
fn release_bin_dir(root: &Path, build: release::Build) -> Result<PathBuf> {
    let dir = ws::target_dir(root).join("bench").join("bin");
    fs::create_dir_all(&dir)?;
    for (name, to) in [
        ("agentguard", build.binary(root)),
        (
            "agentguard-bench",
            ws::target_dir(root)
                .join("release")
                .join("agentguard-bench"),
        ),
    ] {
        if !to.exists() {
            bail!(
                "{} is missing (run without --no-build, or pass --no-pgo for the plain \
                 release build)",
                to.display()
            );
        }
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&to, &link)
            .with_context(|| format!("failed to link {}", link.display()))?;
    }
    Ok(dir)
}

fn selected_paths(opts: &Options) -> Result<Vec<PathKind>> {
    let Some(list) = &opts.paths else {
        return Ok(PathKind::ALL.to_vec());
    };
    let mut chosen = PathKind::parse_list(list)?;
    if !chosen.contains(&PathKind::Direct) {
        chosen.insert(0, PathKind::Direct);
    }
    Ok(PathKind::ALL
        .into_iter()
        .filter(|p| chosen.contains(p))
        .collect())
}

fn selected_scenarios(opts: &Options) -> Result<Vec<&'static str>> {
    let all: Vec<&'static str> = SCENARIOS.iter().map(|s| s.id).collect();
    let Some(list) = &opts.scenarios else {
        return Ok(all);
    };
    let mut chosen = Vec::new();
    for id in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match all.iter().find(|s| **s == id) {
            Some(s) => chosen.push(*s),
            None => bail!("unknown scenario {id:?}; known: {}", all.join(", ")),
        }
    }
    Ok(chosen)
}

/// What the runs measured, and the sections the phases after them wrote
/// (each `None` when skipped).
struct Measured {
    tools: Vec<(String, String)>,
    results: Results,
    profile: Option<String>,
    instructions: Option<String>,
    kernel_work: Option<String>,
}

fn measure_all(
    bin: &Path,
    tools: &tools::Tools,
    work: &Path,
    paths: &[PathKind],
    opts: &Options,
) -> Result<Measured> {
    // Checked before any server starts: a mistyped target costs nothing.
    let profile_target = profile::Target::parse(&opts.profile_of)?;
    let env = start_env(bin, tools, work)?;
    let facts = machine::tool_versions(&env);

    let smoke = Size {
        load: Amount::Requests(SMOKE_REQUESTS),
        idle_connections: 3,
        sse_samples: 1,
    };
    let full = Size {
        load: Amount::Seconds(opts.seconds),
        idle_connections: opts.idle_connections,
        sse_samples: SSE_SAMPLES,
    };

    // The warm-up pass: every path answers before anything is recorded
    // (agentguard mints and caches its leaf, pools open, mitmproxy
    // imports what it imports lazily). In smoke mode it is the whole run.
    println!("==> bench: warm-up (every path, every scenario, {SMOKE_REQUESTS} requests)");
    let mut results = Results::default();
    let scenarios = selected_scenarios(opts)?;
    results
        .runs
        .push(one_run(&env, paths, &scenarios, smoke, true)?);
    if opts.smoke {
        return Ok(Measured {
            tools: facts,
            results,
            profile: None,
            instructions: None,
            kernel_work: None,
        });
    }
    results.runs.clear();
    for r in 1..=opts.runs {
        println!("==> bench: run {r} of {}", opts.runs);
        results.busy_during.extend(machine::busy_processes());
        results
            .runs
            .push(one_run(&env, paths, &scenarios, full, false)?);
    }
    results.busy_during.extend(machine::busy_processes());
    let instructions = phase(
        opts.no_instructions || !paths.iter().any(|p| p.is_agentguard()),
        instructions::available,
        "instructions per request (callgrind)",
        "instruction counts",
        "valgrind (callgrind) is not installed; no instruction counts.",
        || {
            instructions::run(&env, paths, &scenarios, opts.instruction_requests)
                .map(|c| instructions::markdown(&c, opts.instruction_requests))
        },
    );
    let kernel_work = phase(
        opts.no_kernel_work,
        kernel_work::available,
        "system calls per request (perf stat)",
        "system call counts",
        "`perf stat` cannot count system calls here; no counts.",
        || {
            kernel_work::run(&env, paths, &scenarios, opts.kernel_work_requests)
                .map(|c| kernel_work::markdown(&c, opts.kernel_work_requests))
        },
    );
    let profile = phase(
        opts.no_profile,
        profile::available,
        &format!("profiling {}", opts.profile_of),
        "profile",
        "`perf record` does not work on this machine; no profile was taken.",
        || {
            let bench_dir = work.parent().context("bench dir")?;
            profile::run(&env, bench_dir, profile_target, opts.seconds)
        },
    );
    Ok(Measured {
        tools: facts,
        results,
        profile,
        instructions,
        kernel_work,
    })
}

/// One of the sections measured after the runs: `None` when skipped, the
/// section when `run` made it, else why not (the tool is missing, or what
/// failed), so that one tool's trouble keeps the other sections.
fn phase(
    skip: bool,
    available: impl FnOnce() -> bool,
    doing: &str,
    what: &str,
    unavailable: &str,
    run: impl FnOnce() -> Result<String>,
) -> Option<String> {
    if skip {
        return None;
    }
    if !available() {
        return Some(unavailable.to_owned());
    }
    println!("==> bench: {doing}");
    Some(run().unwrap_or_else(|e| format!("The {what} failed: {e:#}")))
}

/// Every scenario on every path, paths in turn. A measurement that fails
/// fails the smoke; in a measured run it is reported as missing (with the
/// reason), so one tool's trouble does not discard the others' numbers.
fn one_run(
    env: &Env,
    paths: &[PathKind],
    scenarios: &[&str],
    size: Size,
    strict: bool,
) -> Result<Run> {
    let mut run = Run::default();
    for &path in paths {
        for s in SCENARIOS.iter().filter(|s| scenarios.contains(&s.id)) {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted: stopping the servers and unpinning the bench cgroup");
            }
            if let Some(why) = scenario::not_applicable(path, s) {
                run.missing.insert((path.id(), s.id), why.to_owned());
                continue;
            }
            let t = Instant::now();
            match scenario::measure(env, path, s, size) {
                Ok(m) => {
                    println!(
                        "bench: {:<12} {:<13} {} ({:.1} s)",
                        path.id(),
                        s.id,
                        brief(&m),
                        t.elapsed().as_secs_f64()
                    );
                    run.values.insert((path.id(), s.id), m);
                }
                Err(e) if strict => {
                    return Err(e.context(format!("path {} scenario {}", path.id(), s.id)));
                }
                Err(e) => {
                    println!("bench: {:<12} {:<13} FAILED: {e:#}", path.id(), s.id);
                    run.missing
                        .insert((path.id(), s.id), format!("failed: {e:#}"));
                }
            }
        }
    }
    Ok(run)
}

/// The upstream, the name resolution and every proxy of the bench, started
/// with the binaries in `bin`; the agentguard daemons have resolved the
/// passthrough name as their agent. Dropping it stops them all.
fn start_env(bin: &Path, tools: &tools::Tools, work: &Path) -> Result<Env> {
    let names = resolve::Resolution::write(work)?;
    let up = upstream::Upstream::start(&bin.join("agentguard-bench"), work)?;
    let daemon =
        agentguard::Daemon::start(&bin.join("agentguard"), &work.join("agentguard"), &up, "")?;
    let kernel_daemon = agentguard::Daemon::start_with(
        &bin.join("agentguard"),
        &work.join("agentguard-kernel"),
        &up,
        "-kernel",
        agentguard::KERNEL_RELAY,
    )?;
    let direct_daemon = agentguard::Daemon::start_with(
        &bin.join("agentguard"),
        &work.join("agentguard-direct"),
        &up,
        "-direct",
        agentguard::DIRECT_RELAY,
    )?;
    let nginx = proxies::Nginx::start(&work.join("nginx"), &up)?;
    let mitmproxy =
        proxies::Mitmproxy::start(&tools.mitmdump, &work.join("mitmproxy"), &up, &names)?;
    let env = Env {
        helper: bin.join("agentguard-bench"),
        agentguard: bin.join("agentguard"),
        work: work.to_owned(),
        oha: tools.oha.clone(),
        mitmdump: tools.mitmdump.clone(),
        names,
        upstream: up,
        daemon,
        kernel_daemon,
        direct_daemon,
        nginx,
        mitmproxy,
    };
    env.daemon.resolve_passthrough(&env.names)?;
    env.kernel_daemon.resolve_passthrough(&env.names)?;
    env.direct_daemon.resolve_passthrough(&env.names)?;
    Ok(env)
}

/// The workload a profile-guided release build learns from
/// (xtask/src/release.rs): every scenario on every agentguard path,
/// `requests` each, through the binaries in `bin` (the daemon
/// instrumented), recording nothing. Its daemons stop with SIGTERM, so
/// each writes its counters as it exits. Returns whether every scenario
/// succeeded: a profile with some missing serves one build but is not
/// worth keeping for the next (see release.rs).
pub fn train(root: &Path, bin: &Path, requests: u32, tool: &str) -> Result<Training> {
    let target = ws::target_dir(root);
    let tools = tools::ensure(&target)?;
    let work = target
        .join("pgo-data")
        .join(format!("train-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let paths: Vec<PathKind> = PathKind::ALL
        .into_iter()
        .filter(|p| p.is_agentguard())
        .collect();
    let scenarios: Vec<&str> = SCENARIOS.iter().map(|s| s.id).collect();
    let size = Size {
        load: Amount::Requests(requests),
        idle_connections: 20,
        sse_samples: 3,
    };
    // Not strict: a scenario that fails is only missing from the profile
    // (said below); one where nothing succeeded means no profile worth
    // building with.
    let run = start_env(bin, &tools, &work)
        .and_then(|env| one_run(&env, &paths, &scenarios, size, false));
    let run = match run {
        Ok(run) => run,
        Err(e) => bail!("{e:#}\n(logs kept in {})", work.display()),
    };
    let failed: Vec<String> = run
        .missing
        .iter()
        .filter(|(_, why)| why.starts_with("failed"))
        .map(|((path, scenario), why)| format!("{path} {scenario}: {why}"))
        .collect();
    if run.values.is_empty() {
        bail!(
            "no scenario succeeded:\n{}\n(logs kept in {})",
            failed.join("\n"),
            work.display()
        );
    }
    for f in &failed {
        println!("{tool}: warning: not in the profile: {f}");
    }
    if failed.is_empty() {
        let _ = fs::remove_dir_all(&work);
        Ok(Training::Complete)
    } else {
        println!("{tool}: logs kept in {}", work.display());
        Ok(Training::Partial)
    }
}

/// Whether a training ran every scenario ([`train`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Training {
    Complete,
    /// Some scenarios failed: they are missing from the profile.
    Partial,
}

fn brief(m: &scenario::Metrics) -> String {
    m.iter()
        .filter(|(k, _)| !k.starts_with("rss_") && *k != "cpu_s")
        .map(|(k, v)| format!("{k}={v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}
