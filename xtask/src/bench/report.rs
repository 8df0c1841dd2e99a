//! docs/benchmarks.md: machine, method, every measurement as a median with
//! min–max over the runs, comparisons against direct from the same run,
//! the targets (met, or missed by how much), and the profile.

use std::fmt::Write as _;

use super::{
    paths::PathKind,
    scenario::{Kind, SCENARIOS, Scenario},
    stats::{Results, Summary, added, ratio, summarize},
};

/// Facts about the run the report states up front.
pub struct Context {
    pub machine: Vec<(String, String)>,
    pub tools: Vec<(String, String)>,
    pub runs: usize,
    pub seconds: u32,
    pub idle_connections: u32,
    pub sse_samples: u32,
    pub pinned: bool,
    pub profile: Option<String>,
    /// Instructions per request (`super::instructions`), as markdown.
    pub instructions: Option<String>,
    /// System calls and context switches per request
    /// (`super::kernel_work`), as markdown.
    pub kernel_work: Option<String>,
}

pub fn markdown(ctx: &Context, r: &Results) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `sudo -E cargo xtask bench` from the numbers it measured in one run; \
         re-run it to update this page (raw results: `target/bench/results.json`). \
         Nothing here is asserted by the test suite; `cargo xtask test` only runs \
         `cargo xtask bench --smoke` (a few requests per path) so the harness keeps working.\n"
    );
    section_machine(w, ctx);
    section_method(w, ctx);
    section_targets(w, r);
    section_results(w, r);
    section_ratios(w, r);
    if let Some(instructions) = &ctx.instructions {
        let _ = writeln!(w, "## Instructions per request\n");
        let _ = writeln!(w, "{instructions}");
    }
    if let Some(kernel_work) = &ctx.kernel_work {
        let _ = writeln!(w, "## System calls per request\n");
        let _ = writeln!(w, "{kernel_work}");
    }
    if let Some(profile) = &ctx.profile {
        let _ = writeln!(w, "## Where the time goes (profile)\n");
        let _ = writeln!(w, "{profile}");
    }
    md
}

fn section_machine(w: &mut String, ctx: &Context) {
    let _ = writeln!(w, "## Machine\n");
    for (k, v) in &ctx.machine {
        let _ = writeln!(w, "- {k}: {v}");
    }
    let _ = writeln!(w, "\nTools:\n");
    for (k, v) in &ctx.tools {
        let _ = writeln!(w, "- {k}: {v}");
    }
    let _ = writeln!(w);
}

fn section_method(w: &mut String, ctx: &Context) {
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "One HTTPS upstream (hyper + rustls, `agentguard-bench upstream`, one worker \
         thread) on 127.0.0.7 serves fixed 1 KiB and 64 KiB bodies and an SSE stream (one \
         event at once, then two more 100 ms apart), and a token endpoint (`/token`) for the \
         exchange path. Every path reaches that same upstream; \
         the certificates (a bench CA and the upstream's leaf) are made in code at each run. \
         All traffic stays on loopback: clients run in a mount namespace whose /etc/hosts \
         maps the bench names and whose only nameserver is 127.0.0.1.\n"
    );
    let _ = writeln!(w, "Paths:\n");
    for p in PathKind::ALL {
        let _ = writeln!(w, "- **{}**: {}.", p.label(), p.describe());
    }
    let pin = if ctx.pinned {
        "The load generator (and every client) runs pinned to CPU 0 with `taskset`; the \
         proxy under test and the upstream are pinned together to CPU 1. The proxy thus \
         competes with the upstream for one CPU, so its cost shows as lost throughput \
         rather than being absorbed by a CPU the direct path leaves idle."
    } else {
        "This machine has one CPU: nothing is pinned."
    };
    let _ = writeln!(
        w,
        "\n{} runs; in each run every path is measured in turn, every scenario on each \
         (run 1: all paths, run 2: all paths, ...), after one unrecorded warm-up pass \
         (which also mints and caches agentguard's leaf). Load runs last {} s each. \
         Tables show the median over runs with the min–max in brackets; comparisons \
         with direct are taken per run (same run) and then summarised the same way. {pin}\n",
        ctx.runs, ctx.seconds
    );
    let _ = writeln!(
        w,
        "- HTTP/1.1 load: `oha` (`-z`, `-w`); fixed rates are open loop (`-q`) with \
         `--latency-correction`, so a slow response delays the latency of the requests due \
         after it instead of hiding them (coordinated omission). p50/p99 are oha's.\n\
         - HTTP/2: `h2load` (4 connections, 32 concurrent streams each). h2load cannot use \
         an explicit proxy, so mitmproxy has no HTTP/2 row.\n\
         - CPU per 1,000 requests: utime + stime of the proxy process (nginx: master and \
         worker) from `/proc/PID/stat` before and after the load run, over the requests that \
         returned 200. The upstream's and client's CPU are not counted.\n\
         - Resident memory per idle connection: on a fresh instance of the path's proxy \
         (one that has served load keeps the memory it freed resident, which would hide \
         the cost), after 5 warm-up requests, `agentguard-bench idle` opens {} TLS \
         connections through the path (handshake completed, no request) and holds them, \
         then {} more; the proxy's VmRSS with both halves held minus with the first, \
         divided by the connections added. (Two loaded states rather than start-up \
         against loaded: an allocator that returns start-up memory to the kernel late, \
         such as agentguard's mimalloc, would otherwise make the growth negative. The \
         fresh agentguard runs with `MIMALLOC_PURGE_DELAY=0`, so that what it frees goes \
         back to the kernel at once: with mimalloc's default delay of a second, the \
         first half's handshake memory went back while the second half opened or not, \
         and five runs of one build measured from -13.8 to 24.7 KiB per connection \
         (17.2 to 20.0 without the delay).)\n\
         - Time to first SSE event: `agentguard-bench sse`, {} samples per run, each on a new \
         connection: from writing the request to the first `data:` byte (TLS handshake \
         excluded); the median per run.\n",
        ctx.idle_connections / 2,
        ctx.idle_connections / 2,
        ctx.sse_samples
    );
}

fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        Some(s) => num(s.median),
        None => "–".into(),
    }
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The columns each kind of scenario shows: (metric, heading, compare with
/// direct by).
fn columns(kind: Kind) -> &'static [(&'static str, &'static str, Compare)] {
    match kind {
        Kind::Oha(l) if l.rate.is_some() => &[
            ("p50_ms", "p50 ms", Compare::Added),
            ("p99_ms", "p99 ms", Compare::Added),
            ("rps", "achieved req/s", Compare::None),
        ],
        Kind::Oha(_) | Kind::H2 { .. } => &[
            ("rps", "req/s", Compare::Ratio),
            ("cpu_s_per_1k", "proxy CPU s / 1k req", Compare::None),
        ],
        Kind::Sse => &[("ttfe_ms", "first event ms", Compare::Added)],
        Kind::Idle => &[("kib_per_conn", "KiB / idle connection", Compare::None)],
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Compare {
    None,
    Ratio,
    Added,
}

fn section_results(w: &mut String, r: &Results) {
    let _ = writeln!(w, "## Results\n");
    for s in SCENARIOS {
        let cols = columns(s.kind);
        let _ = writeln!(w, "### {}\n", s.title);
        let mut head = String::from("| path |");
        let mut rule = String::from("|---|");
        for (_, h, cmp) in cols {
            let _ = write!(head, " {h} |");
            rule.push_str("---|");
            match cmp {
                Compare::Ratio => {
                    head.push_str(" × direct |");
                    rule.push_str("---|");
                }
                Compare::Added => {
                    head.push_str(" added vs direct |");
                    rule.push_str("---|");
                }
                Compare::None => {}
            }
        }
        let _ = writeln!(w, "{head}\n{rule}");
        for p in PathKind::ALL {
            let _ = writeln!(w, "{}", row(r, p, s, cols));
        }
        let _ = writeln!(w);
    }
}

fn row(r: &Results, p: PathKind, s: &Scenario, cols: &[(&str, &str, Compare)]) -> String {
    let mut line = format!("| {} |", p.label());
    if let Some(why) = r.missing(p, s.id)
        && r.series(p, s.id, "ok").is_empty()
    {
        for (_, _, cmp) in cols {
            let _ = write!(line, " n/a ({why}) |");
            if *cmp != Compare::None {
                line.push_str(" |");
            }
        }
        return line;
    }
    for (metric, _, cmp) in cols {
        let _ = write!(line, " {} |", cell(summarize(r.series(p, s.id, metric))));
        let vs = |f| summarize(r.paired(p, PathKind::Direct, s.id, metric, f));
        match cmp {
            Compare::None => {}
            Compare::Ratio if p == PathKind::Direct => line.push_str(" 1 |"),
            Compare::Added if p == PathKind::Direct => line.push_str(" 0 |"),
            Compare::Ratio => {
                let _ = write!(line, " {} |", cell(vs(ratio)));
            }
            Compare::Added => {
                let _ = write!(line, " {} |", cell(vs(added)));
            }
        }
    }
    line
}

/// (label, path, other path, scenario, metric, how to compare).
type Comparison = (
    &'static str,
    PathKind,
    PathKind,
    &'static str,
    &'static str,
    fn(f64, f64) -> f64,
);

fn section_ratios(w: &mut String, r: &Results) {
    let _ = writeln!(w, "## Against the alternatives (same run)\n");
    let _ = writeln!(w, "| comparison | median (min–max) over runs |\n|---|---|");
    let pairs: &[Comparison] = &[
        (
            "full path req/s ÷ mitmproxy req/s (keep-alive, 1 KiB)",
            PathKind::Full,
            PathKind::Mitmproxy,
            "ka_sat_1k",
            "rps",
            ratio,
        ),
        (
            "full path req/s ÷ nginx req/s (keep-alive, 1 KiB)",
            PathKind::Full,
            PathKind::Nginx,
            "ka_sat_1k",
            "rps",
            ratio,
        ),
        (
            "full path CPU/request ÷ nginx CPU/request (keep-alive, 1 KiB)",
            PathKind::Full,
            PathKind::Nginx,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "full path CPU/request ÷ nginx CPU/request (new connections)",
            PathKind::Full,
            PathKind::Nginx,
            "new_sat",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "full path CPU/request ÷ nginx CPU/request (HTTP/2)",
            PathKind::Full,
            PathKind::Nginx,
            "h2_sat",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "JWT path CPU/request ÷ full path CPU/request (keep-alive)",
            PathKind::Jwt,
            PathKind::Full,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "exchanged token (cached): added p50 over the full path's static header, ms (keep-alive, 200 req/s)",
            PathKind::Exchange,
            PathKind::Full,
            "ka_rate_200",
            "p50_ms",
            added,
        ),
        (
            "exchanged token path CPU/request ÷ full path CPU/request (keep-alive)",
            PathKind::Exchange,
            PathKind::Full,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "SigV4 re-signing: added p50 over the full path's static header, ms (keep-alive, 200 req/s)",
            PathKind::Sigv4,
            PathKind::Full,
            "ka_rate_200",
            "p50_ms",
            added,
        ),
        (
            "SigV4 path CPU/request ÷ full path CPU/request (keep-alive)",
            PathKind::Sigv4,
            PathKind::Full,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "passthrough kernel relay CPU/request ÷ user-space relay CPU/request (keep-alive)",
            PathKind::PassthroughKernel,
            PathKind::Passthrough,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
        (
            "passthrough direct way req/s ÷ direct req/s (keep-alive, 1 KiB)",
            PathKind::PassthroughDirect,
            PathKind::Direct,
            "ka_sat_1k",
            "rps",
            ratio,
        ),
        (
            "passthrough CPU/request ÷ full path CPU/request (keep-alive)",
            PathKind::Passthrough,
            PathKind::Full,
            "ka_sat_1k",
            "cpu_s_per_1k",
            ratio,
        ),
    ];
    for (label, a, b, s, m, f) in pairs {
        let _ = writeln!(
            w,
            "| {label} | {} |",
            cell(summarize(r.paired(*a, *b, s, m, *f)))
        );
    }
    let _ = writeln!(w);
}

/// A target: what it asks, the per-run values, the goal, the unit.
type Target<'a> = (&'a str, Vec<f64>, Goal, &'a str);

/// The issues' targets: reported, never asserted.
fn section_targets(w: &mut String, r: &Results) {
    let full = PathKind::Full;
    let d = PathKind::Direct;
    let nginx = PathKind::Nginx;
    let cpu = "cpu_s_per_1k";
    targets(
        w,
        "Targets (full path)",
        vec![
            (
                "keep-alive, 1000 req/s: added p50 ≤ 0.1 ms",
                r.paired(full, d, "ka_rate_1000", "p50_ms", added),
                Goal::AtMost(0.1),
                " ms",
            ),
            (
                "keep-alive, 1000 req/s: added p99 ≤ 0.5 ms",
                r.paired(full, d, "ka_rate_1000", "p99_ms", added),
                Goal::AtMost(0.5),
                " ms",
            ),
            (
                "keep-alive saturation ≥ 50% of direct",
                r.paired(full, d, "ka_sat_1k", "rps", ratio),
                Goal::AtLeast(0.5),
                "×",
            ),
            (
                "new connection (cached leaf), 200 req/s: added p50 ≤ 1 ms",
                r.paired(full, d, "new_rate_200", "p50_ms", added),
                Goal::AtMost(1.0),
                " ms",
            ),
            (
                "≥ 20× mitmproxy's throughput (keep-alive)",
                r.paired(full, PathKind::Mitmproxy, "ka_sat_1k", "rps", ratio),
                Goal::AtLeast(20.0),
                "×",
            ),
            (
                "CPU per request within 1.5× of nginx's (keep-alive)",
                r.paired(full, nginx, "ka_sat_1k", cpu, ratio),
                Goal::AtMost(1.5),
                "×",
            ),
            (
                "MCP tools/call, 50 tools with conditions: added p50 vs the same POST through a plain tool ≤ 0.05 ms",
                r.paired_scenarios(full, "mcp_call_200", "rpc_plain_200", "p50_ms", added),
                Goal::AtMost(0.05),
                " ms",
            ),
            (
                "≤ 64 KiB resident per idle intercepted connection",
                r.series(full, "idle", "kib_per_conn"),
                Goal::AtMost(64.0),
                " KiB",
            ),
        ],
    );
    targets(
        w,
        "Targets (performance: passthrough at kernel speed, the full path ahead of nginx)",
        vec![
            (
                "passthrough (direct way) keep-alive saturation ≥ 0.9× direct",
                r.paired(PathKind::PassthroughDirect, d, "ka_sat_1k", "rps", ratio),
                Goal::AtLeast(0.9),
                "×",
            ),
            (
                "passthrough (direct way) daemon CPU per request ≤ 1/5 of the user-space relay's (keep-alive)",
                r.paired(
                    PathKind::PassthroughDirect,
                    PathKind::Passthrough,
                    "ka_sat_1k",
                    cpu,
                    ratio,
                ),
                Goal::AtMost(0.2),
                "×",
            ),
            (
                "full path keep-alive saturation ≥ nginx's",
                r.paired(full, nginx, "ka_sat_1k", "rps", ratio),
                Goal::AtLeast(1.0),
                "×",
            ),
            (
                "full path CPU per request ≤ nginx's (keep-alive)",
                r.paired(full, nginx, "ka_sat_1k", cpu, ratio),
                Goal::AtMost(1.0),
                "×",
            ),
            (
                "full path HTTP/2 saturation ≥ nginx's",
                r.paired(full, nginx, "h2_sat", "rps", ratio),
                Goal::AtLeast(1.0),
                "×",
            ),
            (
                "full path HTTP/2 CPU per request ≤ nginx's",
                r.paired(full, nginx, "h2_sat", cpu, ratio),
                Goal::AtMost(1.0),
                "×",
            ),
            (
                "full path new-connection saturation ≥ nginx's",
                r.paired(full, nginx, "new_sat", "rps", ratio),
                Goal::AtLeast(1.0),
                "×",
            ),
            (
                "JWT path keep-alive saturation ≥ 0.8× the full path's",
                r.paired(PathKind::Jwt, full, "ka_sat_1k", "rps", ratio),
                Goal::AtLeast(0.8),
                "×",
            ),
            (
                "resident memory per idle intercepted connection ≤ 21.2 KiB (no regression)",
                r.series(full, "idle", "kib_per_conn"),
                Goal::AtMost(21.2),
                " KiB",
            ),
        ],
    );
}

/// One table of targets, each with its verdict on the median.
fn targets(w: &mut String, title: &str, rows: Vec<Target<'_>>) {
    let _ = writeln!(w, "## {title}\n");
    let _ = writeln!(
        w,
        "| target | measured (median over runs) | verdict |\n|---|---|---|"
    );
    for (label, values, goal, unit) in rows {
        let Some(s) = summarize(values) else {
            let _ = writeln!(w, "| {label} | – | not measured |");
            continue;
        };
        let verdict = goal.verdict(s.median, unit);
        let _ = writeln!(w, "| {label} | {}{unit} | {verdict} |", cell(Some(s)));
    }
    let _ = writeln!(w);
}

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn verdict(self, v: f64, unit: &str) -> String {
        match self {
            Goal::AtMost(t) if v <= t => "met".into(),
            Goal::AtLeast(t) if v >= t => "met".into(),
            Goal::AtMost(t) => format!(
                "**missed** by {}{unit} ({}× the target)",
                num(v - t),
                num(v / t)
            ),
            Goal::AtLeast(t) => format!(
                "**missed** by {}{unit} ({}% of the target)",
                num(t - v),
                num(v / t * 100.0)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_by_how_much() {
        assert_eq!(Goal::AtMost(0.1).verdict(0.05, " ms"), "met");
        assert_eq!(
            Goal::AtMost(0.1).verdict(0.25, " ms"),
            "**missed** by 0.150 ms (2.50× the target)"
        );
        assert_eq!(
            Goal::AtLeast(20.0).verdict(10.0, "×"),
            "**missed** by 10.0× (50.0% of the target)"
        );
    }
}
