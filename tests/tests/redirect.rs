//! Guarded processes reach their destination through the proxy, and the
//! daemon knows, from the kernel, who they are.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::common::{Daemon, Upstream, require_root, text};

const NOBODY: u32 = 65534;

/// The one connection entry with this pid, asserting there is exactly one.
fn entry_for_pid(daemon: &Daemon, pid: u32) -> Value {
    let matching: Vec<Value> = daemon
        .connections()
        .into_iter()
        .filter(|e| e["identity"]["pid"] == pid)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one connection from pid {pid}, got {matching:?}"
    );
    matching.into_iter().next().unwrap()
}

#[test]
fn curl_in_agent_cgroup_is_redirected_and_attributed() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["redirect-v4"]);
    let nobody = NOBODY.to_string();
    // exec switches to an unprivileged user and execs curl in the same
    // process, so the record must carry curl's pid and uid 65534, not the
    // test's.
    let user = format!("{nobody}:{nobody}");
    let child = daemon
        .exec_with(
            "redirect-v4",
            &["--user", &user],
            &["curl", "-sS", "-m", "10", &upstream.url()],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), crate::common::BODY);
    assert_eq!(upstream.hits(), 1);

    let entry = entry_for_pid(&daemon, pid);
    assert_eq!(entry["decision"], "intercept");
    assert_eq!(entry["original_dst"], upstream.addr.to_string());
    let id = &entry["identity"];
    assert_eq!(id["agent"], "redirect-v4");
    assert_eq!(id["uid"], NOBODY);
    assert_eq!(id["gid"], NOBODY);
    assert_eq!(id["comm"], "curl");
    assert_eq!(id["socket_family"], "ipv4");
    let curl = std::fs::canonicalize(which("curl")).unwrap();
    assert_eq!(id["exe"], curl.display().to_string());
    assert!(
        id["cgroup"].as_str().unwrap().ends_with("/redirect-v4"),
        "{id}"
    );
    // The connection reached the proxy, not the upstream directly: the proxy
    // accepted it from the agent's socket.
    assert!(entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn ipv6_and_v4_mapped_connections_are_redirected() {
    require_root();
    let v6_upstream = Upstream::start("::1");
    let v4_upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["redirect-v6"]);

    // curl over IPv6 to ::1.
    let child = daemon
        .exec(
            "redirect-v6",
            &["curl", "-sS", "-m", "10", &v6_upstream.url()],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(v6_upstream.hits(), 1);
    let entry = entry_for_pid(&daemon, pid);
    assert_eq!(entry["original_dst"], v6_upstream.addr.to_string());
    assert_eq!(entry["identity"]["socket_family"], "ipv6");
    assert_eq!(entry["identity"]["agent"], "redirect-v6");

    // An AF_INET6 socket dialling ::ffff:127.0.0.2 fires connect6, not
    // connect4; python makes the socket family explicit.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
         s.settimeout(10)\n\
         s.connect(('::ffff:127.0.0.2', {port}))\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nhost: 127.0.0.2\\r\\nconnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while True:\n\
         \x20   chunk = s.recv(4096)\n\
         \x20   if not chunk: break\n\
         \x20   data += chunk\n\
         print(data.decode().split('\\r\\n\\r\\n', 1)[1], end='')\n",
        port = v4_upstream.addr.port()
    );
    let child = daemon
        .exec("redirect-v6", &["python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), crate::common::BODY);
    assert_eq!(v4_upstream.hits(), 1);
    let entry = entry_for_pid(&daemon, pid);
    assert_eq!(entry["original_dst"], v4_upstream.addr.to_string());
    assert_eq!(entry["identity"]["socket_family"], "ipv6");
    assert_eq!(entry["identity"]["comm"], "python3");
}

#[test]
fn processes_outside_agent_cgroups_are_not_redirected() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["outside"]);

    let out = Command::new("curl")
        .args(["-sS", "-m", "10", &upstream.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(upstream.hits(), 1);
    assert!(
        daemon.connections().is_empty(),
        "the proxy saw a connection from outside the agent cgroup"
    );

    // The same request from inside the cgroup does go through the proxy, so
    // the empty log above is not an artefact of a broken log.
    let out = daemon
        .exec("outside", &["curl", "-sS", "-m", "10", &upstream.url()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(upstream.hits(), 2);
    assert_eq!(daemon.connections().len(), 1);
}

#[test]
fn forked_setsid_child_is_still_redirected() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["forker"]);
    // The parent forks; the child starts a new session (leaving the
    // parent's process group and terminal) and only then connects. The
    // socket still belongs to the cgroup the child inherited.
    let script = format!(
        "import os, socket, sys\n\
         r, w = os.pipe()\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   os.setsid()\n\
         \x20   s = socket.create_connection(('127.0.0.2', {port}), timeout=10)\n\
         \x20   s.sendall(b'GET / HTTP/1.1\\r\\nhost: 127.0.0.2\\r\\nconnection: close\\r\\n\\r\\n')\n\
         \x20   data = b''\n\
         \x20   while True:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         \x20   ok = data.endswith(b'hello from upstream')\n\
         \x20   os.write(w, (str(os.getpid()) + (' ok' if ok else ' bad')).encode())\n\
         \x20   os._exit(0)\n\
         os.close(w)\n\
         os.waitpid(pid, 0)\n\
         print(os.read(r, 100).decode(), os.getpid())\n",
        port = upstream.addr.port()
    );
    let out = daemon
        .exec("forker", &["python3", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "unexpected output {stdout:?}");
    assert_eq!(fields[1], "ok", "child's request failed: {stdout:?}");
    let child_pid: u32 = fields[0].parse().unwrap();
    let parent_pid: u32 = fields[2].parse().unwrap();
    assert_ne!(child_pid, parent_pid);

    let entry = entry_for_pid(&daemon, child_pid);
    assert_eq!(entry["identity"]["agent"], "forker");
    assert_eq!(entry["original_dst"], upstream.addr.to_string());
    assert_eq!(upstream.hits(), 1);
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| panic!("{program} not found in PATH"))
}
