//! `agentguard approvals`, `approve`, `deny`, `revoke` and `restore`: what
//! people do to running agents, through the admin socket (see
//! `crate::oversight`).

use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use crate::{
    admin::AdminClient,
    approvals::PendingView,
    oversight::{RestoreOutcome, RevokeOutcome},
};

#[derive(Debug, Subcommand)]
pub enum HumanCommand {
    /// List the requests waiting for approval, one JSON object a line.
    Approvals,
    /// Approve a held request: it is sent upstream, once.
    Approve {
        /// The request's id (`agentguard approvals`).
        id: String,
        /// The request hash you were shown: refused if it is not this
        /// request's.
        #[arg(long)]
        hash: Option<String>,
    },
    /// Deny a held request: the agent gets 403 with the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        hash: Option<String>,
    },
    /// Revoke an agent now: its connections are closed, new ones refused,
    /// held requests denied, cached tokens dropped; kept across restarts.
    Revoke {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift an agent's revocation.
    Restore {
        #[arg(long)]
        agent: String,
    },
}

pub fn run(command: HumanCommand, admin_socket: &Path) -> Result<ExitCode, super::CliError> {
    let rt = super::runtime()?;
    let by = caller();
    let query = |pairs: &[(&str, Option<&str>)]| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("by", &by);
        for (k, v) in pairs {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        q.finish()
    };
    let segment = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    match command {
        HumanCommand::Approvals => {
            let pending: Vec<PendingView> =
                rt.block_on(AdminClient::new(admin_socket).get("/v1/approvals"))?;
            for p in pending {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        HumanCommand::Approve { id, hash } => {
            let route = format!(
                "/v1/approvals/{}/approve?{}",
                segment(&id),
                query(&[("hash", hash.as_deref())])
            );
            let view: PendingView = rt.block_on(AdminClient::new(admin_socket).post(&route))?;
            println!(
                "approved {} {} {} of agent {:?}",
                view.id, view.method, view.url, view.agent
            );
            Ok(ExitCode::SUCCESS)
        }
        HumanCommand::Deny { id, reason, hash } => {
            let route = format!(
                "/v1/approvals/{}/deny?{}",
                segment(&id),
                query(&[("reason", reason.as_deref()), ("hash", hash.as_deref())])
            );
            let view: PendingView = rt.block_on(AdminClient::new(admin_socket).post(&route))?;
            println!(
                "denied {} {} {} of agent {:?}",
                view.id, view.method, view.url, view.agent
            );
            Ok(ExitCode::SUCCESS)
        }
        HumanCommand::Revoke { agent, reason } => {
            let route = format!(
                "/v1/agents/{}/revoke?{}",
                segment(&agent),
                query(&[("reason", reason.as_deref())])
            );
            let out: RevokeOutcome = rt.block_on(AdminClient::new(admin_socket).post(&route))?;
            println!(
                "revoked agent {:?}{}: {} connection(s) closed, {} held request(s) denied, {} cached credential(s) dropped",
                out.agent,
                if out.newly_revoked {
                    ""
                } else {
                    " (already revoked)"
                },
                out.connections_closed,
                out.approvals_denied,
                out.credentials_dropped
            );
            Ok(warned(&out.warnings))
        }
        HumanCommand::Restore { agent } => {
            let route = format!("/v1/agents/{}/restore?{}", segment(&agent), query(&[]));
            let out: RestoreOutcome = rt.block_on(AdminClient::new(admin_socket).post(&route))?;
            println!("restored agent {:?}", out.agent);
            Ok(warned(&out.warnings))
        }
    }
}

/// Warnings go to stderr, and make the exit status 1: the action took
/// effect in the proxy, but something needs the operator.
fn warned(warnings: &[String]) -> ExitCode {
    for w in warnings {
        eprintln!("agentguard: warning: {w}");
    }
    if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The person behind the command, as the record will name them: the user
/// who ran sudo, else the login name.
pub(super) fn caller() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_default()
}
