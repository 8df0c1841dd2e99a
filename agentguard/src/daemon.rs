//! `agentguard run`: set up the kernel side, then serve the proxy and the
//! admin API until told to stop.

mod audit;
mod events;
mod jwks;
mod notify;
mod oauth;
mod records;
mod reload;
mod units;

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use oauth::UpstreamTokenFetcher;
pub use reload::ReloadError;
use reload::{Reloader, fingerprint};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    admin::{AdminServer, MetricsSource, ServeError, server::AdminState},
    ca::{CaError, CaStore, DEFAULT_LEAF_CACHE_CAPACITY, LeafCache},
    cgroup::{CgroupError, CgroupRoot},
    config::RunConfig,
    connlog::{ConnLog, RequestLog},
    dns::{self, Resolvers},
    ebpf::{EbpfError, Kernel},
    kernel_events,
    live::Live,
    policy::{self, PolicyErrors},
    preflight::{self, PreflightError},
    proxy::{
        BindError, Listeners, ProxyContext,
        upstream::{UpstreamError, Upstreams},
    },
};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("invalid policy, not starting:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("not starting: {0}")]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    Admin(#[from] ServeError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("TLS server configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("failed to prepare state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agentguard daemon holds the lock on {0}")]
    Locked(PathBuf),
    #[error("failed to install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("audit store: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("token signing key: {0}")]
    TokenKey(#[from] crate::token::KeyError),
    #[error("failed to serve the JWKS on {addr}: {source}")]
    JwksListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("JWKS TLS: {0}")]
    JwksTls(String),
    #[error(transparent)]
    Revoke(#[from] crate::revoke::RevokeError),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    #[error(
        "{addr} is one of agentguard's own listeners, and {holder} already holds it; an agent must never hold agentguard's listeners (it would receive what is sent to agentguard): stop it, and check its [agent] listen, before starting agentguard"
    )]
    ListenerHeld {
        addr: std::net::SocketAddr,
        holder: crate::port_owner::Holder,
    },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("failed to listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub async fn run(cfg: RunConfig) -> Result<(), DaemonError> {
    preflight::require_root("run")?;
    preflight::require_btf()?;
    preflight::ensure_bpffs(&cfg.bpf_dir)?;
    let root = CgroupRoot::discover()?;
    info!(config = %cfg, cgroup2 = %root.mount().display(), "starting agentguard");

    let _lock = lock_state_dir(&cfg.state_dir)?;
    // Before any socket is opened: the limit, and the reserve the proxy
    // leaves for the admin socket, DNS and the audit store.
    let descriptors = crate::proxy::limits::fds::init(cfg.limits.fd_reserve);
    let limits = Arc::new(crate::proxy::limits::Limits::new(
        cfg.limits.clone(),
        Some(descriptors.budget),
    ));
    // A bad policy stops start-up before anything in the kernel changes.
    let policy = policy::load_path(&cfg.policies_dir)?;
    // A revoked agent stays revoked: an unreadable list stops start-up.
    let revocations = Arc::new(crate::revoke::Revocations::load(&cfg.state_dir)?);
    // No decision is made before the record that keeps it is open.
    let audit = audit::start(&cfg)?;
    let ca = Arc::new(CaStore::load_or_create(&cfg.state_dir)?);
    let ca_bundle = ca.current().write_trust_bundle()?;
    let (tls, leaves) = tls_acceptor(ca.clone())?;
    let upstreams = Arc::new(
        Upstreams::new(cfg.upstream_ca.as_deref())?.with_handshake_timeout(cfg.limits.upstream_tls),
    );
    let minter = Arc::new(crate::token::Minter::load_or_create(
        &cfg.state_dir,
        cfg.tokens.algorithm,
        &cfg.tokens.trust_domain,
    )?);
    // Verifiers must be told the issuer (--issuer): this is where to read it.
    info!(
        issuer = %minter.issuer(),
        kid = %minter.kid(),
        alg = ?minter.algorithm(),
        identity_kid = %minter.identity_kid(),
        "token signing keys ready"
    );
    // Claim the admin socket before touching the kernel, so a second daemon
    // fails here instead of taking over the first one's links.
    let admin = AdminServer::bind(&cfg.admin_socket).await?;
    // The web view's users and address, claimed before the kernel is
    // touched: a bad users file or a taken port stops start-up here.
    let web = match &cfg.web {
        Some(options) => Some((
            crate::web::users::Users::load(&options.users).map_err(crate::web::WebError::from)?,
            tokio::net::TcpListener::bind(options.listen)
                .await
                .map_err(|source| {
                    held(options.listen, &policy).unwrap_or(
                        crate::web::WebError::Listen {
                            addr: options.listen,
                            source,
                        }
                        .into(),
                    )
                })?,
        )),
        None => None,
    };
    // Bind before redirecting: the port must be ours before agents are sent
    // to it.
    let listeners = Listeners::bind(cfg.proxy_port).map_err(|e| match e {
        BindError::InUse { addr } => held(addr, &policy).unwrap_or(DaemonError::Bind(e)),
        e => DaemonError::Bind(e),
    })?;
    let port = listeners.port();
    // Agents in network namespaces of their own get the same port there.
    let netns = Arc::new(crate::netns::NetnsListeners::new(port)?);
    // Every listener of the daemon's own is bound here, before any agent
    // is guarded (and before a restarted daemon lets agents' connections
    // through): one an agent already holds stops start-up, naming it.
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some((
            addr,
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| {
                    held(addr, &policy).unwrap_or(DaemonError::MetricsListen { addr, source })
                })?,
        )),
        None => None,
    };
    if let Some(addr) = cfg.tokens.jwks_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| {
                held(addr, &policy).unwrap_or(DaemonError::JwksListen { addr, source })
            })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let tls = jwks::tls(&cfg.tokens.jwks_tls, &ca, bound).map_err(DaemonError::JwksTls)?;
        let scheme = match tls {
            crate::token::JwksTls::On(_) => "https",
            crate::token::JwksTls::Off => "http",
        };
        info!(jwks = %format!("{scheme}://{bound}{}", crate::token::JWKS_PATH), ca = %ca.current().cert_path().display(), "serving the token JWKS");
        tokio::spawn(crate::token::serve_jwks(listener, minter.clone(), tls));
    }
    if port >= 1024 {
        warn!(
            port,
            "proxy port is unprivileged: while agentguard is stopped, any local user could bind it and receive agents' connections; prefer a port below 1024"
        );
    }

    let (mut kernel, peers) = Kernel::load(&cfg.bpf_dir, cfg.unix_guard, &cfg.kernel)?;
    reload::forget_gone_while_stopped(&mut kernel, &root);
    let guarded = audit::Guarded {
        unix_sockets: kernel.unix_sockets_guarded(),
        processes: kernel.processes_guarded(),
    };
    let daemon_tgid = std::process::id();
    kernel.set_report_redirects(cfg.report_kernel_redirects);
    let kernel_events = kernel.take_events();
    let splice = kernel.take_splice();
    let direct = kernel.take_direct().and_then(|maps| {
        match crate::proxy::direct::Direct::new(maps, netns.clone()) {
            Ok(direct) => Some(Arc::new(direct)),
            Err(e) => {
                warn!(error = %e, "passthrough connections go through the proxy: the direct way is unavailable");
                kernel.disable_direct();
                None
            }
        }
    });
    let resolvers = Arc::new(start_resolvers(&cfg, audit.sink.clone()));
    if let Some(direct) = &direct {
        // The resolver keeps the direct way's ways; the way is told which
        // agent's by the resolver's port (what names the agent in the
        // kernel).
        let (direct, weak) = (direct.clone(), Arc::downgrade(&resolvers));
        resolvers.set_on_bound(Arc::new(move |bound: &dns::Bound<'_>| {
            let Some(port) = weak.upgrade().and_then(|r| r.port_of(bound.agent)) else {
                return;
            };
            direct.bound(bound, port);
        }));
        info!(
            "passthrough takes the direct way: agents connect to passthrough hosts themselves, their first send checked in the kernel"
        );
    }
    let reloader = Arc::new(Reloader {
        policies_dir: cfg.policies_dir.clone(),
        root,
        kernel: Arc::new(Mutex::new(kernel)),
        fetcher: Arc::new(UpstreamTokenFetcher::new(upstreams.clone())),
        audit: Some(audit.sink.clone()),
        resolvers: resolvers.clone(),
        revocations: revocations.clone(),
        netns: netns.clone(),
        containers: Mutex::new(Vec::new()),
        containers_file: Some(crate::containers::saved_path(&cfg.state_dir)),
        serial: Mutex::new(()),
        new_unit_cgroups: Default::default(),
        direct: direct.clone(),
    });
    let live = Arc::new(Live::new(reloader.build(None)?));
    resolvers.set_live(live.clone());
    if let Some(direct) = &direct {
        direct.set_live(live.clone());
    }
    // Before the kernel is sent here: containers still running from the
    // previous daemon are served again.
    reloader.readopt_containers(&live)?;
    // Only now, with every agent guarded and its resolver up, does the
    // kernel start sending agents here. Until this line the pinned config
    // is the previous daemon's (port 0 after a clean stop, a dead port after
    // a crash): agents' connections are refused meanwhile, never let out.
    let stale = peers.clear();
    if stale > 0 {
        info!(
            stale,
            "forgot kernel records of connections a previous daemon never accepted"
        );
    }
    if let Some(direct) = &direct {
        direct.start_lease();
    }
    let configured = reloader
        .kernel
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .configure(port, daemon_tgid);
    if let (Err(_), Some(direct)) = (&configured, &direct) {
        // Not starting after all: no lease left behind.
        direct.stop();
    }
    configured?;
    let (direct_reports, direct_queue) = match &direct {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(crate::proxy::direct::REPORT_QUEUE);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    if let Some(ring) = kernel_events {
        tokio::spawn(kernel_events::run(
            ring,
            live.clone(),
            audit.sink.clone(),
            events::kernel_event,
            direct_reports,
        ));
    }
    let policy_version = live.load().policy.version.clone();
    let approvals = Arc::new(crate::approvals::Approvals::default());
    let oversight = Arc::new(crate::oversight::Oversight::new(
        approvals.clone(),
        revocations.clone(),
        live.clone(),
        audit.sink.clone(),
        {
            // The marks of revoked agents were set by `build` above.
            let (reloader, live) = (reloader.clone(), live.clone());
            let (direct, revocations) = (direct.clone(), revocations.clone());
            Arc::new(move || {
                reloader.sync_revoked(&live).map_err(|e| e.to_string())?;
                // Marked first: no new direct-way connection of theirs
                // opens after this.
                if let Some(direct) = &direct {
                    let closed = direct.close_revoked(&live, &revocations);
                    info!(closed, "direct-way connections of revoked agents closed");
                }
                Ok(())
            })
        },
    ));
    for (agent, r) in revocations.all() {
        warn!(agent, reason = %r.reason, by = %r.by, since = %r.time, "agent is revoked; `agentguard restore --agent {agent}` lifts it");
    }

    let log = Arc::new(ConnLog::default());
    let requests = Arc::new(RequestLog::default());
    let ctx = Arc::new(ProxyContext {
        peers,
        splice,
        live: live.clone(),
        audit: audit.sink.clone(),
        metrics: audit.metrics.clone(),
        log: log.clone(),
        requests: requests.clone(),
        tls,
        upstreams,
        resolvers: resolvers.clone(),
        proxy_port: port,
        minter,
        on_behalf_of: Arc::new(crate::token::OnBehalfOf::default()),
        jwt_max_body: cfg.tokens.max_body,
        revocations,
        approvals,
        limits,
        limiter: Arc::new(crate::policy::RateLimiter::new()),
    });
    netns.serve(ctx.clone());
    if let (Some(direct), Some(queue)) = (&direct, direct_queue) {
        tokio::spawn(direct.clone().run(ctx.clone(), queue));
        // Agents revoked while no daemon ran may hold connections opened
        // before (the open ones are in a pinned map).
        let closed = direct.close_revoked(&live, &ctx.revocations);
        if closed > 0 {
            info!(closed, "direct-way connections of revoked agents closed");
        }
    }
    if let Some(max_wait) = cfg.kernel.record_max_wait {
        tokio::spawn(records::expire(ctx.clone(), max_wait));
    }
    let metrics = Arc::new(MetricsSource {
        metrics: audit.metrics.clone(),
        audit: audit.sink.clone(),
        leaves,
        ca: ca.clone(),
        otlp: audit.otlp.clone(),
        kernel: Some(reloader.kernel.clone()),
    });
    if let Some((addr, listener)) = metrics_listener {
        audit.serve_metrics(addr, listener, metrics.clone());
    }
    let web_url = match (&cfg.web, web) {
        (Some(options), Some((users, listener))) => Some(
            serve_web(
                &cfg,
                options,
                users,
                listener,
                &ca,
                &live,
                &audit.sink,
                &oversight,
            )
            .await?,
        ),
        _ => None,
    };
    let admin_state = AdminState {
        live: live.clone(),
        audit: audit.sink.clone(),
        metrics,
        log,
        requests,
        proxy_port: port,
        ca_cert: ca.current().cert_path().to_owned(),
        ca_bundle,
        ca: ca.clone(),
        kernel: reloader.kernel.clone(),
        minter: ctx.minter.clone(),
        on_behalf_of: ctx.on_behalf_of.clone(),
        oversight: oversight.clone(),
        web_url,
        attach: Some({
            let (reloader, live) = (reloader.clone(), live.clone());
            Arc::new(move |agent: &str, pid: u32| {
                reloader
                    .attach(&live, agent, pid)
                    .map_err(|e| e.to_string())
            })
        }),
        container: Some({
            let (reloader, live) = (reloader.clone(), live.clone());
            Arc::new(move |agent: &str, pid: u32| {
                reloader
                    .attach_container(&live, agent, pid)
                    .map_err(|e| e.to_string())
            })
        }),
        created: Some({
            let (reloader, live) = (reloader.clone(), live.clone());
            Arc::new(move |created: &crate::containers::Created| {
                let attached = reloader
                    .container_created(&live, created)
                    .map_err(|e| e.to_string())?;
                Ok(crate::containers::CreatedView {
                    agent: attached.as_ref().map(|(agent, _)| agent.clone()),
                    container: attached.map(|(_, info)| (*info).clone()),
                })
            })
        }),
        ended: Some({
            let (reloader, live) = (reloader.clone(), live.clone());
            Arc::new(move || {
                reloader
                    .refresh_containers(&live)
                    .map_err(|e| e.to_string())
            })
        }),
    };
    info!(
        port,
        agents = live.load().policy.agents.len(),
        policy_version = %policy_version,
        admin_socket = %cfg.admin_socket.display(),
        "agentguard ready"
    );
    audit.record_start(&live, port, guarded).await;
    // systemd (Type=notify): ready only now, with every agent guarded and
    // the proxy, the admin socket and the audit store open.
    let notifier = Arc::new(notify::Notifier::default());
    notifier.ready(&notify::status_line(&live.load()));
    if let Some(period) = sd_notify::watchdog_enabled() {
        let probe = notify::Probe {
            proxy_port: port,
            log: admin_state.log.clone(),
            audit: audit.sink.clone(),
            recorded: audit.recorded.clone(),
        };
        tokio::spawn(notify::watchdog(notifier.clone(), probe, period / 2));
    }

    let mut stop = Signals::install()?;
    let mut why = "stopped: a daemon task ended".to_owned();
    let proxy = listeners.serve(ctx);
    let admin = admin.serve(admin_state);
    let watch = watch_policies(reloader.clone(), live.clone(), notifier.clone());
    tokio::pin!(proxy, admin, watch);
    loop {
        tokio::select! {
            () = &mut proxy => break,
            () = &mut admin => break,
            () = &mut watch => break,
            signal = stop.wait() => match signal {
                Signal::Reload => {
                    notifier.reloading();
                    let (reloader, state) = (reloader.clone(), live.clone());
                    let _ = tokio::task::spawn_blocking(move || reloader.reload(&state, "SIGHUP")).await;
                    notifier.ready(&notify::status_line(&live.load()));
                }
                Signal::Stop(name) => {
                    info!(signal = name, "stopping");
                    why = format!("stopped by {name}");
                    break;
                }
            },
        }
    }

    notifier.stopping(&why);
    // Fail closed on purpose: the links stay pinned, and port 0 makes the
    // kernel refuse guarded connects outright until a daemon starts again
    // (and open no direct way: the message program asks for a running
    // daemon too).
    let kernel = reloader
        .kernel
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .configure(0, daemon_tgid);
    if let Err(e) = kernel {
        warn!(error = %e, "could not switch the kernel to refuse-all; agents' connects will be refused by the closed port instead");
    }
    // As the relayed connections close with the daemon; then the direct
    // way goes, and with it the egress check's exception for its packets.
    if let Some(direct) = &direct {
        let closed = direct.stop();
        info!(closed, "direct-way connections closed");
        let mut kernel = reloader.kernel.lock().unwrap_or_else(|p| p.into_inner());
        kernel.disable_direct();
        if let Err(e) = kernel.configure(0, daemon_tgid) {
            warn!(error = %e, "could not take the direct way out of the kernel; its packets still pass the egress check");
        }
    }
    let _ = fs::remove_file(&cfg.admin_socket);
    audit.stop(&why, &live).await;
    Ok(())
}

