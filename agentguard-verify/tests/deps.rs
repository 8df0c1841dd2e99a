//! The crate a tool server adopts must not drag in the daemon: no kernel
//! side (aya, eBPF, seccomp, capabilities, nix), no audit store (SQLite),
//! no daemon crates. Checked on the resolved tree, every feature on.

use std::process::Command;

/// Crates of the daemon that a tool server must never build.
const FORBIDDEN: &[&str] = &[
    "agentguard",
    "agentguard-common",
    "agentguard-ebpf",
    "aya",
    "aya-obj",
    "aya-build",
    "aya-log",
    "rusqlite",
    "libsqlite3-sys",
    "seccompiler",
    "caps",
    "nix",
    "prometheus-client",
    "hickory-proto",
];

#[test]
fn the_dependency_tree_has_none_of_the_daemons_kernel_or_store_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "agentguard-verify",
            "--all-features",
            // What a dependent builds: normal and build dependencies, not
            // this crate's own test tools.
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The tree is the real one: the crate and what it uses are there.
    for expected in [
        "agentguard-verify",
        "jsonwebtoken",
        "redis",
        "redb",
        "hyper",
    ] {
        assert!(names.contains(&expected), "{expected} missing:\n{tree}");
    }
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| names.contains(f)).collect();
    assert!(found.is_empty(), "the tree has {found:?}:\n{tree}");
}
