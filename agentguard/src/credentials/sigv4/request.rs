//! Reading an agent's SigV4-signed request head: who it signed as (the
//! placeholder access key), for which region and service, which headers it
//! signed, and how its payload is (or is not) signed. Nothing here checks
//! the agent's signature: it was made with a placeholder key and is thrown
//! away.

use hyper::{
    HeaderMap, Uri,
    header::{AUTHORIZATION, HeaderName},
};

/// The header carrying the payload hash, or how the payload is sent.
pub const CONTENT_SHA256: &str = "x-amz-content-sha256";
/// [`CONTENT_SHA256`] as a header name, parsed once: every request's
/// headers are looked at for it.
const CONTENT_SHA256_NAME: HeaderName = HeaderName::from_static(CONTENT_SHA256);
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How the agent's SDK treats the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Hashed into the signature (the hash in `x-amz-content-sha256`, or no
    /// header): the body is read and hashed again.
    Signed,
    /// `UNSIGNED-PAYLOAD`: streamed as it comes (S3 over TLS).
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked, unsigned chunks,
    /// a checksum trailer (S3 uploads by current SDKs).
    StreamingUnsignedTrailer,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` and its kin: every chunk is
    /// signed in a chain from the request's signature, with the agent's
    /// (placeholder) key. Not re-signed: refused.
    StreamingSigned(String),
}

/// What the agent's request says about its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRequest {
    /// The access key id it signed with (a placeholder, normally).
    pub access_key: String,
    pub region: String,
    pub service: String,
    /// Lowercase, as in its `SignedHeaders`.
    pub signed_headers: Vec<String>,
    pub payload: Payload,
}

/// `Ok(None)`: the request carries no SigV4 signature (the credential may
/// still sign it, if it names one region and service). `Err`: a SigV4
/// request agentguard does not re-sign (presigned URLs, SigV4a), or a
/// malformed one, with the reason.
pub fn inspect(headers: &HeaderMap, uri: &Uri) -> Result<Option<AwsRequest>, String> {
    let payload = payload(headers);
    if uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("X-Amz-Signature=") || p.starts_with("X-Amz-Credential="))
    }) {
        return Err(
            "presigned AWS URLs (X-Amz-Signature in the query) are signed with the agent's key and are not re-signed; sign requests in the Authorization header"
                .into(),
        );
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII".to_owned())?;
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        if value.starts_with("AWS4-ECDSA-P256-SHA256") {
            return Err("SigV4a (AWS4-ECDSA-P256-SHA256) is not re-signed; use SigV4".into());
        }
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header".into());
    }
    let mut credential = None;
    let mut signed = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(c) = part.strip_prefix("Credential=") {
            credential = Some(c);
        } else if let Some(s) = part.strip_prefix("SignedHeaders=") {
            signed = Some(s);
        }
    }
    let credential = credential.ok_or("SigV4 Authorization without Credential=")?;
    // <access key>/<date>/<region>/<service>/aws4_request
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, _date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!(
            "SigV4 credential scope {:?} is not key/date/region/service/aws4_request",
            scope.get(1..).map(|s| s.join("/")).unwrap_or_default()
        ));
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !name_ok(region) || !name_ok(service) {
        return Err("SigV4 region or service is not a plain name".into());
    }
    let signed_headers = signed
        .ok_or("SigV4 Authorization without SignedHeaders=")?
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    Ok(Some(AwsRequest {
        access_key: access_key.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        payload,
    }))
}

/// The payload mode `x-amz-content-sha256` announces.
pub fn payload(headers: &HeaderMap) -> Payload {
    match headers
        .get(CONTENT_SHA256_NAME)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some("UNSIGNED-PAYLOAD") => Payload::Unsigned,
        Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER") => Payload::StreamingUnsignedTrailer,
        Some(v) if v.starts_with("STREAMING-") => Payload::StreamingSigned(v.to_owned()),
        _ => Payload::Signed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const BOTO_EC2: &str = "AWS4-HMAC-SHA256 Credential=agentguard-placeholder:aws/20240101/eu-west-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0123abcd";

    #[test]
    fn reads_a_boto3_authorization() {
        let uri: Uri = "/".parse().unwrap();
        let r = inspect(&headers(&[("authorization", BOTO_EC2)]), &uri)
            .unwrap()
            .unwrap();
        assert_eq!(r.access_key, "agentguard-placeholder:aws");
        assert_eq!(
            (r.region.as_str(), r.service.as_str()),
            ("eu-west-1", "ec2")
        );
        assert_eq!(r.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert_eq!(r.payload, Payload::Signed);
        assert_eq!(
            inspect(&headers(&[("authorization", "Bearer x")]), &uri),
            Ok(None)
        );
        assert_eq!(inspect(&HeaderMap::new(), &uri), Ok(None));
    }

    #[test]
    fn payload_modes() {
        for (value, want) in [
            ("UNSIGNED-PAYLOAD", Payload::Unsigned),
            (
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                Payload::StreamingUnsignedTrailer,
            ),
            (
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                Payload::StreamingSigned("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into()),
            ),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                Payload::Signed,
            ),
        ] {
            assert_eq!(payload(&headers(&[(CONTENT_SHA256, value)])), want);
        }
    }

    #[test]
    fn refuses_what_it_cannot_resign() {
        let uri: Uri =
            "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&X-Amz-Signature=00"
                .parse()
                .unwrap();
        assert!(
            inspect(&HeaderMap::new(), &uri)
                .unwrap_err()
                .contains("presigned")
        );
        let uri: Uri = "/".parse().unwrap();
        for bad in [
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=k/d/eu-west-1/ec2, SignedHeaders=host, Signature=00",
            "AWS4-ECDSA-P256-SHA256 Credential=k/d/ec2/aws4_request, SignedHeaders=host",
        ] {
            assert!(
                inspect(&headers(&[("authorization", bad)]), &uri).is_err(),
                "{bad}"
            );
        }
    }
}
