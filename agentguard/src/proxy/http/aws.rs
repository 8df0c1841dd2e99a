//! AWS requests in the proxy: what the agent's SDK signed for (read before
//! planning, so that the policy can decide on the action, which the Query
//! protocol puts in the body), and signing the upstream's request again
//! with the credential's real keys once the plan is carried out.

use std::time::{Duration, SystemTime};

use http_body_util::BodyExt as _;
use hyper::{
    Request,
    body::{Bytes, Incoming},
    header::{CONTENT_LENGTH, TRANSFER_ENCODING},
    http::request::Parts,
};

use crate::{
    credentials::{
        PLACEHOLDER_PREFIX,
        sigv4::{self, AwsCredentials, AwsRequest, Payload, SignError, SignSpec},
    },
    policy::{CredentialPolicy, Injection},
    proxy::{
        refusal::Refusal,
        upstream::{ProxyBody, boxed},
    },
};

/// A signed AWS request body is read whole to hash it (and, for the Query
/// protocol, to find its action); larger ones are refused. Uploads to S3
/// are sent unsigned over TLS by the SDKs and stream.
pub const MAX_SIGNED_BODY: usize = 16 << 20;

/// The agent's body: streaming, or read whole (a signed AWS payload).
pub enum AgentBody {
    Live(ProxyBody),
    Read(Bytes),
}

impl AgentBody {
    /// The body as the proxy streams it, whichever it is.
    pub fn into_proxy_body(self) -> ProxyBody {
        match self {
            AgentBody::Live(body) => body,
            AgentBody::Read(bytes) => http_body_util::Full::new(bytes)
                .map_err(|n| match n {})
                .boxed(),
        }
    }
}

/// What the agent's SDK signed for, kept in the request's extensions for
/// planning: the signature's scope and the action, or why it cannot be
/// re-signed.
#[derive(Debug, Clone)]
pub struct AwsFacts {
    pub request: Result<AwsRequest, String>,
    pub action: Option<String>,
}

/// Where an AWS request is signed for: the agent's region and service
/// (checked against the credential), or the credential's only ones.
#[derive(Debug, Clone)]
pub struct AwsScope {
    pub region: String,
    pub service: String,
    pub request: Option<AwsRequest>,
}

/// How agentguard's refusals of an AWS SDK's request are written: the
/// error shape its protocol parses.
pub fn render(req: &Request<Incoming>) -> Option<crate::proxy::respond::Render> {
    use crate::proxy::respond::{AwsDialect, Render};
    let request = sigv4::inspect(req.headers(), req.uri()).ok().flatten()?;
    let json = req.headers().contains_key("x-amz-target")
        || req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-amz-json"));
    Some(Render::Aws(match request.service.as_str() {
        _ if json => AwsDialect::Json,
        "ec2" => AwsDialect::Ec2,
        "s3" => AwsDialect::S3,
        _ => AwsDialect::Query,
    }))
}

/// Reads what the agent signed for and, for a signed payload, the body
/// (all of it within `limit`, the client timeout). Requests that are not
/// SigV4 pass untouched.
pub async fn read(req: Request<Incoming>, limit: Duration) -> Result<Request<AgentBody>, Refusal> {
    let request = match sigv4::inspect(req.headers(), req.uri()) {
        Ok(None) => return Ok(req.map(|b| AgentBody::Live(boxed(b)))),
        Ok(Some(r)) => Ok(r),
        Err(reason) => Err(reason),
    };
    let (mut parts, body) = req.into_parts();
    let body = match &request {
        Ok(r) if r.payload == Payload::Signed && has_body(&parts) => {
            // Bounded in size and in time like every body read whole
            // (`body`): an agent that stops mid-body must not hold its
            // request, and its place among its requests in flight, for ever.
            let read = super::body::read_bounded(boxed(body), MAX_SIGNED_BODY, &parts.headers, limit, |max| {
                Refusal::AwsRefused(format!(
                    "the signed body is larger than {max} bytes; AWS request bodies are hashed into their signature and read whole to re-sign them (S3 uploads: send the body unsigned over TLS)"
                ))
            })
            .await?;
            AgentBody::Read(read)
        }
        _ => AgentBody::Live(boxed(body)),
    };
    let action = request.as_ref().ok().and_then(|r| {
        let bytes = match &body {
            AgentBody::Read(b) => Some(&b[..]),
            AgentBody::Live(_) => None,
        };
        let host = parts
            .uri
            .host()
            .map(str::to_owned)
            .or_else(|| {
                let h = parts.headers.get(hyper::header::HOST)?.to_str().ok()?;
                Some(h.rsplit_once(':').map_or(h, |(h, _)| h).to_owned())
            })
            .unwrap_or_default()
            .to_ascii_lowercase();
        sigv4::action(
            &r.service,
            &parts.method,
            &host,
            &parts.uri,
            &parts.headers,
            bytes,
        )
    });
    parts.extensions.insert(AwsFacts { request, action });
    Ok(Request::from_parts(parts, body))
}

