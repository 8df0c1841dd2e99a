//! `agentguard policy check | test | replay | schema`: the policy author's
//! tools, run without a daemon and without reading a secret.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;

use crate::{
    audit::{self, Kind, query::Filter},
    config::{DEFAULT_POLICIES_DIR, DEFAULT_STATE_DIR},
    policy::{self, AgentIdentity, Case, Change, Outcome},
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file or a folder of them.
    Check {
        #[arg(default_value = DEFAULT_POLICIES_DIR)]
        path: PathBuf,
    },
    /// Show what the policy decides for one request (exit 0 for allow, 1
    /// otherwise), or run a file of cases with expected decisions (exit 0
    /// when every case passes, 1 on any mismatch).
    Test(TestArgs),
    /// Re-decide every request in the audit record under a candidate
    /// policy and show what would change (exit 1 when a call that was
    /// allowed would be denied, so it can gate a change; 2 on an error).
    Replay(ReplayArgs),
    /// Print the JSON Schema of the policy format (or of case files), for
    /// editors that validate TOML.
    Schema {
        /// The schema of `policy test --cases` files instead.
        #[arg(long)]
        cases: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[arg(long, default_value = DEFAULT_POLICIES_DIR)]
    policies: PathBuf,
    /// A TOML file of cases ([[case]] with agent, method, url, optional
    /// body, mcp, headers, identity, on_behalf_of, intent, aws_service,
    /// time, repeat, and expect; see README, Policies).
    #[arg(long, conflicts_with_all = ["agent", "method", "url"])]
    cases: Option<PathBuf>,
    #[arg(long, required_unless_present = "cases")]
    agent: Option<String>,
    #[arg(long, required_unless_present = "cases")]
    method: Option<String>,
    #[arg(long, required_unless_present = "cases")]
    url: Option<String>,
    /// The request body: a file, or - for standard input (JSON-RPC for MCP
    /// tools).
    #[arg(long, value_name = "FILE|-", conflicts_with = "cases")]
    body: Option<PathBuf>,
    /// The calling process's executable, as the kernel would report it.
    #[arg(long, conflicts_with = "cases")]
    exe: Option<String>,
    #[arg(long, conflicts_with = "cases")]
    on_behalf_of: Option<String>,
    /// The time of the request (RFC 3339; default now).
    #[arg(long, conflicts_with = "cases")]
    time: Option<String>,
    /// `--format` is the old spelling.
    #[arg(short = 'o', long = "output", alias = "format", value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The candidate policy folder.
    #[arg(long)]
    policies: PathBuf,
    /// The daemon's state folder, whose audit record is replayed.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Only requests since then: a duration ago (24h, 7d) or an RFC 3339
    /// time (default: the whole record).
    #[arg(long)]
    since: Option<String>,
    /// Only this agent's requests.
    #[arg(long)]
    agent: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReplayFormat::Table)]
    format: ReplayFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplayFormat {
    Table,
    Json,
}