/// Starts the web view on `listener`; returns its URL.
#[allow(clippy::too_many_arguments)]
async fn serve_web(
    cfg: &RunConfig,
    options: &crate::web::WebOptions,
    users: crate::web::users::Users,
    listener: tokio::net::TcpListener,
    ca: &Arc<CaStore>,
    live: &Arc<Live>,
    sink: &crate::audit::AuditSink,
    oversight: &Arc<crate::oversight::Oversight>,
) -> Result<String, DaemonError> {
    use crate::web::{ChainSources, WebError, WebState};
    let bound = listener.local_addr().unwrap_or(options.listen);
    let tls_options = crate::config::JwksTlsOptions {
        cert_and_key: options.cert_and_key.clone(),
        names: options.names.clone(),
        plain_http: false,
    };
    let crate::token::JwksTls::On(acceptor) =
        jwks::tls(&tls_options, ca, bound).map_err(WebError::Tls)?
    else {
        return Err(WebError::Tls("the web view is served over TLS only".into()).into());
    };
    let key = cfg
        .audit
        .signing_key
        .clone()
        .unwrap_or_else(|| crate::audit::signing::default_key_path(&cfg.state_dir));
    let state = WebState::new(
        users,
        live.clone(),
        sink.clone(),
        oversight.clone(),
        ChainSources {
            db: crate::audit::db_path(&cfg.state_dir),
            public_key: crate::audit::signing::public_key_path(&key),
            anchor_dir: cfg.audit.anchors.dir.clone(),
        },
    );
    let url = format!("https://{bound}/");
    info!(web = %url, users = %options.users.display(), ca = %ca.current().cert_path().display(), "serving the web view");
    tokio::spawn(crate::web::serve(listener, acceptor, Arc::new(state)));
    Ok(url)
}

