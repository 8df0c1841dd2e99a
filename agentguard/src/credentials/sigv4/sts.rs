//! STS AssumeRole for one agent: session credentials narrowed by a session
//! policy to what the agent's tools may do, and naming the agent
//! (`SourceIdentity`, a session tag, the session name), so that CloudTrail
//! shows which agent acted.

use std::time::{Duration, SystemTime};

use hyper::{
    HeaderMap, Method, Request,
    header::{CONTENT_TYPE, HeaderName},
};
use quick_xml::{Reader, events::Event as XmlEvent};

use super::{
    AwsCredentials, AwsError,
    request::Payload,
    sign::{SignSpec, resign},
};
use crate::{
    credentials::{Secret, TokenFetcher},
    policy::AssumeRole,
};

/// The STS API version AssumeRole is called with.
const STS_VERSION: &str = "2011-06-15";
/// STS limits on RoleSessionName and SourceIdentity.
const MAX_NAME: usize = 64;

/// `agentguard-<agent>`, cut to STS's 64 characters.
fn session_name(agent: &str) -> String {
    let mut name = format!("agentguard-{agent}");
    name.truncate(MAX_NAME);
    name
}

/// The AssumeRole form body for `agent`.
pub(super) fn form(role: &AssumeRole, agent: &str, session_policy: Option<&str>) -> String {
    let name = session_name(agent);
    let duration = role.duration.as_secs().to_string();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("Action", "AssumeRole"),
        ("Version", STS_VERSION),
        ("RoleArn", &role.role_arn),
        ("RoleSessionName", &name),
        ("DurationSeconds", &duration),
        ("SourceIdentity", &name),
        ("Tags.member.1.Key", "agentguard:agent"),
        ("Tags.member.1.Value", agent),
    ];
    if let Some(id) = &role.external_id {
        pairs.push(("ExternalId", id));
    }
    if let Some(policy) = session_policy {
        pairs.push(("Policy", policy));
    }
    pairs
        .iter()
        // RFC 3986 unreserved characters stay, everything else is escaped
        // (a space is `+`), as the AWS SDKs encode Query protocol bodies
        // (Python's `urlencode`: `*` too). The body is signed byte for byte,
        // and verifiers that re-encode the parsed form (moto does) must get
        // the same bytes.
        .map(|(k, v)| format!("{k}={}", crate::percent::encode_form(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Calls AssumeRole with `base` credentials, through `fetcher` (the
/// daemon's verified TLS client).
pub(super) async fn assume_role(
    role: &AssumeRole,
    agent: &str,
    session_policy: Option<&str>,
    base: &AwsCredentials,
    fetcher: &dyn TokenFetcher,
) -> Result<(AwsCredentials, Duration), AwsError> {
    let body = form(role, agent, session_policy);
    let url = role.sts_endpoint.to_string();
    let sts = |reason: String| AwsError::Sts {
        url: url.clone(),
        reason,
    };
    // Signed as the fetcher will send it: host from the URL and the form
    // content type (which the fetcher sets itself).
    let (mut parts, ()) = Request::builder()
        .method(Method::POST)
        .uri(role.sts_endpoint.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(())
        .map_err(|e| sts(e.to_string()))?
        .into_parts();
    let signed = ["content-type".to_owned(), "host".to_owned()];
    let spec = SignSpec {
        region: &role.sts_region,
        service: "sts",
        payload: &Payload::Signed,
        body: Some(body.as_bytes()),
        signed_headers: Some(&signed),
        content_sha256: false,
    };
    resign(&mut parts, &spec, base, SystemTime::now()).map_err(|e| sts(e.to_string()))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE {
            headers.insert(HeaderName::clone(name), value.clone());
        }
    }
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(30),
        fetcher.post_form(&role.sts_endpoint, headers, body),
    )
    .await
    .map_err(|_| sts("STS did not answer within 30 s".into()))?
    .map_err(sts)?;
    if !(200..300).contains(&status) {
        let code = xml_text(&answer, "Code")
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        return Err(sts(format!(
            "AssumeRole of {} was refused with status {status}{}",
            role.role_arn,
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        )));
    }
    parse_credentials(&answer)
        .map_err(|reason| sts(format!("unusable AssumeRole answer: {reason}")))
}

/// `Credentials` of an AssumeRole answer: XML, as the Query API sends it,
/// or JSON, as STS may send it to a client that accepts JSON.
pub(super) fn parse_credentials(answer: &[u8]) -> Result<(AwsCredentials, Duration), String> {
    if answer.trim_ascii_start().starts_with(b"{") {
        return parse_json_credentials(answer);
    }
    let field = |name: &str| xml_text(answer, name).ok_or_else(|| format!("no {name}"));
    let access_key_id = field("AccessKeyId")?;
    let secret_access_key = field("SecretAccessKey")?;
    let session_token = field("SessionToken")?;
    let expiration = field("Expiration")?;
    let expires = humantime::parse_rfc3339_weak(expiration.trim_end_matches('Z'))
        .map_err(|_| "Expiration is not a time".to_owned())?;
    let lifetime = expires
        .duration_since(SystemTime::now())
        .map_err(|_| "the credentials have already expired".to_owned())?;
    Ok((
        AwsCredentials {
            access_key_id: Secret::new(access_key_id),
            secret_access_key: Secret::new(secret_access_key),
            session_token: Some(Secret::new(session_token)),
        },
        lifetime,
    ))
}

fn parse_json_credentials(answer: &[u8]) -> Result<(AwsCredentials, Duration), String> {
    fn find<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => {
                m.get(key).or_else(|| m.values().find_map(|v| find(v, key)))
            }
            _ => None,
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(answer).map_err(|_| "the answer is not JSON".to_owned())?;
    let creds = find(&json, "Credentials").ok_or("no Credentials")?;
    let field = |name: &str| {
        creds
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name}"))
    };
    let expires = match creds.get("Expiration") {
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0))),
        Some(serde_json::Value::String(s)) => {
            humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
        }
        _ => None,
    }
    .ok_or("no Expiration")?;
    Ok((
        AwsCredentials {
            access_key_id: Secret::new(field("AccessKeyId")?),
            secret_access_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("SessionToken")?)),
        },
        expires
            .duration_since(SystemTime::now())
            .map_err(|_| "the credentials have already expired".to_owned())?,
    ))
}

