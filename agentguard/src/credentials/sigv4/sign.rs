//! Signing the upstream's request head again, with the real credentials,
//! with AWS's own signer (`aws-sigv4`, from the AWS SDK for Rust).
//!
//! The agent's `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and
//! `X-Amz-Content-SHA256` go; the signer writes its own. Only the headers
//! the agent's SDK signed are signed again (the SDK knows which headers its
//! service expects covered; headers a proxy may touch, such as `Expect`,
//! it leaves out), plus `host`, which the signer takes from the URI.

use std::time::SystemTime;

use aws_sigv4::{
    http_request::{
        PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest,
        SigningSettings, UriPathNormalizationMode, sign,
    },
    sign::v4,
};
use hyper::{
    header::{AUTHORIZATION, EXPECT, HeaderName, HeaderValue, USER_AGENT},
    http::request::Parts,
};
use thiserror::Error;

use super::{
    AwsCredentials,
    request::{CONTENT_SHA256, Payload},
};

/// Headers the signer writes; the agent's are removed first.
const GENERATED: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    CONTENT_SHA256,
];

#[derive(Debug, Clone, Error)]
pub enum SignError {
    #[error("{0}")]
    Unsupported(String),
    #[error("failed to sign the request: {0}")]
    Signer(String),
}

/// What to sign for.
#[derive(Debug, Clone, Copy)]
pub struct SignSpec<'a> {
    pub region: &'a str,
    pub service: &'a str,
    pub payload: &'a Payload,
    /// The body, for a signed payload (read whole).
    pub body: Option<&'a [u8]>,
    /// The agent's `SignedHeaders`; `None` (the agent did not sign): every
    /// header but the ones a proxy or client may change.
    pub signed_headers: Option<&'a [String]>,
    /// Whether to send `X-Amz-Content-SHA256` (the agent did, or the
    /// service needs it).
    pub content_sha256: bool,
}

/// Signs `parts` (the upstream's request head: absolute URI, final
/// headers) for `spec` with `creds` at `time`.
pub fn resign(
    parts: &mut Parts,
    spec: &SignSpec<'_>,
    creds: &AwsCredentials,
    time: SystemTime,
) -> Result<(), SignError> {
    let body = match (spec.payload, spec.body) {
        (Payload::Signed, Some(body)) => SignableBody::Bytes(body),
        (Payload::Signed, None) => SignableBody::empty(),
        (Payload::Unsigned, _) => SignableBody::UnsignedPayload,
        (Payload::StreamingUnsignedTrailer, _) => SignableBody::StreamingUnsignedPayloadTrailer,
        (Payload::StreamingSigned(mode), _) => {
            return Err(SignError::Unsupported(format!(
                "{mode}: each chunk of the body is signed with the agent's (placeholder) key, and agentguard does not re-sign chunks; send the body unsigned over TLS (UNSIGNED-PAYLOAD, the AWS SDKs' default for S3 over HTTPS)"
            )));
        }
    };
    for name in GENERATED {
        parts.headers.remove(name);
    }
    let s3 = spec.service == "s3";
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = if spec.content_sha256 || s3 || body_needs_header(spec.payload)
    {
        PayloadChecksumKind::XAmzSha256
    } else {
        PayloadChecksumKind::NoHeader
    };
    // S3 signs the path as sent (no second encoding, no normalisation);
    // every other service double-encodes (the SigV4 rules).
    if s3 {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    settings.session_token_mode = SessionTokenMode::Include;
    let mut excluded = settings.excluded_headers.take().unwrap_or_default();
    excluded.push(EXPECT.as_str().into());
    settings.excluded_headers = Some(excluded);

    let signed = |name: &HeaderName| match spec.signed_headers {
        Some(list) => list.iter().any(|h| h == name.as_str()),
        None => *name != USER_AGENT && *name != EXPECT,
    };
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(name, _)| signed(name))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let uri = parts.uri.to_string();
    let request = SignableRequest::new(parts.method.as_str(), uri, headers.into_iter(), body)
        .map_err(|e| SignError::Signer(e.to_string()))?;
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.expose(),
        creds.secret_access_key.expose(),
        creds.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "agentguard",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(spec.region)
        .name(spec.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SignError::Signer(e.to_string()))?
        .into();
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SignError::Signer(e.to_string()))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| SignError::Signer(format!("the signer wrote an invalid {name}")))?;
        if name == AUTHORIZATION || name == "x-amz-security-token" {
            value.set_sensitive(true);
        }
        parts.headers.insert(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| SignError::Signer(format!("the signer wrote header {name}")))?,
            value,
        );
    }
    Ok(())
}

fn body_needs_header(payload: &Payload) -> bool {
    !matches!(payload, Payload::Signed)
}

