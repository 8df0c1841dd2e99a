//! Where and how the OTLP exporter sends: flags first, then the standard
//! `OTEL_EXPORTER_OTLP_*` environment variables
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), the
//! logs-specific one before the general one, then the defaults.
//!
//! | setting     | flag                 | environment (`_LOGS_` variant first)  | default |
//! |-------------|----------------------|---------------------------------------|---------|
//! | endpoint    | `--otlp-endpoint`    | `OTEL_EXPORTER_OTLP_ENDPOINT`          | off     |
//! | protocol    | `--otlp-protocol`    | `OTEL_EXPORTER_OTLP_PROTOCOL`          | `http/protobuf` |
//! | headers     |                      | `OTEL_EXPORTER_OTLP_HEADERS`           | none    |
//! | CA          | `--otlp-ca`          | `OTEL_EXPORTER_OTLP_CERTIFICATE`       | system roots |
//! | client cert |                      | `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY` | none |
//! | compression | `--otlp-compression` | `OTEL_EXPORTER_OTLP_COMPRESSION`       | none    |
//! | timeout     |                      | `OTEL_EXPORTER_OTLP_TIMEOUT` (ms)      | 10 s    |
//!
//! The general endpoint gets `/v1/logs` appended, the logs-specific one is
//! used as it is (as the specification says); so is `--otlp-endpoint` when
//! it already ends in `/v1/logs`. `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` add to the resource. Header values are
//! credentials (an `Authorization` for the collector): no error message or
//! log line shows one.

use std::{fmt, path::PathBuf, time::Duration};

use hyper::{
    Uri,
    header::{HeaderName, HeaderValue},
};

use super::OtlpError;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP/HTTP's two encodings; `grpc` is refused with a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// What the flags of `agentguard run` say (each overrides its variable).
#[derive(Debug, Clone, Default)]
pub struct OtlpFlags {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub ca: Option<PathBuf>,
    pub compression: Option<String>,
}

/// The exporter's effective settings.
#[derive(Clone)]
pub struct OtlpConfig {
    /// The full URL of the logs endpoint.
    pub url: Uri,
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub timeout: Duration,
    /// Trusted CA certificates (PEM) instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Extra resource attributes (OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_SERVICE_NAME as `service.name`).
    pub resource: Vec<(String, String)>,
}

/// Never shows header values.
impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("url", &self.url.to_string())
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("resource", &self.resource)
            .finish()
    }
}

/// One line for the daemon's start-up log (no header values).
impl fmt::Display for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, compression {}, headers [{}], ca {})",
            self.url,
            match self.protocol {
                Protocol::Protobuf => "http/protobuf",
                Protocol::Json => "http/json",
            },
            match self.compression {
                Compression::None => "none",
                Compression::Gzip => "gzip",
            },
            self.headers
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(","),
            self.ca
                .as_ref()
                .map_or_else(|| "system".into(), |p| p.display().to_string()),
        )
    }
}

impl OtlpConfig {
    /// The exporter's settings from `flags` and the environment (`env`
    /// looks a variable up); `None` when no endpoint is set anywhere.
    pub fn resolve(
        flags: &OtlpFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpError> {
        // Set but empty counts as unset, as SDKs do.
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let logs_or = |suffix: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_LOGS_{suffix}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
        };
        let url = if let Some(flag) = &flags.endpoint {
            logs_url(flag)?
        } else if let Some(logs) = var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") {
            exact_url(&logs)?
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            logs_url(&base)?
        } else {
            return Ok(None);
        };
        let protocol = match flags
            .protocol
            .clone()
            .or_else(|| logs_or("PROTOCOL"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("http/protobuf") => Protocol::Protobuf,
            Some("http/json") => Protocol::Json,
            Some(other) => return Err(OtlpError::Protocol(other.to_owned())),
        };
        let compression = match flags
            .compression
            .clone()
            .or_else(|| logs_or("COMPRESSION"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("none") => Compression::None,
            Some("gzip") => Compression::Gzip,
            Some(other) => return Err(OtlpError::Compression(other.to_owned())),
        };
        let timeout = match logs_or("TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or(OtlpError::Timeout(ms))?,
        };
        let headers = match logs_or("HEADERS") {
            Some(list) => parse_headers(&list)?,
            None => Vec::new(),
        };
        let ca = flags
            .ca
            .clone()
            .or_else(|| logs_or("CERTIFICATE").map(PathBuf::from));
        let client_cert = match (logs_or("CLIENT_CERTIFICATE"), logs_or("CLIENT_KEY")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => return Err(OtlpError::ClientCertificate),
        };
        let mut resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(list) => parse_pairs(&list, "OTEL_RESOURCE_ATTRIBUTES")?,
            None => Vec::new(),
        };
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            resource.retain(|(k, _)| k != "service.name");
            resource.push(("service.name".into(), name));
        }
        Ok(Some(Self {
            url,
            protocol,
            headers,
            compression,
            timeout,
            ca,
            client_cert,
            resource,
        }))
    }
}

