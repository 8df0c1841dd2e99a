//! What is measured on each path, and how one measurement runs: the load,
//! and the proxy's CPU time and memory read from /proc around it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    load::{self, Amount, LoadResult, OhaLoad},
    paths::{Env, PathKind},
    process::Running,
    procfs,
};
use crate::cmd;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Oha(OhaLoad),
    H2 {
        connections: u32,
        streams: u32,
    },
    /// Resident memory per idle TLS connection.
    Idle,
    /// Time to first SSE event.
    Sse,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    pub kind: Kind,
}

const fn oha(path: &'static str, connections: u32, rate: Option<u32>, keep_alive: bool) -> Kind {
    Kind::Oha(OhaLoad {
        path,
        connections,
        rate,
        keep_alive,
    })
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "ka_sat_1k",
        title: "keep-alive, saturation, 1 KiB (32 connections)",
        kind: oha("/1k", 32, None, true),
    },
    Scenario {
        id: "ka_sat_64k",
        title: "keep-alive, saturation, 64 KiB (32 connections)",
        kind: oha("/64k", 32, None, true),
    },
    Scenario {
        id: "ka_rate_200",
        title: "keep-alive, 200 req/s open loop, 1 KiB (16 connections)",
        kind: oha("/1k", 16, Some(200), true),
    },
    Scenario {
        id: "ka_rate_1000",
        title: "keep-alive, 1000 req/s open loop, 1 KiB (32 connections)",
        kind: oha("/1k", 32, Some(1000), true),
    },
    Scenario {
        id: "new_sat",
        title: "new connection per request, saturation, 1 KiB (16 at once)",
        kind: oha("/1k", 16, None, false),
    },
    Scenario {
        id: "new_rate_200",
        title: "new connection per request, 200 req/s open loop, 1 KiB",
        kind: oha("/1k", 16, Some(200), false),
    },
    Scenario {
        id: "h2_sat",
        title: "HTTP/2 multiplexed, saturation, 1 KiB (4 connections x 32 streams)",
        kind: Kind::H2 {
            connections: 4,
            streams: 32,
        },
    },
    Scenario {
        id: "sse",
        title: "time to first SSE event (new connection each)",
        kind: Kind::Sse,
    },
    Scenario {
        id: "idle",
        title: "resident memory per idle TLS connection",
        kind: Kind::Idle,
    },
];

/// How big each measurement is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub load: Amount,
    pub idle_connections: u32,
    pub sse_samples: u32,
}

/// Metric name → value, for one scenario on one path in one run.
pub type Metrics = BTreeMap<String, f64>;

/// Whether `scenario` can be measured on `path` (the reason if not).
pub fn not_applicable(path: PathKind, scenario: &Scenario) -> Option<&'static str> {
    match (path, scenario.kind) {
        (PathKind::Direct, Kind::Idle) => Some("no proxy"),
        (PathKind::Mitmproxy, Kind::H2 { .. }) => Some("h2load has no proxy support"),
        _ => None,
    }
}

pub fn measure(env: &Env, path: PathKind, scenario: &Scenario, size: Size) -> Result<Metrics> {
    let route = env.route(path);
    let pids = env.proxy_pids(path);
    let mut m = Metrics::new();
    match scenario.kind {
        Kind::Oha(l) => {
            let mut c = env.client(path, load::oha(&env.oha, &route, l, size.load));
            let r = with_cpu(&pids, &mut m, || load::parse_oha(&cmd::output(&mut c)?))?;
            record_load(&mut m, &r, size)?;
        }
        Kind::H2 {
            connections,
            streams,
        } => {
            let mut c = env.client(path, load::h2load(&route, connections, streams, size.load)?);
            let r = with_cpu(&pids, &mut m, || load::parse_h2load(&cmd::output(&mut c)?))?;
            record_load(&mut m, &r, size)?;
        }
        Kind::Sse => {
            let mut c = cmd::new(&env.helper);
            c.arg("sse")
                .args(helper_target(&route))
                .args(["--samples", &size.sse_samples.to_string()]);
            let out = cmd::output(&mut env.client(path, c))?;
            let v: serde_json::Value = serde_json::from_str(&out).context("sse helper output")?;
            let mut us: Vec<f64> = v["ttfe_us"]
                .as_array()
                .context("no ttfe_us")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect();
            if us.len() != size.sse_samples as usize {
                bail!("sse helper returned {} samples", us.len());
            }
            us.sort_by(f64::total_cmp);
            m.insert("ttfe_ms".into(), us[us.len() / 2] / 1000.0);
            m.insert("ok".into(), us.len() as f64);
        }
        Kind::Idle => measure_idle(env, path, &route, &pids, size.idle_connections, &mut m)?,
    }
    Ok(m)
}

