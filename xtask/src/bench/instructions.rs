//! Instructions the proxy executes per request: `perf stat -e
//! instructions` attached to the proxy's processes for the length of one
//! load run. Unlike wall-clock throughput (±15% run to run on a shared
//! machine), the count barely moves with load elsewhere, so it shows
//! changes under 10%. Machines without a hardware instruction counter (most
//! VMs) report `<not supported>`; the figure is then absent, never guessed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

/// A `perf stat` counting the proxy's instructions until [`Counter::stop`].
pub struct Counter {
    child: Child,
    out: PathBuf,
}

impl Counter {
    /// Starts counting for `pids`; `None` (no figure) when there are none
    /// or perf cannot start.
    pub fn start(pids: &[u32], work: &Path) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let out = work.join(format!("perf-stat-{}.csv", pids[0]));
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-e", "instructions", "-x", ",", "-o"])
            .arg(&out)
            .args(["-p", &list.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf attaches after it starts; a request served before that is
        // not counted (a few out of thousands).
        std::thread::sleep(Duration::from_millis(100));
        Some(Self { child, out })
    }

    /// Stops counting (SIGINT makes perf print its totals); returns the
    /// instructions counted, or `None` where the machine cannot count them.
    pub fn stop(mut self) -> Result<Option<f64>> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        self.child.wait().context("perf stat")?;
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let _ = fs::remove_file(&self.out);
        Ok(parse(&text))
    }
}

/// The count from `perf stat -x ,` output: `<count>,,instructions,...`;
/// `<not supported>` or `<not counted>` in the first field give `None`.
fn parse(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(',')
                .nth(2)
                .is_some_and(|e| e.starts_with("instructions"))
        })
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_the_count_and_refuses_what_was_not_counted() {
        assert_eq!(
            parse("# started on x\n\n123456,,instructions:u,1000,100.00,,\n"),
            Some(123456.0)
        );
        assert_eq!(parse("<not supported>,,instructions,0,100.00,,\n"), None);
        assert_eq!(parse(""), None);
    }
}