/// When binding `addr` failed: the error that names the agent holding it,
/// if an agent's process does.
fn held(addr: std::net::SocketAddr, policy: &policy::PolicySet) -> Option<DaemonError> {
    let holder = crate::port_owner::tcp_listener(addr.port(), policy)?;
    holder
        .agent
        .is_some()
        .then_some(DaemonError::ListenerHeld { addr, holder })
}

/// Per-agent resolvers forwarding to `--dns-upstream` or the host's
/// resolvers, recording every query.
fn start_resolvers(cfg: &RunConfig, sink: crate::audit::AuditSink) -> Resolvers {
    let upstreams = if cfg.dns_upstreams.is_empty() {
        dns::system_resolvers()
    } else {
        cfg.dns_upstreams.clone()
    };
    if upstreams.is_empty() {
        warn!(
            "no upstream resolver (none in /etc/resolv.conf, no --dns-upstream): agents' DNS queries will fail"
        );
    }
    info!(?upstreams, "agents' DNS goes to agentguard's resolver");
    // `record`, not `record_detached`: the resolver awaits room in the
    // audit queue before it replies, so an agent looping on queries slows
    // itself down instead of queueing events (and tasks) without bound.
    Resolvers::new(
        upstreams,
        Arc::new(move |record| {
            let sink = sink.clone();
            Box::pin(async move { sink.record(events::dns_event(record)).await })
        }),
    )
}

