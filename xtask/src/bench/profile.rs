//! Where a path's time goes (the full path at keep-alive saturation unless
//! `--profile-of` names another): `perf record` (the software cpu-clock
//! event, which works where hardware counters do not, as in this VM) with
//! DWARF call graphs on the proxy during one more run of the scenario,
//! summarised by the work that includes each sample (audit, logging, TLS
//! writes...), by component (self time) and by function.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    load::Amount,
    paths::{Env, PathKind},
    scenario::{self, SCENARIOS, Scenario, Size},
};
use crate::cmd;

/// Whether `perf record` can sample here at all.
pub fn available() -> bool {
    cmd::probe(cmd::new("perf").args([
        "record",
        "-e",
        "cpu-clock",
        "-o",
        "/dev/null",
        "--",
        "true",
    ]))
    .is_some()
}

/// What is profiled: a path that has a proxy, in one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub path: PathKind,
    pub scenario: &'static Scenario,
}

impl Target {
    /// `PATH:SCENARIO`, e.g. `full:ka_sat_1k`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (path, scenario) = spec
            .split_once(':')
            .with_context(|| format!("--profile-of {spec:?}: expected PATH:SCENARIO"))?;
        let [path] = PathKind::parse_list(path)?[..] else {
            bail!("--profile-of {spec:?}: one path");
        };
        if path == PathKind::Direct {
            bail!("--profile-of {spec:?}: the direct path has no proxy to profile");
        }
        let scenario = SCENARIOS
            .iter()
            .find(|s| s.id == scenario)
            .with_context(|| format!("--profile-of {spec:?}: unknown scenario {scenario:?}"))?;
        Ok(Self { path, scenario })
    }
}

pub fn run(env: &Env, dir: &Path, target: Target, seconds: u32) -> Result<String> {
    let pids: Vec<String> = env
        .proxy_pids(target.path)
        .iter()
        .map(u32::to_string)
        .collect();
    let data = dir.join("perf.data");
    let log = std::fs::File::create(dir.join("perf-record.log"))?;
    let mut perf = cmd::new("perf")
        // DWARF unwinding: release builds have no frame pointers. 499 Hz
        // keeps the unwound stacks to some tens of MB.
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
        ])
        .arg(pids.join(","))
        .arg("-o")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("failed to start perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    let size = Size {
        load: Amount::Seconds(seconds),
        idle_connections: 0,
        sse_samples: 0,
    };
    let measured = scenario::measure(env, target.path, target.scenario, size);
    // SIGINT: perf writes its data and exits.
    let _ = cmd::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let status = perf.wait()?;
    let measured = measured?;
    if !status.success() && !data.exists() {
        bail!("perf record failed ({status})");
    }
    let report = |children: &str| {
        cmd::output(
            cmd::new("perf")
                .args(["report", "--stdio", children, "-g", "none"])
                .args(["--sort", "dso,symbol", "-i"])
                .arg(&data),
        )
    };
    let self_time = report("--no-children")?;
    let inclusive = report("--children")?;
    std::fs::write(dir.join("perf-report.txt"), &self_time)?;
    std::fs::write(dir.join("perf-report-children.txt"), &inclusive)?;
    // Who calls the functions with the most self time (an allocator, a
    // memcpy): their call chains, down to 1% of samples.
    let callers = cmd::output(
        cmd::new("perf")
            .args(["report", "--stdio", "--no-children", "--percent-limit", "2"])
            .args(["-g", "caller,1,callee,function,percent", "-i"])
            .arg(&data),
    )?;
    std::fs::write(dir.join("perf-report-callers.txt"), &callers)?;
    // Tens of MB of unwound stacks: the two reports are what is kept.
    let _ = std::fs::remove_file(&data);
    Ok(summarize(
        target,
        &self_time,
        &inclusive,
        measured.get("rps").copied().unwrap_or(0.0),
        seconds,
    ))
}

