//! The web view's JSON endpoints (the page's only source of data):
//!
//! - `POST /api/login` `{name, password}` → `{name, role, csrf}` and the
//!   session cookie; `POST /api/logout`; `GET /api/me`
//! - `GET /api/events?agent&decision&kind&tool&host&mcp_target&since&until&q&before&limit`
//!   → `{records}` (oldest first); `GET /api/events/stream?...&after=SEQ`
//!   → Server-Sent Events; `GET /api/events/{seq}` → the record and its
//!   place in the chain
//! - `GET /api/chain`, `POST /api/chain/verify`
//! - `GET /api/agents`; `POST /api/agents/{name}/revoke` `{reason}`,
//!   `POST /api/agents/{name}/restore` (approvers)
//! - `GET /api/approvals`; `POST /api/approvals/{id}/approve` `{hash}`,
//!   `POST /api/approvals/{id}/deny` `{hash, reason}` (approvers)

// Here an `Err` is the HTTP answer itself, built once per request and
// returned at once: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::{collections::BTreeMap, net::SocketAddr, time::SystemTime};

use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    WebState,
    limiter::{MAX_PER_ADDRESS, MAX_PER_NAME},
    live,
    query::EventFilter,
    server::{Caller, WebBody, error, json, require_approver},
    session,
    users::Principal,
};
use crate::{
    approvals::ApprovalError,
    audit::{
        Decision, Event, Kind, Store,
        chain::{from_hex, hash_row, to_hex},
    },
    oversight::OversightError,
    policy::Mode,
};

/// Bodies of API requests are small JSON objects.
const MAX_BODY: usize = 16 << 10;

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

#[derive(Serialize)]
struct Me<'a> {
    name: &'a str,
    role: &'a str,
    via: &'a str,
    csrf: Option<&'a str>,
}

pub async fn login(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &WebState,
) -> Response<WebBody> {
    let form: LoginForm = match read_json(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let name: String = form
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let (by_address, by_name) = (format!("ip:{}", peer.ip()), format!("name:{name}"));
    let locked = state
        .limiter
        .check(&by_address, MAX_PER_ADDRESS)
        .and_then(|()| state.limiter.check(&by_name, MAX_PER_NAME));
    if let Err(wait) = locked {
        // Not recorded: the failure that locked it out was.
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many failed sign-ins; try again in {}s",
                wait.as_secs() + 1
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
        return resp;
    }
    let users = state.users.clone();
    let checked = {
        let (name, password) = (name.clone(), form.password);
        tokio::task::spawn_blocking(move || users.check_password(&name, &password))
            .await
            .ok()
            .flatten()
    };
    match checked {
        Some(principal) => {
            state.limiter.succeed(&by_address);
            state.limiter.succeed(&by_name);
            record_login(
                state,
                &name,
                peer,
                true,
                "signed in with a password",
                "login:password",
            )
            .await;
            let current = state.sessions.create(principal);
            let mut resp = json(
                StatusCode::OK,
                &Me {
                    name: &current.principal.name,
                    role: current.principal.role.as_str(),
                    via: current.principal.via,
                    csrf: Some(&current.csrf),
                },
            );
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&current.id)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        None => {
            let locked_now = state.limiter.fail(&by_address, MAX_PER_ADDRESS)
                | state.limiter.fail(&by_name, MAX_PER_NAME);
            let reason = if locked_now {
                "wrong name or password; further sign-ins refused for a while"
            } else {
                "wrong name or password"
            };
            record_login(state, &name, peer, false, reason, "login:password").await;
            error(StatusCode::UNAUTHORIZED, "wrong name or password")
        }
    }
}

/// A bearer token's holder; a wrong token counts as a failed sign-in.
pub async fn check_token(
    state: &WebState,
    token: &str,
    peer: SocketAddr,
) -> Result<Principal, Response<WebBody>> {
    let by_address = format!("ip:{}", peer.ip());
    if state.limiter.check(&by_address, MAX_PER_ADDRESS).is_err() {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed sign-ins",
        ));
    }
    match state.users.check_token(token) {
        Some(p) => Ok(p),
        None => {
            state.limiter.fail(&by_address, MAX_PER_ADDRESS);
            record_login(
                state,
                "bearer token",
                peer,
                false,
                "unknown bearer token",
                "login:token",
            )
            .await;
            Err(error(StatusCode::UNAUTHORIZED, "unknown bearer token"))
        }
    }
}

async fn record_login(
    state: &WebState,
    name: &str,
    peer: SocketAddr,
    ok: bool,
    reason: &str,
    rule: &str,
) {
    let decision = if ok { Decision::Allow } else { Decision::Deny };
    let mut e = Event::new(Kind::Login)
        .with_src(peer)
        .with_decision(decision, reason);
    e.actor = Some(name.to_owned());
    e.rule = Some(rule.into());
    e.protocol = Some("https".into());
    // On record even if the browser goes away meanwhile: a failed
    // sign-in above all must not escape the audit by closing early.
    state.audit.record_even_if_dropped(e).await;
}

