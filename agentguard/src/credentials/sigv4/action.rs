//! Which AWS action a request is, in IAM's spelling (`ec2:DescribeInstances`),
//! so that a policy can allow actions: from `X-Amz-Target` (JSON
//! protocols: DynamoDB, CloudWatch Logs, ...), the `Action` parameter in the
//! query or a form body (Query protocol: EC2, STS, IAM, SQS, SNS), or, for
//! S3, the method, whether a bucket and key are named, and the
//! subresource (`?acl`, `?tagging`, ...).
//!
//! `None` where the action cannot be told (REST-JSON services, an S3
//! subresource not mapped here): a tool that names actions then does not
//! match, so the request is denied rather than guessed at.

use hyper::{HeaderMap, Method, Uri, header::CONTENT_TYPE};

/// S3 subresources that change the action and are not mapped below: a
/// request naming one has no action here (denied where actions are named).
const UNMAPPED_S3_SUBRESOURCES: &[&str] = &[
    "accelerate",
    "analytics",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "retention",
    "torrent",
    "website",
];

/// The request's action as `service:Action`, or `None`.
pub fn action(
    service: &str,
    method: &Method,
    host: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Option<String> {
    if service == "s3" {
        return s3_action(method, host, uri).map(|a| format!("s3:{a}"));
    }
    let op = target(headers)
        .or_else(|| param(uri.query().unwrap_or_default().as_bytes(), "Action"))
        .or_else(|| {
            let form = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| {
                    ct.to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            form.then_some(body)
                .flatten()
                .and_then(|b| param(b, "Action"))
        })?;
    let plain = !op.is_empty() && op.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then(|| format!("{service}:{op}"))
}

/// `X-Amz-Target: DynamoDB_20120810.GetItem` → `GetItem`.
fn target(headers: &HeaderMap) -> Option<String> {
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    Some(target.rsplit('.').next()?.to_owned())
}

/// The one value of form parameter `name`; two values are no answer (the
/// agent must not pick which one the policy reads).
fn param(form: &[u8], name: &str) -> Option<String> {
    let mut values = form_urlencoded::parse(form)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned());
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// The S3 action (without `s3:`).
fn s3_action(method: &Method, host: &str, uri: &Uri) -> Option<&'static str> {
    let params: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(k, _)| k.into_owned())
        .collect();
    if params
        .iter()
        .any(|p| UNMAPPED_S3_SUBRESOURCES.contains(&p.as_str()))
    {
        return None;
    }
    let has = |name: &str| params.iter().any(|p| p == name);
    let (bucket, key) = bucket_and_key(host, uri.path());
    let method = method.as_str();
    Some(match (bucket.is_some(), key.is_some()) {
        (false, _) => match method {
            "GET" => "ListAllMyBuckets",
            _ => return None,
        },
        (true, false) => match method {
            "GET" if has("acl") => "GetBucketAcl",
            "GET" if has("policy") => "GetBucketPolicy",
            "GET" if has("location") => "GetBucketLocation",
            "GET" if has("versioning") => "GetBucketVersioning",
            "GET" if has("tagging") => "GetBucketTagging",
            "GET" if has("cors") => "GetBucketCORS",
            "GET" if has("uploads") => "ListBucketMultipartUploads",
            "GET" if has("versions") => "ListBucketVersions",
            "GET" | "HEAD" => "ListBucket",
            "PUT" if has("acl") => "PutBucketAcl",
            "PUT" if has("policy") => "PutBucketPolicy",
            "PUT" if has("versioning") => "PutBucketVersioning",
            "PUT" if has("tagging") => "PutBucketTagging",
            "PUT" if has("cors") => "PutBucketCORS",
            "PUT" => "CreateBucket",
            "DELETE" if has("policy") => "DeleteBucketPolicy",
            "DELETE" if has("tagging") => "PutBucketTagging",
            "DELETE" if has("cors") => "PutBucketCORS",
            "DELETE" => "DeleteBucket",
            // Multi-object delete needs s3:DeleteObject.
            "POST" if has("delete") => "DeleteObject",
            _ => return None,
        },
        (true, true) => match method {
            "GET" if has("acl") => "GetObjectAcl",
            "GET" if has("tagging") => "GetObjectTagging",
            "GET" if has("uploadId") => "ListMultipartUploadParts",
            "GET" if has("attributes") => "GetObjectAttributes",
            "GET" | "HEAD" if has("versionId") => "GetObjectVersion",
            "GET" | "HEAD" => "GetObject",
            "PUT" if has("acl") => "PutObjectAcl",
            "PUT" if has("tagging") => "PutObjectTagging",
            "PUT" => "PutObject",
            // CreateMultipartUpload and CompleteMultipartUpload.
            "POST" if has("uploads") || has("uploadId") => "PutObject",
            "POST" if has("restore") => "RestoreObject",
            "POST" if has("select") => "GetObject",
            "DELETE" if has("uploadId") => "AbortMultipartUpload",
            "DELETE" if has("tagging") => "DeleteObjectTagging",
            "DELETE" if has("versionId") => "DeleteObjectVersion",
            "DELETE" => "DeleteObject",
            _ => return None,
        },
    })
}

