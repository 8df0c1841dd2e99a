//! `[agent.containers]`: the containers an agent is, chosen by what their
//! runtime says about them (name, image, OCI annotations, Docker labels)
//! rather than by a cgroup path. The daemon asks [`ContainerSelector::matches`] when a
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
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Podman => "podman",
            Self::Docker => "docker",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "podman" => Ok(Self::Podman),
            "docker" => Ok(Self::Docker),
            "containerd" | "cri-o" | "crio" | "kubernetes" => Err(format!(
                "runtime {raw:?} is not supported yet; \"podman\" and \"docker\" are (see README, Containers)"
            )),
            other => Err(format!(
                "runtime {other:?} must be \"podman\" or \"docker\""
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
    /// Docker's labels (`docker run --label`); none for Podman.
    pub labels: BTreeMap<String, String>,
}

/// One agent's `[agent.containers]`, parsed.
#[derive(Debug, Clone)]
pub struct ContainerSelector {
    pub runtime: ContainerRuntime,
    pub name: Option<glob::Pattern>,
    pub image: Option<glob::Pattern>,
    /// Each must be present with exactly this value.
    pub annotations: BTreeMap<String, String>,
    /// The same, of Docker's labels.
    pub labels: BTreeMap<String, String>,
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
    }
}

/// `[agent.containers]` as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{ "required": ["name"] }, { "required": ["image"] }, { "required": ["annotations"] }, { "required": ["labels"] }]))]
pub(super) struct ContainersSection {
    /// The container runtime: `"podman"` or `"docker"`.
    #[schemars(extend("enum" = ["podman", "docker"]))]
    pub runtime: Spanned<String>,
    /// A shell glob on the container's name (`*`, `?`, `[...]`).
    pub name: Option<Spanned<String>>,
    /// A shell glob on the image name the container was created from, as
    /// the runtime records it (`localhost/agent:latest`).
    pub image: Option<Spanned<String>>,
    /// OCI annotations the container must carry, with these values
    /// (`podman run --annotation KEY=VALUE`).
    pub annotations: Option<BTreeMap<String, String>>,
    /// Docker labels the container must carry, with these values
    /// (`docker run --label KEY=VALUE`). Docker only: Podman gives labels
    /// only through its API, which it holds while the container starts.
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
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
    let name = glob("name", &section.name)?;
    let image = glob("image", &section.image)?;
    let annotations = section.annotations.unwrap_or_default();
    let labels = section.labels.map(Spanned::into_inner).unwrap_or_default();
    if name.is_none() && image.is_none() && annotations.is_empty() && labels.is_empty() {
        return Err((
            table_offset,
            "agent.containers: say which containers: name, image, annotations or (Docker) labels (a runtime alone would select every container it starts)".into(),
        ));
    }
    Ok(ContainerSelector {
        runtime,
        name,
        image,
        annotations,
        labels,
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
            labels: BTreeMap::new(),
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
}