/// How often the policies folder is checked for edits.
const POLICY_POLL: Duration = Duration::from_secs(1);

/// Reloads when a policy file is added, removed or modified. Polling the
/// folder's names, sizes and mtimes is cheap at this rate and, unlike
/// inotify, sees edits made through any path (bind mounts, symlinked dirs).
async fn watch_policies(reloader: Arc<Reloader>, live: Arc<Live>, notifier: Arc<notify::Notifier>) {
    let mut last = fingerprint(&reloader.policies_dir);
    loop {
        tokio::time::sleep(POLICY_POLL).await;
        let now = fingerprint(&reloader.policies_dir);
        if now != last {
            last = now;
            let (reloader, state) = (reloader.clone(), live.clone());
            let _ =
                tokio::task::spawn_blocking(move || reloader.reload(&state, "file change")).await;
            notifier.status(&notify::status_line(&live.load()));
        }
        // Agents' systemd units: a cgroup made or removed since the last
        // look (see daemon::units).
        let (units, state) = (reloader.clone(), live.clone());
        let refreshed = tokio::task::spawn_blocking(move || units.refresh_units(&state)).await;
        match refreshed {
            Ok(Ok(true)) => notifier.status(&notify::status_line(&live.load())),
            Ok(Err(e)) => warn!(error = %e, "could not follow the agents' systemd units"),
            _ => {}
        }
        // Agents found in their cgroup's network namespaces (`netns =
        // "cgroup"`): a namespace entered since the last look.
        let (netns, state) = (reloader.clone(), live.clone());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || netns.refresh_netns(&state)).await {
            warn!(error = %e, "could not follow the agents' network namespaces");
        }
        // Containers attached by [agent.containers] whose cgroup went.
        let (containers, state) = (reloader.clone(), live.clone());
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || containers.refresh_containers(&state)).await
        {
            warn!(error = %e, "could not follow the attached containers");
        }
    }
}

