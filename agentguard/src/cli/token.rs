//! `agentguard token ...`, `agentguard verify-proxy`, and the token flags of
//! `agentguard run`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, Subcommand};
use thiserror::Error;

use crate::{
    config::{
        ConfigError, DEFAULT_JWKS_LISTEN, DEFAULT_JWT_MAX_BODY, DEFAULT_STATE_DIR, JwksTlsOptions,
        TokenOptions, parse_duration, parse_jwks_listen, parse_size,
    },
    token::{
        DEFAULT_TRUST_DOMAIN, JwksSource, KeyError, Origin, RequestBinding, Verifier,
        VerifierConfig, VerifyError, published_jwks,
    },
    verify_proxy::{ProxyTimeouts, ResourceFront, VerifyProxy},
};

mod replay_store;

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
    #[error("--replay-store: {0}")]
    ReplayStore(#[from] agentguard_verify::replay::ReplayError),
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
    /// Signing algorithm of request-bound tokens: eddsa (Ed25519) or es256
    /// (P-256). A key of the other kind is rotated out at start. Unset: an
    /// existing key keeps its algorithm, a new one is eddsa. (Identity
    /// tokens for authorization servers are always es256.)
    #[arg(long, value_name = "eddsa|es256")]
    token_algorithm: Option<String>,
    /// Serve the JWKS with this certificate chain (PEM)... (default: a leaf
    /// from agentguard's CA, <state-dir>/ca/ca.crt)
    #[arg(long, requires = "jwks_tls_key", conflicts_with = "jwks_plain_http")]
    jwks_tls_cert: Option<PathBuf>,
    /// ...and this key (PEM).
    #[arg(long, requires = "jwks_tls_cert")]
    jwks_tls_key: Option<PathBuf>,
    /// A name (DNS or IP) the CA's JWKS certificate is also for, beside
    /// localhost and the listen address; repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "jwks_plain_http")]
    jwks_tls_name: Vec<String>,
    /// Serve the JWKS over plain HTTP (only on a loopback address).
    #[arg(long)]
    jwks_plain_http: bool,
}