/// `<endpoint>/v1/logs`, as OTLP/HTTP specifies for a base endpoint
/// (unless it already ends so).
pub fn logs_url(endpoint: &str) -> Result<Uri, OtlpError> {
    let base = endpoint.trim().trim_end_matches('/');
    if base.ends_with("/v1/logs") {
        exact_url(base)
    } else {
        exact_url(&format!("{base}/v1/logs"))
    }
}

fn exact_url(url: &str) -> Result<Uri, OtlpError> {
    let url = url.trim();
    let bad = || OtlpError::Endpoint(url.to_owned());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad());
    }
    url.parse().map_err(|_| bad())
}

/// `key=value,key2=value2` (W3C Baggage-like, values percent-decoded), as
/// `OTEL_EXPORTER_OTLP_HEADERS` carries them. Errors name the header, never
/// its value.
fn parse_headers(list: &str) -> Result<Vec<(HeaderName, HeaderValue)>, OtlpError> {
    parse_pairs(list, "OTEL_EXPORTER_OTLP_HEADERS")?
        .into_iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| OtlpError::Header(format!("{k:?} is not a header name")))?;
            let mut value = HeaderValue::from_str(&v).map_err(|_| {
                OtlpError::Header(format!("the value of {k} is not a header value"))
            })?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

fn parse_pairs(list: &str, var: &'static str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut out = Vec::new();
    for item in list.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(OtlpError::Pairs {
                var,
                reason: "an entry without '='".into(),
            });
        };
        let k = percent_decode(k.trim()).ok_or(OtlpError::Pairs {
            var,
            reason: "a bad percent-escape in a key".into(),
        })?;
        let v = percent_decode(v.trim()).ok_or(OtlpError::Pairs {
            var,
            reason: format!("a bad percent-escape in the value of {k}"),
        })?;
        if k.is_empty() {
            return Err(OtlpError::Pairs {
                var,
                reason: "an empty key".into(),
            });
        }
        out.push((k, v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn nothing_set_means_no_export() {
        assert!(
            OtlpConfig::resolve(&OtlpFlags::default(), env(&[]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_environment_configures_everything_and_flags_win() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret, x-tenant = a",
            ),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=x",
            ),
            ("OTEL_SERVICE_NAME", "guard"),
        ];
        let c = OtlpConfig::resolve(&OtlpFlags::default(), env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(c.url.to_string(), "https://collector:4318/v1/logs");
        assert_eq!(c.protocol, Protocol::Json);
        assert_eq!(c.compression, Compression::Gzip, "the logs variable first");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.headers[0].0.as_str(), "authorization");
        assert_eq!(c.headers[0].1.to_str().unwrap(), "Bearer s3cret");
        assert_eq!(c.headers[1].1.to_str().unwrap(), "a");
        assert!(c.headers[0].1.is_sensitive());
        assert_eq!(
            c.resource,
            vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("service.name".to_owned(), "guard".to_owned())
            ]
        );
        // Neither the debug form nor the log line shows a header value.
        assert!(!format!("{c:?} {c}").contains("s3cret"));

        let flags = OtlpFlags {
            endpoint: Some("http://127.0.0.1:4318".into()),
            protocol: Some("http/protobuf".into()),
            ca: Some("/other.pem".into()),
            compression: Some("none".into()),
        };
        let c = OtlpConfig::resolve(&flags, env(&vars)).unwrap().unwrap();
        assert_eq!(c.url.to_string(), "http://127.0.0.1:4318/v1/logs");
        assert_eq!(c.protocol, Protocol::Protobuf);
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.ca, Some(PathBuf::from("/other.pem")));
    }

    #[test]
    fn the_logs_endpoint_is_used_as_it_is() {
        let c = OtlpConfig::resolve(
            &OtlpFlags::default(),
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    "http://c:4318/custom/logs",
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.url.to_string(), "http://c:4318/custom/logs");
        assert_eq!(
            logs_url("https://c.example/v1/logs").unwrap().to_string(),
            "https://c.example/v1/logs"
        );
    }

    #[test]
    fn bad_settings_are_refused_without_showing_secrets() {
        let resolve = |vars: &[(&str, &str)]| {
            OtlpConfig::resolve(
                &OtlpFlags {
                    endpoint: Some("http://127.0.0.1:4318".into()),
                    ..OtlpFlags::default()
                },
                env(vars),
            )
        };
        assert!(matches!(
            resolve(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            Err(OtlpError::Protocol(_))
        ));
        assert!(matches!(
            resolve(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]),
            Err(OtlpError::Compression(_))
        ));
        assert!(matches!(
            resolve(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]),
            Err(OtlpError::Timeout(_))
        ));
        assert!(matches!(
            resolve(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]),
            Err(OtlpError::ClientCertificate)
        ));
        let err = resolve(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=top\u{7f}secret",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("authorization") && !err.contains("secret"),
            "{err}"
        );
        assert!(
            OtlpConfig::resolve(
                &OtlpFlags {
                    endpoint: Some("collector:4318".into()),
                    ..OtlpFlags::default()
                },
                env(&[])
            )
            .is_err()
        );
    }
}
