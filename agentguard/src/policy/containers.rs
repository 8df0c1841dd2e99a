//! `[agent.containers]`: the containers an agent is, chosen by what their
//! runtime says about them (name, image, OCI annotations, Docker labels,
//! a Kubernetes pod's namespace, name and labels) rather than by a cgroup
//! path. The daemon asks [`ContainerSelector::matches`] when a
//! container's OCI hook reports it, before the container's program runs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::spanned::Spanned;

/// The runtimes whose containers can be selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRuntime {
    /// Podman, through its OCI hooks (`hooks.d`).
    Podman,
    /// Docker, through `agentguard oci-runtime`, the runc wrapper that
    /// dockerd is given as a runtime and that adds the hook.
    Docker,
    /// Kubernetes pods' containers, created through the node's CRI
    /// runtime (containerd's CRI plugin), whose runc is `agentguard
    /// oci-runtime --cri-socket`.
    Kubernetes,
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Podman => "podman",
            Self::Docker => "docker",
            Self::Kubernetes => "kubernetes",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "podman" => Ok(Self::Podman),
            "docker" => Ok(Self::Docker),
            "kubernetes" => Ok(Self::Kubernetes),
            "containerd" | "cri-o" | "crio" => Err(format!(
                "runtime {raw:?} is not supported: containerd's and CRI-O's own containers (ctr, nerdctl) are not; Kubernetes pods through containerd's CRI are: runtime = \"kubernetes\" (see README, Containers)"
            )),
            other => Err(format!(
                "runtime {other:?} must be \"podman\", \"docker\" or \"kubernetes\""
            )),
        }
    }
}

/// What the runtime says about a container, as far as selection reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub runtime: Option<ContainerRuntime>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// Docker's labels (`docker run --label`), or a Kubernetes pod's;
    /// none for Podman.
    pub labels: BTreeMap<String, String>,
    /// A Kubernetes pod's namespace and name; none for other runtimes.
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl ContainerFacts {
    /// The name events and `status` give the container: a pod's as
    /// `NAMESPACE/POD/CONTAINER` (a container's name is unique only in
    /// its pod), others' their own.
    pub fn display_name(&self) -> Option<String> {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => {
                Some(format!("{ns}/{pod}/{}", self.name.as_deref().unwrap_or("")))
            }
            _ => self.name.clone(),
        }
    }
}

/// One agent's `[agent.containers]`, parsed.
#[derive(Debug, Clone)]
pub struct ContainerSelector {
    pub runtime: ContainerRuntime,
    pub name: Option<glob::Pattern>,
    pub image: Option<glob::Pattern>,
    /// Each must be present with exactly this value.
    pub annotations: BTreeMap<String, String>,
    /// The same, of Docker's labels or the pod's.
    pub labels: BTreeMap<String, String>,
    /// Kubernetes only: globs on the pod's namespace and name.
    pub namespace: Option<glob::Pattern>,
    pub pod: Option<glob::Pattern>,
}

impl ContainerSelector {
    /// Whether every criterion holds. A fact the runtime did not give
    /// (no name) fails the criterion that reads it.
    pub fn matches(&self, c: &ContainerFacts) -> bool {
        let glob = |p: &Option<glob::Pattern>, v: &Option<String>| match p {
            None => true,
            Some(p) => v.as_deref().is_some_and(|v| p.matches(v)),
        };
        let all = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
            want.iter().all(|(k, v)| have.get(k) == Some(v))
        };
        c.runtime == Some(self.runtime)
            && glob(&self.name, &c.name)
            && glob(&self.image, &c.image)
            && all(&self.annotations, &c.annotations)
            && all(&self.labels, &c.labels)
            && glob(&self.namespace, &c.namespace)
            && glob(&self.pod, &c.pod)
    }
}

