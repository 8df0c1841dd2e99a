//! Instructions per request: a figure that small changes show in, where
//! req/s and CPU seconds on this shared 2-core machine move ±15% from run
//! to run. Hardware counters (`perf stat -e instructions`) would be the
//! cheap way, but this VM has no PMU ("PMU not available due to
//! virtualization": perf offers software events only), so the count is
//! callgrind's: a second agentguard daemon runs under `valgrind
//! --tool=callgrind`, serves a warm-up, has its counters zeroed, serves a
//! fixed number of requests of each scenario, and its counters are dumped.
//! The figure is the daemon's user-space instructions (all threads,
//! including the audit writer) over the requests that returned 200; the
//! kernel's share (TCP, syscalls) is not in it. Valgrind runs one thread
//! at a time and hides AVX-512 from the program, so the absolute numbers
//! are those of the AVX2 code paths; what they are for is the comparison
//! of one build with another. nginx, where the bench measures it, is
//! counted the same way (`master_process off`: its one process serves)
//! beside agentguard. Each dump is kept as
//! `target/bench/callgrind.<path>.<scenario>.out` for `callgrind_annotate`.
//!
//! callgrind also simulates the first-level caches (`--cache-sim=yes`,
//! sized as this CPU's): L1 misses per request, data and instruction, are
//! reported beside the instructions. They showed what instruction counts
//! do not: in the full path, values of ~1 KiB moved by value into fresh
//! memory, and a list per policy tool read on every request, were misses
//! out of proportion to their instructions.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    agentguard::Daemon,
    load::{self, Amount, LoadResult},
    paths::{Env, PathKind, Route},
    process::{CLIENT_CPU, pinned},
    proxies::Nginx,
    scenario::{self, Kind, SCENARIOS, Scenario},
};
use crate::cmd;

/// Requests each scenario's count starts after: the code they run is
/// translated by valgrind, pools and caches (leaves, form sets) are filled.
const WARM_UP: u32 = 50;

/// Per request that returned 200, from callgrind's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub instructions: f64,
    /// L1 data-cache misses, reads and writes.
    pub data_misses: f64,
    /// L1 instruction-cache misses.
    pub instruction_misses: f64,
}

/// The figures by (path id, scenario id).
pub type Counts = BTreeMap<(&'static str, &'static str), Figures>;

/// callgrind as the bench runs it, with the L1 caches simulated, writing
/// its dumps as `out_arg` says.
fn callgrind(out_arg: &str) -> [&str; 4] {
    ["valgrind", "--tool=callgrind", "--cache-sim=yes", out_arg]
}

pub fn available() -> bool {
    cmd::probe(cmd::new("valgrind").arg("--version")).is_some()
        && cmd::probe(cmd::new("callgrind_control").arg("--version")).is_some()
}

/// Every load scenario (HTTP/1.1 and HTTP/2) in `scenarios` on every
/// agentguard path in `paths`, and on nginx if it is in `paths`,
/// `requests` requests each.
pub fn run(env: &Env, paths: &[PathKind], scenarios: &[&str], requests: u32) -> Result<Counts> {
    let dir = env.work.join("callgrind");
    fs::create_dir_all(&dir)?;
    let out = dir.join("callgrind.out");
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let daemon = Daemon::start_under(
        &env.agentguard,
        &dir,
        &env.upstream,
        "-callgrind",
        &callgrind(&out_arg),
        &[],
    )?;
    daemon.resolve_passthrough(&env.names)?;
    let counter = Counter {
        pid: daemon.pid(),
        out,
    };
    let mut counts = Counts::new();
    // Not the kernel relay nor the direct way: this daemon relays
    // passthrough in user space (the default), so its count would be the
    // relay's under another label.
    for &path in paths.iter().filter(|p| {
        p.is_agentguard() && !matches!(p, PathKind::PassthroughKernel | PathKind::PassthroughDirect)
    }) {
        let mut route = env.route(path);
        // Intercepted paths are signed by this daemon's own CA; passthrough
        // shows the upstream's certificate, whose CA the route has.
        if path != PathKind::Passthrough {
            route.ca = daemon.ca();
        }
        count_path(
            env,
            &counter,
            path,
            &route,
            scenarios,
            requests,
            &mut counts,
            |c| client(env, Some(&daemon), c),
        )?;
    }
    drop(daemon);
    if paths.contains(&PathKind::Nginx) {
        // The reference beside agentguard's figures, counted the same way:
        // its one serving process under callgrind (no master, whose work
        // is not per request).
        let dir = env.work.join("callgrind-nginx");
        fs::create_dir_all(&dir)?;
        let out = dir.join("callgrind.out");
        let out_arg = format!("--callgrind-out-file={}", out.display());
        let nginx = Nginx::start_under(&dir, &env.upstream, &callgrind(&out_arg))?;
        let counter = Counter {
            pid: nginx.pid(),
            out,
        };
        let mut route = env.route(PathKind::Nginx);
        route.port = nginx.addr.port();
        route.dial = nginx.addr;
        count_path(
            env,
            &counter,
            PathKind::Nginx,
            &route,
            scenarios,
            requests,
            &mut counts,
            |c| client(env, None, c),
        )?;
    }
    Ok(counts)
}

