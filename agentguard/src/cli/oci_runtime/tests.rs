//! Tests of the runc wrapper's reading of runc's command line and its
//! edit of the bundle.

use std::path::Path;

use serde_json::json;

use super::*;

fn args(line: &str) -> Vec<OsString> {
    line.split_whitespace().map(OsString::from).collect()
}

fn bundle_of(line: &str) -> Option<PathBuf> {
    plan(&args(line), Path::new("/run/here")).unwrap().bundle
}

/// As containerd's runc shim calls runc for Docker (go-runc), and as
/// people type it.
#[test]
fn the_bundle_is_found_where_runc_creates_a_container() {
    assert_eq!(
        bundle_of(
            "--root /var/run/docker/runtime-runc/moby --log /run/x/log.json --log-format json \
             create --bundle /run/containerd/moby/abc --pid-file /run/x/init.pid abc"
        ),
        Some("/run/containerd/moby/abc".into())
    );
    assert_eq!(
        bundle_of("--systemd-cgroup --root=/r create -b /b --console-socket /s abc"),
        Some("/b".into())
    );
    assert_eq!(
        bundle_of("run --bundle=rel abc"),
        Some("/run/here/rel".into())
    );
    // urfave/cli's other spellings, and restore (docker start --checkpoint),
    // which runs the createRuntime hooks too.
    assert_eq!(bundle_of("create --b /x abc"), Some("/x".into()));
    assert_eq!(bundle_of("create -bundle=/y abc"), Some("/y".into()));
    assert_eq!(
        bundle_of("restore --image-path /i --bundle /z abc"),
        Some("/z".into())
    );
    // runc's default: the folder it runs in.
    assert_eq!(bundle_of("create abc"), Some("/run/here".into()));
    // Every other command goes to runc as it is, and options alone too
    // (`docker info` asks `--version`).
    for line in [
        "--root /r start abc",
        "--root /r delete --force abc",
        "--root /r state abc",
        "--root /r kill abc 9",
        "features",
        "--version",
        "",
    ] {
        assert_eq!(bundle_of(line), None, "{line}");
    }
}

/// What the wrapper cannot read for certain is refused, never passed on:
/// an option it does not know that takes a value would make it read the
/// value as the command, and a `create` after it would go unhooked.
#[test]
fn a_command_line_it_cannot_read_for_certain_is_refused() {
    let cwd = Path::new("/");
    for line in [
        "--cgroup-manager systemd create --bundle /b abc",
        "--root create frobnicate abc",
        "frobnicate abc",
    ] {
        let e = plan(&args(line), cwd).unwrap_err().to_string();
        assert!(e.contains("not one agentguard knows"), "{line}: {e}");
    }
    use std::os::unix::ffi::OsStringExt as _;
    let mut odd = args("create --bundle");
    odd.push(OsString::from_vec(b"/b\xff".to_vec()));
    assert!(matches!(plan(&odd, cwd), Err(OciRuntimeError::NotUtf8)));
}

#[test]
fn the_hook_is_told_the_container_is_dockers_and_where_its_record_is() {
    let hook = Hook {
        admin_socket: Path::new("/run/agentguard/admin.sock"),
        wait: "5s",
        source: &RuntimeSource::Docker("/var/lib/docker".into()),
        exempt_namespaces: &[],
    };
    let entry = hook.entry(Path::new("/usr/bin/agentguard")).unwrap();
    assert_eq!(
        entry,
        json!({
            "path": "/usr/bin/agentguard",
            "args": ["agentguard", "--admin-socket", "/run/agentguard/admin.sock",
                     "oci-hook", "--wait", "5s", "--docker-root", "/var/lib/docker"],
        })
    );
    let relative = Hook {
        source: &RuntimeSource::Docker("lib/docker".into()),
        ..hook
    };
    assert!(relative.entry(Path::new("/usr/bin/agentguard")).is_err());
}

#[test]
fn the_hook_is_told_the_container_is_a_pods_and_where_the_cri_answers() {
    let record = RuntimeSource::Cri("/run/containerd/containerd.sock".into());
    let exempt = ["agentguard-system".to_owned()];
    let hook = Hook {
        admin_socket: Path::new("/run/agentguard/admin.sock"),
        wait: "0s",
        source: &record,
        exempt_namespaces: &exempt,
    };
    let entry = hook.entry(Path::new("/usr/bin/agentguard")).unwrap();
    assert_eq!(
        entry["args"],
        json!([
            "agentguard",
            "--admin-socket",
            "/run/agentguard/admin.sock",
            "oci-hook",
            "--wait",
            "0s",
            "--cri-socket",
            "/run/containerd/containerd.sock",
            "--exempt-namespace",
            "agentguard-system"
        ])
    );
    let relative = RuntimeSource::Cri("containerd.sock".into());
    let e = Hook {
        source: &relative,
        ..hook
    }
    .entry(Path::new("/usr/bin/agentguard"))
    .unwrap_err()
    .to_string();
    assert!(e.contains("--cri-socket containerd.sock must be"), "{e}");
}

#[test]
fn the_hooks_are_added_once_beside_the_runtimes_own() {
    let hook = json!({"path": "/usr/bin/agentguard", "args": ["agentguard", "oci-hook"]});
    let docker = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["/bin/sleep", "30"]},
        "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]},
    });
    let config = with_hooks(docker, &hook).unwrap();
    assert_eq!(config["hooks"]["createRuntime"], json!([hook]));
    assert_eq!(config["hooks"]["poststop"], json!([hook]));
    assert_eq!(
        config["hooks"]["prestart"][0]["args"][0],
        "libnetwork-setkey"
    );
    assert_eq!(config["process"]["args"][1], "30");
    // Again (runc create retried): nothing doubles.
    let again = with_hooks(config.clone(), &hook).unwrap();
    assert_eq!(again, config);
    // Without hooks at all, and with a runtime's own createRuntime hook.
    let config = with_hooks(json!({}), &hook).unwrap();
    assert_eq!(config["hooks"]["createRuntime"], json!([hook]));
    let other = json!({"path": "/bin/true"});
    let config = with_hooks(json!({"hooks": {"createRuntime": [other]}}), &hook).unwrap();
    assert_eq!(config["hooks"]["createRuntime"], json!([other, hook]));
    // What is not an OCI configuration is refused, not rewritten.
    for bad in [
        json!([]),
        json!({"hooks": []}),
        json!({"hooks": {"poststop": {}}}),
    ] {
        assert!(with_hooks(bad.clone(), &hook).is_err(), "{bad}");
    }
}

#[test]
fn the_bundles_file_keeps_its_mode_and_gets_the_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hook = json!({"path": "/usr/bin/agentguard"});
    add_hooks(&path, &hook).unwrap();
    let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(config["root"]["path"], "rootfs");
    assert_eq!(config["hooks"]["createRuntime"], json!([hook]));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::write(&path, "{").unwrap();
    assert!(
        add_hooks(&path, &hook)
            .unwrap_err()
            .to_string()
            .contains("not a valid")
    );
    assert!(add_hooks(&dir.path().join("none.json"), &hook).is_err());
}