/// Work that includes a sample: (label, a function every such sample has
/// on its stack). Functions nest, so the shares overlap and do not add up.
const INCLUSIVE: &[(&str, &str)] = &[
    (
        "writing responses to the agent (TLS encrypt, writev, loopback TCP)",
        "tokio_rustls::server::TlsStream<IO> as tokio::io::async_write::AsyncWrite>::poll_write_vectored",
    ),
    (
        "reading requests from the agent (TLS decrypt, read)",
        "tokio_rustls::server::TlsStream<IO> as tokio::io::async_read::AsyncRead>::poll_read",
    ),
    (
        "audit writer thread: commit to SQLite (rows, hash chain, fsync)",
        "agentguard::audit::writer::Writer::commit",
    ),
    (
        "completing each request's record (log line, audit event, recent view)",
        "agentguard::proxy::http::record::Finish::complete",
    ),
    (
        "tracing log lines (JSON formatting and write)",
        "tracing_core::event::Event::dispatch",
    ),
    (
        "handing audit events to the writer (queue send, wake-up)",
        "agentguard::audit::Permit::record",
    ),
    (
        "upstream HTTP/2 client (hyper h2)",
        "hyper::proto::h2::client::H2ClientFuture",
    ),
    (
        "minting request-bound JWTs",
        "agentguard::token::mint::Minter::mint",
    ),
    (
        "TLS handshakes with agents",
        "rustls::server::hs::ExpectClientHello",
    ),
    ("policy evaluation", "agentguard::policy::"),
    ("kernel: context switches (schedule)", "[k] __schedule"),
    ("malloc", "__GI___libc_malloc"),
    ("free", "__GI___libc_free"),
];

/// The report's lines: `  12.34%  agentguard  [.] ring::...`, with
/// `--children` a second percentage (self) after the first (inclusive).
fn parse(report: &str) -> Vec<(f64, String, String)> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace().peekable();
            let pct: f64 = it.next()?.strip_suffix('%')?.parse().ok()?;
            if it.peek().is_some_and(|w| w.ends_with('%')) {
                it.next();
            }
            let dso = it.next()?.to_owned();
            let _kind = it.next()?;
            // perf pads the line with `-` for columns it has no value for.
            let mut sym: Vec<&str> = it.collect();
            while sym.last() == Some(&"-") {
                sym.pop();
            }
            Some((pct, dso, sym.join(" ")))
        })
        .collect()
}

/// Which part of the path a sample belongs to, by library and symbol.
fn component(dso: &str, sym: &str) -> &'static str {
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    if dso.contains("kernel") {
        return if has(&["tcp", "ip_", "skb", "sock", "net", "inet", "lo_", "xmit"]) {
            "kernel: TCP/IP and sockets"
        } else if has(&["bpf"]) {
            "kernel: eBPF hooks"
        } else if has(&[
            "task_switch",
            "schedule",
            "wake",
            "futex",
            "_raw_spin_unlock_irq",
        ]) {
            // In a VM without PMU the cpu-clock sample lands where
            // interrupts come back on: after a context switch or wake-up.
            "kernel: scheduling and thread wake-ups"
        } else if has(&["epoll", "ep_"]) {
            "kernel: epoll"
        } else {
            "kernel: syscalls, scheduling, other"
        };
    }
    if has(&["sqlite", "rusqlite"]) {
        "audit store (SQLite)"
    } else if has(&[
        "ring::",
        "ring_core",
        "aes_",
        "gcm_",
        "ecp_nistz256",
        "p256",
        "sha256",
        "sha512",
        "x25519",
        "chacha",
        "poly1305",
        "bn_mul",
        "GFp_",
    ]) {
        "crypto (ring: AES-GCM, ECDHE, ECDSA, SHA-2)"
    } else if has(&["rustls::", "webpki"]) {
        "TLS state machine (rustls, webpki)"
    } else if has(&[
        "hyper::",
        "h2::",
        "http::",
        "httparse",
        "hyper_util",
        "hyper_rustls",
    ]) {
        "HTTP (hyper, h2, httparse)"
    } else if has(&["tokio::", "mio::"]) {
        "async runtime (tokio)"
    } else if has(&["tracing", "serde_json", "serde::", "fmt::"]) {
        "logging and serialisation (tracing, serde_json, fmt)"
    } else if has(&["jsonwebtoken", "p256::", "ecdsa", "elliptic_curve"]) {
        "JWT minting"
    } else if has(&["agentguard::audit"]) {
        "audit (agentguard)"
    } else if has(&["agentguard::"]) {
        "agentguard: policy, credentials, forwarding"
    } else if dso.starts_with("libc") || has(&["malloc", "free", "memcpy", "memmove", "memset"]) {
        "libc: allocation, memcpy"
    } else {
        "other"
    }
}

