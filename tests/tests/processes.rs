//! Other processes: an agent cannot ptrace, read or write the memory of, or
//! take descriptors from any process outside its own cgroup (a process of
//! the same uid outside every agent cgroup, or another agent), whether or
//! not `agentguard exec` started it; it may still trace its own children.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::{Daemon, in_cgroup_dir, require_root, run_with_pid, text};

const ATTACKER: &str = "proc-alpha";
const OTHER: &str = "proc-beta";
/// Everyone here runs as nobody: same uid, no capabilities, so without
/// agentguard the kernel would allow every one of these accesses.
const NOBODY: &str = "65534";
/// The system python (the agent's user cannot read a pyenv under /root).
const PYTHON: &str = "/usr/bin/python3";

/// Tries each way into process `argv[1]` and, last, PTRACE_ATTACH on a
/// child of its own; prints one `name errno` line each (0: it worked).
const PROBE: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
SYS_process_vm_writev, SYS_pidfd_open, SYS_pidfd_getfd = 311, 434, 438

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def err(ret):
    return 0 if ret >= 0 else ctypes.get_errno()

def attach(pid):
    ret = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    e = err(ret)
    if e == 0:
        os.waitpid(pid, 0)
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    return e

target = int(sys.argv[1])
print("ptrace", attach(target))
buf = ctypes.create_string_buffer(b"x")
local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 1)
# The target's own stack: a write there would land (the kernel checks
# permission before touching memory, so a refusal is EPERM, not EFAULT).
with open("/proc/self/maps") as _:
    pass
remote = IoVec(ctypes.cast(buf, ctypes.c_void_p), 1)
print("process_vm_writev", err(libc.syscall(SYS_process_vm_writev, target,
      ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)))
pidfd = libc.syscall(SYS_pidfd_open, target, 0)
assert pidfd >= 0, ctypes.get_errno()
print("pidfd_getfd", err(libc.syscall(SYS_pidfd_getfd, pidfd, 0, 0)))
try:
    os.close(os.open(f"/proc/{target}/mem", os.O_RDWR))
    print("proc_mem", 0)
except OSError as e:
    print("proc_mem", e.errno)
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
print("own_child", attach(child))
os.kill(child, 9)
"#;

