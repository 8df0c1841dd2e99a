//! `agentguard token ...`, `agentguard verify-proxy`, and the token flags of
//! `agentguard run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, Subcommand};
use thiserror::Error;

use crate::{
    config::{
        ConfigError, DEFAULT_JWKS_LISTEN, DEFAULT_JWT_MAX_BODY, DEFAULT_STATE_DIR, TokenOptions,
        parse_jwks_listen, parse_size,
    },
    token::{
        DEFAULT_TRUST_DOMAIN, JwksSource, KeyError, KeyStore, RequestBinding, Verifier,
        VerifierConfig, VerifyError, VerifyProxy,
    },
};

#[derive(Debug, Error)]
pub enum TokenCliError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Usage(String),
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Token flags of `agentguard run`.
#[derive(Debug, Args)]
pub struct TokenRunArgs {
    /// Trust domain of the agents' identity URIs
    /// (`spiffe://<trust-domain>/agent/<name>`) and of the issuer.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Where the JWKS for request-bound tokens is served
    /// (`/.well-known/jwks.json`), or `off`.
    #[arg(long, default_value = DEFAULT_JWKS_LISTEN, value_name = "ADDR|off")]
    jwks_listen: String,
    /// Request bodies of JWT-bound tools are read whole (to hash them) up to
    /// this size; larger ones are refused with 413.
    #[arg(long, default_value = DEFAULT_JWT_MAX_BODY, value_name = "SIZE")]
    jwt_max_body: String,
    /// Signing algorithm of new token keys: es256 (P-256) or eddsa
    /// (Ed25519). A key of the other kind is rotated out at start.
    #[arg(long, default_value = "es256", value_name = "es256|eddsa")]
    token_algorithm: String,
}

