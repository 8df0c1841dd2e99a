//! Audit events for what the kernel refused and what the resolver decided.

use crate::{
    audit::{Decision, Event, Kind},
    dns::DnsQueryRecord,
    kernel_events::KernelEventRecord,
};

/// IPPROTO numbers that name the kernel event's protocol.
fn protocol_name(record: &KernelEventRecord) -> &'static str {
    if record.target.is_some() {
        return "process";
    }
    if record.unix_path.is_some() {
        return "unix";
    }
    if record.socket_option.is_some() {
        return "sockopt";
    }
    match (record.sock_type, record.protocol) {
        (3, _) => "raw",
        (_, 1) | (_, 58) => "icmp",
        (_, 6) | (_, 262) => "tcp",
        (_, 17) => "udp",
        _ => "other",
    }
}

pub fn kernel_event(record: KernelEventRecord) -> Event {
    let mut event = Event::new(if record.refused {
        Kind::KernelRefusal
    } else {
        Kind::Connection
    });
    event.agent = record.agent.as_deref().map(Into::into);
    event.cgroup_path = record.cgroup.as_deref().map(Into::into);
    event.cgroup_id = Some(record.cgroup_id);
    event.pid = Some(record.pid);
    event.uid = Some(record.uid);
    event.gid = Some(record.gid);
    event.comm = Some(record.comm.as_str().into());
    event.exe = record.exe.as_deref().map(Into::into);
    if let Some(c) = &record.container {
        event.container_id = Some(c.id.clone());
        event.container_name = c.name.clone();
        event.container_image = c.image.clone();
    }
    event.protocol = Some(protocol_name(&record).to_owned());
    event.rule = Some(format!("kernel:{}", record.kind).into());
    match record.destination {
        // A bind names the agent's own end, not a destination.
        Some(local) if record.kind == "bind-denied" => event = event.with_src(local),
        Some(dst) => event = event.with_dst(dst),
        None => {}
    }
    // The socket's path takes the place a request's path has: what the
    // agent tried to reach, queryable with the other events.
    event.path = record.unix_path.clone();
    if let Some(target) = &record.target {
        // Likewise the other process, as its /proc entry; and the system
        // call in the method's place.
        event.path = Some(format!("/proc/{}", target.pid));
        event.method = target.syscall.as_deref().map(Into::into);
    }
    let (decision, reason) = if let Some(target) = &record.target {
        let whose = match (&target.agent, &target.cgroup) {
            (Some(agent), _) => format!("agent {agent}'s cgroup"),
            (None, Some(cgroup)) => format!("cgroup {cgroup}"),
            (None, None) => format!("cgroup id {}, no agent's", target.cgroup_id),
        };
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): {} ({} access) of pid {} ({}) in {whose} by {}: it runs outside the caller's own cgroup",
                record.kind,
                target.syscall.as_deref().unwrap_or("a system call"),
                target.access,
                target.pid,
                target.comm,
                record.comm
            ),
        )
    } else if record.kind == "bind-denied" {
        let at = record
            .destination
            .map_or_else(|| "an unknown address".to_owned(), |d| d.to_string());
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): bind to {at} ({}) by {}: not in agent.listen",
                record.kind,
                protocol_name(&record),
                record.comm
            ),
        )
    } else if record.kind == "connection-share-exceeded" {
        let to = record
            .destination
            .map_or_else(|| "an unknown address".to_owned(), |d| d.to_string());
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): connect to {to} by {}: the agent already has its share of connections waiting for the proxy (--kernel-agent-records)",
                record.kind, record.comm
            ),
        )
    } else if record.kind == "agent-revoked" {
        let at = record
            .destination
            .map_or_else(|| "an unknown address".to_owned(), |d| d.to_string());
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): the agent is revoked: {} {} to {at} by {}",
                record.kind,
                record.family,
                protocol_name(&record),
                record.comm
            ),
        )
    } else if let Some(option) = &record.socket_option {
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): setsockopt {option} by {}: it would route packets past agentguard's redirect",
                record.kind, record.comm
            ),
        )
    } else if record.kind == "egress-denied" {
        let to = record
            .destination
            .map_or_else(|| "an unknown address".to_owned(), |d| d.to_string());
        (
            Decision::Refuse,
            format!(
                "dropped in the kernel ({}): a {} {} packet for {to}, off the loopback: it got past agentguard's redirect (a routing header or source route, or a socket accepted from another host)",
                record.kind,
                record.family,
                protocol_name(&record)
            ),
        )
    } else if let Some(path) = &record.unix_path {
        let why = if record.below_agent_cgroup {
            "the caller's cgroup is below the agent's, and only the agent's own cgroup has unix_sockets"
        } else {
            "it is not in agent.unix_sockets"
        };
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): unix socket {path}: {why} (type {})",
                record.kind, record.sock_type
            ),
        )
    } else if record.refused {
        (
            Decision::Refuse,
            format!(
                "refused in the kernel ({}): {} socket of {} (type {}, protocol {})",
                record.kind, record.family, record.comm, record.sock_type, record.protocol
            ),
        )
    } else {
        (
            Decision::Intercept,
            format!("redirected in the kernel ({})", record.kind),
        )
    };
    event.with_decision(decision, reason)
}

pub fn dns_event(record: DnsQueryRecord) -> Event {
    let mut event = Event::new(Kind::DnsQuery).with_src(record.client);
    event.agent = Some(record.agent.into());
    event.host = Some(record.name.into());
    event.method = Some(record.qtype.into());
    event.protocol = Some(format!("dns/{}", record.transport));
    event.policy_version = Some(record.policy_version);
    event.rule = Some(match record.decision {
        "allow" => "dns:policy-host".into(),
        "deny" => "dns:default-deny".into(),
        "refuse" => "dns:not-a-standard-query".into(),
        _ => "dns:failure".into(),
    });
    let decision = match record.decision {
        "allow" => Decision::Allow,
        "deny" => Decision::Deny,
        _ => Decision::Refuse,
    };
    let answers = if record.answers.is_empty() {
        "no records".to_owned()
    } else {
        record.answers.join(", ")
    };
    let reason = match record.detail {
        Some(detail) => format!("{} ({answers}): {detail}", record.rcode),
        None => format!("{} ({answers})", record.rcode),
    };
    event.with_decision(decision, reason)
}
