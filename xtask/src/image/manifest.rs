//! What the image check takes from `deploy/kubernetes/daemonset.yaml`: the
//! image it names, its containers' commands, capabilities and environment,
//! so that the check runs the image the way the manifest says, not the way
//! a copy of it in this file would.
//!
//! The YAML is read with PyYAML (installed with kubernetes-validate by
//! setup) and handed over as JSON.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

pub const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";

/// The DaemonSet's pod template spec.
pub struct PodSpec(Value);

/// One container of it.
pub struct Container<'a>(&'a Value);

impl PodSpec {
    pub fn load(repo: &Path) -> Result<Self> {
        let path = repo.join(DAEMONSET);
        let json = cmd::output(
            cmd::new("python3")
                .args([
                    "-c",
                    "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                ])
                .arg(&path),
        )?;
        let daemonset: Value =
            serde_json::from_str(&json).with_context(|| format!("{} as JSON", path.display()))?;
        let spec = daemonset["spec"]["template"]["spec"].clone();
        if !spec.is_object() {
            bail!("{DAEMONSET}: no spec.template.spec");
        }
        Ok(Self(spec))
    }

    pub fn container(&self, name: &str) -> Result<Container<'_>> {
        self.find("containers", name)
    }

    pub fn init_container(&self, name: &str) -> Result<Container<'_>> {
        self.find("initContainers", name)
    }

    fn find(&self, list: &str, name: &str) -> Result<Container<'_>> {
        self.0[list]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .map(Container)
            .with_context(|| format!("{DAEMONSET}: no {list} entry named {name}"))
    }

    pub fn host_pid(&self) -> bool {
        self.0["hostPID"] == true
    }
}

impl Container<'_> {
    pub fn image(&self) -> &str {
        self.0["image"].as_str().unwrap_or_default()
    }

    pub fn command(&self) -> Vec<String> {
        strings(&self.0["command"])
    }

    /// The capabilities it adds (Kubernetes spells them without `CAP_`).
    pub fn added_capabilities(&self) -> Vec<String> {
        strings(&self.0["securityContext"]["capabilities"]["add"])
    }

    pub fn drops_all_capabilities(&self) -> bool {
        strings(&self.0["securityContext"]["capabilities"]["drop"]).contains(&"ALL".to_owned())
    }

    /// Its plain `value:` variables, `$(NAME)` references left as they are.
    pub fn env(&self) -> Vec<(String, String)> {
        self.0["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The argv of an `exec` probe (`startupProbe`, `readinessProbe`).
    pub fn exec_probe(&self, probe: &str) -> Vec<String> {
        strings(&self.0[probe]["exec"]["command"])
    }

    /// The port of an `httpGet` probe (`livenessProbe`).
    pub fn http_probe_port(&self, probe: &str) -> Option<u16> {
        u16::try_from(self.0[probe]["httpGet"]["port"].as_u64()?).ok()
    }

    /// Where it mounts the volume `name`.
    pub fn mount_path(&self, volume: &str) -> Option<String> {
        self.0["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == volume)?["mountPath"]
            .as_str()
            .map(str::to_owned)
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}