/// Counts each load scenario in `scenarios` on `path`, served by the
/// process `counter` watches, its clients made by `client`.
#[allow(clippy::too_many_arguments)]
fn count_path(
    env: &Env,
    counter: &Counter,
    path: PathKind,
    route: &Route,
    scenarios: &[&str],
    requests: u32,
    counts: &mut Counts,
    client: impl Fn(Command) -> Command,
) -> Result<()> {
    for s in load_scenarios(path, scenarios) {
        let load = |amount| run_load(env, route, s.kind, amount, &client);
        load(Amount::Requests(WARM_UP))?;
        counter.zero()?;
        let r = load(Amount::Requests(requests))?;
        // Kept beside the results: `callgrind_annotate` on it shows
        // where the instructions went, function by function.
        let kept = env.work.parent().context("bench dir")?.join(format!(
            "callgrind.{}.{}.out",
            path.id(),
            s.id
        ));
        let events = counter.dump(&kept)?;
        if r.ok == 0 {
            bail!("{} {}: no request returned 200", path.id(), s.id);
        }
        let per = events.per_request(r.ok)?;
        println!(
            "bench: {:<12} {:<13} {:.0} instructions/request, L1 misses {:.0} data / {:.0} instruction ({} requests)",
            path.id(),
            s.id,
            per.instructions,
            per.data_misses,
            per.instruction_misses,
            r.ok
        );
        counts.insert((path.id(), s.id), per);
    }
    Ok(())
}

/// The section of docs/benchmarks.md: a row per path, a column per
/// scenario.
pub fn markdown(counts: &Counts, requests: u32) -> String {
    let mut md = format!(
        "User-space instructions of the agentguard daemon per request that returned 200 \
         (callgrind, all threads; {requests} requests per scenario after {WARM_UP} unrecorded \
         ones, on a separate daemon run under `valgrind --tool=callgrind`). Not affected by the \
         other load on the machine, so a change of a few percent shows; the kernel's share is \
         not in it. The nginx row, where there is one, is nginx counted the same way: its one \
         serving process (`master_process off`) under callgrind, OpenSSL included. The kernel \
         relay has no row: the daemon counted runs the default relay. Scenario ids as in \
         `--scenarios` (see the tables above). Two things weigh more here than in the load \
         runs: valgrind does not offer the CPU's SHA extensions, so the audit chain's SHA-256 \
         runs ring's AVX code, more instructions than the SHA-NI code it runs natively on a \
         CPU that has it; and each scenario's connections are new, so their TLS handshakes \
         are in the count, spread over {requests} requests (nginx's too).\n\n"
    );
    md.push_str(&table(counts, |f| format!("{:.0}", f.instructions)));
    md.push_str(
        "\nL1 cache misses per request in the same runs, simulated by callgrind \
         (`--cache-sim=yes`, the caches sized as this CPU's), data (reads and writes) / \
         instruction. A miss costs a dozen or more cycles where an instruction costs a \
         fraction of one, so these show costs the instruction counts hide: data moved \
         into fresh memory, structures read through pointers, code that does not stay \
         in the cache.\n\n",
    );
    md.push_str(&table(counts, |f| {
        format!("{:.0} / {:.0}", f.data_misses, f.instruction_misses)
    }));
    md
}

