//! `cargo xtask manifests`: `deploy/kubernetes` against the Kubernetes
//! schema, and its policies and config against agentguard itself.
//!
//! No cluster runs on these machines, so the manifests are checked
//! offline: `tests/validators/kubernetes_manifests.py` validates every
//! object the kustomization makes with `kubernetes-validate` (PyPI; the
//! OpenAPI schemas of each Kubernetes release ship in it) in strict mode,
//! for each release in [`KUBERNETES_VERSIONS`], plus the references the
//! schema cannot see. The ConfigMaps' policies pass `agentguard policy
//! check` and the config file `agentguard config show` (which fails on a
//! configuration that would not start).

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::cmd;

pub const FOLDER: &str = "deploy/kubernetes";
pub const VALIDATOR: &str = "tests/validators/kubernetes_manifests.py";
/// The releases the manifests must be valid for: the oldest this
/// deployment supports (the pod-level `appArmorProfile` is GA since 1.30)
/// to the newest kubernetes-validate knows.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"];

pub fn run(root: &Path) -> Result<()> {
    validate(root, &root.join(FOLDER)).map_err(anyhow::Error::msg)?;
    let folder = root.join(FOLDER);
    cmd::run(
        cmd::cargo(root)
            .args(["run", "--quiet", "--locked", "-p", "agentguard", "--"])
            .args(["policy", "check"])
            .arg(folder.join("policies")),
    )
    .context("the DaemonSet's policies")?;
    cmd::run(
        cmd::cargo(root)
            .args(["run", "--quiet", "--locked", "-p", "agentguard", "--"])
            .arg("--config")
            .arg(folder.join("agentguard.toml"))
            .args(["config", "show"]),
    )
    .context("the DaemonSet's config file")?;
    println!(
        "manifests: {FOLDER} valid for Kubernetes {}",
        KUBERNETES_VERSIONS.join(", ")
    );
    Ok(())
}

/// Runs the validator on `folder`; `Err` holds its report.
fn validate(root: &Path, folder: &Path) -> Result<String, String> {
    let out = cmd::new("python3")
        .arg(root.join(VALIDATOR))
        .arg(folder)
        .args(KUBERNETES_VERSIONS)
        .output()
        .map_err(|e| format!("failed to start python3: {e}"))?;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        println!("{report}");
        Ok(report)
    } else {
        Err(format!("{FOLDER} does not validate:\n{report}"))
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;
    use crate::paths;

    /// A copy of deploy/kubernetes to break, removed on drop.
    struct Copy(PathBuf);

    impl Copy {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "agentguard-manifests-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            let status = std::process::Command::new("cp")
                .arg("-r")
                .arg(paths::workspace_root().join(FOLDER))
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
            Self(dir)
        }

        fn edit(&self, file: &str, from: &str, to: &str) {
            let path = self.0.join(file);
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.contains(from), "{file} has no {from:?}");
            fs::write(&path, text.replacen(from, to, 1)).unwrap();
        }
    }

    impl Drop for Copy {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn refused(copy: &Copy, why: &str) {
        match validate(&paths::workspace_root(), &copy.0) {
            Ok(report) => panic!("a broken set passed ({why}):\n{report}"),
            Err(report) => assert!(report.contains(why), "expected {why:?} in:\n{report}"),
        }
    }

    #[test]
    fn the_manifests_as_shipped_validate() {
        let copy = Copy::new("as-shipped");
        let report = validate(&paths::workspace_root(), &copy.0).unwrap();
        // Every object, for every release.
        assert!(
            report.contains(&format!(
                "6 objects, {} Kubernetes versions, 0 errors",
                KUBERNETES_VERSIONS.len()
            )),
            "{report}"
        );
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let copy = Copy::new("unknown-field");
        copy.edit("daemonset.yaml", "hostPID: true", "hostPid: true");
        refused(&copy, "'hostPid' was unexpected");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let copy = Copy::new("wrong-type");
        copy.edit(
            "daemonset.yaml",
            "allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            # On SELinux",
            "allowPrivilegeEscalation: \"no\"\n            readOnlyRootFilesystem: true\n            # On SELinux",
        );
        refused(
            &copy,
            "allowPrivilegeEscalation: 'no' is not of type 'boolean'",
        );
    }

    #[test]
    fn a_missing_required_field_is_refused() {
        let copy = Copy::new("missing-selector");
        copy.edit(
            "daemonset.yaml",
            "  selector:\n    matchLabels:\n      app.kubernetes.io/name: agentguard\n",
            "",
        );
        refused(&copy, "'selector' is a required property");
    }

    #[test]
    fn a_volume_of_an_undefined_configmap_is_refused() {
        let copy = Copy::new("undefined-configmap");
        copy.edit(
            "daemonset.yaml",
            "name: agentguard-policies",
            "name: agentguard-policy",
        );
        refused(&copy, "uses ConfigMap agentguard-policy, defined nowhere");
    }

    #[test]
    fn a_manifest_left_out_of_the_kustomization_is_refused() {
        let copy = Copy::new("left-out");
        copy.edit("kustomization.yaml", "  - serviceaccount.yaml\n", "");
        refused(
            &copy,
            "serviceaccount.yaml is not in kustomization.yaml's resources",
        );
    }

    #[test]
    fn a_missing_generator_file_is_refused() {
        let copy = Copy::new("missing-file");
        fs::remove_file(copy.0.join("policies/support-bot.toml")).unwrap();
        refused(&copy, "no file policies/support-bot.toml");
    }
}
