//! The soak's cases. Each runs against its own fresh daemon and returns a
//! [`Finding`]: what held, and what it cost.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{Finding, Options};
use crate::{
    bench::{
        agentguard::Daemon,
        process::{CLIENT_CPU, Running, pinned},
        procfs,
        resolve::Resolution,
        upstream::{HOST, Upstream},
    },
    cmd,
};

/// One GET through the full path as the agent (curl, TLS to the bench
/// name): whether the proxy still serves while a case loads it.
fn probe(daemon: &Daemon, upstream: &Upstream, dir: &Path, path: &str) -> Result<String> {
    let names = Resolution::write(dir)?;
    let mut curl = cmd::new("curl");
    curl.args(["-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{HOST}:{}{path}", upstream.port));
    cmd::output(&mut names.wrap(daemon.exec(curl)))
}

fn pct(ticks: u64, seconds: f64) -> Result<String> {
    Ok(format!(
        "{:.1} % of one core",
        ticks as f64 / procfs::clock_ticks()? / seconds * 100.0
    ))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// N connections sending a real ClientHello one byte a second (issue 21.5:
/// the old 1 ms poll made 1,000 of them cost 1.4 cores). The proxy closes
/// each after its 10 s first-bytes limit and the client opens it again,
/// so N trickle all the time.
pub fn slow_hello(
    daemon: &Daemon,
    upstream: &Upstream,
    helper: &Path,
    dir: &Path,
    opts: &Options,
) -> Result<Finding> {
    let (connections, seconds) = if opts.smoke {
        (50, 3)
    } else {
        (opts.connections, opts.seconds)
    };
    let mut c = cmd::new(helper);
    c.args([
        "trickle",
        "--addr",
        &upstream.addr().to_string(),
        "--sni",
        HOST,
    ])
    .args([
        "--connections",
        &connections.to_string(),
        "--interval-ms",
        "1000",
    ]);
    let mut client = Running::spawn(
        "trickle client",
        pinned(CLIENT_CPU, daemon.exec(c)),
        &dir.join("trickle.log"),
    )?;
    let ready = client.read_line(Duration::from_secs(120))?;
    // Let the staggered starts settle into a steady trickle.
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.pid();
    let (cpu0, t0) = (procfs::cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(u64::from(seconds)));
    let (cpu1, elapsed) = (procfs::cpu_ticks(pid)?, t0.elapsed().as_secs_f64());
    let rss = procfs::rss_kib(pid)?;
    let served = probe(daemon, upstream, dir, "/1k")?;
    client.ensure_alive()?;
    // It reports its counts when its stdin closes.
    client.close_stdin();
    let counts = client
        .read_line(Duration::from_secs(10))
        .unwrap_or_default();
    client.finish()?;
    let counts: serde_json::Value = serde_json::from_str(&counts).unwrap_or_default();
    Ok(Finding {
        case: "slow-hello",
        what: format!(
            "{connections} connections from the agent's cgroup each send a real ClientHello one \
             byte a second; the proxy closes each after its 10 s first-bytes limit and the client \
             opens it again. The daemon's CPU (utime + stime, all threads) is read over {seconds} s; \
             meanwhile another request must be served."
        ),
        held: if served == "200" {
            Ok(())
        } else {
            Err(format!("a request during the trickle got {served:?}"))
        },
        figures: vec![
            ("daemon CPU".into(), pct(cpu1 - cpu0, elapsed)?),
            ("daemon resident memory".into(), mib(rss)),
            ("client ready".into(), ready.trim().to_owned()),
            (
                "connections opened / closed by the proxy".into(),
                format!("{} / {}", counts["opened"], counts["closed_by_proxy"]),
            ),
            ("hello bytes sent".into(), counts["bytes_sent"].to_string()),
        ],
    })
}

/// N policy reloads by SIGHUP, one after the other, each seen accepted in
/// `status` before the next: memory must not grow with them.
pub fn reloads(daemon: &Daemon, agentguard: &Path, opts: &Options) -> Result<Finding> {
    let n = if opts.smoke { 20 } else { opts.reloads };
    let status = || -> Result<serde_json::Value> {
        let out = cmd::output(
            cmd::new(agentguard)
                .args(["status", "-o", "json", "--admin-socket"])
                .arg(&daemon.admin_socket),
        )?;
        Ok(serde_json::from_str(&out)?)
    };
    let pid = daemon.pid();
    let rss_before = procfs::rss_kib(pid)?;
    let started = Instant::now();
    let mut rejected = 0u32;
    for i in 0..n {
        let before = status()?["last_reload"]["time"].clone();
        cmd::output(cmd::new("kill").args(["-s", "HUP", &pid.to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = status()?;
            if s["last_reload"]["time"] != before {
                if s["last_reload"]["accepted"] != true {
                    rejected += 1;
                }
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("reload {i} not seen in status within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let elapsed = started.elapsed();
    let rss_after = procfs::rss_kib(pid)?;
    Ok(Finding {
        case: "reloads",
        what: format!(
            "{n} reloads by SIGHUP, each waited for in `agentguard status` before the next. \
             Every one must be accepted."
        ),
        held: if rejected == 0 {
            Ok(())
        } else {
            Err(format!("{rejected} reloads rejected"))
        },
        figures: vec![
            ("resident memory before".into(), mib(rss_before)),
            ("resident memory after".into(), mib(rss_after)),
            (
                "time per reload (with two status calls)".into(),
                format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0 / f64::from(n)),
            ),
        ],
    })
}

/// One 200 MiB response through the full path (a credential injected,
/// TLS both ways): it must arrive whole, and the daemon must not hold it.
pub fn big_response(
    daemon: &Daemon,
    upstream: &Upstream,
    dir: &Path,
    opts: &Options,
) -> Result<Finding> {
    let (path, expected): (&str, u64) = if opts.smoke {
        ("/20m", 20 << 20)
    } else {
        ("/200m", 200 << 20)
    };
    let pid = daemon.pid();
    let rss_before = procfs::rss_kib(pid)?;
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kib) = procfs::rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let names = Resolution::write(dir)?;
    let mut curl = cmd::new("curl");
    curl.args([
        "-sS",
        "-m",
        "300",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
    ])
    .arg(format!("https://{HOST}:{}{path}", upstream.port));
    let started = Instant::now();
    let out = cmd::output(&mut names.wrap(daemon.exec(curl)));
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let out = out.context("the large download failed")?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let (status, size, speed) = (
        fields.first().copied().unwrap_or_default(),
        fields
            .get(1)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0),
        fields
            .get(2)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0),
    );
    Ok(Finding {
        case: "big-response",
        what: format!(
            "One {} MiB response through the full path (TLS both ways, a credential injected), \
             downloaded by curl as the agent while the daemon's resident memory is sampled every \
             20 ms. It must arrive whole.",
            expected >> 20
        ),
        held: if status == "200" && size == expected {
            Ok(())
        } else {
            Err(format!("got status {status}, {size} bytes"))
        },
        figures: vec![
            ("resident memory before".into(), mib(rss_before)),
            (
                "peak resident memory during".into(),
                mib(peak.load(Ordering::Relaxed)),
            ),
            (
                "throughput".into(),
                format!("{:.0} MiB/s", speed / f64::from(1 << 20)),
            ),
            (
                "wall time".into(),
                format!("{:.1} s", elapsed.as_secs_f64()),
            ),
        ],
    })
}

/// HTTP/2 floods on one connection each, as the agent: rapid reset,
/// CONTINUATION, SETTINGS. The proxy must end each flood (or absorb it)
/// while another request is served, and its memory must stay bounded.
pub fn h2_floods(
    daemon: &Daemon,
    upstream: &Upstream,
    helper: &Path,
    dir: &Path,
    opts: &Options,
) -> Result<Finding> {
    let frames = if opts.smoke { 2_000 } else { 200_000 };
    let pid = daemon.pid();
    let rss_before = procfs::rss_kib(pid)?;
    let mut figures = vec![("resident memory before".to_owned(), mib(rss_before))];
    let mut failures = Vec::new();
    for kind in ["rapid-reset", "continuation", "settings"] {
        let mut c = cmd::new(helper);
        c.args(["flood", "--kind", kind, "--frames", &frames.to_string()])
            .args([
                "--addr",
                &upstream.addr().to_string(),
                "--sni",
                HOST,
                "--ca",
            ])
            .arg(daemon.ca());
        let cpu0 = procfs::cpu_ticks(pid)?;
        let mut flood = Running::spawn(
            &format!("{kind} flood"),
            pinned(CLIENT_CPU, daemon.exec(c)),
            &dir.join(format!("{kind}.log")),
        )?;
        // Another request while the flood runs.
        std::thread::sleep(Duration::from_millis(300));
        let served = probe(daemon, upstream, dir, "/1k")?;
        let report = flood.read_line(Duration::from_secs(90))?;
        flood.finish()?;
        let cpu = procfs::cpu_ticks(pid)? - cpu0;
        let report: serde_json::Value = serde_json::from_str(&report)
            .with_context(|| format!("{kind} flood reported {report:?}"))?;
        if served != "200" {
            failures.push(format!("a request during the {kind} flood got {served:?}"));
        }
        figures.push((
            format!("{kind}: frames sent, how it ended"),
            format!(
                "{} in {:.1} s, {}",
                report["frames_sent"],
                report["seconds"].as_f64().unwrap_or_default(),
                report["ended"].as_str().unwrap_or_default()
            ),
        ));
        figures.push((
            format!("{kind}: daemon CPU time"),
            format!("{:.1} s", cpu as f64 / procfs::clock_ticks()?),
        ));
    }
    figures.push(("resident memory after".into(), mib(procfs::rss_kib(pid)?)));
    Ok(Finding {
        case: "h2-floods",
        what: format!(
            "Three floods of up to {frames} frames, each on its own HTTP/2 connection (TLS, ALPN h2) \
             from the agent: rapid reset (HEADERS then RST_STREAM, again and again), a header block \
             continued for ever (CONTINUATION), and SETTINGS frames never acknowledged. During each, \
             another request must be served."
        ),
        held: if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        },
        figures,
    })
}
