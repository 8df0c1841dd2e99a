//! The facts the report states about the machine and the tools, and
//! whether anything else was running: numbers from a busy machine are
//! noise.

use std::{fs, process::Command};

use super::paths::{Env, PathKind};
use crate::cmd;

pub fn facts() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into());
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let date =
        cmd::output(cmd::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    vec![
        ("date".into(), date),
        ("CPU".into(), format!("{cpus} × {model}")),
        ("memory".into(), mem),
        ("OS".into(), os),
        ("kernel".into(), kernel),
    ]
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Builds and test runs going on beside this bench (other than the cargo
/// that started it): compilers, cargo, test binaries.
pub fn busy_processes() -> Vec<String> {
    let me = std::process::id();
    let ancestors = ancestors(me);
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut busy: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && !ancestors.contains(pid))
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            let heavy = ["cargo", "rustc", "cc1", "ld", "integration"]
                .iter()
                .any(|n| comm == *n || comm.starts_with("integration-"));
            heavy.then(|| format!("{comm} (pid {pid})"))
        })
        .collect();
    busy.sort();
    busy
}

fn ancestors(mut pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..64 {
        let Some(parent) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 1..].to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
        else {
            break;
        };
        if parent <= 1 {
            break;
        }
        out.push(parent);
        pid = parent;
    }
    out
}

pub fn tool_versions(env: &Env) -> Vec<(String, String)> {
    let first_line = |mut c: Command| -> String {
        c.output()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|e| format!("unavailable: {e}"))
    };
    let with = |program: &std::path::Path, arg: &str| {
        let mut c = cmd::new(program);
        c.arg(arg);
        c
    };
    let named = |program: &str, arg: &str| {
        let mut c = cmd::new(program);
        c.arg(arg);
        c
    };
    vec![
        (
            "load generator (HTTP/1.1)".into(),
            first_line(with(&env.oha, "--version")),
        ),
        (
            "load generator (HTTP/2)".into(),
            first_line(named("h2load", "--version")),
        ),
        ("nginx".into(), first_line(named("nginx", "-v"))),
        (
            "mitmproxy".into(),
            first_line(with(&env.mitmdump, "--version")),
        ),
        ("rustc".into(), first_line(named("rustc", "--version"))),
        (
            "TLS curl (OpenSSL) gets from agentguard's full path".into(),
            negotiated_tls(env, PathKind::Full),
        ),
        (
            "TLS curl (OpenSSL) gets from nginx".into(),
            negotiated_tls(env, PathKind::Nginx),
        ),
    ]
}

/// The protocol and cipher suite a curl client (OpenSSL, which lists
/// TLS_AES_256_GCM_SHA384 first) ends up with on `path`: the proxies are
/// compared doing the same cryptographic work, and this shows they do.
fn negotiated_tls(env: &Env, path: PathKind) -> String {
    let route = env.route(path);
    let mut curl = cmd::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-v", "-m", "10", "--cacert"])
        .arg(&route.ca)
        .args(["--connect-to", &route.connect_to()])
        .arg(route.url("/1k"));
    let Ok(out) = env.client(path, curl).output() else {
        return "unavailable: curl did not run".into();
    };
    // curl 7.88 and 8.x: "SSL connection using TLSv1.3 / TLS_AES_128_GCM_SHA256".
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| {
            l.split_once("SSL connection using ")
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unavailable: curl named no TLS connection".into())
}
