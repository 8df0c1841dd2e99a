//! The kernel's share of each request: system calls and context switches
//! of the proxy's processes per request, counted by `perf stat` (software
//! events and the `raw_syscalls:sys_enter` tracepoint, which work in this
//! VM where hardware counters do not) over a fixed number of requests of
//! each load scenario, on the bench's own daemons and nginx, after the
//! measured runs. The instruction counts (`super::instructions`) leave the
//! kernel out, and the profile showed a third of the full path's samples
//! in it (syscalls, TCP, wake-ups): these say whether that is more calls
//! than nginx makes, or more work in each.
//!
//! Only the proxy's own processes are counted: work the kernel does in the
//! client's or the upstream's context (the kernel relay's and the direct
//! way's forwarding) is not in it. Counting the tracepoint costs the
//! proxy a little per call, which is why the load runs are not counted.

use std::{collections::BTreeMap, fs, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};

use super::{
    instructions,
    load::{Amount, OhaLoad},
    paths::{Env, PathKind},
    scenario::{Kind, Scenario},
};
use crate::cmd;

/// Requests each count starts after (pools and caches filled).
const WARM_UP: u32 = 50;
/// The events counted, as `perf stat -e` takes them.
const EVENTS: &str = "raw_syscalls:sys_enter,context-switches,task-clock";
/// Time `perf stat` is given to attach before the load starts.
const ATTACH: Duration = Duration::from_millis(300);

/// Per request that returned 200.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub syscalls: f64,
    pub context_switches: f64,
    /// CPU time of the proxy's processes, milliseconds.
    pub cpu_ms: f64,
}

/// The figures by (path id, scenario id).
pub type Counts = BTreeMap<(&'static str, &'static str), Figures>;

/// What the phase counted, and the cells it could not.
pub struct Counted {
    pub counts: Counts,
    /// "path scenario: why", for the page.
    pub failed: Vec<String>,
}

/// At most this many new connections per count: each leaves a client port
/// in TIME_WAIT for a minute, and 20,000 of them (then those of the next
/// scenario) used up the ephemeral ports, so that the next counts failed.
const MAX_NEW_CONNECTIONS: u32 = 2000;
/// Fixed-rate scenarios are counted over this long of their rate, not
/// over `requests`: 20,000 requests at 200 req/s took 100 s each.
const RATE_SECONDS: u32 = 10;

/// Whether `perf stat` can count the tracepoint here.
pub fn available() -> bool {
    cmd::probe(cmd::new("perf").args(["stat", "-e", EVENTS, "--", "true"])).is_some()
}

/// How many requests scenario `s` is counted over, `requests` at most.
fn requests_of(s: &Scenario, requests: u32) -> u32 {
    match s.kind {
        Kind::Oha(OhaLoad {
            rate: Some(rate), ..
        }) => requests.min(rate * RATE_SECONDS),
        Kind::Oha(OhaLoad {
            keep_alive: false, ..
        }) => requests.min(MAX_NEW_CONNECTIONS),
        _ => requests,
    }
}

/// Every load scenario in `scenarios` on every path in `paths` that has a
/// proxy process, up to `requests` requests each ([`requests_of`]). A
/// count that fails is named on the page; the others stand.
pub fn run(env: &Env, paths: &[PathKind], scenarios: &[&str], requests: u32) -> Result<Counted> {
    let dir = env.work.join("kernel-work");
    fs::create_dir_all(&dir)?;
    let mut counted = Counted {
        counts: Counts::new(),
        failed: Vec::new(),
    };
    for &path in paths {
        let pids = env.proxy_pids(path);
        if pids.is_empty() {
            continue;
        }
        let route = env.route(path);
        for s in instructions::load_scenarios(path, scenarios) {
            let load = |amount| {
                instructions::run_load(env, &route, s.kind, amount, |c| env.client(path, c))
            };
            let out = dir.join(format!("{}.{}.csv", path.id(), s.id));
            let count = || -> Result<Figures> {
                load(Amount::Requests(WARM_UP))?;
                let counter = Counter::attach(&pids, &out)?;
                // The counter is stopped whatever became of the load.
                let r = load(Amount::Requests(requests_of(s, requests)));
                let totals = counter.finish()?;
                let r = r?;
                if r.ok == 0 {
                    bail!("no request returned 200");
                }
                let per = totals.per_request(r.ok);
                println!(
                    "bench: {:<12} {:<13} {:.1} syscalls, {:.2} context switches, {:.3} ms CPU per request ({} requests)",
                    path.id(),
                    s.id,
                    per.syscalls,
                    per.context_switches,
                    per.cpu_ms,
                    r.ok
                );
                Ok(per)
            };
            match count() {
                Ok(per) => {
                    counted.counts.insert((path.id(), s.id), per);
                }
                Err(e) => {
                    println!("bench: {:<12} {:<13} not counted: {e:#}", path.id(), s.id);
                    counted
                        .failed
                        .push(format!("{} {}: {e:#}", path.id(), s.id));
                }
            }
        }
    }
    Ok(counted)
}