/// `sleep` as nobody, started by `cmd` (which may put it in a cgroup).
fn sleeper(cmd: Command) -> Child {
    let mut cmd = cmd;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn as_nobody(cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

fn results(out: &std::process::Output) -> Vec<(String, i32)> {
    assert!(
        out.status.success(),
        "probe failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| {
            let (name, errno) = l.split_once(' ').unwrap();
            (name.to_owned(), errno.parse().unwrap())
        })
        .collect()
}

const EPERM: i32 = 1;
const EACCES: i32 = 13;

fn refused_everything(results: &[(String, i32)]) {
    let want = [
        ("ptrace", EPERM),
        ("process_vm_writev", EPERM),
        ("pidfd_getfd", EPERM),
        ("proc_mem", EACCES),
        ("own_child", 0),
    ];
    let got: Vec<(&str, i32)> = results.iter().map(|(n, e)| (n.as_str(), *e)).collect();
    assert_eq!(got, want);
}

/// The refusals recorded for `pid`, about `target`.
fn refusals_about(daemon: &Daemon, pid: u32, target: u32) -> Vec<Value> {
    daemon
        .wait_for_refusals(pid, 4)
        .into_iter()
        .filter(|e| e["path"] == format!("/proc/{target}"))
        .collect()
}

/// Where the kernel runs the process-access program, every agent is kept
/// from other processes, and each refusal is recorded. Where it cannot (no
/// usable BPF LSM: this test's VM refuses every trampoline program with
/// EPERM before the verifier sees it), the daemon must say so, and
/// `exec`-started agents still get every refusal from the Landlock belt;
/// agents started otherwise are then not guarded, which the README says.
#[test]
fn agents_cannot_take_over_processes_outside_their_cgroup() {
    require_root();
    let daemon = Daemon::builder(&[ATTACKER, OTHER]).start();
    let kernel_guards = daemon.status()["processes_guarded"] == true;
    if !kernel_guards {
        let why = daemon
            .log()
            .lines()
            .find(|l| l.contains("agents may ptrace"))
            .unwrap_or_default()
            .to_owned();
        // The daemon tried the program and the kernel refused it: not a
        // configuration the test made.
        assert!(why.contains("ptrace_access_check"), "{}", daemon.log());
        eprintln!(
            "NOTE: this kernel cannot run the process-access program, so only exec-started agents are checked here: {why}"
        );
    }

    // Same uid as the agent, outside every agent cgroup.
    let outside_cmd = as_nobody(&["sleep", "300"]);
    let mut outside = sleeper({
        let mut c = Command::new(&outside_cmd[0]);
        c.args(&outside_cmd[1..]);
        c
    });
    // Another agent, same uid.
    let mut other = sleeper(daemon.exec_with(OTHER, &["--user", "65534:65534"], &["sleep", "300"]));
    std::thread::sleep(std::time::Duration::from_millis(300));

    for (target, whose) in [(outside.id(), None), (other.id(), Some(OTHER))] {
        let t = target.to_string();
        // Started by agentguard exec...
        let (pid, out) = run_with_pid(daemon.exec_with(
            ATTACKER,
            &["--user", "65534:65534"],
            &[PYTHON, "-c", PROBE, &t],
        ));
        refused_everything(&results(&out));
        if !kernel_guards {
            continue;
        }
        // ...and started otherwise, straight into the cgroup.
        let direct = as_nobody(&[PYTHON, "-c", PROBE, &t]);
        let direct: Vec<&str> = direct.iter().map(String::as_str).collect();
        let (direct_pid, direct_out) =
            run_with_pid(in_cgroup_dir(&daemon.cgroup_path(ATTACKER), &direct));
        refused_everything(&results(&direct_out));

        for pid in [pid, direct_pid] {
            let events = refusals_about(&daemon, pid, target);
            let calls: Vec<&str> = events
                .iter()
                .map(|e| e["method"].as_str().unwrap())
                .collect();
            assert_eq!(
                calls,
                ["ptrace", "process_vm_writev", "pidfd_getfd", "openat"],
                "{events:#?}"
            );
            for e in &events {
                assert_eq!(e["kind"], "kernel_refusal");
                assert_eq!(e["rule"], "kernel:process-access-denied");
                assert_eq!(e["decision"], "refuse");
                assert_eq!(e["agent"], ATTACKER);
                assert_eq!(e["protocol"], "process");
                assert_eq!(e["uid"], 65534);
                let reason = e["reason"].as_str().unwrap();
                assert!(
                    reason.contains(&format!("pid {target} (sleep)")),
                    "{reason}"
                );
                if let Some(agent) = whose {
                    assert!(reason.contains(&format!("agent {agent}")), "{reason}");
                }
            }
        }
    }
    let _ = outside.kill();
    let _ = other.kill();
    let _ = outside.wait();
    let _ = other.wait();
}

#[test]
fn a_kernel_without_the_bpf_lsm_runs_only_when_told_and_exec_installs_the_belt() {
    require_root();
    let hook = "lsm_cgroup/ptrace_access_check";
    let policy = (
        "p.toml",
        "[agent]\nname = \"p\"\ncgroup = \"agentguard-test-lsm/p\"\n",
    );
    let attempt = crate::common::start_attempt(
        "lsm",
        policy,
        &["--proxy-port", "0"],
        &[("AGENTGUARD_TEST_UNSUPPORTED_HOOKS", hook)],
    );
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(err.contains(hook), "{err}");

    // (Every test daemon runs with --allow-unguarded-processes.)
    let daemon = Daemon::builder(&[ATTACKER])
        .env("AGENTGUARD_TEST_UNSUPPORTED_HOOKS", hook)
        .start();
    assert!(
        daemon.log().contains("agents may ptrace"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.status()["processes_guarded"], false);
    let start = daemon.wait_for_events("the start event", |e| {
        e.iter().any(|e| e["kind"] == "daemon_start")
    });
    let start = start.iter().find(|e| e["kind"] == "daemon_start").unwrap();
    assert!(
        start["reason"]
            .as_str()
            .unwrap()
            .contains("PROCESSES NOT GUARDED"),
        "{start}"
    );
    assert!(!daemon.pinned_links().iter().any(|l| l.contains("ptrace")));

    let outside_cmd = as_nobody(&["sleep", "300"]);
    let mut outside = sleeper({
        let mut c = Command::new(&outside_cmd[0]);
        c.args(&outside_cmd[1..]);
        c
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = outside.id().to_string();
    // exec's Landlock belt (this kernel has Landlock): every way in is
    // refused, /proc/<pid>/mem included, and the agent still traces its
    // own child.
    let (_, out) = run_with_pid(daemon.exec_with(
        ATTACKER,
        &["--user", "65534:65534"],
        &[PYTHON, "-c", PROBE, &t],
    ));
    refused_everything(&results(&out));
    // Started otherwise, the agent is not guarded: the gap the daemon
    // announced (the control that shows the belt above is exec's doing).
    let direct = as_nobody(&[PYTHON, "-c", PROBE, &t]);
    let direct: Vec<&str> = direct.iter().map(String::as_str).collect();
    let (_, direct_out) = run_with_pid(in_cgroup_dir(&daemon.cgroup_path(ATTACKER), &direct));
    // (process_vm_writev may miss the target's memory, EFAULT: it was not
    // refused.)
    let got = results(&direct_out);
    assert!(
        got.iter()
            .all(|(_, errno)| ![EPERM, EACCES].contains(errno)),
        "{got:?}"
    );
    let _ = outside.kill();
    let _ = outside.wait();
}