fn helper_target(route: &super::paths::Route) -> Vec<String> {
    let mut args = vec![
        "--addr".to_owned(),
        route.dial.to_string(),
        "--sni".to_owned(),
        route.host.to_owned(),
        "--ca".to_owned(),
        route.ca.display().to_string(),
    ];
    if let Some(proxy) = route.proxy {
        args.extend(["--proxy".to_owned(), proxy.to_string()]);
    }
    args
}

/// Runs `f`, and records the proxy's CPU seconds during it.
fn with_cpu(
    pids: &[u32],
    m: &mut Metrics,
    f: impl FnOnce() -> Result<LoadResult>,
) -> Result<LoadResult> {
    let before = procfs::sum(pids, procfs::cpu_ticks)?;
    let r = f()?;
    let after = procfs::sum(pids, procfs::cpu_ticks)?;
    if !pids.is_empty() && r.ok > 0 {
        let secs = (after - before) as f64 / procfs::clock_ticks()?;
        m.insert("cpu_s".into(), secs);
        m.insert("cpu_s_per_1k".into(), secs / r.ok as f64 * 1000.0);
    }
    Ok(r)
}

fn record_load(m: &mut Metrics, r: &LoadResult, size: Size) -> Result<()> {
    if r.ok == 0 {
        bail!(
            "no request succeeded ({} failed: {})",
            r.failed,
            r.first_failure.as_deref().unwrap_or("?")
        );
    }
    if let Amount::Requests(n) = size.load
        && (r.ok != u64::from(n) || r.failed > 0)
    {
        bail!(
            "{} of {n} requests returned 200 ({} failed: {})",
            r.ok,
            r.failed,
            r.first_failure.as_deref().unwrap_or("?")
        );
    }
    m.insert("ok".into(), r.ok as f64);
    m.insert("failed".into(), r.failed as f64);
    m.insert("rps".into(), r.rps);
    if let Some(p) = r.p50_ms {
        m.insert("p50_ms".into(), p);
    }
    if let Some(p) = r.p99_ms {
        m.insert("p99_ms".into(), p);
    }
    Ok(())
}

/// Opens two batches of `count` idle TLS connections through the path and
/// reads the proxy's VmRSS before, with the first batch held, and with
/// both held. The second batch's growth is the number: the first one
/// absorbs memory the allocator kept from earlier measurements (freed, so
/// still resident), which would otherwise hide the cost of a connection.
fn measure_idle(
    env: &Env,
    path: PathKind,
    route: &super::paths::Route,
    pids: &[u32],
    count: u32,
    m: &mut Metrics,
) -> Result<()> {
    let before = procfs::sum(pids, procfs::rss_kib)?;
    let first = hold_idle(env, path, route, count, "a")?;
    let with_first = procfs::sum(pids, procfs::rss_kib)?;
    let second = hold_idle(env, path, route, count, "b")?;
    let with_both = procfs::sum(pids, procfs::rss_kib)?;
    first.finish()?;
    second.finish()?;
    // Connections close asynchronously in the proxy; the next measurement
    // should not see them.
    std::thread::sleep(Duration::from_secs(1));
    let per_conn = |a: u64, b: u64| (b as f64 - a as f64) / f64::from(count);
    m.insert("ok".into(), f64::from(count) * 2.0);
    m.insert("rss_before_kib".into(), before as f64);
    m.insert("rss_first_batch_kib".into(), with_first as f64);
    m.insert("rss_both_batches_kib".into(), with_both as f64);
    m.insert(
        "first_batch_kib_per_conn".into(),
        per_conn(before, with_first),
    );
    m.insert("kib_per_conn".into(), per_conn(with_first, with_both));
    Ok(())
}

/// `count` idle connections, held until the returned process is finished.
fn hold_idle(
    env: &Env,
    path: PathKind,
    route: &super::paths::Route,
    count: u32,
    tag: &str,
) -> Result<Running> {
    let mut c = cmd::new(&env.helper);
    c.arg("idle")
        .args(helper_target(route))
        .args(["--count", &count.to_string()]);
    let log = std::env::temp_dir().join(format!(
        "agentguard-bench-idle-{}-{tag}.log",
        std::process::id()
    ));
    let mut holder = Running::spawn("idle connections", env.client(path, c), &log)?;
    let line = holder.read_line(Duration::from_secs(90))?;
    let _ = std::fs::remove_file(&log);
    let v: serde_json::Value = serde_json::from_str(&line).context("idle helper output")?;
    let open = v["open"].as_u64().unwrap_or(0);
    if open != u64::from(count) {
        bail!(
            "only {open} of {count} idle connections opened: {}",
            v["error"].as_str().unwrap_or("?")
        );
    }
    // Let the proxy finish whatever follows each handshake.
    std::thread::sleep(Duration::from_millis(500));
    Ok(holder)
}
