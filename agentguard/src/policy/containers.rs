//! `[agent.containers]`: the containers an agent is, chosen by what their
//! runtime says about them (name, image, OCI annotations) rather than by
//! a cgroup path. The daemon asks [`ContainerSelector::matches`] when a
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
}

impl ContainerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Podman => "podman",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "podman" => Ok(Self::Podman),
            "docker" | "containerd" | "cri-o" | "crio" | "kubernetes" => Err(format!(
                "runtime {raw:?} is not supported yet; only \"podman\" is (see README, Containers)"
            )),
            other => Err(format!("runtime {other:?} must be \"podman\"")),
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
}

/// One agent's `[agent.containers]`, parsed.
#[derive(Debug, Clone)]
pub struct ContainerSelector {
    pub runtime: ContainerRuntime,
    pub name: Option<glob::Pattern>,
    pub image: Option<glob::Pattern>,
    /// Each must be present with exactly this value.
    pub annotations: BTreeMap<String, String>,
}

impl ContainerSelector {
    /// Whether every criterion holds. A fact the runtime did not give
    /// (no name) fails the criterion that reads it.
    pub fn matches(&self, c: &ContainerFacts) -> bool {
        let glob = |p: &Option<glob::Pattern>, v: &Option<String>| match p {
            None => true,
            Some(p) => v.as_deref().is_some_and(|v| p.matches(v)),
        };
        c.runtime == Some(self.runtime)
            && glob(&self.name, &c.name)
            && glob(&self.image, &c.image)
            && self
                .annotations
                .iter()
                .all(|(k, v)| c.annotations.get(k) == Some(v))
    }
}

/// `[agent.containers]` as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{ "required": ["name"] }, { "required": ["image"] }, { "required": ["annotations"] }]))]
pub(super) struct ContainersSection {
    /// The container runtime: `"podman"` (the one built so far).
    #[schemars(extend("enum" = ["podman"]))]
    pub runtime: Spanned<String>,
    /// A shell glob on the container's name (`*`, `?`, `[...]`).
    pub name: Option<Spanned<String>>,
    /// A shell glob on the image name the container was created from, as
    /// the runtime records it (`localhost/agent:latest`).
    pub image: Option<Spanned<String>>,
    /// OCI annotations the container must carry, with these values
    /// (`podman run --annotation KEY=VALUE`).
    pub annotations: Option<BTreeMap<String, String>>,
    /// Not accepted: refused with the reason (see [`parse`]). Left out of
    /// the schema, which lists what is accepted.
    #[schemars(skip)]
    pub labels: Option<Spanned<toml::Value>>,
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
    if let Some(labels) = &section.labels {
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
    if name.is_none() && image.is_none() && annotations.is_empty() {
        return Err((
            table_offset,
            "agent.containers: say which containers: name, image or annotations (a runtime alone would select every container it starts)".into(),
        ));
    }
    Ok(ContainerSelector {
        runtime,
        name,
        image,
        annotations,
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
}
