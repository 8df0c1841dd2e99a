//! The load generators and what they report: oha (HTTP/1.1, fixed-rate
//! open-loop latency with coordinated-omission correction, keep-alive on
//! and off) and h2load (HTTP/2, many streams on few connections).

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::paths::{AGENT_AWS_KEYS, AGENT_AWS_SIGV4, Route};
use crate::cmd;

/// How much load: for a duration (measurement) or a request count (smoke).
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Seconds(u32),
    Requests(u32),
}

#[derive(Debug, Clone, Copy)]
pub struct OhaLoad {
    pub path: &'static str,
    pub connections: u32,
    /// Open loop at this rate (requests/s), latency measured from when
    /// each request was due, not when it was sent; `None`: as fast as the
    /// path answers (closed loop, saturation).
    pub rate: Option<u32>,
    pub keep_alive: bool,
    /// A JSON body to POST (else GET).
    pub body: Option<&'static str>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Responses with status 200.
    pub ok: u64,
    /// Other statuses and transport errors (deadline aborts excluded).
    pub failed: u64,
    pub first_failure: Option<String>,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub fn oha(oha: &Path, route: &Route, load: OhaLoad, amount: Amount) -> Command {
    let mut c = cmd::new(oha);
    c.args(["--no-tui", "--output-format", "json", "--cacert"])
        .arg(&route.ca)
        // Requests still running at the deadline finish and count.
        .arg("-w")
        .args(["-c", &load.connections.to_string()]);
    match amount {
        Amount::Seconds(s) => c.args(["-z", &format!("{s}s")]),
        Amount::Requests(n) => c.args(["-n", &n.to_string()]),
    };
    if let Some(rate) = load.rate {
        c.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if !load.keep_alive {
        c.arg("--disable-keepalive");
    }
    if let Some(body) = load.body {
        c.args(["-m", "POST", "-T", "application/json", "-d", body]);
    }
    if route.aws_sigv4 {
        // oha signs each request as an AWS SDK would.
        c.args(["-a", AGENT_AWS_KEYS, "--aws-sigv4", AGENT_AWS_SIGV4]);
    }
    match route.proxy {
        Some(proxy) => c.args(["-x", &format!("http://{proxy}")]),
        // The URL keeps the name (SNI, Host); the connection goes to the
        // address the name stands for here.
        None => c.args(["--connect-to", &route.connect_to()]),
    };
    c.arg(route.url(load.path));
    c
}

pub fn parse_oha(json: &str) -> Result<LoadResult> {
    let v: Value = serde_json::from_str(json).context("oha printed no JSON")?;
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .context("no statusCodeDistribution")?;
    let mut r = LoadResult::default();
    for (status, n) in statuses {
        let n = n.as_u64().unwrap_or(0);
        if status == "200" {
            r.ok += n;
        } else {
            r.failed += n;
            r.first_failure
                .get_or_insert_with(|| format!("status {status}"));
        }
    }
    if let Some(errors) = v["errorDistribution"].as_object() {
        for (error, n) in errors {
            if error.contains("aborted due to deadline") {
                continue;
            }
            r.failed += n.as_u64().unwrap_or(0);
            r.first_failure.get_or_insert_with(|| error.clone());
        }
    }
    let secs = v["summary"]["total"].as_f64().context("no summary.total")?;
    if secs > 0.0 {
        r.rps = r.ok as f64 / secs;
    }
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().map(|s| s * 1000.0);
    r.p50_ms = pct("p50");
    r.p99_ms = pct("p99");
    Ok(r)
}

/// h2load over HTTP/2 only: `connections` sessions, `streams` concurrent
/// streams each. It does not verify certificates (a load tool); the
/// paths' own verification (agentguard and nginx towards the upstream)
/// is unaffected.
pub fn h2load(route: &Route, connections: u32, streams: u32, amount: Amount) -> Result<Command> {
    if route.proxy.is_some() {
        bail!("h2load cannot go through an explicit proxy");
    }
    let mut c = cmd::new("h2load");
    c.args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .arg(format!("--connect-to={}", route.dial));
    match amount {
        Amount::Seconds(s) => c.args(["-D", &s.to_string()]),
        Amount::Requests(n) => c.args(["-n", &n.to_string()]),
    };
    c.arg(route.url("/1k"));
    Ok(c)
}

/// From h2load's text report: `finished in 4.00s, 12345.67 req/s, ...`,
/// `requests: N total, N started, N done, N succeeded, N failed, ...` and
/// `status codes: N 2xx, ...`.
pub fn parse_h2load(text: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let field = |line: &str, label: &str| -> Option<u64> {
        line.split(',')
            .find(|part| part.trim().ends_with(label))?
            .split_whitespace()
            .rev()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut seen = (false, false);
    // h2load counts a 4xx both as a status and as a failed request: the
    // larger of the two is the number of requests that did not succeed.
    let (mut non_2xx, mut transport) = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let rps = rest.split(',').nth(1).context("no req/s")?;
            r.rps = rps.trim().trim_end_matches("req/s").trim().parse()?;
            seen.0 = true;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            let total: u64 = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
            let ok = field(line, "2xx").unwrap_or(0);
            r.ok = ok;
            if total > ok {
                non_2xx = total - ok;
                r.first_failure.get_or_insert_with(|| line.to_owned());
            }
            seen.1 = true;
        } else if line.starts_with("requests: ") {
            transport = field(line, "failed").unwrap_or(0) + field(line, "errored").unwrap_or(0);
            if transport > 0 {
                r.first_failure.get_or_insert_with(|| line.to_owned());
            }
        }
    }
    if !(seen.0 && seen.1) {
        bail!("unrecognised h2load output:\n{text}");
    }
    r.failed = non_2xx.max(transport);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let text = "finished in 37.22ms, 53731.66 req/s, 53.87MB/s\n\
                    requests: 2000 total, 2000 started, 2000 done, 1990 succeeded, 10 failed, 0 errored, 0 timeout\n\
                    status codes: 1990 2xx, 0 3xx, 10 4xx, 0 5xx\n";
        let r = parse_h2load(text).unwrap();
        assert_eq!(r.ok, 1990);
        assert_eq!(r.failed, 10);
        assert!((r.rps - 53731.66).abs() < 1e-6);
    }

    #[test]
    fn parses_oha_json_and_skips_deadline_aborts() {
        let json = r#"{"summary":{"total":2.0},"latencyPercentiles":{"p50":0.0002,"p99":0.001},
            "statusCodeDistribution":{"200":1000,"502":2},
            "errorDistribution":{"aborted due to deadline":5}}"#;
        let r = parse_oha(json).unwrap();
        assert_eq!((r.ok, r.failed), (1000, 2));
        assert_eq!(r.rps, 500.0);
        assert_eq!(r.p50_ms, Some(0.2));
    }
}
