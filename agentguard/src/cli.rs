//! Command-line interface: argument parsing and dispatch to the modules.

mod audit;
mod kernel;
mod limits;
mod policy;
mod token;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, StatusView},
    ca::{CaError, LocalCa},
    config::{
        ConfigError, DEFAULT_ADMIN_SOCKET, DEFAULT_BPF_DIR, DEFAULT_POLICIES_DIR,
        DEFAULT_PROXY_PORT, DEFAULT_STATE_DIR, RunConfig,
    },
    daemon::{self, DaemonError},
    ebpf::{self, EbpfError, UnixGuard},
    exec::{self, ExecError},
    logging::{self, LogFormat},
    preflight::{self, PreflightError},
};

#[derive(Debug, Parser)]
#[command(
    name = "agentguard",
    version,
    about = "Keeps secrets out of AI agents: kernel-attributed egress proxy"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[arg(long, default_value = DEFAULT_POLICIES_DIR)]
        policies: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Port of the proxy on 127.0.0.1 and ::1 (0: any free port).
        #[arg(long, default_value_t = DEFAULT_PROXY_PORT)]
        proxy_port: u16,
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
        /// bpffs directory where programs and maps are pinned.
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
        /// Extra CA certificates (PEM) to trust for upstreams, beside the
        /// system roots.
        #[arg(long)]
        upstream_ca: Option<PathBuf>,
        /// Resolvers that agents' allowed DNS queries are forwarded to
        /// (repeatable; default: the nameservers in /etc/resolv.conf).
        #[arg(long, value_name = "ADDR:PORT")]
        dns_upstream: Vec<std::net::SocketAddr>,
        /// Also record every redirect the kernel makes, not only refusals.
        #[arg(long)]
        report_kernel_redirects: bool,
        /// Start even if the kernel lacks the Unix-socket hooks (before
        /// Linux 6.7): agents can then reach any Unix socket. Without this
        /// flag such a kernel stops start-up.
        #[arg(long)]
        allow_unguarded_unix_sockets: bool,
        #[command(flatten)]
        kernel: kernel::KernelRunArgs,
        #[command(flatten)]
        audit: audit::AuditRunArgs,
        #[command(flatten)]
        tokens: token::TokenRunArgs,
        #[command(flatten)]
        limits: Box<limits::LimitRunArgs>,
    },
    /// Request-bound tokens: print the JWKS, verify a token.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// A reverse proxy for tool servers: forwards only requests whose
    /// agentguard token verifies and is bound to them.
    VerifyProxy(token::VerifyProxyArgs),
    /// The audit record: verify, query, follow.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Run CMD inside an agent's cgroup (joined before exec).
    Exec {
        #[arg(long)]
        agent: String,
        /// Run the agent as USER[:GROUP] (names or numbers).
        #[arg(long, value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// Allow running the agent as root (it is refused otherwise).
        #[arg(long)]
        allow_root: bool,
        /// Keep capabilities and do not set no_new_privs.
        #[arg(long)]
        keep_capabilities: bool,
        /// Let the agent create user and mount namespaces and mount (refused
        /// by a seccomp filter otherwise: with them it could put any socket
        /// under a path its policy allows).
        #[arg(long)]
        allow_namespaces: bool,
        /// The human or session the agent acts for: named in the `act`
        /// claim of its request-bound tokens and in audit events.
        #[arg(long, value_name = "WHO")]
        on_behalf_of: Option<String>,
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Show the running daemon's status (JSON).
    Status {
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Print the daemon's recent connection decisions, one JSON object a line.
    Connections {
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Print the daemon's recent HTTP request decisions, one JSON object a
    /// line.
    Requests {
        #[arg(long, default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// The local CA that signs the leaves agents see.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Remove agentguard's pinned programs and maps: agents then connect
    /// directly, unguarded. A deliberate uninstall step.
    Detach {
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM), to trust it where `agentguard exec`
    /// does not set things up (systemd units, containers).
    Export {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    // Boxed: the daemon's error is large, and every CLI path returns this.
    Daemon(#[from] Box<DaemonError>),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Audit(#[from] audit::AuditCliError),
    #[error(transparent)]
    Token(#[from] token::TokenCliError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentguard: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping causes whose text the message already
/// carries (most of ours embed their source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn dispatch(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Run {
            policies,
            state_dir,
            proxy_port,
            admin_socket,
            bpf_dir,
            upstream_ca,
            dns_upstream,
            report_kernel_redirects,
            allow_unguarded_unix_sockets,
            kernel,
            audit,
            tokens,
            limits,
        } => {
            let cfg = RunConfig {
                dns_upstreams: dns_upstream,
                report_kernel_redirects,
                unix_guard: if allow_unguarded_unix_sockets {
                    UnixGuard::Optional
                } else {
                    UnixGuard::Required
                },
                kernel: kernel.options()?,
                policies_dir: policies,
                state_dir,
                admin_socket,
                bpf_dir,
                proxy_port,
                upstream_ca,
                audit: audit.options()?,
                metrics_listen: audit.metrics_listen,
                otlp: audit.otlp()?,
                tokens: tokens.options()?,
                limits: limits.options()?,
            }
            .validate()?;
            runtime()?.block_on(daemon::run(cfg)).map_err(Box::new)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            agent,
            user,
            allow_root,
            keep_capabilities,
            allow_namespaces,
            on_behalf_of,
            admin_socket,
            cmd,
        } => {
            let privileges = exec::Privileges {
                user,
                allow_root,
                keep_capabilities,
                allow_namespaces,
                on_behalf_of,
            };
            match exec::exec(&admin_socket, &agent, &privileges, &cmd)? {}
        }
        Command::Status { admin_socket } => {
            let status: StatusView =
                runtime()?.block_on(AdminClient::new(&admin_socket).get("/v1/status"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => Ok(audit::run(command)?),
        Command::Token { command } => Ok(token::run(command)?),
        Command::VerifyProxy(args) => Ok(token::verify_proxy(args)?),
        Command::Connections { admin_socket } => print_lines(&admin_socket, "/v1/connections"),
        Command::Requests { admin_socket } => print_lines(&admin_socket, "/v1/requests"),
        Command::Ca {
            command: CaCommand::Export { state_dir },
        } => {
            let ca = LocalCa::load(&state_dir)?;
            print!("{}", ca.cert_pem());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => Ok(policy::run(command)),
        Command::Detach { bpf_dir } => {
            preflight::require_root("detach")?;
            let removed = ebpf::detach_all(&bpf_dir)?;
            println!(
                "detached {removed} program links from {}; agents now connect unguarded",
                bpf_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a JSON array from the admin API one element a line.
fn print_lines(admin_socket: &std::path::Path, route: &str) -> Result<ExitCode, CliError> {
    let entries: Vec<serde_json::Value> =
        runtime()?.block_on(AdminClient::new(admin_socket).get(route))?;
    for entry in entries {
        println!("{entry}");
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}
