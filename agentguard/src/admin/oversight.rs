//! The admin API's part in what people do (`crate::oversight`): the
//! approvals queue and revocations, for `agentguard approvals`, `approve`,
//! `deny`, `revoke` and `restore`.
//!
//! - `GET /v1/approvals` → the held requests
//! - `POST /v1/approvals/{id}/approve?hash=&by=`
//! - `POST /v1/approvals/{id}/deny?reason=&hash=&by=`
//! - `GET /v1/revocations` → revoked agents
//! - `POST /v1/agents/{name}/revoke?reason=&by=`
//! - `POST /v1/agents/{name}/restore?by=`
//!
//! The socket is root's, so whoever calls is root: the record names the
//! caller's uid (from the socket's peer credentials) and the name the CLI
//! gives (`$SUDO_USER`, `$USER`), as told.

use hyper::{Method, Request, StatusCode};

use crate::{approvals::ApprovalError, oversight::OversightError};

use super::server::{AdminBody, AdminState, error, json};

/// The answer, if `req` is one of these routes.
pub async fn route<B>(
    state: &AdminState,
    req: &Request<B>,
    uid: Option<u32>,
) -> Option<hyper::Response<AdminBody>> {
    let path = req.uri().path();
    let query = super::server::query_params(req);
    let oversight = &state.oversight;
    let actor = || actor(query.get("by").map(String::as_str), uid);
    let hash = query.get("hash").map(String::as_str);
    match (req.method(), path) {
        (&Method::GET, "/v1/approvals") => {
            return Some(json(StatusCode::OK, &oversight.approvals.list()));
        }
        (&Method::GET, "/v1/revocations") => {
            return Some(json(StatusCode::OK, &oversight.revocations.all()));
        }
        _ => {}
    }
    if req.method() != Method::POST {
        return None;
    }
    if let Some(rest) = path.strip_prefix("/v1/approvals/") {
        let (id, action) = rest.split_once('/')?;
        let decided = match action {
            "approve" => oversight.approve(id, &actor(), hash),
            "deny" => oversight.deny(
                id,
                &actor(),
                query.get("reason").map_or("", String::as_str),
                hash,
            ),
            _ => return None,
        };
        return Some(match decided {
            Ok(view) => json(StatusCode::OK, &view),
            Err(e) => error(status(&e), &e.to_string()),
        });
    }
    if let Some(rest) = path.strip_prefix("/v1/agents/") {
        let (agent, action) = rest.split_once('/')?;
        return Some(match action {
            "revoke" => {
                let reason = query.get("reason").map_or("", String::as_str);
                match oversight.revoke(agent, reason, &actor()).await {
                    Ok(outcome) => json(StatusCode::OK, &outcome),
                    Err(e) => error(status(&e), &e.to_string()),
                }
            }
            "restore" => match oversight.restore(agent, &actor()).await {
                Ok(outcome) => json(StatusCode::OK, &outcome),
                Err(e) => error(status(&e), &e.to_string()),
            },
            _ => return None,
        });
    }
    None
}

fn status(e: &OversightError) -> StatusCode {
    match e {
        OversightError::UnknownAgent(_)
        | OversightError::Approval(ApprovalError::NotPending(_)) => StatusCode::NOT_FOUND,
        OversightError::NotRevoked(_)
        | OversightError::Approval(ApprovalError::HashMismatch { .. }) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `NAME (admin socket, uid N)`: the name the caller gave (printable, at
/// most 64 characters) or, without one, the uid's.
pub(super) fn actor(by: Option<&str>, uid: Option<u32>) -> String {
    let by = by
        .map(|b| {
            b.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|b| !b.trim().is_empty());
    let uid_text = uid.map_or("unknown uid".to_owned(), |u| format!("uid {u}"));
    let name = by.or_else(|| {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid?)).ok()??;
        Some(user.name)
    });
    format!(
        "{} (admin socket, {uid_text})",
        name.unwrap_or_else(|| "unknown".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_name_the_caller_and_the_uid() {
        assert_eq!(actor(Some("alice"), Some(0)), "alice (admin socket, uid 0)");
        assert_eq!(actor(Some("a\nb"), Some(0)), "ab (admin socket, uid 0)");
        assert_eq!(actor(None, Some(0)), "root (admin socket, uid 0)");
        assert_eq!(
            actor(Some(" "), None),
            "unknown (admin socket, unknown uid)"
        );
    }
}