/// Exit codes: 0 allow or all cases pass; 1 deny or a mismatch; 2 the
/// policy or the input is invalid.
pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check { path } => check(&path),
        PolicyCommand::Test(args) => test(args),
        PolicyCommand::Replay(args) => replay(args),
        PolicyCommand::Schema { cases } => {
            let schema = if cases {
                policy::cases_schema()
            } else {
                policy::policy_schema()
            };
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match policy::load_path(path) {
        Ok(set) => {
            println!(
                "ok: {} agent(s), policy version {}",
                set.agents.len(),
                set.version
            );
            for file in set.sources() {
                println!("  {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); policy refused", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn test(args: TestArgs) -> ExitCode {
    let set = match policy::load_path(&args.policies) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("invalid policy:\n{errors}");
            return ExitCode::from(2);
        }
    };
    match &args.cases {
        Some(file) => run_cases(&set, file, args.format),
        None => one_request(&set, &args),
    }
}

fn one_request(set: &policy::PolicySet, args: &TestArgs) -> ExitCode {
    let body = match &args.body {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("agentguard: error: failed to read the body from stdin: {e}");
                return ExitCode::from(2);
            }
            Some(text)
        }
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("agentguard: error: failed to read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let case = Case {
        agent: args.agent.clone().unwrap_or_default(),
        method: args.method.clone().unwrap_or_default(),
        url: args.url.clone().unwrap_or_default(),
        body,
        identity: args.exe.as_ref().map(|exe| AgentIdentity {
            exe: Some(exe.clone()),
            ..AgentIdentity::default()
        }),
        on_behalf_of: args.on_behalf_of.clone(),
        time: args.time.clone(),
        ..Case::default()
    };
    match policy::explain_case(set, &case) {
        Ok(explanation) => {
            match args.format {
                OutputFormat::Text => println!("{explanation}"),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string(&explanation).unwrap_or_default()
                ),
            }
            if explanation.allowed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("agentguard: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_cases(set: &policy::PolicySet, file: &Path, format: OutputFormat) -> ExitCode {
    let cases = match policy::read_cases(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agentguard: error: {e}");
            return ExitCode::from(2);
        }
    };
    let results = policy::run_cases(set, &cases.cases);
    let failed = results.iter().filter(|r| !r.passed).count();
    match format {
        OutputFormat::Json => {
            for r in &results {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
        }
        OutputFormat::Text => {
            for r in &results {
                let got: Vec<&str> = r.got.iter().map(|d| Outcome::as_str(d.decision)).collect();
                if r.passed {
                    println!("PASS {} ({})", r.name, got.join(", "));
                } else {
                    println!("FAIL {}", r.name);
                    for m in &r.mismatches {
                        println!("     {m}");
                    }
                }
            }
        }
    }
    // The closing line test runners read: "N passed, N failed".
    eprintln!("{} passed, {failed} failed", results.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(args: ReplayArgs) -> ExitCode {
    let set = match policy::load_path(&args.policies) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("invalid policy:\n{errors}");
            return ExitCode::from(2);
        }
    };
    let since = match args
        .since
        .as_deref()
        .map(|s| audit::query::parse_time(s, std::time::SystemTime::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agentguard: error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = Filter {
        agent: args.agent.clone(),
        kind: Some(Kind::Request),
        since,
        ..Filter::default()
    };
    let records = match audit::Store::open_read_only(&audit::db_path(&args.state_dir))
        .and_then(|store| filter.select(&store, None))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentguard: error: {e}");
            return ExitCode::from(2);
        }
    };
    let events: Vec<(i64, audit::Event)> = records.into_iter().map(|r| (r.seq, r.event)).collect();
    let report = policy::replay(&set, &events);
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the output, not the verdict.
    let _ = match args.format {
        ReplayFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        ),
        ReplayFormat::Table => write_table(&mut out, &report, &set.version),
    };
    if report.denies_allowed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_table(
    out: &mut impl std::io::Write,
    report: &policy::ReplayReport,
    version: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "replayed {} request(s), {} decision(s), under policy version {}; {} skipped (refused before any policy decision)",
        report.events,
        report.decisions,
        &version[..version.len().min(12)],
        report.skipped
    )?;
    let counts: Vec<String> = Change::ALL
        .iter()
        .map(|c| format!("{}: {}", c.as_str(), report.count(*c)))
        .collect();
    writeln!(
        out,
        "{}, unchanged: {}",
        counts.join(", "),
        report.unchanged
    )?;
    if report.changes.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:>6} {:<27} {:<14} {:<40} {:<28} {:<26} NEW",
        "CHANGE", "SEQ", "TIME", "AGENT", "REQUEST", "CALL", "OLD"
    )?;
    for c in &report.changes {
        let changes: Vec<&str> = c.changes.iter().map(|x| x.as_str()).collect();
        let call = match (&c.rpc_method, &c.target, c.member) {
            (m, t, member) if m.is_some() || t.is_some() => format!(
                "{}{}{}",
                m.as_deref().unwrap_or("response"),
                t.as_deref().map(|t| format!(" {t}")).unwrap_or_default(),
                member
                    .filter(|i| *i > 0)
                    .map(|i| format!(" [{i}]"))
                    .unwrap_or_default()
            ),
            _ => "-".to_owned(),
        };
        let new = match &c.new {
            Some(side) => side.summary(),
            None => format!(
                "needs {}, which the record does not hold",
                c.needs.join(", ")
            ),
        };
        writeln!(
            out,
            "{:<20} {:>6} {:<27} {:<14} {:<40} {:<28} {:<26} {new}",
            changes.join(","),
            c.seq,
            c.time,
            c.agent,
            format!("{} {}{}", c.method, c.host, c.path),
            call,
            c.old.summary(),
        )?;
    }
    Ok(())
}
