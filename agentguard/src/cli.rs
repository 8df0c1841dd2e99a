//! Command-line interface: argument parsing and dispatch to the modules.
//!
//! Conventions (those of coreutils and systemd tools, so scripts can tell
//! outcomes apart): exit 0 for success; 1 for a negative answer (`policy
//! test` deny, `audit verify` broken chain, `token verify` invalid token);
//! 2 for a usage error or a check that could not be made; `exec` exits 125
//! when agentguard itself fails, 126 when the command cannot run and 127
//! when it is not found, like env(1), so none of them is mistaken for the
//! agent's own exit code.

mod approve;
mod attach;
mod audit;
mod ca;
mod config;
mod kernel;
mod limits;
mod oci_hook;
mod oci_runtime;
mod policy;
mod run;
mod status;
mod token;
mod web;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, StatusView},
    ca::CaError,
    config::{
        ConfigError, DEFAULT_ADMIN_SOCKET, DEFAULT_BPF_DIR,
        layers::{self, ConfigFile, Layers},
    },
    daemon::{self, DaemonError},
    ebpf::{self, EbpfError},
    exec::{self, ExecError},
    logging::{self, LogFormat},
    preflight::{self, PreflightError},
};

#[derive(Debug, Parser)]
#[command(
    name = "agentguard",
    version,
    about = "Keeps secrets out of AI agents: kernel-attributed egress proxy",
    after_help = "Every option of `run` and the global options are also read from \
                  AGENTGUARD_<OPTION> (e.g. AGENTGUARD_STATE_DIR) and from the config file \
                  (/etc/agentguard/agentguard.toml, key state_dir); a flag wins over the \
                  environment, which wins over the file. `agentguard config show` prints \
                  the result and where each value came from."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The daemon's admin socket: where `run` listens and where the other
    /// commands reach it [default: /run/agentguard/agentguard.sock].
    #[arg(long, global = true, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Config file [default: /etc/agentguard/agentguard.toml, or
    /// $AGENTGUARD_CONFIG].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run(run::RunArgs),
    /// The daemon's configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The web view's users file: password hashes and bearer tokens.
    Web {
        #[command(subcommand)]
        command: web::WebCommand,
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
    /// Run CMD inside an agent's cgroup (joined before exec). Exits 125 if
    /// agentguard fails, 126 if CMD cannot run, 127 if it is not found;
    /// otherwise CMD's own exit code.
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
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Guard the systemd unit this runs in as agent NAME, before the unit's
    /// main process starts: for `ExecStartPre=+agentguard attach --agent
    /// NAME` in the agent's unit (its policy names the unit in
    /// `systemd_unit`). Exits non-zero, failing the unit's start, unless
    /// the daemon guards this very cgroup.
    Attach {
        #[arg(long)]
        agent: String,
        /// How long to wait for a daemon that is not answering yet.
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        wait: String,
    },
    /// OCI runtime hook. At createRuntime it reads the container's state
    /// on stdin and reports the container to the daemon before its
    /// program runs: a container a policy's `[agent.containers]` selects
    /// is attached (programs on its cgroup, listeners in its network
    /// namespace); with `--agent` or the `io.agentguard.agent` annotation
    /// the container must instead be in that agent's cgroup (or below it,
    /// `--cgroup-parent`) and the policy must say `netns = "cgroup"`.
    /// Exits non-zero, failing the container's start, if the daemon
    /// cannot. At poststop it has the daemon forget ended containers.
    OciHook {
        /// The agent; default: the container's `io.agentguard.agent`
        /// annotation.
        #[arg(long)]
        agent: Option<String>,
        /// How long to wait for a daemon that is not answering yet.
        #[arg(long, default_value = "0s", value_name = "DURATION")]
        wait: String,
        /// The container is Docker's, its record under this data root (set
        /// by `oci-runtime`, which adds the hook).
        #[arg(long, value_name = "PATH", conflicts_with = "cri_socket")]
        docker_root: Option<PathBuf>,
        /// The container is a Kubernetes pod's, created through the CRI
        /// that answers on this socket (set by `oci-runtime`).
        #[arg(long, value_name = "PATH")]
        cri_socket: Option<PathBuf>,
        /// With --cri-socket: pods of this namespace start untouched while
        /// the daemon is not running (agentguard's own); repeatable.
        #[arg(long, value_name = "NAMESPACE", requires = "cri_socket")]
        exempt_namespace: Vec<String>,
    },
    /// runc wrapper for runtimes without a hooks folder (Docker, containerd's
    /// CRI): given to dockerd as a runtime (daemon.json `"runtimes"`,
    /// `runtimeArgs` ending in `--`), or to containerd as its runc
    /// (`BinaryName`), it adds `agentguard oci-hook` to each container's bundle
    /// at createRuntime and poststop, then runs runc with the same
    /// arguments. A container no policy selects starts untouched; if the
    /// daemon cannot be reached, none starts.
    OciRuntime {
        /// The runc to run.
        #[arg(long, default_value = "runc", value_name = "PATH")]
        runc: PathBuf,
        /// The hook's --wait: how long it waits for a daemon that is not
        /// answering yet.
        #[arg(long, default_value = "0s", value_name = "DURATION")]
        wait: String,
        /// dockerd's data root (its `--data-root`), where its record of
        /// each container is.
        #[arg(long, default_value = "/var/lib/docker", value_name = "PATH")]
        docker_root: PathBuf,
        /// The containers are Kubernetes pods', created by containerd's CRI,
        /// which answers on this socket (`/run/containerd/containerd.sock`);
        /// instead of --docker-root.
        #[arg(long, value_name = "PATH", conflicts_with = "docker_root")]
        cri_socket: Option<PathBuf>,
        /// With --cri-socket: pods of this Kubernetes namespace start
        /// untouched while the daemon is not running, so that agentguard's
        /// own pod (`agentguard-system`), started by this runc too, can
        /// start; repeatable.
        #[arg(long, value_name = "NAMESPACE", requires = "cri_socket")]
        exempt_namespace: Vec<String>,
        /// runc's own arguments, after `--`.
        #[arg(last = true, required = true, value_name = "RUNC_ARGS")]
        args: Vec<OsString>,
    },
    /// Show the running daemon's status.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = status::Output::Text)]
        output: status::Output,
    },
    /// Print the daemon's recent connection decisions, one JSON object a line.
    Connections,
    /// Print the daemon's recent HTTP request decisions, one JSON object a
    /// line.
    Requests,
    /// The local CA that signs the leaves agents see: export it, rotate it.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    #[command(flatten)]
    Humans(approve::HumanCommand),
    /// Remove agentguard's pinned programs and maps: agents then connect
    /// directly, unguarded. A deliberate uninstall step.
    Detach {
        #[arg(long, default_value = DEFAULT_BPF_DIR)]
        bpf_dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (agentguard.1, agentguard-run.1, ...) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the configuration `run` would use with these flags, the
    /// environment and the config file, and where each value came from.
    /// Exit 1 if it would not start.
    Show {
        #[command(flatten)]
        run: run::RunArgs,
        #[arg(short = 'o', long, value_enum, default_value_t = config::Output::Toml)]
        output: config::Output,
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
    #[error(transparent)]
    WebUsers(#[from] crate::web::users::UsersError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Layers(#[from] layers::LayerError),
    #[error(transparent)]
    Attach(#[from] attach::AttachCliError),
    #[error(transparent)]
    OciHook(#[from] oci_hook::OciHookError),
    #[error(transparent)]
    OciRuntime(#[from] oci_runtime::OciRuntimeError),
    #[error("failed to write man pages into {dir}: {source}")]
    Man {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Exit code of a usage error: like clap's own, except for `exec`.
const USAGE: u8 = 2;
/// `exec`'s own failures (env(1), systemd-run).
const EXEC_FAILED: u8 = 125;
const EXEC_CANNOT_RUN: u8 = 126;
const EXEC_NOT_FOUND: u8 = 127;

pub fn main() -> ExitCode {
    // rustls is built with two providers (aws-lc-rs for the proxy's TLS
    // sides, ring for the rest), so it has no process default of its own:
    // every config here names its provider, and this one serves any that
    // does not (a library's `ClientConfig::builder()`), which would panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let usage = if first_command(&argv).as_deref() == Some("exec") {
        EXEC_FAILED
    } else {
        USAGE
    };
    let (cli, layers, matches) = match parse(&argv) {
        Ok(parsed) => parsed,
        Err(Parse::Clap(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(usage)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(Parse::Layers(e)) => {
            eprintln!("agentguard: error: {e}");
            return ExitCode::from(usage);
        }
    };
    logging::init(cli.log_format);
    if let Some(note) = deprecated_spelling(&argv, &matches) {
        eprintln!("agentguard: warning: {note}");
    }
    let failure = failure_code(&cli.command);
    let admin_socket = cli
        .admin_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let context = Context {
        admin_socket,
        layers,
        matches,
    };
    match dispatch(cli.command, &context) {
        Ok(code) => code,
        Err(e) => {
            let code = match &e {
                CliError::Exec(ExecError::Exec { source, .. }) => {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        EXEC_NOT_FOUND
                    } else {
                        EXEC_CANNOT_RUN
                    }
                }
                _ => failure,
            };
            eprintln!(
                "{}",
                logging::error_line(&format!("agentguard: error: {}", error_chain(&e)))
            );
            ExitCode::from(code)
        }
    }
}

/// What a failing command exits with (an error, not a negative answer).
fn failure_code(command: &Command) -> u8 {
    match command {
        Command::Exec { .. } => EXEC_FAILED,
        // "Could not check" is not "checked and broken" (1).
        Command::Audit {
            command: audit::AuditCommand::Verify { .. },
        }
        | Command::Token {
            command: token::TokenCommand::Verify { .. },
        } => 2,
        _ => 1,
    }
}

/// The first word of the command line that is not an option: the
/// subcommand, for choosing the exit code of a usage error before clap has
/// parsed anything.
fn first_command(argv: &[OsString]) -> Option<String> {
    let mut args = argv.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(arg) = args.next() {
        if arg == "--" {
            return None;
        }
        if let Some(flag) = arg.strip_prefix("--") {
            // Global options that take a separate value.
            if !flag.contains('=') && matches!(flag, "log-format" | "admin-socket" | "config") {
                args.next();
            }
            continue;
        }
        return Some(arg.to_owned());
    }
    None
}

/// A note for an old spelling the command line used, which still works:
/// `--format` of `policy test`, `audit query` and `audit tail`, now
/// `-o`/`--output` like `status`, `connections` and `requests`. clap
/// treats an alias as the option itself, so the words are looked at
/// (before any `--`, and only when the option was given on the command
/// line at all).
fn deprecated_spelling(argv: &[OsString], matches: &clap::ArgMatches) -> Option<&'static str> {
    let leaf = layers::leaf(matches);
    let given = leaf.ids().any(|id| id.as_str() == "format")
        && leaf.value_source("format") == Some(clap::parser::ValueSource::CommandLine);
    let old = argv
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--")
        .any(|a| a == "--format" || a.starts_with("--format="));
    (given && old).then_some("--format is deprecated; use -o/--output (same values)")
}

enum Parse {
    Clap(clap::Error),
    Layers(layers::LayerError),
}

/// Parses the command line in two passes: the first finds the subcommand;
/// the second parses again with the environment's and the config file's
/// values as defaults, so that flags override them and every value goes
/// through the same parser.
fn parse(argv: &[OsString]) -> Result<(Cli, Layers, clap::ArgMatches), Parse> {
    let plain = Cli::command();
    let first = plain
        .clone()
        .try_get_matches_from(argv)
        .map_err(Parse::Clap)?;
    let path = layers::subcommand_path(&first);
    let layers = if path.first().map(String::as_str) == Some("verify-proxy") {
        Layers::default()
    } else {
        let (config_path, explicit) = layers::config_path(argv);
        let file = ConfigFile::load(&config_path, explicit).map_err(Parse::Layers)?;
        Layers::plan(&plain, file.as_ref()).map_err(Parse::Layers)?
    };
    let matches = layers
        .apply(Cli::command(), &path)
        .try_get_matches_from(argv)
        .map_err(Parse::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(Parse::Clap)?;
    Ok((cli, layers, matches))
}

/// What commands need beyond their own arguments.
struct Context {
    admin_socket: PathBuf,
    layers: Layers,
    matches: clap::ArgMatches,
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

fn dispatch(command: Command, context: &Context) -> Result<ExitCode, CliError> {
    let admin_socket = context.admin_socket.as_path();
    match command {
        Command::Run(args) => {
            let cfg = args.config(admin_socket)?;
            runtime()?.block_on(daemon::run(cfg)).map_err(Box::new)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Show { run, output },
        } => {
            let problem = run.config(admin_socket).err().map(|e| e.to_string());
            Ok(config::show(
                &Cli::command(),
                &context.layers,
                layers::leaf(&context.matches),
                output,
                problem,
            ))
        }
        Command::Exec {
            agent,
            user,
            allow_root,
            keep_capabilities,
            allow_namespaces,
            on_behalf_of,
            cmd,
        } => {
            let privileges = exec::Privileges {
                user,
                allow_root,
                keep_capabilities,
                allow_namespaces,
                on_behalf_of,
            };
            match exec::exec(admin_socket, &agent, &privileges, &cmd)? {}
        }
        Command::Attach { agent, wait } => Ok(attach::run(admin_socket, &agent, &wait)?),
        Command::OciHook {
            agent,
            wait,
            docker_root,
            cri_socket,
            exempt_namespace,
        } => {
            let source = match (docker_root, cri_socket) {
                (Some(root), _) => Some(crate::containers::RuntimeSource::Docker(root)),
                (None, Some(socket)) => Some(crate::containers::RuntimeSource::Cri(socket)),
                (None, None) => None,
            };
            let opts = oci_hook::HookOptions {
                agent: agent.as_deref(),
                wait: &wait,
                from: source.as_ref(),
                exempt_namespaces: &exempt_namespace,
            };
            Ok(oci_hook::run(admin_socket, &opts)?)
        }
        Command::OciRuntime {
            runc,
            wait,
            docker_root,
            cri_socket,
            exempt_namespace,
            args,
        } => {
            // The hook parses its --wait when it runs; refuse a bad one
            // here, before any container depends on it.
            crate::config::parse_duration("--wait", &wait)?;
            let hook = oci_runtime::Hook {
                admin_socket,
                wait: &wait,
                source: &match cri_socket {
                    Some(socket) => crate::containers::RuntimeSource::Cri(socket),
                    None => crate::containers::RuntimeSource::Docker(docker_root),
                },
                exempt_namespaces: &exempt_namespace,
            };
            match oci_runtime::run(&hook, &runc, &args)? {}
        }
        Command::Status { output } => {
            let status: StatusView =
                runtime()?.block_on(AdminClient::new(admin_socket).get("/v1/status"))?;
            print!("{}", status::render(&status, output));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => Ok(audit::run(command, admin_socket)?),
        Command::Humans(command) => approve::run(command, admin_socket),
        Command::Web { command } => web::run(command),
        Command::Token { command } => Ok(token::run(command)?),
        Command::VerifyProxy(args) => Ok(token::verify_proxy(args)?),
        Command::Connections => print_lines(admin_socket, "/v1/connections"),
        Command::Requests => print_lines(admin_socket, "/v1/requests"),
        Command::Ca { command } => ca::run(command, admin_socket),
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
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "agentguard",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            write_man_pages(&dir).map_err(|source| CliError::Man { dir, source })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One page for the command and one per subcommand, named as git's are
/// (`agentguard-audit-verify.1`), so `man agentguard-run` finds the flags.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    write_man_page(dir, &cmd, "agentguard")
}

fn write_man_page(dir: &Path, cmd: &clap::Command, name: &str) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_man_page(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

/// Prints a JSON array from the admin API one element a line.
fn print_lines(admin_socket: &Path, route: &str) -> Result<ExitCode, CliError> {
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
