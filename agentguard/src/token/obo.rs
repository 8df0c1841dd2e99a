//! Whom an agent acts for (`agentguard exec --on-behalf-of WHO`), for the
//! `act` claim (RFC 8693 §4.1).
//!
//! `exec` registers its own pid with the daemon before it execs the agent
//! (exec keeps the pid). A connection's process, or its nearest registered
//! ancestor, names the party. Each entry carries the process's start time,
//! so a pid reused after the agent exits inherits nothing. A child that was
//! re-parented (a daemonised grandchild) loses its link: its tokens carry
//! no `act`, never a wrong one.

use std::{collections::HashMap, sync::Mutex};

/// Registered processes kept at most; dead ones are dropped first.
const CAPACITY: usize = 4096;
/// Ancestors looked at, at most.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Default)]
pub struct OnBehalfOf {
    /// pid → (start time in clock ticks since boot, who).
    entries: Mutex<HashMap<u32, (u64, String)>>,
}

/// (ppid, start time) from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and ')': the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields 4 (ppid) and 22 (starttime) of proc(5), counted from 1 with
    // pid and comm as 1 and 2.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// A name for the party: printable, one line, at most 256 bytes.
pub fn validate_who(who: &str) -> Result<(), String> {
    if who.is_empty() || who.len() > 256 || who.chars().any(char::is_control) {
        return Err("--on-behalf-of must be 1-256 printable characters".into());
    }
    Ok(())
}

impl OnBehalfOf {
    pub fn register(&self, pid: u32, who: &str) -> Result<(), String> {
        validate_who(who)?;
        let (_, start) = stat(pid).ok_or_else(|| format!("no process {pid}"))?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|pid, (start, _)| stat(*pid).is_some_and(|(_, s)| s == *start));
        }
        if entries.len() >= CAPACITY {
            return Err("too many on-behalf-of registrations".into());
        }
        entries.insert(pid, (start, who.to_owned()));
        Ok(())
    }

    /// Whom `pid` (or its nearest registered ancestor) acts for.
    pub fn lookup(&self, pid: u32) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.is_empty() {
            return None;
        }
        let mut pid = pid;
        for _ in 0..MAX_DEPTH {
            if pid <= 1 {
                return None;
            }
            let (ppid, start) = stat(pid)?;
            if let Some((registered, who)) = entries.get(&pid)
                && *registered == start
            {
                return Some(who.clone());
            }
            pid = ppid;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_and_its_children_act_for_whom_it_registered() {
        let registry = OnBehalfOf::default();
        let me = std::process::id();
        assert_eq!(registry.lookup(me), None);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        registry.register(me, "alice@example.org").unwrap();
        assert_eq!(registry.lookup(me).as_deref(), Some("alice@example.org"));
        assert_eq!(
            registry.lookup(child.id()).as_deref(),
            Some("alice@example.org")
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(registry.register(me, "bad\nname").is_err());
    }
}