impl TokenRunArgs {
    pub fn options(&self) -> Result<TokenOptions, ConfigError> {
        let max_body = parse_size("--jwt-max-body", &self.jwt_max_body)?;
        Ok(TokenOptions {
            trust_domain: self.trust_domain.clone(),
            jwks_listen: parse_jwks_listen(&self.jwks_listen)?,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            algorithm: self
                .token_algorithm
                .as_deref()
                .map(crate::token::SigningAlgorithm::parse)
                .transpose()
                .map_err(ConfigError::TokenAlgorithm)?,
            jwks_tls: JwksTlsOptions {
                cert_and_key: self.jwks_tls_cert.clone().zip(self.jwks_tls_key.clone()),
                names: self.jwks_tls_name.clone(),
                plain_http: self.jwks_plain_http,
            },
        })
    }
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the JWKS (the public keys tokens are verified with).
    Jwks {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Rotate the running daemon's token signing keys (request-bound and
    /// identity). Tokens signed by the old keys keep verifying until they
    /// expire (the JWKS lists them).
    Rotate {
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Verify a token read from stdin: signature, issuer, audience,
    /// lifetime, scope and, with --method and --url, its binding to that
    /// request. Exit 0 if valid, 1 if not, 2 if it could not be checked
    /// (JWKS unreadable, bad arguments).
    Verify {
        /// JWKS URL (https://..., or http:// to loopback) or file.
        #[arg(long, value_name = "URL|FILE")]
        jwks: String,
        #[command(flatten)]
        jwks_trust: JwksTrustArgs,
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

/// How a JWKS URL is trusted.
#[derive(Debug, Args)]
pub struct JwksTrustArgs {
    /// CA certificates (PEM) trusted for an https JWKS URL beside the
    /// system roots: <state-dir>/ca/ca.crt for the daemon's own.
    #[arg(long, value_name = "FILE")]
    jwks_ca: Option<PathBuf>,
    /// Allow a plain http:// JWKS URL to a host that is not loopback
    /// (anyone on the path could swap the keys).
    #[arg(long)]
    jwks_allow_http: bool,
}

impl JwksTrustArgs {
    fn source(&self, jwks: &str) -> Result<JwksSource, TokenCliError> {
        let usage = |e: String| TokenCliError::Usage(format!("--jwks: {e}"));
        let source =
            JwksSource::parse_with(jwks, self.jwks_allow_http).map_err(|e| usage(e.to_string()))?;
        Ok(match &self.jwks_ca {
            Some(ca) => source.with_roots(
                crate::token::read_certs(ca)
                    .map_err(|e| TokenCliError::Usage(format!("--jwks-ca {e}")))?,
            ),
            None => source,
        })
    }
}

/// `agentguard verify-proxy`.
#[derive(Debug, Args)]
pub struct VerifyProxyArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// The tool server (http(s)://host:port[/prefix]).
    #[arg(long)]
    upstream: String,
    /// The `aud` tokens must carry.
    #[arg(
        long,
        required_unless_present = "resource",
        conflicts_with = "resource"
    )]
    audience: Option<String>,
    /// Front an MCP server as a protected resource: its canonical resource
    /// URI (RFC 8707, e.g. https://tool.example.com/mcp) is the audience and
    /// the public origin, and its RFC 9728 metadata is served at
    /// /.well-known/oauth-protected-resource[/path].
    #[arg(long, value_name = "URI")]
    resource: Option<String>,
    /// The authorization server the metadata names (repeatable; default:
    /// the --issuer).
    #[arg(long, value_name = "ISSUER", requires = "resource")]
    authorization_server: Vec<String>,
    /// JWKS URL (https://..., or http:// to loopback) or file.
    #[arg(long, value_name = "URL|FILE")]
    jwks: String,
    #[command(flatten)]
    jwks_trust: JwksTrustArgs,
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
    /// terminator). The authority is then the request's Host.
    #[arg(long, value_parser = ["http", "https"], conflicts_with = "public_origin")]
    public_scheme: Option<String>,
    /// The origin clients reach the tool under (https://tool.example.com):
    /// tokens must be bound to it, whatever Host the client sends, so a
    /// token captured for another instance with the same audience is
    /// refused here.
    #[arg(long, value_name = "URL")]
    public_origin: Option<String>,
    /// Where spent tokens are kept: a file (default:
    /// <state-dir>/verify-proxy/replay-<hash>.redb), redis://HOST:PORT[/DB]
    /// or rediss:// (shared by replicas), or `memory`.
    #[arg(long, value_name = "PATH|URL|memory")]
    replay_store: Option<String>,
    /// The Redis password (AUTH), read from this file.
    #[arg(long, value_name = "FILE")]
    replay_store_password_file: Option<PathBuf>,
    /// CA certificates (PEM) a rediss:// server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    replay_store_ca: Option<PathBuf>,
    /// Where the default replay store file goes.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// How long the tool may take to start its answer (then 504).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    upstream_timeout: String,
    /// Send the tool this bearer token (read from the file) instead of
    /// none: the agent's token is never passed on.
    #[arg(long, value_name = "FILE")]
    upstream_token_file: Option<PathBuf>,
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
            let jwks = published_jwks(&state_dir)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&jwks).unwrap_or_default()
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
            jwks_trust,
            audience,
            issuer,
            any_issuer,
            scope,
            method,
            url,
            body_file,
            token,
        } => {
            let source = jwks_trust.source(&jwks)?;
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
    let usage = TokenCliError::Usage;
    let upstream: hyper::Uri = args
        .upstream
        .parse()
        .map_err(|e| usage(format!("--upstream {:?}: {e}", args.upstream)))?;
    if !matches!(upstream.scheme_str(), Some("http" | "https")) || upstream.authority().is_none() {
        return Err(usage(format!(
            "--upstream {:?} must be http(s)://host[:port]",
            args.upstream
        )));
    }
    let source = args.jwks_trust.source(&args.jwks)?;
    let max_body = parse_size("--max-body", &args.max_body)?;
    let upstream_timeout = parse_duration("--upstream-timeout", &args.upstream_timeout)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(crate::token::tls_acceptor(c, k).map_err(usage)?),
        _ => None,
    };
    let public_scheme = args
        .public_scheme
        .clone()
        .unwrap_or_else(|| if tls.is_some() { "https" } else { "http" }.to_owned());
    let upstream_ca = match &args.upstream_ca {
        Some(p) => crate::token::read_certs(p).map_err(usage)?,
        None => Vec::new(),
    };
    let upstream_authorization = match &args.upstream_token_file {
        Some(f) => Some(upstream_token(f)?),
        None => None,
    };
    let audience = args
        .resource
        .clone()
        .or(args.audience.clone())
        .unwrap_or_default();
    let mut cfg = config(
        &audience,
        args.issuer.as_deref(),
        args.any_issuer,
        args.scope.clone(),
    )?;
    cfg.origin = origin(args.resource.as_deref(), args.public_origin.as_deref())?;
    let resource = match &args.resource {
        Some(resource) => {
            let servers = if args.authorization_server.is_empty() {
                args.issuer.iter().cloned().collect()
            } else {
                args.authorization_server.clone()
            };
            let jwks_uri = args.jwks.starts_with("https://").then(|| args.jwks.clone());
            Some(
                ResourceFront::new(resource, servers, args.scope.as_deref(), jwks_uri)
                    .map_err(|e| usage(format!("--resource: {e}")))?,
            )
        }
        None => None,
    };
    let store_spec = replay_store::Spec::parse(
        args.replay_store.as_deref(),
        &args.state_dir,
        &audience,
        args.listen,
        args.replay_store_password_file.as_deref(),
        args.replay_store_ca.as_deref(),
    )?;
    runtime()?.block_on(async move {
        let store = store_spec.open(cfg.replay_capacity).await?;
        let verifier = Verifier::with_replay_store(cfg, source, store).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| TokenCliError::Listen {
                addr: args.listen,
                source,
            })?;
        let local = listener.local_addr().unwrap_or(args.listen);
        let issuer = args.issuer.as_deref().unwrap_or("any");
        let origin = verifier
            .config()
            .origin
            .as_ref()
            .map_or("the request's Host".to_owned(), |o| o.to_string());
        if verifier.config().origin.is_none() {
            tracing::warn!(
                "no --public-origin: tokens are checked against the Host the client sends, so a token minted for another instance with this audience is accepted here"
            );
        }
        tracing::info!(listen = %local, upstream = %upstream, audience = %audience, issuer, origin, replay_store = %store_spec, "verify-proxy ready");
        // The chosen port on stdout, for scripts that bind port 0.
        println!("listening on {local}");
        let proxy = Arc::new(VerifyProxy {
            verifier,
            upstream,
            public_scheme,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            tls,
            upstream_ca,
            reporter: args
                .admin_socket
                .as_deref()
                .map(crate::verify_proxy::Reporter::new),
            timeouts: ProxyTimeouts {
                upstream_response: upstream_timeout,
                ..ProxyTimeouts::default()
            },
            resource,
            upstream_authorization,
        });
        proxy.serve(listener).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The origin tokens must name: `--public-origin`, else the origin of the
/// `--resource` URI (where MCP clients reach the server). The two must
/// agree when both are given.
fn origin(resource: Option<&str>, public: Option<&str>) -> Result<Option<Origin>, TokenCliError> {
    let usage = TokenCliError::Usage;
    let public = public
        .map(Origin::parse)
        .transpose()
        .map_err(|e| usage(format!("--public-origin: {e}")))?;
    let of_resource = resource
        .map(Origin::of_uri)
        .transpose()
        .map_err(|e| usage(format!("--resource: {e}")))?;
    match (public, of_resource) {
        (Some(p), Some(r)) if p != r => Err(usage(format!(
            "--public-origin {p} is not the origin of --resource ({r}): clients reach the resource there"
        ))),
        (p, r) => Ok(p.or(r)),
    }
}

/// `Bearer <the file's first line>`, marked sensitive so that hyper never
/// logs it.
fn upstream_token(path: &std::path::Path) -> Result<hyper::header::HeaderValue, TokenCliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        TokenCliError::Usage(format!("--upstream-token-file {}: {e}", path.display()))
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .filter(|_| !token.is_empty())
        .ok_or_else(|| {
            // Never the content: it is a secret.
            TokenCliError::Usage(format!(
                "--upstream-token-file {}: not a token (one line of visible ASCII)",
                path.display()
            ))
        })?;
    value.set_sensitive(true);
    Ok(value)
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