/// AWS's SigV4 test suite (the aws-c-auth signing suite that `aws-sigv4`
/// ships, itself from AWS's published suite): each request is sent as an
/// agent would, signed with a placeholder key, and must come out signed
/// exactly as the suite says.
#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use hyper::Request;

    use super::*;
    use crate::credentials::{Secret, sigv4::request::inspect};

    /// 2015-08-30T12:36:00Z, the suite's time.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_creds(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: Secret::new("AKIDEXAMPLE".into()),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: token.map(|t| Secret::new(t.into())),
        }
    }

    /// The suite's request as an agent's SDK would send it: its headers,
    /// an `X-Amz-Date` of another time, and a signature made with the
    /// placeholder key over `signed`.
    fn agent_request(method: &str, uri: &str, headers: &[(&str, &str)], signed: &str) -> Parts {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = req
            .header("x-amz-date", "20991231T000000Z")
            .header("x-amz-security-token", "agentguard-placeholder:aws-token")
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=agentguard-placeholder:aws/20991231/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature=00000000"
                ),
            );
        req.body(()).unwrap().into_parts().0
    }

    fn resign_as_suite(parts: &mut Parts, body: Option<&[u8]>, token: Option<&str>) {
        let agent = inspect(&parts.headers, &parts.uri).unwrap().unwrap();
        let had_sha = parts.headers.contains_key(CONTENT_SHA256);
        let spec = SignSpec {
            region: &agent.region,
            service: &agent.service,
            payload: &agent.payload,
            body,
            signed_headers: Some(&agent.signed_headers),
            content_sha256: had_sha,
        };
        resign(parts, &spec, &suite_creds(token), suite_time()).unwrap();
    }

    fn header<'a>(parts: &'a Parts, name: &str) -> &'a str {
        parts.headers[name].to_str().unwrap()
    }

    #[test]
    fn get_vanilla() {
        let mut p = agent_request(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            "host;x-amz-date",
        );
        resign_as_suite(&mut p, None, None);
        assert_eq!(
            header(&p, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(header(&p, "x-amz-date"), "20150830T123600Z");
        // The agent's placeholder session token is gone.
        assert!(p.headers.get("x-amz-security-token").is_none());
        assert!(p.headers["authorization"].is_sensitive());
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        let mut p = agent_request(
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            &[],
            "host;x-amz-date",
        );
        resign_as_suite(&mut p, None, None);
        assert!(header(&p, "authorization").ends_with(
            "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ));
    }

    #[test]
    fn post_vanilla() {
        let mut p = agent_request(
            "POST",
            "https://example.amazonaws.com/",
            &[],
            "host;x-amz-date",
        );
        resign_as_suite(&mut p, Some(b""), None);
        assert!(header(&p, "authorization").ends_with(
            "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        ));
    }

    #[test]
    fn post_x_www_form_urlencoded_with_the_body_hashed() {
        let mut p = agent_request(
            "POST",
            "https://example.amazonaws.com/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "13"),
                // The agent's hash: replaced by the signer's own.
                (
                    CONTENT_SHA256,
                    "0000000000000000000000000000000000000000000000000000000000000000",
                ),
            ],
            "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
        );
        resign_as_suite(&mut p, Some(b"Param1=value1"), None);
        assert_eq!(
            header(&p, CONTENT_SHA256),
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
        );
        assert_eq!(
            header(&p, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
    }

    #[test]
    fn get_vanilla_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let mut p = agent_request(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            "host;x-amz-date",
        );
        resign_as_suite(&mut p, None, Some(token));
        assert_eq!(header(&p, "x-amz-security-token"), token);
        assert!(p.headers["x-amz-security-token"].is_sensitive());
        assert_eq!(
            header(&p, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn headers_the_agent_did_not_sign_stay_unsigned() {
        let mut p = agent_request(
            "GET",
            "https://example.amazonaws.com/",
            &[("expect", "100-continue"), ("x-agent-extra", "1")],
            "host;x-amz-date",
        );
        resign_as_suite(&mut p, None, None);
        assert!(header(&p, "authorization").contains("SignedHeaders=host;x-amz-date,"));
        assert_eq!(header(&p, "x-agent-extra"), "1");
    }

    #[test]
    fn streaming_signed_payloads_are_refused_with_the_reason() {
        let mut p = agent_request(
            "PUT",
            "https://s3.amazonaws.com/b/k",
            &[(CONTENT_SHA256, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")],
            "host;x-amz-content-sha256;x-amz-date",
        );
        let agent = inspect(&p.headers, &p.uri).unwrap().unwrap();
        let spec = SignSpec {
            region: "us-east-1",
            service: "s3",
            payload: &agent.payload,
            body: None,
            signed_headers: Some(&agent.signed_headers),
            content_sha256: true,
        };
        let err = resign(&mut p, &spec, &suite_creds(None), suite_time())
            .unwrap_err()
            .to_string();
        assert!(err.contains("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), "{err}");
        assert!(err.contains("UNSIGNED-PAYLOAD"), "{err}");
    }

    #[test]
    fn unsigned_s3_payloads_keep_streaming() {
        let mut p = agent_request(
            "PUT",
            "https://s3.amazonaws.com/b/a%20key",
            &[(CONTENT_SHA256, "UNSIGNED-PAYLOAD")],
            "host;x-amz-content-sha256;x-amz-date",
        );
        let agent = inspect(&p.headers, &p.uri).unwrap().unwrap();
        let spec = SignSpec {
            region: "us-east-1",
            service: "s3",
            payload: &agent.payload,
            body: None,
            signed_headers: Some(&agent.signed_headers),
            content_sha256: true,
        };
        resign(&mut p, &spec, &suite_creds(None), suite_time()).unwrap();
        assert_eq!(header(&p, CONTENT_SHA256), "UNSIGNED-PAYLOAD");
        assert!(header(&p, "authorization").contains("/us-east-1/s3/aws4_request"));
    }
}