/// `[agent.containers]` as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{ "required": ["name"] }, { "required": ["image"] }, { "required": ["annotations"] }, { "required": ["labels"] }, { "required": ["namespace"] }, { "required": ["pod"] }]))]
pub(super) struct ContainersSection {
    /// The container runtime: `"podman"`, `"docker"`, or `"kubernetes"`
    /// (pods' containers, through containerd's CRI).
    #[schemars(extend("enum" = ["podman", "docker", "kubernetes"]))]
    pub runtime: Spanned<String>,
    /// A shell glob on the container's name (`*`, `?`, `[...]`); for
    /// Kubernetes, the container's name in its pod.
    pub name: Option<Spanned<String>>,
    /// A shell glob on the image name the container was created from, as
    /// the runtime records it (`localhost/agent:latest`).
    pub image: Option<Spanned<String>>,
    /// OCI annotations the container must carry, with these values
    /// (`podman run --annotation KEY=VALUE`).
    pub annotations: Option<BTreeMap<String, String>>,
    /// Labels the container must carry, with these values: Docker's
    /// (`docker run --label KEY=VALUE`) or, for Kubernetes, the pod's
    /// (`metadata.labels`). Not for Podman, which gives labels only
    /// through its API, which it holds while the container starts.
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    /// Kubernetes only: a shell glob on the pod's namespace.
    pub namespace: Option<Spanned<String>>,
    /// Kubernetes only: a shell glob on the pod's name.
    pub pod: Option<Spanned<String>>,
}

