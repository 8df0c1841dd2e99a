//! Serving the web view: TLS, HTTP/1.1 or HTTP/2, and for every request the
//! same steps: route, authenticate (a session cookie, or a bearer token),
//! check what a state-changing request must carry (JSON, the session's
//! CSRF token, a same-origin `Origin`), answer, and add the headers that
//! keep the page to itself (a strict Content-Security-Policy: scripts and
//! styles from this server only, no framing).

// Here an `Err` is the HTTP answer itself, built once per request and
// returned at once: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{
    WebState, api, assets,
    session::{self, CSRF_HEADER, Current},
    users::{Principal, Role},
};

pub type WebBody = UnsyncBoxBody<Bytes, Infallible>;

/// A client that does not finish its TLS handshake in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// And one that does not finish a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is asking.
pub struct Caller {
    pub principal: Principal,
    /// Set for a browser's session; `None` for a bearer token.
    pub session: Option<Current>,
}

impl Caller {
    /// How the record names them.
    pub fn actor(&self) -> String {
        format!(
            "{} (web, {})",
            self.principal.name,
            self.principal.role.as_str()
        )
    }
}

/// Serves until the listener fails for good.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, state: Arc<WebState>) {
    tokio::spawn(state.chain.clone().run());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "web view accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "web view TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, &state).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "web view connection ended");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &WebState) -> Response<WebBody> {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = route(req, peer, state).await;
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn route(req: Request<Incoming>, peer: SocketAddr, state: &WebState) -> Response<WebBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::GET
        && let Some(resp) = assets::get(&path)
    {
        return resp;
    }
    if !path.starts_with("/api/") {
        return error(StatusCode::NOT_FOUND, "no such page");
    }
    if method == Method::POST {
        if let Err(resp) = same_origin(&req) {
            return resp;
        }
        if path == "/api/login" {
            return api::login(req, peer, state).await;
        }
    }
    let caller = match authenticate(&req, peer, state).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if method == Method::POST
        && let Some(session) = &caller.session
        && !session.csrf_matches(req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()))
    {
        return error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: reload the page",
        );
    }
    api::dispatch(req, &caller, state).await
}

/// A state-changing request must be JSON (a form of another site cannot
/// send that without the browser asking this server first, which it does
/// not allow) and, when the browser names its origin, come from this one.
fn same_origin(req: &Request<Incoming>) -> Result<(), Response<WebBody>> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/json")
        });
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json",
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if origin.to_str().ok() != Some(&format!("https://{host}")) {
            return Err(error(StatusCode::FORBIDDEN, "cross-origin request refused"));
        }
    }
    Ok(())
}

/// A session cookie, or `Authorization: Bearer`.
async fn authenticate(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &WebState,
) -> Result<Caller, Response<WebBody>> {
    if let Some(bearer) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return match api::check_token(state, bearer.trim(), peer).await {
            Ok(principal) => Ok(Caller {
                principal,
                session: None,
            }),
            Err(resp) => Err(resp),
        };
    }
    match session::cookie(req.headers()).and_then(|id| state.sessions.get(&id)) {
        Some(current) => Ok(Caller {
            principal: current.principal.clone(),
            session: Some(current),
        }),
        None => Err(error(StatusCode::UNAUTHORIZED, "sign in first")),
    }
}

/// Approvers only.
pub fn require_approver(caller: &Caller) -> Result<(), Response<WebBody>> {
    if caller.principal.role == Role::Approver {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "approvers only: your role is auditor",
        ))
    }
}

pub fn full(bytes: impl Into<Bytes>) -> WebBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<WebBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error(status: StatusCode, message: &str) -> Response<WebBody> {
    json(status, &serde_json::json!({ "error": message }))
}
