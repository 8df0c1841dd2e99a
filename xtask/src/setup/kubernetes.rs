//! What the Kubernetes deployment's checks need: podman, which builds and
//! runs the container image (`cargo xtask image`), and kubernetes-validate,
//! which validates `deploy/kubernetes` against the Kubernetes schema
//! (`cargo xtask manifests`).

use anyhow::Result;

use super::apt::Apt;
use crate::cmd;

/// podman and what it needs to build and run an image, without
/// recommendations (a user D-Bus session, rootless helpers, buildah's
/// command line: the build and the checks run as root with podman alone).
/// Its dependencies bring conmon and the containers' config; runc is the
/// runtime the check uses (Debian's default, crun, refuses these VMs'
/// hybrid cgroup layout: see image/check.rs).
const PACKAGES: &[&str] = &["podman", "runc"];

/// Pinned: the Kubernetes releases whose schemas it ships are part of
/// what the check checks (1.37.0 knows releases up to 1.37).
const KUBERNETES_VALIDATE: &str = "1.37.0";

pub fn ensure(apt: &mut Apt) -> Result<()> {
    apt.ensure_without_recommends(PACKAGES)?;
    let check = format!(
        "import kubernetes_validate, yaml, importlib.metadata as m; \
         assert m.version('kubernetes-validate') == '{KUBERNETES_VALIDATE}'"
    );
    if cmd::probe(cmd::new("python3").args(["-c", &check])).is_some() {
        println!(
            "setup: python package kubernetes-validate=={KUBERNETES_VALIDATE} already present, skipping"
        );
    } else {
        println!("setup: installing python package kubernetes-validate=={KUBERNETES_VALIDATE}");
        cmd::run(cmd::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ]))?;
    }
    Ok(())
}
