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

/// How a row of the work table is measured.
enum Measure {
    /// The share of samples with any of these on their stack (the
    /// outermost line of the inclusive report that names one). Only frames
    /// perf sees count: the profile-guided build inlines most of the async
    /// code, so each needle is a function that stays a frame of its own
    /// (a thread's entry, a libc or kernel entry, a library's call).
    OnStack(&'static [&'static str]),
    /// The sum of the self shares of the functions a needle names: for
    /// work spread over many small functions (an allocator's), where no
    /// one frame holds it all.
    SelfOf(&'static [&'static str]),
}

/// The work table: (label, how its share is measured). Inclusive shares
/// nest and overlap, so the rows do not add up.
const WORK: &[(&str, Measure)] = &[
    (
        "audit writer thread (SQLite rows, hash chain, fsync)",
        Measure::OnStack(&["agentguard::audit::writer::Writer::run"]),
    ),
    (
        "socket writes (writev: TLS records to agents and upstreams, loopback TCP)",
        Measure::OnStack(&["__GI___writev", "[k] do_writev"]),
    ),
    (
        "socket reads (recv)",
        Measure::OnStack(&["__libc_recv", "[k] __sys_recvfrom"]),
    ),
    (
        "epoll_wait (the CPU of the call, not time spent waiting)",
        Measure::OnStack(&["[k] do_epoll_wait"]),
    ),
    (
        "kernel: context switches (schedule)",
        Measure::OnStack(&["[k] __schedule"]),
    ),
    (
        "TLS handshakes with agents",
        Measure::OnStack(&["rustls::server::hs::ExpectClientHello"]),
    ),
    (
        // Not the library's signing functions: TLS handshakes sign with
        // the same ones (agentguard's leaves are P-256).
        "signing request-bound JWTs",
        Measure::OnStack(&["agentguard::token::keys::Signer::sign"]),
    ),
    (
        "allocator (mimalloc: malloc, free, their cache misses)",
        Measure::SelfOf(&["[.] mi_", "[.] _mi_"]),
    ),
    (
        "memcpy, memmove, memset",
        Measure::SelfOf(&["[.] __memcpy", "[.] __memmove", "[.] __memset"]),
    ),
    (
        "policy evaluation (its own functions: a lower bound, the build inlines some into callers)",
        Measure::SelfOf(&["agentguard::policy::"]),
    ),
];

impl Measure {
    /// The row's share, or `None` when no sample names its functions (a
    /// path that does not do this work, or a build that inlined them).
    fn share(
        &self,
        self_time: &[(f64, String, String)],
        inclusive: &[(f64, String, String)],
    ) -> Option<f64> {
        let names = |needles: &[&str], dso: &str, sym: &str| {
            let kind = if dso.contains("kernel") { "[k]" } else { "[.]" };
            let line = format!("{kind} {sym}");
            needles.iter().any(|n| line.contains(n))
        };
        match self {
            // Lines come sorted by share: the first match is the outermost.
            Self::OnStack(needles) => inclusive
                .iter()
                .find(|(_, dso, sym)| names(needles, dso, sym))
                .map(|(pct, _, _)| *pct),
            Self::SelfOf(needles) => {
                let mut matched = self_time
                    .iter()
                    .filter(|(_, dso, sym)| names(needles, dso, sym))
                    .peekable();
                matched.peek()?;
                Some(matched.map(|(pct, _, _)| pct).sum())
            }
        }
    }
}

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
        "aws_lc",
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
        "crypto (aws-lc, ring: AES-GCM, ECDHE, ECDSA, SHA-2)"
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
        "allocation and memory copies (mimalloc, libc)"
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
         Share of the proxy's CPU samples in each kind of work: the samples whose stack \
         includes it (nested, so the shares overlap), or for the allocator, memory copies \
         and policy the self time of their functions summed:\n",
        target.scenario.title,
        target.path.label(),
    );
    let _ = writeln!(md, "| work | share of samples |\n|---|---|");
    for (label, measure) in WORK {
        let share = measure.share(&lines, &with_children).map_or_else(
            || "not on a sampled stack".to_owned(),
            |pct| format!("{pct:.1}%"),
        );
        let _ = writeln!(md, "| {label} | {share} |");
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
            "crypto (aws-lc, ring: AES-GCM, ECDHE, ECDSA, SHA-2)"
        );
        assert_eq!(
            component(&lines[1].1, &lines[1].2),
            "kernel: TCP/IP and sockets"
        );
        assert_eq!(component(&lines[2].1, &lines[2].2), "audit store (SQLite)");
    }

    #[test]
    fn work_rows_take_the_outermost_frame_or_sum_self_time() {
        let self_time = parse(
            "     6.00%  agentguard  [.] _mi_page_malloc_zero\n\
             \x20    1.50%  agentguard  [.] mi_free\n\
             \x20    1.00%  agentguard  [.] agentguard::proxy::http::handle\n",
        );
        let inclusive = parse(
            "    40.00%  0.00%  libc.so.6  [.] __GI___writev\n\
             \x20   30.00%  0.00%  [kernel.kallsyms]  [k] do_writev\n\
             \x20    8.00%  0.50%  [kernel.kallsyms]  [k] __schedule\n",
        );
        let share = |label: &str| {
            let (_, m) = WORK.iter().find(|(l, _)| l.starts_with(label)).unwrap();
            m.share(&self_time, &inclusive)
        };
        assert_eq!(share("socket writes"), Some(40.0));
        assert_eq!(share("kernel: context switches"), Some(8.0));
        assert_eq!(share("allocator"), Some(7.5));
        // Named by no sample: no share, rather than a 0% that was never
        // measured.
        assert_eq!(share("signing request-bound JWTs"), None);
        assert_eq!(share("policy evaluation"), None);
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