/// Agents' TLS is terminated with leaves minted per SNI on first use and
/// cached; ALPN offers HTTP/2 and HTTP/1.1, as the real upstream would.
///
/// Sessions resume from stateless tickets (TLS 1.3 PSK with a fresh
/// ECDHE, and TLS 1.2 tickets), encrypted under a key that lives in
/// this process only and is rotated (rustls' ring ticketer: every 6 hours).
/// A resumed handshake skips the leaf's signature and the certificate,
/// the largest part of a new connection's cost after the key exchange.
/// rustls' default, a server-side cache of 256 sessions, resumed only
/// 60% of the bench's new connections (16 clients at once: each
/// connection puts two sessions in and a resumption takes one out, so it
/// is full within a few hundred connections and drops sessions clients
/// still hold). Resumption changes nothing about who the agent is: that
/// comes from the kernel for every connection, never from the TLS
/// session; rustls resumes a session only for the SNI it was made for.
/// 0-RTT stays off (replayable early data). The cipher suite: see
/// [`crate::tls_provider`].
fn tls_acceptor(
    ca: Arc<CaStore>,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<LeafCache>), DaemonError> {
    let leaves = Arc::new(LeafCache::new(ca, DEFAULT_LEAF_CACHE_CAPACITY));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls_provider::agent_side())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(leaves.clone());
    config.ignore_client_order = crate::tls_provider::server_picks_suite();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), leaves))
}

/// One daemon per state dir: the lock is held for the daemon's lifetime.
///
/// The directory is 0711: others may not list it, but agents running as
/// other users must reach the public CA bundle inside it by path. Secrets in
/// it (the CA key) are 0600 files.
fn lock_state_dir(dir: &Path) -> Result<Flock<fs::File>, DaemonError> {
    use std::os::unix::fs::PermissionsExt as _;
    let state_err = |source| DaemonError::StateDir {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(state_err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).map_err(state_err)?;
    let lock_path = dir.join("agentguard.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(state_err)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| DaemonError::Locked(lock_path))
}

enum Signal {
    Stop(&'static str),
    Reload,
}

/// SIGTERM and SIGINT stop the daemon; SIGHUP reloads the policy.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
        })
    }

    async fn wait(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