/// A row per path, a column per scenario counted (in `SCENARIOS` order),
/// each cell `cell` of its figures (this module's, or another per-request
/// count's).
pub(super) fn table<F>(
    counts: &BTreeMap<(&'static str, &'static str), F>,
    cell: impl Fn(&F) -> String,
) -> String {
    let scenarios: Vec<&str> = SCENARIOS
        .iter()
        .map(|s| s.id)
        .filter(|id| counts.keys().any(|(_, s)| s == id))
        .collect();
    let mut md = String::from("| path |");
    for s in &scenarios {
        md.push_str(&format!(" {s} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(scenarios.len()));
    md.push('\n');
    for path in PathKind::ALL {
        if !counts.keys().any(|(p, _)| *p == path.id()) {
            continue;
        }
        md.push_str(&format!("| {} |", path.label()));
        for s in &scenarios {
            match counts.get(&(path.id(), *s)) {
                Some(f) => md.push_str(&format!(" {} |", cell(f))),
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

/// The load scenarios (HTTP/1.1 and HTTP/2, which a fixed number of
/// requests can run) among `scenarios` that apply to `path`.
pub(super) fn load_scenarios<'a>(
    path: PathKind,
    scenarios: &'a [&str],
) -> impl Iterator<Item = &'static Scenario> + 'a {
    SCENARIOS.iter().filter(move |s| {
        scenarios.contains(&s.id)
            && scenario::not_applicable(path, s).is_none()
            && matches!(s.kind, Kind::Oha(_) | Kind::H2 { .. })
    })
}

/// `amount` requests of the load scenario `kind` on `route`, by a client
/// that `client` makes of the load generator's command.
pub(super) fn run_load(
    env: &Env,
    route: &Route,
    kind: Kind,
    amount: Amount,
    client: impl Fn(Command) -> Command,
) -> Result<LoadResult> {
    let mut c = client(command(env, route, kind, amount)?);
    let text = cmd::output(&mut c)?;
    match kind {
        Kind::H2 { .. } => load::parse_h2load(&text),
        _ => load::parse_oha(&text),
    }
}

fn command(env: &Env, route: &Route, kind: Kind, amount: Amount) -> Result<Command> {
    match kind {
        Kind::Oha(l) => Ok(load::oha(&env.oha, route, l, amount)),
        Kind::H2 {
            connections,
            streams,
        } => load::h2load(route, connections, streams, amount),
        Kind::Idle | Kind::Sse => bail!("not a load scenario"),
    }
}

/// `cmd` on the client CPU with the bench's name resolution; as the agent
/// where `daemon` guards it.
fn client(env: &Env, daemon: Option<&Daemon>, cmd: Command) -> Command {
    let cmd = match daemon {
        Some(d) => d.exec(cmd),
        None => cmd,
    };
    env.names.wrap(pinned(CLIENT_CPU, cmd))
}

/// The running callgrind's counters, through `callgrind_control`.
struct Counter {
    pid: u32,
    /// `--callgrind-out-file`: each dump is this with `.N` appended.
    out: PathBuf,
}

impl Counter {
    fn zero(&self) -> Result<()> {
        self.control("--zero")
    }

    /// callgrind_control exits 0 even when it found no such run: its
    /// answer says whether the command was carried out.
    fn control(&self, command: &str) -> Result<()> {
        let out =
            cmd::output(cmd::new("callgrind_control").args([command, &self.pid.to_string()]))?;
        if !out.contains("OK.") {
            bail!("callgrind_control {command} {}: {out}", self.pid);
        }
        Ok(())
    }

    /// Dumps the counters (which also zeroes them) to `keep` and returns
    /// the events counted since the last zero.
    fn dump(&self, keep: &Path) -> Result<Events> {
        let before = dumps(&self.out)?;
        self.control("--dump")?;
        // callgrind_control returns once the dump is written; allow for a
        // file system that shows it late.
        for _ in 0..100 {
            let after = dumps(&self.out)?;
            if let Some(new) = after.into_iter().find(|p| !before.contains(p)) {
                let text = fs::read_to_string(&new)?;
                fs::rename(&new, keep)?;
                return totals(&text).with_context(|| format!("no summary in {}", keep.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("callgrind wrote no dump for pid {}", self.pid)
    }
}

fn dumps(out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.parent().context("callgrind dir")?;
    let stem = out
        .file_name()
        .context("callgrind file")?
        .to_string_lossy()
        .into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}.")) {
            found.push(dir.join(name));
        }
    }
    Ok(found)
}

/// The events of a callgrind dump, by name (`Ir`, `D1mr`, ...), totalled
/// over the part the dump covers.
#[derive(Debug, PartialEq)]
struct Events(BTreeMap<String, u64>);

impl Events {
    fn get(&self, name: &str) -> Result<u64> {
        self.0
            .get(name)
            .copied()
            .with_context(|| format!("callgrind counted no {name} (is --cache-sim=yes on?)"))
    }

    fn per_request(&self, requests: u64) -> Result<Figures> {
        let per = |n: u64| n as f64 / requests as f64;
        Ok(Figures {
            instructions: per(self.get("Ir")?),
            data_misses: per(self.get("D1mr")? + self.get("D1mw")?),
            instruction_misses: per(self.get("I1mr")?),
        })
    }
}

/// The `events:` line of a callgrind dump names the counters its
/// `summary:` line gives, in order.
fn totals(text: &str) -> Option<Events> {
    let line = |prefix| text.lines().find_map(|l| l.strip_prefix(prefix));
    let names = line("events:")?.split_whitespace();
    let values = line("summary:")?.split_whitespace();
    let events: Option<BTreeMap<String, u64>> = names
        .zip(values)
        .map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect();
    events.map(Events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_events_and_totals_lines() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 42\ncmd: agentguard\n\
                    part: 2\n\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                    summary: 400000 9 8 6000 3000 1000 5 4 3\n\n\
                    fl=(1) x.rs\nfn=(1) f\n3 10\n\ntotals: 10\n";
        let events = totals(dump).unwrap();
        assert_eq!(events.get("Ir").unwrap(), 400_000);
        assert_eq!(
            events.per_request(2).unwrap(),
            Figures {
                instructions: 200_000.0,
                data_misses: 2_000.0,
                instruction_misses: 3_000.0,
            }
        );
        // Without the cache simulation: no miss counts, said so.
        let only_ir = totals("events: Ir\nsummary: 10\n").unwrap();
        let e = only_ir.per_request(1).unwrap_err();
        assert!(e.to_string().contains("D1mr"), "{e}");
        assert_eq!(totals("events: Ir\n"), None);
        assert_eq!(totals("events: Ir\nsummary: x\n"), None);
    }
}
