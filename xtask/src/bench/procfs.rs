//! What the kernel says a proxy process costs: CPU time (utime + stime from
//! /proc/PID/stat, all threads) and resident memory (VmRSS).

use std::{fs, sync::OnceLock};

use anyhow::{Context, Result};

use crate::cmd;

/// Clock ticks per second, the unit of utime and stime (proc(5)).
pub fn clock_ticks() -> Result<f64> {
    static TICKS: OnceLock<f64> = OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = cmd::output(cmd::new("getconf").arg("CLK_TCK"))?;
    let t = out
        .parse::<f64>()
        .with_context(|| format!("getconf CLK_TCK printed {out:?}"))?;
    Ok(*TICKS.get_or_init(|| t))
}

/// utime + stime of `pid` (every thread), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("failed to read /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("unparsable /proc/{pid}/stat"))
}

/// The comm field is in parentheses and may hold spaces, so fields are
/// counted from the last `)`: utime and stime are fields 14 and 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The sum of `f` over `pids`.
pub fn sum(pids: &[u32], f: fn(u32) -> Result<u64>) -> Result<u64> {
    pids.iter().map(|&p| f(p)).sum()
}

/// Children of `pid` (nginx's workers), from every process's parent field.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
                == Some(pid)
        })
        .collect()
}

fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                        250 75 0 0 20 0 3 0 12345 100000 2000 18446744073709551615";

    #[test]
    fn cpu_ticks_count_fields_after_the_comm() {
        assert_eq!(parse_cpu_ticks(STAT), Some(325));
        assert_eq!(parent_pid(STAT), Some(1));
    }
}