/// Parses the section; `Err((offset, message))` points at what is wrong.
pub(super) fn parse(
    section: ContainersSection,
    table_offset: usize,
) -> Result<ContainerSelector, (usize, String)> {
    let runtime = ContainerRuntime::parse(section.runtime.get_ref()).map_err(|m| {
        (
            section.runtime.span().start,
            format!("agent.containers.{m}"),
        )
    })?;
    if let Some(labels) = &section.labels
        && runtime == ContainerRuntime::Podman
    {
        return Err((
            labels.span().start,
            "agent.containers.labels: not supported: Podman gives a container's labels only through its API, which waits on the container's lock while the container is being created (the moment agentguard must decide, before its program runs); select by name, image, or annotations (podman run --annotation)".into(),
        ));
    }
    let glob = |field: &str, raw: &Option<Spanned<String>>| {
        raw.as_ref()
            .map(|p| {
                if p.get_ref().is_empty() {
                    return Err((
                        p.span().start,
                        format!("agent.containers.{field}: must not be empty"),
                    ));
                }
                glob::Pattern::new(p.get_ref()).map_err(|e| {
                    (
                        p.span().start,
                        format!(
                            "agent.containers.{field}: {:?} is not a valid glob: {e}",
                            p.get_ref()
                        ),
                    )
                })
            })
            .transpose()
    };
    for (field, raw) in [("namespace", &section.namespace), ("pod", &section.pod)] {
        if let Some(raw) = raw
            && runtime != ContainerRuntime::Kubernetes
        {
            return Err((
                raw.span().start,
                format!(
                    "agent.containers.{field}: only for runtime = \"kubernetes\" (a pod's {field})"
                ),
            ));
        }
    }
    let name = glob("name", &section.name)?;
    let image = glob("image", &section.image)?;
    let namespace = glob("namespace", &section.namespace)?;
    let pod = glob("pod", &section.pod)?;
    let annotations = section.annotations.unwrap_or_default();
    let labels = section.labels.map(Spanned::into_inner).unwrap_or_default();
    if name.is_none()
        && image.is_none()
        && annotations.is_empty()
        && labels.is_empty()
        && namespace.is_none()
        && pod.is_none()
    {
        return Err((
            table_offset,
            "agent.containers: say which containers: name, image, annotations, labels (Docker, Kubernetes), namespace or pod (Kubernetes) (a runtime alone would select every container it starts)".into(),
        ));
    }
    Ok(ContainerSelector {
        runtime,
        name,
        image,
        annotations,
        labels,
        namespace,
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, image: &str) -> ContainerFacts {
        ContainerFacts {
            runtime: Some(ContainerRuntime::Podman),
            name: Some(name.into()),
            image: Some(image.into()),
            annotations: BTreeMap::from([("team".into(), "red".into())]),
            ..ContainerFacts::default()
        }
    }

    fn selector(
        name: Option<&str>,
        image: Option<&str>,
        ann: &[(&str, &str)],
    ) -> ContainerSelector {
        ContainerSelector {
            runtime: ContainerRuntime::Podman,
            name: name.map(|n| glob::Pattern::new(n).unwrap()),
            image: image.map(|n| glob::Pattern::new(n).unwrap()),
            annotations: ann
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            labels: BTreeMap::new(),
            namespace: None,
            pod: None,
        }
    }

    #[test]
    fn every_criterion_must_hold() {
        let c = facts("dev-agent-1", "localhost/agent:latest");
        assert!(selector(Some("dev-*"), None, &[]).matches(&c));
        assert!(selector(Some("dev-agent-?"), Some("localhost/agent:*"), &[]).matches(&c));
        assert!(selector(None, None, &[("team", "red")]).matches(&c));
        assert!(!selector(Some("prod-*"), None, &[]).matches(&c));
        assert!(!selector(Some("dev-*"), Some("docker.io/*"), &[]).matches(&c));
        assert!(!selector(None, None, &[("team", "blue")]).matches(&c));
        assert!(!selector(None, None, &[("owner", "red")]).matches(&c));
        // A fact the runtime did not give fails the criterion.
        let unnamed = ContainerFacts {
            name: None,
            ..c.clone()
        };
        assert!(!selector(Some("*"), None, &[]).matches(&unnamed));
        let other_runtime = ContainerFacts { runtime: None, ..c };
        assert!(!selector(Some("dev-*"), None, &[]).matches(&other_runtime));
    }

    #[test]
    fn docker_labels_must_all_be_there_and_the_runtime_must_be_dockers() {
        let docker = ContainerFacts {
            runtime: Some(ContainerRuntime::Docker),
            name: Some("coder".into()),
            image: Some("agent:1".into()),
            annotations: BTreeMap::new(),
            labels: BTreeMap::from([("team".into(), "red".into()), ("tier".into(), "dev".into())]),
            ..ContainerFacts::default()
        };
        let by_labels = |labels: &[(&str, &str)]| ContainerSelector {
            runtime: ContainerRuntime::Docker,
            name: None,
            image: None,
            annotations: BTreeMap::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            namespace: None,
            pod: None,
        };
        assert!(by_labels(&[("team", "red")]).matches(&docker));
        assert!(by_labels(&[("team", "red"), ("tier", "dev")]).matches(&docker));
        assert!(!by_labels(&[("team", "red"), ("tier", "prod")]).matches(&docker));
        assert!(!by_labels(&[("owner", "red")]).matches(&docker));
        // Labels are not annotations, and Podman's container is not Docker's.
        let annotated = ContainerFacts {
            labels: BTreeMap::new(),
            annotations: docker.labels.clone(),
            ..docker.clone()
        };
        assert!(!by_labels(&[("team", "red")]).matches(&annotated));
        let podman = ContainerFacts {
            runtime: Some(ContainerRuntime::Podman),
            ..docker
        };
        assert!(!by_labels(&[("team", "red")]).matches(&podman));
    }

    #[test]
    fn a_pod_is_selected_by_namespace_name_and_labels() {
        let pod = ContainerFacts {
            runtime: Some(ContainerRuntime::Kubernetes),
            name: Some("coder".into()),
            image: Some("registry.example.com/coder:1".into()),
            labels: BTreeMap::from([("app".into(), "coder".into())]),
            namespace: Some("agents".into()),
            pod: Some("coder-7d9f".into()),
            ..ContainerFacts::default()
        };
        let selector =
            |namespace: &str, pod: Option<&str>, labels: &[(&str, &str)]| ContainerSelector {
                runtime: ContainerRuntime::Kubernetes,
                name: None,
                image: None,
                annotations: BTreeMap::new(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                namespace: Some(glob::Pattern::new(namespace).unwrap()),
                pod: pod.map(|p| glob::Pattern::new(p).unwrap()),
            };
        assert!(selector("agents", None, &[]).matches(&pod));
        assert!(selector("agent?", Some("coder-*"), &[("app", "coder")]).matches(&pod));
        assert!(!selector("default", None, &[]).matches(&pod));
        assert!(!selector("agents", Some("web-*"), &[]).matches(&pod));
        assert!(!selector("agents", None, &[("app", "web")]).matches(&pod));
        // A pod's namespace is not a fact of another runtime's container.
        let docker = ContainerFacts {
            runtime: Some(ContainerRuntime::Docker),
            ..pod.clone()
        };
        assert!(!selector("agents", None, &[]).matches(&docker));
        // A container whose pod the CRI did not name is not selected.
        let unknown = ContainerFacts {
            namespace: None,
            ..pod
        };
        assert!(!selector("*", None, &[]).matches(&unknown));
    }
}