/// The text of the first element named `name` (namespaces ignored),
/// entities resolved.
fn xml_text(xml: &[u8], name: &str) -> Option<String> {
    let xml = std::str::from_utf8(xml).ok()?;
    let mut reader = Reader::from_str(xml);
    let mut text: Option<String> = None;
    loop {
        match reader.read_event().ok()? {
            XmlEvent::Start(e) if text.is_none() && e.local_name().as_ref() == name => {
                text = Some(String::new());
            }
            XmlEvent::Text(t) => {
                if let Some(text) = &mut text {
                    text.push_str(&t.xml10_content());
                }
            }
            XmlEvent::GeneralRef(r) => {
                if let Some(text) = &mut text {
                    let entity = r.into_inner();
                    let c = match entity.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        other => other
                            .strip_prefix("#x")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .or_else(|| other.strip_prefix('#').and_then(|d| d.parse().ok()))
                            .and_then(char::from_u32),
                    };
                    text.push(c?);
                }
            }
            XmlEvent::End(_) if text.is_some() => return text.map(|t| t.trim().to_owned()),
            XmlEvent::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_agent_and_narrows_the_role() {
        let role = AssumeRole {
            role_arn: "arn:aws:iam::123456789012:role/inventory".into(),
            sts_endpoint: "https://sts.eu-west-1.amazonaws.com".parse().unwrap(),
            sts_region: "eu-west-1".into(),
            duration: Duration::from_secs(900),
            external_id: Some("ext-1".into()),
            session_policy: true,
        };
        let body = form(&role, "ops-bot", Some(r#"{"Version":"2012-10-17"}"#));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Action"), Some("AssumeRole"));
        assert_eq!(
            get("RoleArn"),
            Some("arn:aws:iam::123456789012:role/inventory")
        );
        assert_eq!(get("RoleSessionName"), Some("agentguard-ops-bot"));
        assert_eq!(get("SourceIdentity"), Some("agentguard-ops-bot"));
        assert_eq!(get("Tags.member.1.Key"), Some("agentguard:agent"));
        assert_eq!(get("Tags.member.1.Value"), Some("ops-bot"));
        assert_eq!(get("DurationSeconds"), Some("900"));
        assert_eq!(get("ExternalId"), Some("ext-1"));
        assert_eq!(get("Policy"), Some(r#"{"Version":"2012-10-17"}"#));
        assert_eq!(session_name(&"x".repeat(63)).len(), 64);
        // Encoded as the AWS SDKs encode: `*` and `:` escaped.
        assert!(body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Finventory"));
        assert!(form(&role, "a", Some("*")).ends_with("&Policy=%2A"));
    }

    #[test]
    fn credentials_are_read_from_the_answer() {
        let later = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(900));
        let xml = format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>secret/key</SecretAccessKey><SessionToken>tok</SessionToken><Expiration>{later}</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"#
        );
        let (c, lifetime) = parse_credentials(xml.as_bytes()).unwrap();
        assert_eq!(c.access_key_id.expose(), "ASIAEXAMPLE");
        assert_eq!(c.secret_access_key.expose(), "secret/key");
        assert_eq!(c.session_token.unwrap().expose(), "tok");
        assert!(lifetime > Duration::from_secs(890));
        assert_eq!(
            xml_text(
                b"<a><SecretAccessKey>x&amp;y&#43;z</SecretAccessKey></a>",
                "SecretAccessKey"
            )
            .as_deref(),
            Some("x&y+z")
        );
        let err = parse_credentials(b"<AssumeRoleResponse/>").err().unwrap();
        assert_eq!(err, "no AccessKeyId");
        assert_eq!(
            xml_text(
                b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>",
                "Code"
            )
            .as_deref(),
            Some("AccessDenied")
        );
    }
}