fn summarize(target: Target, report: &str, inclusive: &str, rps: f64, seconds: u32) -> String {
    let lines = parse(report);
    let with_children = parse(inclusive);
    let mut by_component: BTreeMap<&str, f64> = BTreeMap::new();
    for (pct, dso, sym) in &lines {
        *by_component.entry(component(dso, sym)).or_default() += pct;
    }
    let mut components: Vec<_> = by_component.into_iter().collect();
    components.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`perf record -e cpu-clock -F 499 --call-graph dwarf -p <proxy>` during one more \
         run of {} on the {} ({seconds} s, {rps:.0} req/s; not one of the measured runs). \
         Share of the proxy's CPU samples whose stack includes the work (nested, so the \
         shares overlap):\n",
        target.scenario.title,
        target.path.label(),
    );
    let _ = writeln!(md, "| work | share of samples |\n|---|---|");
    for (label, needle) in INCLUSIVE {
        // Lines come sorted by share: the first match is the outermost.
        let share = with_children
            .iter()
            .find(|(_, dso, sym)| {
                let kind = if dso.contains("kernel") { "[k] " } else { "" };
                format!("{kind}{sym}").contains(needle)
            })
            .map_or(0.0, |(pct, _, _)| *pct);
        let _ = writeln!(md, "| {label} | {share:.1}% |");
    }
    let _ = writeln!(md, "\nBy component (self time):\n");
    let _ = writeln!(md, "| component | share of samples |\n|---|---|");
    for (c, pct) in &components {
        let _ = writeln!(md, "| {c} | {pct:.1}% |");
    }
    let _ = writeln!(
        md,
        "\nTop functions:\n\n| self | library | function |\n|---|---|---|"
    );
    for (pct, dso, sym) in lines.iter().take(25) {
        let sym: String = sym.chars().take(110).collect();
        let _ = writeln!(md, "| {pct:.2}% | {dso} | `{}` |", sym.replace('|', "\\|"));
    }
    let _ = writeln!(
        md,
        "\nThe whole reports: `target/bench/perf-report.txt` (self), `target/bench/perf-report-children.txt` (inclusive) and `target/bench/perf-report-callers.txt` (call chains into the functions with the most self time)."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies_report_lines() {
        let report = "# comment\n\
            \x20   25.13%  agentguard  [.] ring_core_0_17_aes_gcm_enc\n\
            \x20    6.15%  [kernel.kallsyms]  [k] tcp_sendmsg_locked\n\
            \x20    1.00%  agentguard  [.] rusqlite::Connection::execute\n";
        let lines = parse(report);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            component(&lines[0].1, &lines[0].2),
            "crypto (ring: AES-GCM, ECDHE, ECDSA, SHA-2)"
        );
        assert_eq!(
            component(&lines[1].1, &lines[1].2),
            "kernel: TCP/IP and sockets"
        );
        assert_eq!(component(&lines[2].1, &lines[2].2), "audit store (SQLite)");
    }

    #[test]
    fn a_profile_target_is_a_proxied_path_and_a_known_scenario() {
        let t = Target::parse("jwt:new_sat").unwrap();
        assert_eq!((t.path, t.scenario.id), (PathKind::Jwt, "new_sat"));
        for bad in [
            "full",
            "direct:ka_sat_1k",
            "full:nope",
            "nope:ka_sat_1k",
            "full,jwt:h2_sat",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