impl TokenRunArgs {
    pub fn options(&self) -> Result<TokenOptions, ConfigError> {
        let max_body = parse_size("--jwt-max-body", &self.jwt_max_body)?;
        Ok(TokenOptions {
            trust_domain: self.trust_domain.clone(),
            jwks_listen: parse_jwks_listen(&self.jwks_listen)?,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            algorithm: crate::token::SigningAlgorithm::parse(&self.token_algorithm)
                .map_err(ConfigError::TokenAlgorithm)?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the JWKS (the public keys tokens are verified with).
    Jwks {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Rotate the running daemon's token signing key. Tokens signed by the
    /// old key keep verifying until they expire (the JWKS lists both).
    Rotate {
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Verify a token read from stdin: signature, issuer, audience,
    /// lifetime, scope and, with --method and --url, its binding to that
    /// request. Exit 0 if valid, 1 if not, 2 if it could not be checked
    /// (JWKS unreadable, bad arguments).
    Verify {
        /// JWKS URL (http(s)://...) or file.
        #[arg(long, value_name = "URL|FILE")]
        jwks: String,
        #[arg(long)]
        audience: String,
        /// The issuer every token must carry (`iss`):
        /// spiffe://<trust-domain>/agentguard, as the daemon logs it at start
        /// (spiffe://agentguard.local/agentguard by default).
        #[arg(long, required_unless_present = "any_issuer")]
        issuer: Option<String>,
        /// Accept any issuer the JWKS holds a key for instead (safe only if
        /// the JWKS is one agentguard's alone).
        #[arg(long, conflicts_with = "issuer")]
        any_issuer: bool,
        /// Scopes the token must grant (space-separated).
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, requires = "url")]
        method: Option<String>,
        #[arg(long, requires = "method")]
        url: Option<String>,
        /// The request body (default: empty).
        #[arg(long, requires = "url")]
        body_file: Option<PathBuf>,
        /// `-` (the default): read the token from stdin. A token given
        /// here instead is accepted but deprecated: `ps` shows it to every
        /// user of the host.
        #[arg(default_value = "-", value_name = "-")]
        token: String,
    },
}

/// `agentguard verify-proxy`.
#[derive(Debug, Args)]
pub struct VerifyProxyArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// The tool server (http(s)://host:port[/prefix]).
    #[arg(long)]
    upstream: String,
    #[arg(long)]
    audience: String,
    /// JWKS URL (http(s)://...) or file.
    #[arg(long, value_name = "URL|FILE")]
    jwks: String,
    /// Scopes every token must grant (space-separated); else 403.
    #[arg(long)]
    scope: Option<String>,
    /// The issuer every token must carry (`iss`):
    /// spiffe://<trust-domain>/agentguard, as the daemon logs it at start
    /// (spiffe://agentguard.local/agentguard by default).
    #[arg(long, required_unless_present = "any_issuer")]
    issuer: Option<String>,
    /// Accept any issuer the JWKS holds a key for instead (safe only if
    /// the JWKS is one agentguard's alone).
    #[arg(long, conflicts_with = "issuer")]
    any_issuer: bool,
    /// Serve TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The scheme clients reach this proxy with, for the token's htu
    /// (default: https with --tls-cert, else http; say https behind a TLS
    /// terminator).
    #[arg(long, value_parser = ["http", "https"])]
    public_scheme: Option<String>,
    /// Larger request bodies are refused with 413.
    #[arg(long, default_value = DEFAULT_JWT_MAX_BODY, value_name = "SIZE")]
    max_body: String,
    /// Extra CA certificates (PEM) trusted for an https upstream, beside
    /// the system roots.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Also record every decision in the audit record of the daemon whose
    /// admin socket this is (when running beside it).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
}

fn runtime() -> Result<tokio::runtime::Runtime, TokenCliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(TokenCliError::Runtime)
}

fn config(
    audience: &str,
    issuer: Option<&str>,
    any_issuer: bool,
    scope: Option<String>,
) -> Result<VerifierConfig, TokenCliError> {
    if audience.is_empty() {
        return Err(TokenCliError::Usage("--audience must not be empty".into()));
    }
    // A JWKS may hold the keys of more than one issuer; accepting all of
    // them must be asked for, never the default. (clap enforces this too;
    // this keeps it true for any other caller.)
    match (issuer, any_issuer) {
        (Some(""), _) => {
            return Err(TokenCliError::Usage("--issuer must not be empty".into()));
        }
        (None, false) => {
            return Err(TokenCliError::Usage(
                "--issuer ISSUER is required (spiffe://<trust-domain>/agentguard), or --any-issuer"
                    .into(),
            ));
        }
        (Some(_), true) => {
            return Err(TokenCliError::Usage(
                "--issuer and --any-issuer exclude each other".into(),
            ));
        }
        _ => {}
    }
    let mut cfg = VerifierConfig::new(audience, issuer);
    cfg.scope = scope;
    Ok(cfg)
}

pub fn run(command: TokenCommand) -> Result<ExitCode, TokenCliError> {
    match command {
        TokenCommand::Jwks { state_dir } => {
            let keys = KeyStore::load(&state_dir)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&keys.jwks()).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Rotate { admin_socket } => {
            let answer: serde_json::Value = runtime()?
                .block_on(crate::admin::AdminClient::new(&admin_socket).post("/v1/token/rotate"))?;
            println!("{answer}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Verify {
            jwks,
            audience,
            issuer,
            any_issuer,
            scope,
            method,
            url,
            body_file,
            token,
        } => {
            let source = JwksSource::parse(&jwks).map_err(TokenCliError::Usage)?;
            let binding = match (method, url) {
                (Some(m), Some(u)) => {
                    let body = match body_file {
                        Some(f) => std::fs::read(&f).map_err(|e| {
                            TokenCliError::Usage(format!("--body-file {}: {e}", f.display()))
                        })?,
                        None => Vec::new(),
                    };
                    Some(RequestBinding::from_url(&m, &u, &body).map_err(TokenCliError::Usage)?)
                }
                _ => None,
            };
            let cfg = config(&audience, issuer.as_deref(), any_issuer, scope)?;
            let token = read_token(token)?;
            let result = runtime()?.block_on(async {
                let verifier = Verifier::new(cfg, source).await?;
                verifier.check(token.trim(), binding.as_ref()).await
            });
            match result {
                Ok(claims) => {
                    let verdict = serde_json::json!({
                        "valid": true,
                        "binding_checked": binding.is_some(),
                        "claims": claims,
                    });
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&verdict).unwrap_or_default()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(VerifyError::Jwks(e)) => Err(VerifyError::Jwks(e).into()),
                Err(e) => {
                    let verdict = serde_json::json!({ "valid": false, "error": e.to_string() });
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&verdict).unwrap_or_default()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The token from stdin for `-`; an argument is still taken, with a
/// warning, so that existing scripts keep working while they move.
fn read_token(arg: String) -> Result<String, TokenCliError> {
    if arg != "-" {
        eprintln!(
            "agentguard: warning: a token on the command line is visible to every user in `ps`; \
             this form is deprecated: pipe the token in and pass `-`"
        );
        return Ok(arg);
    }
    let mut token = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
        .map_err(|e| TokenCliError::Usage(format!("failed to read the token from stdin: {e}")))?;
    if token.trim().is_empty() {
        return Err(TokenCliError::Usage(
            "no token on stdin (pipe it in: ... | agentguard token verify ... -)".into(),
        ));
    }
    Ok(token)
}

pub fn verify_proxy(args: VerifyProxyArgs) -> Result<ExitCode, TokenCliError> {
    let upstream: hyper::Uri = args
        .upstream
        .parse()
        .map_err(|e| TokenCliError::Usage(format!("--upstream {:?}: {e}", args.upstream)))?;
    if !matches!(upstream.scheme_str(), Some("http" | "https")) || upstream.authority().is_none() {
        return Err(TokenCliError::Usage(format!(
            "--upstream {:?} must be http(s)://host[:port]",
            args.upstream
        )));
    }
    let source = JwksSource::parse(&args.jwks).map_err(TokenCliError::Usage)?;
    let max_body = parse_size("--max-body", &args.max_body)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(crate::token::tls_acceptor(c, k).map_err(TokenCliError::Usage)?),
        _ => None,
    };
    let public_scheme = args
        .public_scheme
        .clone()
        .unwrap_or_else(|| if tls.is_some() { "https" } else { "http" }.to_owned());
    let upstream_ca = match &args.upstream_ca {
        Some(p) => crate::token::read_certs(p).map_err(TokenCliError::Usage)?,
        None => Vec::new(),
    };
    let cfg = config(
        &args.audience,
        args.issuer.as_deref(),
        args.any_issuer,
        args.scope,
    )?;
    runtime()?.block_on(async move {
        let verifier = Verifier::new(cfg, source).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| TokenCliError::Listen {
                addr: args.listen,
                source,
            })?;
        let local = listener.local_addr().unwrap_or(args.listen);
        let issuer = args.issuer.as_deref().unwrap_or("any");
        tracing::info!(listen = %local, upstream = %upstream, audience = %args.audience, issuer, "verify-proxy ready");
        // The chosen port on stdout, for scripts that bind port 0.
        println!("listening on {local}");
        let proxy = Arc::new(VerifyProxy {
            verifier,
            upstream,
            public_scheme,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            tls,
            upstream_ca,
            reporter: args.admin_socket.as_deref().map(crate::token::Reporter::new),
            timeouts: crate::token::ProxyTimeouts::default(),
        });
        proxy.serve(listener).await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct VerifyProxyCli {
        #[command(flatten)]
        args: VerifyProxyArgs,
    }

    #[derive(Debug, Parser)]
    struct TokenCli {
        #[command(subcommand)]
        command: TokenCommand,
    }

    #[test]
    fn verify_proxy_and_token_verify_require_an_issuer_or_any_issuer() {
        let proxy = |extra: &[&str]| {
            let mut argv = vec!["vp", "--listen", "127.0.0.1:0", "--upstream", "http://u"];
            argv.extend(["--audience", "itsm", "--jwks", "jwks.json"]);
            argv.extend(extra);
            VerifyProxyCli::try_parse_from(argv)
        };
        let verify = |extra: &[&str]| {
            let mut argv = vec!["token", "verify", "--jwks", "jwks.json", "--audience", "a"];
            argv.extend(extra);
            argv.push("TOKEN");
            TokenCli::try_parse_from(argv)
        };
        let iss = ["--issuer", "spiffe://agentguard.local/agentguard"];
        let both = [iss[0], iss[1], "--any-issuer"];
        for (what, neither, issuer, any, both) in [
            (
                "verify-proxy",
                proxy(&[]).err(),
                proxy(&iss).err(),
                proxy(&["--any-issuer"]).err(),
                proxy(&both).err(),
            ),
            (
                "token verify",
                verify(&[]).err(),
                verify(&iss).err(),
                verify(&["--any-issuer"]).err(),
                verify(&both).err(),
            ),
        ] {
            let neither = neither.unwrap_or_else(|| panic!("{what}: no issuer accepted"));
            assert!(
                neither.to_string().contains("--issuer"),
                "{what}: {neither}"
            );
            assert!(issuer.is_none(), "{what}: {issuer:?}");
            assert!(any.is_none(), "{what}: {any:?}");
            assert!(
                both.is_some(),
                "{what}: --issuer with --any-issuer accepted"
            );
        }
        // The same rule for callers that do not come through clap.
        assert!(config("itsm", None, false, None).is_err());
        assert!(config("itsm", Some(""), false, None).is_err());
        assert!(config("itsm", Some("x"), true, None).is_err());
        let cfg = config("itsm", Some(iss[1]), false, None).unwrap();
        assert_eq!(cfg.issuer.as_deref(), Some(iss[1]));
        assert_eq!(config("itsm", None, true, None).unwrap().issuer, None);
    }
}
