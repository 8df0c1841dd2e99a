//! The plan for one request, made from its head, the connection it arrived
//! on and the policy alone: what the record says about it and whether it is
//! refused or forwarded (with which credential). Nothing here waits, reads a
//! body or touches a secret; [`super::handle`] carries the plan out.

use hyper::{Request, http::uri::Authority};

use super::{ConnMeta, checks, hop};
use crate::{
    audit::Decision,
    policy::{
        CredentialPolicy, Mode, PolicySet, RequestFacts, ToolTimeouts, Verdict, normalize_path,
    },
    proxy::{decide::Resolutions, refusal::Refusal},
};

/// What the audit record learns from planning, whatever comes of the
/// request afterwards.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Noted {
    /// Host from Host/`:authority`, lowercase, without brackets.
    pub host: Option<String>,
    /// The path as recorded: normalised with the agent's query, or as
    /// received when it could not be normalised.
    pub path: Option<String>,
    /// The normalised path without the query (the recent-requests view).
    pub bare_path: String,
    pub tool: Option<String>,
    /// The credential that will be injected (its id, never its value).
    pub credential_id: Option<String>,
    /// The policy's verdict when it lets the request on: allow, or
    /// would-deny in audit mode (decision, rule, reason).
    pub verdict: Option<(Decision, String, String)>,
}

#[derive(Debug)]
pub enum Action<'p> {
    Refuse(Refusal),
    Forward(Forward<'p>),
}

/// A request to send upstream.
#[derive(Debug)]
pub struct Forward<'p> {
    pub authority: Authority,
    /// As in [`Noted::host`].
    pub host: String,
    /// Normalised, without the query: what was decided is what is sent.
    pub path: String,
    /// A WebSocket upgrade.
    pub upgrade: bool,
    /// The credential to inject; only ever on a TLS connection.
    pub credential: Option<&'p CredentialPolicy>,
    /// The allowing tool's own time limits toward the upstream.
    pub timeouts: Option<ToolTimeouts>,
}

#[derive(Debug)]
pub struct Plan<'p> {
    pub noted: Noted,
    pub action: Action<'p>,
}

/// Plans `req`, which arrived on `meta`, under `policy`.
pub fn plan<'p, B>(
    req: &Request<B>,
    meta: &ConnMeta,
    policy: &'p PolicySet,
    resolutions: &dyn Resolutions,
) -> Plan<'p> {
    let mut noted = Noted::default();
    let action = match decide(req, meta, policy, resolutions, &mut noted) {
        Ok(forward) => Action::Forward(forward),
        Err(refusal) => Action::Refuse(refusal),
    };
    Plan { noted, action }
}

/// The checks in the order they run; each refusal keeps what was noted
/// before it.
fn decide<'p, B>(
    req: &Request<B>,
    meta: &ConnMeta,
    policy: &'p PolicySet,
    resolutions: &dyn Resolutions,
    noted: &mut Noted,
) -> Result<Forward<'p>, Refusal> {
    let agent = &meta.identity.agent;
    let authority = checks::request_authority(req).map_err(Refusal::BadRequest)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    noted.host = Some(host.clone());
    checks::check_consistency(&host, authority.port_u16(), meta).map_err(Refusal::Misdirected)?;
    // Without TLS nothing proves the destination is the host the request
    // names: an agent could send "Host: allowed.example" to any address
    // (a cloud metadata endpoint, its own server). The destination must be
    // the host itself (an IP literal) or an address agentguard's resolver
    // gave this agent for that name.
    if meta.sni.is_none() {
        let literal = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == meta.dst.ip().to_canonical());
        if !literal && !resolutions.resolved_to(agent, &host, meta.dst.ip()) {
            return Err(Refusal::Misdirected(format!(
                "plain HTTP to {}: host {host:?} was not resolved to that address by agentguard's resolver",
                meta.dst
            )));
        }
    }
    let path = match normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            noted.path = Some(req.uri().path().to_owned());
            return Err(Refusal::Path(e));
        }
    };
    noted.bare_path = path.clone();
    noted.path = Some(match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    });
    let Some(agent_policy) = policy.agent(agent) else {
        return Err(Refusal::UnknownAgent(agent.to_string()));
    };

    let verdict = agent_policy.evaluate(RequestFacts {
        method: req.method(),
        host: &host,
        port: meta.dst.port(),
        path: &path,
    });
    let mut timeouts = None;
    let credential = match verdict {
        Verdict::Allow { tool, credential } => {
            timeouts = Some(tool.timeouts);
            noted.tool = Some(tool.name.clone());
            noted.verdict = Some((
                Decision::Allow,
                format!("tool:{}", tool.name),
                format!("allowed by tool {:?}", tool.name),
            ));
            credential
        }
        Verdict::Deny { reason } if agent_policy.mode == Mode::Enforce => {
            return Err(Refusal::Denied { reason });
        }
        Verdict::Deny { reason } => {
            // Audit mode: recorded as a denial, forwarded without any
            // credential.
            noted.verdict = Some((Decision::WouldDeny, "default-deny".to_owned(), reason));
            None
        }
    };

    let upgrade = hop::wants_upgrade(req);
    // After a 101 the bytes are relayed with no further decision, so only
    // the upgrade browsers and SDKs use, WebSocket, is let through.
    if upgrade && !hop::upgrades_to_websocket(req) {
        return Err(Refusal::UpgradeRefused);
    }
    if let Some(credential) = credential {
        // A secret never crosses an unauthenticated connection: only TLS
        // upstreams, whose certificate is verified for the policy's host
        // before a byte of the request is sent, receive it.
        if meta.sni.is_none() {
            return Err(Refusal::CredentialOverPlainHttp {
                tool: noted.tool.clone().unwrap_or_default(),
                credential: credential.id.clone(),
            });
        }
        noted.credential_id = Some(credential.id.clone());
    }
    Ok(Forward {
        authority,
        host,
        path,
        upgrade,
        credential,
        timeouts,
    })
}

#[cfg(test)]
mod tests;
