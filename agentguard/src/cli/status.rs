//! `agentguard status`: the running daemon's state, for a person (default)
//! or for a script (`-o json`, the admin API's own JSON).

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::admin::StatusView;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// A summary for a terminal.
    #[default]
    Text,
    /// The admin API's status object, pretty-printed.
    Json,
}

pub fn render(status: &StatusView, output: Output) -> String {
    match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(status).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Text => text(status),
    }
}

fn text(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agentguard running (pid {}), proxy on port {}",
        s.pid, s.proxy_port
    );
    let reload = &s.last_reload;
    let outcome = if reload.accepted {
        "accepted"
    } else {
        "REJECTED, the previous policy stays"
    };
    let _ = writeln!(out, "policy:   {}", s.policy_version);
    let _ = writeln!(
        out,
        "reload:   {} at {}: {outcome}",
        reload.trigger, reload.time
    );
    if let Some(error) = &reload.error {
        for line in error.lines() {
            let _ = writeln!(out, "          {line}");
        }
    }
    let _ = writeln!(out, "agents:   {}", s.agents.len());
    let width = s.agents.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for a in &s.agents {
        let place = match (a.guarded, &a.systemd_unit) {
            (true, _) => format!("guarded  {} (cgroup id {})", a.cgroup_path, a.cgroup_id),
            (false, Some(unit)) => format!("NOT GUARDED  unit {unit} is not running"),
            (false, None) => "NOT GUARDED".to_owned(),
        };
        let _ = writeln!(out, "  {:<width$}  {place}  {}", a.name, a.policy_file);
        for c in &a.containers {
            let _ = writeln!(
                out,
                "  {:<width$}    container {} {} (image {}, id {}, cgroup id {})",
                "",
                c.info.runtime,
                c.info.name.as_deref().unwrap_or("unnamed"),
                c.info.image.as_deref().unwrap_or("unknown"),
                c.info.id.get(..12).unwrap_or(&c.info.id),
                c.cgroup_id
            );
        }
    }
    let _ = writeln!(
        out,
        "traffic:  {} connections, {} requests",
        s.connections_total, s.requests_total
    );
    if let Some(a) = &s.audit {
        let _ = writeln!(
            out,
            "audit:    {} events written (last seq {}, last signed checkpoint {}), queue {}/{}, {} write errors",
            a.events_written,
            a.last_seq,
            a.last_checkpoint_seq,
            a.queue_depth,
            a.queue_capacity,
            a.write_errors
        );
    }
    let _ = writeln!(
        out,
        "kernel:   unix sockets {}, {} event records lost",
        if s.unix_sockets_guarded {
            "guarded"
        } else {
            "NOT guarded"
        },
        s.kernel_events_lost
    );
    for ca in &s.ca {
        let _ = writeln!(
            out,
            "ca:       {} sha256 {} until {} ({} days)",
            ca.role.as_str(),
            ca.sha256,
            ca.not_after,
            ca.days_left
        );
    }
    out
}