fn has_body(parts: &Parts) -> bool {
    parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() != "0")
}

/// The scope to sign for, checked against the credential's regions and
/// services (planning: pure). `None` for a credential that does not sign.
pub fn scope(
    facts: Option<&AwsFacts>,
    credential: &CredentialPolicy,
) -> Result<Option<AwsScope>, Refusal> {
    let Injection::AwsSigV4 { regions, services } = &credential.inject else {
        return Ok(None);
    };
    let request = match facts.map(|f| &f.request) {
        Some(Err(reason)) => return Err(Refusal::AwsRefused(reason.clone())),
        Some(Ok(r)) => Some(r.clone()),
        None => None,
    };
    let (region, service) = match &request {
        Some(r) => {
            // The SDK's access key is this credential's placeholder, or no
            // placeholder at all; another credential's is not bound here.
            if let Some(id) = r.access_key.strip_prefix(PLACEHOLDER_PREFIX)
                && id != credential.id
            {
                return Err(Refusal::Placeholder {
                    id: id.to_owned(),
                    location: "header authorization (aws access key)".into(),
                });
            }
            (r.region.clone(), r.service.clone())
        }
        None => match (&regions[..], &services[..]) {
            ([region], [service]) => (region.clone(), service.clone()),
            _ => {
                return Err(Refusal::AwsRefused(format!(
                    "the request is not SigV4-signed, and credential {:?} serves several regions or services: sign it (with the placeholder keys) so that its region and service are known",
                    credential.id
                )));
            }
        },
    };
    if !regions.contains(&region) || !services.contains(&service) {
        return Err(Refusal::Denied {
            rule: "aws-scope",
            reason: format!(
                "credential {:?} signs for regions {regions:?} and services {services:?}, not {service} in {region}",
                credential.id
            ),
        });
    }
    Ok(Some(AwsScope {
        region,
        service,
        request,
    }))
}

/// Removes the agent's signature headers (its placeholder key and token
/// must not be taken for unbound placeholders, nor leave the machine).
pub fn strip_agent_signature(parts: &mut Parts) {
    for name in [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        sigv4::CONTENT_SHA256,
    ] {
        parts.headers.remove(name);
    }
}

/// Signs the upstream's request head (final: after `forward::prepare`).
pub fn resign(
    parts: &mut Parts,
    scope: &AwsScope,
    body: Option<&Bytes>,
    creds: &AwsCredentials,
) -> Result<(), Refusal> {
    let (payload, signed_headers, content_sha256) = match &scope.request {
        Some(r) => (
            r.payload.clone(),
            Some(&r.signed_headers[..]),
            r.signed_headers.iter().any(|h| h == sigv4::CONTENT_SHA256),
        ),
        None => (Payload::Signed, None, false),
    };
    if payload == Payload::Signed && body.is_none() && has_body(parts) {
        return Err(Refusal::AwsRefused(
            "the request has a body but is not SigV4-signed: sign it (with the placeholder keys) so that its payload is hashed".into(),
        ));
    }
    let spec = SignSpec {
        region: &scope.region,
        service: &scope.service,
        payload: &payload,
        body: body.map(|b| &b[..]),
        signed_headers,
        content_sha256,
    };
    sigv4::resign(parts, &spec, creds, SystemTime::now()).map_err(|e| match e {
        SignError::Unsupported(reason) => Refusal::AwsRefused(reason),
        SignError::Signer(reason) => Refusal::AwsRefused(reason),
    })
}
