//! The admin API's part in a CA rotation (`crate::ca::rotation`), for
//! `agentguard ca`:
//!
//! - `GET /v1/ca` → the CAs agents are to trust
//! - `POST /v1/ca/rotate?by=`, `/v1/ca/activate?by=`, `/v1/ca/cancel?by=`
//!
//! Every step asked for, carried out or refused, is a `ca_rotation` audit
//! event naming the caller (as [`super::oversight`] names them).

use hyper::{Method, Request, StatusCode};

use crate::{
    audit::{Decision, Event, Kind},
    ca::{CaError, CaInfo, RotationError, Step},
};

use super::server::{AdminBody, AdminState, error, json};

/// The answer, if `req` is one of these routes.
pub async fn route<B>(
    state: &AdminState,
    req: &Request<B>,
    uid: Option<u32>,
) -> Option<hyper::Response<AdminBody>> {
    let path = req.uri().path();
    if req.method() == Method::GET && path == "/v1/ca" {
        return Some(json(StatusCode::OK, &state.ca.current().describe()));
    }
    let name = path.strip_prefix("/v1/ca/")?;
    if req.method() != Method::POST {
        return None;
    }
    let Some(step) = Step::from_route(name) else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "no such CA step (rotate, activate, cancel)",
        ));
    };
    let query = super::server::query_params(req);
    let actor = super::oversight::actor(query.get("by").map(String::as_str), uid);
    // Key generation and fsyncs off the runtime's worker threads; the step
    // and its record in a task of their own, recorded before the caller
    // hears of it: a caller that goes away meanwhile (an interrupted
    // `agentguard ca rotate`) cannot leave a step taken but unrecorded.
    let (ca, audit) = (state.ca.clone(), state.audit.clone());
    let done = tokio::spawn(async move {
        let outcome = tokio::task::spawn_blocking(move || ca.apply(step))
            .await
            .map_err(|e| e.to_string())?;
        audit
            .record_even_if_dropped(event(step, &actor, &outcome))
            .await;
        Ok::<_, String>(outcome)
    })
    .await;
    let outcome = match done.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(outcome) => outcome,
        Err(e) => {
            return Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the CA step did not finish: {e}"),
            ));
        }
    };
    Some(match outcome {
        Ok(trusted) => json(
            StatusCode::OK,
            &serde_json::json!({ "step": step.as_str(), "ca": trusted }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    })
}

/// A step out of order (nothing staged, one staged already, a bundle that
/// lacks the staged CA) is the caller's to fix; anything else, a folder
/// in a state no step leaves included, is the daemon's.
fn status_of(e: &CaError) -> StatusCode {
    match e {
        CaError::Rotation(
            RotationError::AlreadyStaged(_)
            | RotationError::NothingStaged
            | RotationError::NotInBundle(_),
        ) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The record of one step: accepted with the CAs trusted afterwards, or
/// rejected with why.
fn event(step: Step, actor: &str, outcome: &Result<Vec<CaInfo>, CaError>) -> Event {
    let (decision, reason) = match outcome {
        Ok(trusted) => {
            let cas: Vec<String> = trusted
                .iter()
                .map(|ca| format!("{} {} until {}", ca.role.as_str(), ca.sha256, ca.not_after))
                .collect();
            (
                Decision::Accept,
                format!("{}: trusted now: {}", step.as_str(), cas.join("; ")),
            )
        }
        Err(e) => (Decision::Reject, format!("{}: {e}", step.as_str())),
    };
    let mut e = Event::new(Kind::CaRotation).with_decision(decision, reason);
    e.actor = Some(actor.to_owned());
    e.rule = Some(format!("ca-{}", step.as_str()).into());
    e
}