/// A running `perf stat` on the proxy's processes.
struct Counter {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Counter {
    fn attach(pids: &[u32], out: &Path) -> Result<Self> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = cmd::new("perf")
            .args(["stat", "-x", ",", "-e", EVENTS, "-o"])
            .arg(out)
            .arg("-p")
            .arg(pids.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf stat")?;
        std::thread::sleep(ATTACH);
        Ok(Self {
            child,
            out: out.to_owned(),
        })
    }

    /// Stops the count (SIGINT: perf then writes its totals) and reads it.
    fn finish(mut self) -> Result<Totals> {
        cmd::output(cmd::new("kill").args(["-INT", &self.child.id().to_string()]))?;
        self.child.wait()?;
        Totals::parse(&fs::read_to_string(&self.out)?)
            .with_context(|| format!("perf stat output {}", self.out.display()))
    }
}

/// What one count came to, from `perf stat -x,`.
#[derive(Debug, PartialEq)]
struct Totals {
    syscalls: f64,
    context_switches: f64,
    cpu_ms: f64,
}

impl Totals {
    /// `perf stat -x,` writes one line per event: value, unit, event name,
    /// then run time and share; comment lines start with `#`.
    fn parse(text: &str) -> Result<Self> {
        let mut found: BTreeMap<&str, f64> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let fields: Vec<&str> = line.split(',').collect();
            let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else {
                continue;
            };
            let value: f64 = value
                .parse()
                .with_context(|| format!("{event}: {value:?} is not a count"))?;
            found.insert(event, value);
        }
        let get = |event: &str| {
            found
                .get(event)
                .copied()
                .with_context(|| format!("no {event} count"))
        };
        Ok(Self {
            syscalls: get("raw_syscalls:sys_enter")?,
            context_switches: get("context-switches")?,
            cpu_ms: get("task-clock")?,
        })
    }

    fn per_request(&self, requests: u64) -> Figures {
        let n = requests as f64;
        Figures {
            syscalls: self.syscalls / n,
            context_switches: self.context_switches / n,
            cpu_ms: self.cpu_ms / n,
        }
    }
}

/// The section of docs/benchmarks.md: a row per path, a column per
/// scenario.
pub fn markdown(counted: &Counted, requests: u32) -> String {
    let mut md = format!(
        "System calls / context switches / CPU milliseconds of the proxy's processes per \
         request that returned 200 (`perf stat -e {EVENTS}` on the bench's own daemons and \
         nginx, after the measured runs; after {WARM_UP} uncounted requests, {requests} counted \
         per scenario, at most {MAX_NEW_CONNECTIONS} where each request is a new connection and \
         {RATE_SECONDS} s worth at the fixed rates). Only the proxy's processes: the kernel \
         relay's and the direct way's forwarding happen in the client's and upstream's context \
         and are not here. Counting the tracepoint costs each call a little, so the CPU column \
         runs a little above the load runs'.\n\n"
    );
    md.push_str(&instructions::table(&counted.counts, |f| {
        format!(
            "{:.1} / {:.2} / {:.3}",
            f.syscalls, f.context_switches, f.cpu_ms
        )
    }));
    if !counted.failed.is_empty() {
        md.push_str("\nNot counted:\n\n");
        for failed in &counted.failed {
            md.push_str(&format!("- {failed}\n"));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_csv_is_read_by_event_name() {
        let text = "# started on Mon Dec  7 11:40:00 2026\n\n\
                    681750,,raw_syscalls:sys_enter,6569440000,100.00,,\n\
                    109228,,context-switches,6569440000,100.00,16.627,K/sec\n\
                    6569.44,msec,task-clock,6569440000,100.00,0.226,CPUs utilized\n";
        let t = Totals::parse(text).unwrap();
        assert_eq!(
            t,
            Totals {
                syscalls: 681_750.0,
                context_switches: 109_228.0,
                cpu_ms: 6569.44
            }
        );
        let per = t.per_request(1000);
        assert!((per.syscalls - 681.75).abs() < 1e-9);
    }

    #[test]
    fn new_connections_and_fixed_rates_are_counted_over_fewer_requests() {
        let of = |id: &str| {
            let s = super::super::scenario::SCENARIOS
                .iter()
                .find(|s| s.id == id)
                .unwrap();
            requests_of(s, 20_000)
        };
        assert_eq!(of("ka_sat_1k"), 20_000);
        assert_eq!(of("h2_sat"), 20_000);
        assert_eq!(of("new_sat"), MAX_NEW_CONNECTIONS);
        assert_eq!(of("ka_rate_200"), 200 * RATE_SECONDS);
        assert_eq!(of("ka_rate_1000"), 1000 * RATE_SECONDS);
        assert_eq!(of("new_rate_200"), 200 * RATE_SECONDS);
    }

    #[test]
    fn a_missing_event_is_an_error_not_a_zero() {
        let text = "109228,,context-switches,1,100.00,,\n6569.44,msec,task-clock,1,100.00,,\n";
        let e = Totals::parse(text).unwrap_err().to_string();
        assert!(e.contains("raw_syscalls:sys_enter"), "{e}");
    }

    #[test]
    fn an_uncounted_event_is_an_error() {
        let text = "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n";
        assert!(Totals::parse(text).is_err());
    }
}