pub async fn dispatch(
    req: Request<Incoming>,
    caller: &Caller,
    state: &WebState,
) -> Response<WebBody> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["me"]) => json(
            StatusCode::OK,
            &Me {
                name: &caller.principal.name,
                role: caller.principal.role.as_str(),
                via: caller.principal.via,
                csrf: caller.session.as_ref().map(|s| s.csrf.as_str()),
            },
        ),
        (Method::POST, ["logout"]) => {
            if let Some(s) = &caller.session {
                state.sessions.remove(&s.id);
            }
            let mut resp = json(StatusCode::OK, &json!({ "signed_out": true }));
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        (Method::GET, ["events"]) => events(state, &query).await,
        (Method::GET, ["events", "stream"]) => {
            match EventFilter::parse(&query, SystemTime::now()) {
                Ok((filter, _)) => {
                    let mut resp = Response::new(live::open(&state.audit, filter).boxed_unsync());
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    );
                    resp
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (Method::GET, ["events", seq]) => match seq.parse::<i64>() {
            Ok(seq) => event_detail(state, seq).await,
            Err(_) => error(StatusCode::BAD_REQUEST, "not a sequence number"),
        },
        (Method::GET, ["chain"]) => chain(state),
        (Method::POST, ["chain", "verify"]) => {
            state.chain.verify_now().await;
            chain(state)
        }
        (Method::GET, ["agents"]) => agents(state).await,
        (Method::GET, ["approvals"]) => json(StatusCode::OK, &state.oversight.approvals.list()),
        (Method::POST, ["approvals", id, action]) => {
            if let Err(resp) = require_approver(caller) {
                return resp;
            }
            let (id, action) = (id.to_string(), action.to_string());
            decide(req, caller, state, &id, &action).await
        }
        (Method::POST, ["agents", agent, action]) => {
            if let Err(resp) = require_approver(caller) {
                return resp;
            }
            let (agent, action) = (agent.to_string(), action.to_string());
            revoke(req, caller, state, &agent, &action).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn events(state: &WebState, query: &str) -> Response<WebBody> {
    let (filter, limit) = match EventFilter::parse(query, SystemTime::now()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let db = state.audit.db_path().to_owned();
    let rows = tokio::task::spawn_blocking(move || {
        Store::open_read_only(&db).and_then(|s| filter.select(&s, limit))
    })
    .await;
    match rows {
        Ok(Ok(records)) => json(StatusCode::OK, &json!({ "records": records })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Where an event sits in the chain.
#[derive(Serialize)]
struct Place {
    seq: i64,
    prev_hash: String,
    hash: String,
    /// Its hash recomputed from its content and `prev_hash`.
    content_matches: bool,
    /// The previous event's hash is this one's `prev_hash`.
    previous: Option<Link>,
    /// The next event's `prev_hash` is this one's hash.
    next: Option<Link>,
    /// The first signed checkpoint at or after it: what vouches for it.
    checkpoint: Option<crate::audit::Checkpoint>,
}

#[derive(Serialize)]
struct Link {
    seq: i64,
    links: bool,
}

async fn event_detail(state: &WebState, seq: i64) -> Response<WebBody> {
    let db = state.audit.db_path().to_owned();
    let found = tokio::task::spawn_blocking(move || {
        let store = Store::open_read_only(&db)?;
        use rusqlite::types::Value;
        let near = store.select(
            "seq BETWEEN ?1 AND ?2",
            &[Value::Integer(seq - 1), Value::Integer(seq + 1)],
            None,
        )?;
        let checkpoint = store.checkpoints()?.into_iter().find(|c| c.seq >= seq);
        Ok::<_, crate::audit::StoreError>((near, checkpoint))
    })
    .await;
    let (near, checkpoint) = match found {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let Some(record) = near.iter().find(|r| r.seq == seq) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no event {seq} in the store"),
        );
    };
    let content_matches = from_hex(&record.prev_hash)
        .and_then(|prev| hash_row(seq, &prev, &record.event.to_row()).ok())
        .is_some_and(|h| to_hex(&h) == record.hash);
    let place = Place {
        seq,
        prev_hash: record.prev_hash.clone(),
        hash: record.hash.clone(),
        content_matches,
        previous: near.iter().find(|r| r.seq == seq - 1).map(|p| Link {
            seq: p.seq,
            links: p.hash == record.prev_hash,
        }),
        next: near.iter().find(|r| r.seq == seq + 1).map(|n| Link {
            seq: n.seq,
            links: n.prev_hash == record.hash,
        }),
        checkpoint,
    };
    json(StatusCode::OK, &json!({ "record": record, "chain": place }))
}

fn chain(state: &WebState) -> Response<WebBody> {
    json(
        StatusCode::OK,
        &json!({
            "check": state.chain.last(),
            "last_checkpoint": state.audit.last_checkpoint(),
            "audit": state.audit.status(),
        }),
    )
}

async fn agents(state: &WebState) -> Response<WebBody> {
    let live = state.live.load();
    let names: Vec<String> = live.policy.agents.iter().map(|a| a.name.clone()).collect();
    let db = state.audit.db_path().to_owned();
    let counts = tokio::task::spawn_blocking(move || counts(&db, &names))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let held = state.oversight.approvals.list();
    let revocations = &state.oversight.revocations;
    let agents: Vec<serde_json::Value> = live
        .policy
        .agents
        .iter()
        .map(|a| {
            let guarded = live.agents.get(&a.name);
            json!({
                "name": a.name,
                "cgroup": a.cgroup.to_string(),
                "cgroup_path": guarded.map(|g| g.cgroup.path.display().to_string()),
                "cgroup_id": guarded.map(|g| g.cgroup.id),
                "guarded": guarded.is_some(),
                "mode": match a.mode { Mode::Enforce => "enforce", Mode::Audit => "audit" },
                "policy_file": a.source.display().to_string(),
                "tools": a.tools.iter().map(|t| json!({
                    "name": t.name,
                    "approval": t.approval.as_ref().map(|p| p.timeout.as_secs()),
                })).collect::<Vec<_>>(),
                "counts": counts.get(&a.name).cloned().unwrap_or_default(),
                "open_connections": revocations.open_connections(&a.name),
                "held": held.iter().filter(|h| h.agent == a.name).count(),
                "revoked": revocations.revoked(&a.name),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "policy_version": live.policy.version,
            "last_reload": state.live.last_reload(),
            "agents": agents,
        }),
    )
}

/// Events per agent and decision.
fn counts(
    db: &std::path::Path,
    agents: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, i64>>, crate::audit::StoreError> {
    let store = Store::open_read_only(db)?;
    let mut out = BTreeMap::new();
    let mut stmt = store
        .conn()
        .prepare("SELECT coalesce(decision, 'none'), COUNT(*) FROM events WHERE agent = ?1 GROUP BY decision")
        .map_err(|e| store.err(e))?;
    for agent in agents {
        let rows = stmt
            .query_map([agent], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| store.err(e))?;
        let per: BTreeMap<String, i64> = rows.filter_map(Result::ok).collect();
        out.insert(agent.clone(), per);
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
struct Decide {
    hash: Option<String>,
    reason: Option<String>,
}

async fn decide(
    req: Request<Incoming>,
    caller: &Caller,
    state: &WebState,
    id: &str,
    action: &str,
) -> Response<WebBody> {
    let body: Decide = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let actor = caller.actor();
    let hash = body.hash.as_deref();
    let decided = match action {
        "approve" => state.oversight.approve(id, &actor, hash),
        "deny" => state
            .oversight
            .deny(id, &actor, body.reason.as_deref().unwrap_or(""), hash),
        _ => return error(StatusCode::NOT_FOUND, "approve or deny"),
    };
    match decided {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) => oversight_error(&e),
    }
}

#[derive(Deserialize, Default)]
struct RevokeForm {
    reason: Option<String>,
}

async fn revoke(
    req: Request<Incoming>,
    caller: &Caller,
    state: &WebState,
    agent: &str,
    action: &str,
) -> Response<WebBody> {
    let body: RevokeForm = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let actor = caller.actor();
    match action {
        "revoke" => match state
            .oversight
            .revoke(agent, body.reason.as_deref().unwrap_or(""), &actor)
            .await
        {
            Ok(out) => json(StatusCode::OK, &out),
            Err(e) => oversight_error(&e),
        },
        "restore" => match state.oversight.restore(agent, &actor).await {
            Ok(out) => json(StatusCode::OK, &out),
            Err(e) => oversight_error(&e),
        },
        _ => error(StatusCode::NOT_FOUND, "revoke or restore"),
    }
}

fn oversight_error(e: &OversightError) -> Response<WebBody> {
    let status = match e {
        OversightError::UnknownAgent(_)
        | OversightError::Approval(ApprovalError::NotPending(_)) => StatusCode::NOT_FOUND,
        OversightError::NotRevoked(_)
        | OversightError::Approval(ApprovalError::HashMismatch { .. }) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

/// A small JSON body (an empty one reads as `{}`).
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<WebBody>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?
        .to_bytes();
    let bytes = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")))
}
