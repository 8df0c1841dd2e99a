//! `agentguard policy check | test | schema`: the policy author's tools,
//! run without a daemon and without reading a secret.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;

use crate::{
    config::DEFAULT_POLICIES_DIR,
    policy::{self, AgentIdentity, Case, Outcome},
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
    /// body, mcp, headers, identity, on_behalf_of, intent, time, repeat,
    /// and expect; see README, Policies).
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
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Exit codes: 0 allow or all cases pass; 1 deny or a mismatch; 2 the
/// policy or the input is invalid.
pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check { path } => check(&path),
        PolicyCommand::Test(args) => test(args),
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