/// The bucket and key a request names: virtual-hosted (`bucket.s3.<...>`)
/// or path-style (`/bucket/key`).
fn bucket_and_key<'a>(host: &'a str, path: &'a str) -> (Option<&'a str>, Option<&'a str>) {
    let nonempty = |s: &'a str| (!s.is_empty()).then_some(s);
    let virtual_bucket = [".s3.", ".s3-"]
        .iter()
        .filter_map(|m| host.find(m))
        .min()
        .map(|at| &host[..at]);
    if let Some(bucket) = virtual_bucket.and_then(nonempty) {
        return (Some(bucket), nonempty(path.trim_start_matches('/')));
    }
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((bucket, key)) => (nonempty(bucket), nonempty(key)),
        None => (nonempty(path), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(
        service: &str,
        method: &str,
        host: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        action(
            service,
            &method.parse().unwrap(),
            host,
            &uri.parse().unwrap(),
            &h,
            Some(body.as_bytes()),
        )
    }

    const FORM: (&str, &str) = (
        "content-type",
        "application/x-www-form-urlencoded; charset=utf-8",
    );

    #[test]
    fn query_protocol_in_the_body_or_the_query() {
        assert_eq!(
            act(
                "ec2",
                "POST",
                "ec2.eu-west-1.amazonaws.com",
                "/",
                &[FORM],
                "Action=DescribeInstances&Version=2016-11-15"
            )
            .as_deref(),
            Some("ec2:DescribeInstances")
        );
        assert_eq!(
            act(
                "sts",
                "GET",
                "sts.amazonaws.com",
                "/?Action=GetCallerIdentity&Version=2011-06-15",
                &[],
                ""
            )
            .as_deref(),
            Some("sts:GetCallerIdentity")
        );
        // Not a form: the body is not read for it.
        assert_eq!(
            act("ec2", "POST", "h", "/", &[], "Action=RunInstances"),
            None
        );
        // Two actions: no answer.
        assert_eq!(
            act(
                "ec2",
                "POST",
                "h",
                "/",
                &[FORM],
                "Action=DescribeInstances&Action=RunInstances"
            ),
            None
        );
        assert_eq!(
            act("ec2", "POST", "h", "/", &[FORM], "Action=Run%20Instances"),
            None
        );
    }

    #[test]
    fn json_protocols_by_target() {
        assert_eq!(
            act(
                "dynamodb",
                "POST",
                "dynamodb.eu-west-1.amazonaws.com",
                "/",
                &[("x-amz-target", "DynamoDB_20120810.GetItem")],
                "{}"
            )
            .as_deref(),
            Some("dynamodb:GetItem")
        );
        assert_eq!(
            act("lambda", "GET", "h", "/2015-03-31/functions", &[], ""),
            None
        );
    }

    #[test]
    fn s3_by_method_bucket_key_and_subresource() {
        for (method, host, uri, want) in [
            ("GET", "s3.amazonaws.com", "/", Some("s3:ListAllMyBuckets")),
            (
                "GET",
                "s3.amazonaws.com",
                "/reports?list-type=2&prefix=2024%2F",
                Some("s3:ListBucket"),
            ),
            (
                "GET",
                "s3.amazonaws.com",
                "/reports/2024/q1.csv",
                Some("s3:GetObject"),
            ),
            (
                "HEAD",
                "reports.s3.eu-west-1.amazonaws.com",
                "/2024/q1.csv",
                Some("s3:GetObject"),
            ),
            (
                "GET",
                "reports.s3.eu-west-1.amazonaws.com",
                "/",
                Some("s3:ListBucket"),
            ),
            (
                "GET",
                "reports.s3.amazonaws.com",
                "/k?x-id=GetObject",
                Some("s3:GetObject"),
            ),
            (
                "PUT",
                "s3.amazonaws.com",
                "/reports/new.csv",
                Some("s3:PutObject"),
            ),
            (
                "GET",
                "s3.amazonaws.com",
                "/reports/k?acl",
                Some("s3:GetObjectAcl"),
            ),
            (
                "DELETE",
                "s3.amazonaws.com",
                "/reports/k?uploadId=1",
                Some("s3:AbortMultipartUpload"),
            ),
            (
                "POST",
                "s3.amazonaws.com",
                "/reports?delete",
                Some("s3:DeleteObject"),
            ),
            (
                "PUT",
                "s3.amazonaws.com",
                "/reports",
                Some("s3:CreateBucket"),
            ),
            ("GET", "s3.amazonaws.com", "/reports?website", None),
            ("PATCH", "s3.amazonaws.com", "/reports/k", None),
        ] {
            assert_eq!(
                act("s3", method, host, uri, &[], "").as_deref(),
                want,
                "{method} {host}{uri}"
            );
        }
    }
}
