//! `agentguard ca`: the local CA's certificate, and rotating it through
//! the running daemon (`crate::ca::rotation` says why in two steps).

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use crate::{
    admin::AdminClient,
    ca::{CaInfo, LocalCa, Step},
    config::DEFAULT_STATE_DIR,
};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), to trust it where `agentguard exec`
    /// does not set things up (systemd units, containers).
    Export {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// During a rotation, also the staged next CA's certificate: what
        /// a tool server or image that pins agentguard's CA should trust
        /// before the next CA is activated.
        #[arg(long)]
        all: bool,
    },
    /// List the CAs agents are to trust: the one that signs, and a staged
    /// next one (SHA-256 fingerprint, expiry).
    List,
    /// Stage a new CA: it goes into the trust bundle beside the current
    /// one, which still signs. Restart every agent afterwards (they read
    /// the bundle when they start), then `agentguard ca activate`.
    Rotate,
    /// Make the staged CA the one that signs every new leaf; the old key
    /// is deleted and the old certificate leaves the bundle. Agents started
    /// before `rotate` will fail TLS through the proxy until restarted.
    Activate,
    /// Drop the staged CA (before `activate`).
    Cancel,
}

pub fn run(
    command: CaCommand,
    admin_socket: &std::path::Path,
) -> Result<ExitCode, super::CliError> {
    let step = match command {
        CaCommand::Export { state_dir, all } => {
            for pem in LocalCa::read_certs(&state_dir, all)? {
                print!("{pem}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        CaCommand::List => {
            let cas: Vec<CaInfo> =
                super::runtime()?.block_on(AdminClient::new(admin_socket).get("/v1/ca"))?;
            print_cas(&cas);
            return Ok(ExitCode::SUCCESS);
        }
        CaCommand::Rotate => Step::Rotate,
        CaCommand::Activate => Step::Activate,
        CaCommand::Cancel => Step::Cancel,
    };
    let by = form_urlencoded::Serializer::new(String::new())
        .append_pair("by", &super::approve::caller())
        .finish();
    let answer: StepAnswer = super::runtime()?
        .block_on(AdminClient::new(admin_socket).post(&format!("/v1/ca/{}?{by}", step.as_str())))?;
    print_cas(&answer.ca);
    println!(
        "{}",
        match step {
            Step::Rotate =>
                "staged a next CA: agents started from now on trust it; restart every agent, then run `agentguard ca activate`",
            Step::Activate => "the next CA now signs every new leaf; the old CA's key is deleted",
            Step::Cancel => "dropped the staged CA",
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Deserialize)]
struct StepAnswer {
    ca: Vec<CaInfo>,
}

fn print_cas(cas: &[CaInfo]) {
    for ca in cas {
        println!(
            "{:<6}  sha256 {}  until {} ({} days)",
            ca.role.as_str(),
            ca.sha256,
            ca.not_after,
            ca.days_left
        );
    }
}
