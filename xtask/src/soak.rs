//! `cargo xtask soak`: the load and fault cases of issue 21 that are too
//! long or too heavy for the test suite, run against a release build with
//! the figures written to docs/soak.md (raw JSON under `target/soak/`).
//!
//! Cases: slow-hello (1,000 ClientHellos a byte a second), reloads (1,000
//! SIGHUPs), big-response (200 MiB through the full path), h2-floods
//! (rapid reset, CONTINUATION, SETTINGS).
//!
//! Each case checks what must hold (another request is still served,
//! every reload is accepted, a 200 MiB body arrives whole) and reports what
//! it cost (CPU, resident memory). Nothing here asserts a time or a
//! figure: a number only goes into the report. `--smoke` runs every case
//! small against the debug build, so that `cargo xtask test` keeps the
//! harness from rotting.

mod cases;

use std::{fs, path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{self, agentguard::Daemon, upstream::Upstream},
    paths as ws, release, setup,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Every case, small, against the debug build; writes no report.
    #[arg(long)]
    smoke: bool,
    /// Seconds the CPU of the slow-hello case is measured over.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Connections trickling their ClientHello in the slow-hello case.
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    /// Reloads in the reload case.
    #[arg(long, default_value_t = 1000)]
    reloads: u32,
    /// Only these cases (comma-separated: slow-hello, reloads,
    /// big-response, h2-floods); a partial run writes no docs/soak.md.
    #[arg(long)]
    cases: Option<String>,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    no_setup: bool,
}

/// What one case found.
pub struct Finding {
    pub case: &'static str,
    /// What was done, in a sentence.
    pub what: String,
    /// Whether what must hold held, and if not, why.
    pub held: Result<(), String>,
    /// Measured figures, as (name, value with unit).
    pub figures: Vec<(String, String)>,
}

const CASES: [&str; 4] = ["slow-hello", "reloads", "big-response", "h2-floods"];

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let started = Instant::now();
    if opts.no_setup {
        println!("setup: skipped (--no-setup)");
    } else {
        setup::run()?;
    }
    let cases: Vec<&str> = match &opts.cases {
        None => CASES.to_vec(),
        Some(list) => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            if let Some(bad) = wanted.iter().find(|c| !CASES.contains(c)) {
                bail!("unknown case {bad:?}; cases: {}", CASES.join(", "));
            }
            CASES
                .iter()
                .copied()
                .filter(|c| wanted.contains(c))
                .collect()
        }
    };
    let target = ws::target_dir(root);
    let profile = if opts.smoke { "dev" } else { "release" };
    release::cargo_build(root, profile, &["agentguard", "agentguard-bench"], None)?;
    let bin = target.join(if opts.smoke { "debug" } else { "release" });
    let out = target.join("soak");
    let work = out.join(format!("work-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let busy_before = bench::machine::busy_processes();
    let load_before = bench::machine::loadavg();

    let findings = match run_cases(&bin, &work, &cases, opts) {
        Ok(f) => f,
        Err(e) => bail!("{e:#}\n(logs kept in {})", work.display()),
    };
    for f in &findings {
        println!("soak: {}: {}", f.case, summary(f));
    }
    let failed: Vec<&Finding> = findings.iter().filter(|f| f.held.is_err()).collect();
    if opts.smoke {
        let _ = fs::remove_dir_all(&work);
    } else {
        let mut machine = bench::machine::facts();
        machine.push(("load average at start (1, 5, 15 min)".into(), load_before));
        machine.push(("load average at end".into(), bench::machine::loadavg()));
        machine.push((
            "other builds or tests running at start".into(),
            if busy_before.is_empty() {
                "none".into()
            } else {
                busy_before.join(", ")
            },
        ));
        machine.push((
            "wall time".into(),
            format!("{:.0} s", started.elapsed().as_secs_f64()),
        ));
        let raw = serde_json::json!({
            "machine": machine,
            "cases": findings.iter().map(|f| serde_json::json!({
                "case": f.case,
                "what": f.what,
                "held": f.held.as_ref().err(),
                "figures": f.figures,
            })).collect::<Vec<_>>(),
        });
        fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&raw)?,
        )?;
        if cases.len() == CASES.len() && failed.is_empty() {
            let doc = root.join("docs").join("soak.md");
            fs::write(&doc, report(&machine, &findings, opts))?;
            println!("soak: wrote {}", doc.display());
        }
    }
    if !failed.is_empty() {
        bail!(
            "soak: {} case(s) did not hold: {}",
            failed.len(),
            failed.iter().map(|f| f.case).collect::<Vec<_>>().join(", ")
        );
    }
    println!("soak: done ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn run_cases(bin: &Path, work: &Path, cases: &[&str], opts: &Options) -> Result<Vec<Finding>> {
    let helper = bin.join("agentguard-bench");
    fs::create_dir_all(work.join("upstream"))?;
    let upstream =
        Upstream::start(&helper, &work.join("upstream")).context("starting the bench upstream")?;
    let mut findings = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // A fresh daemon per case: one case's connections, reloads or
        // memory must not colour the next one's figures.
        let dir = work.join(case);
        fs::create_dir_all(&dir)?;
        let daemon = Daemon::start(
            &bin.join("agentguard"),
            &dir,
            &upstream,
            &format!("-soak{i}"),
        )?;
        println!("soak: {case}");
        let finding = match *case {
            "slow-hello" => cases::slow_hello(&daemon, &upstream, &helper, &dir, opts)?,
            "reloads" => cases::reloads(&daemon, &bin.join("agentguard"), opts)?,
            "big-response" => cases::big_response(&daemon, &upstream, &dir, opts)?,
            "h2-floods" => cases::h2_floods(&daemon, &upstream, &helper, &dir, opts)?,
            other => bail!("unknown case {other}"),
        };
        findings.push(finding);
    }
    Ok(findings)
}

fn summary(f: &Finding) -> String {
    let figures: Vec<String> = f.figures.iter().map(|(k, v)| format!("{k} {v}")).collect();
    match &f.held {
        Ok(()) => format!("held; {}", figures.join(", ")),
        Err(why) => format!("DID NOT HOLD: {why}; {}", figures.join(", ")),
    }
}

fn report(machine: &[(String, String)], findings: &[Finding], opts: &Options) -> String {
    let mut md = String::from(
        "# Soak: load and faults\n\n\
         Written by `sudo -E cargo xtask soak` (release build, loopback only); \
         raw figures in `target/soak/results.json`. Each case checks what must \
         hold and reports what it cost; nothing here is a pass mark. The \
         cheaper cases of issue 21 (slowloris on heads, malformed HTTP/1.1, \
         kill -9 under load, a full disk, connections that never send a \
         request, stalled upstreams) are end-to-end tests instead \
         (`tests/tests/exhaustion.rs`, `tests/tests/audit.rs`).\n\n## Machine\n\n",
    );
    for (k, v) in machine {
        md.push_str(&format!("- {k}: {v}\n"));
    }
    md.push_str(&format!(
        "\nSettings: {} slow-hello connections measured over {} s, {} reloads.\n",
        opts.connections, opts.seconds, opts.reloads
    ));
    for f in findings {
        md.push_str(&format!("\n## {}\n\n{}\n\n", f.case, f.what));
        md.push_str(&format!(
            "Held: {}\n\n| figure | value |\n|---|---|\n",
            match &f.held {
                Ok(()) => "yes".to_owned(),
                Err(why) => format!("no: {why}"),
            }
        ));
        for (k, v) in &f.figures {
            md.push_str(&format!("| {k} | {v} |\n"));
        }
    }
    md
}
