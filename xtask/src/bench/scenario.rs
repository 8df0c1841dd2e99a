//! What is measured on each path, and how one measurement runs: the load,
//! and the proxy's CPU time and memory read from /proc around it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    fresh::Fresh,
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
        body: None,
    })
}

/// An MCP `tools/call` whose arguments the policy's conditions read: the
/// owner matches the last of the 50 tools' conditions, so the decision
/// evaluates all 50.
pub const MCP_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_issue","arguments":{"owner":"org-49","repo":"widgets","title":"bench"}}}"#;

const fn post(path: &'static str, body: &'static str) -> Kind {
    Kind::Oha(OhaLoad {
        path,
        connections: 16,
        rate: Some(200),
        keep_alive: true,
        body: Some(body),
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
        id: "rpc_plain_200",
        title: "JSON-RPC POST, plain HTTP tool, 200 req/s open loop (16 connections)",
        kind: post("/rpc", MCP_CALL),
    },
    Scenario {
        id: "mcp_call_200",
        title: "MCP tools/call, 50 tools with conditions, 200 req/s open loop (16 connections)",
        kind: post("/mcp", MCP_CALL),
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
        (
            PathKind::Jwt | PathKind::Exchange | PathKind::Sigv4,
            Kind::Oha(OhaLoad { body: Some(_), .. }),
        ) => Some("this credential's tool is measured on GETs"),
        (PathKind::Sigv4, Kind::H2 { .. } | Kind::Sse) => Some("the client cannot sign SigV4"),
        (PathKind::Exchange | PathKind::Sigv4, Kind::Idle) => {
            Some("as the full path: an idle connection holds no credential")
        }
        _ => None,
    }
}

pub fn measure(env: &Env, path: PathKind, scenario: &Scenario, size: Size) -> Result<Metrics> {
    let route = env.route(path);
    let pids = env.proxy_pids(path);
    let mut m = Metrics::new();
    match scenario.kind {
        Kind::Oha(l) => {
            if let Some(body) = l.body {
                check_rpc_result(env, path, &route, l.path, body)?;
            }
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
        Kind::Idle => measure_idle(env, path, size.idle_connections, &mut m)?,
    }
    Ok(m)
}

/// One call as the load sends it, whose answer must be the upstream's
/// JSON-RPC result. oha counts only status codes, and a call the policy
/// denies is answered 200 too (a JSON-RPC error, as MCP clients expect):
/// without this a policy that denied the bench's call would have the
/// scenario measure agentguard's refusal, and the smoke would still pass.
fn check_rpc_result(
    env: &Env,
    path: PathKind,
    route: &super::paths::Route,
    url_path: &str,
    body: &str,
) -> Result<()> {
    let mut curl = cmd::new("curl");
    curl.args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&route.ca)
        .args(["-H", "content-type: application/json", "--data", body]);
    match route.proxy {
        Some(proxy) => curl.args(["-x", &format!("http://{proxy}")]),
        None => curl.args(["--connect-to", &route.connect_to()]),
    };
    curl.arg(route.url(url_path));
    let out = cmd::output(&mut env.client(path, curl))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("{} {url_path}: not a JSON answer: {out:?}", path.id()))?;
    if v.get("result").is_none() || v.get("error").is_some() {
        bail!(
            "{} {url_path}: the call was not answered with the upstream's result: {out}",
            path.id()
        );
    }
    Ok(())
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

/// Resident memory per idle connection, on a fresh instance of the path's
/// proxy: a process that has served load keeps the memory it freed
/// resident (the allocator holds on to it), which would hide what new
/// connections cost. The fresh one first serves a few requests (so caches
/// such as agentguard's leaf exist). Then `count / 2` connections are
/// opened and held, its VmRSS read, another `count / 2` opened and VmRSS
/// read again: the growth between the two readings over the connections
/// added. Comparing two loaded states, not start-up with loaded, keeps out
/// what the allocator returns to the kernel meanwhile (mimalloc releases
/// memory freed at start-up lazily; a before/after delta went negative).
fn measure_idle(env: &Env, path: PathKind, count: u32, m: &mut Metrics) -> Result<()> {
    let Some(proxy) = Fresh::start(env, path)? else {
        bail!("no proxy on this path");
    };
    let route = proxy.route(env, path);
    let warm = OhaLoad {
        path: "/1k",
        connections: 1,
        rate: None,
        keep_alive: true,
        body: None,
    };
    let mut c = proxy.client(
        env,
        path,
        load::oha(&env.oha, &route, warm, Amount::Requests(5)),
    );
    let r = load::parse_oha(&cmd::output(&mut c)?)?;
    if r.ok != 5 {
        bail!(
            "the fresh proxy answered {} of 5 warm-up requests (first failure: {}){}",
            r.ok,
            r.first_failure.as_deref().unwrap_or("?"),
            proxy
                .log_tail(40)
                .map(|t| format!("; the end of its log:\n{t}"))
                .unwrap_or_default()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let pids = proxy.pids();
    let half = (count / 2).max(1);
    let mut holders = Vec::new();
    let mut rss = Vec::new();
    for batch in 0..2 {
        let mut h = cmd::new(&env.helper);
        h.arg("idle")
            .args(helper_target(&route))
            .args(["--count", &half.to_string()]);
        let log = env.work.join(format!("idle-holder-{batch}.log"));
        let mut holder = Running::spawn("idle connections", proxy.client(env, path, h), &log)?;
        let line = holder.read_line(Duration::from_secs(90))?;
        let v: serde_json::Value = serde_json::from_str(&line).context("idle helper output")?;
        let open = v["open"].as_u64().unwrap_or(0);
        if open != u64::from(half) {
            bail!(
                "only {open} of {half} idle connections opened: {}",
                v["error"].as_str().unwrap_or("?")
            );
        }
        holders.push(holder);
        // Let the proxy finish whatever follows each handshake.
        std::thread::sleep(Duration::from_millis(500));
        rss.push(procfs::sum(&pids, procfs::rss_kib)?);
    }
    for holder in holders {
        holder.finish()?;
    }
    drop(proxy);
    m.insert("ok".into(), f64::from(2 * half));
    m.insert("rss_first_half_kib".into(), rss[0] as f64);
    m.insert("rss_both_halves_kib".into(), rss[1] as f64);
    m.insert(
        "kib_per_conn".into(),
        (rss[1] as f64 - rss[0] as f64) / f64::from(half),
    );
    Ok(())
}
