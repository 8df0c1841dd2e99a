//! Containers selected by policy (`[agent.containers]`): what a runtime
//! says about a container as it creates it, and the containers the
//! daemon has attached to an agent.
//!
//! The OCI hook (`agentguard oci-hook`, stage createRuntime) reports the
//! container (id, first pid, bundle) before its program runs. The daemon
//! reads the facts selection needs from files, never from the runtime's
//! API: Podman holds the container's lock while its hooks run, and its
//! API (inspect and list alike) waits on that lock, so asking it from the
//! hook would stall the start until the hook's timeout (measured here
//! with Podman 4.3: both calls timed out after 8 s inside the hook).
//!
//! - the OCI bundle's `config.json`: the annotations (the runtime spec's
//!   own source of the state's annotations);
//! - [`podman`]: the name and image from containers/storage's record of
//!   the container, beside the bundle;
//! - [`docker`]: the name, image and labels from dockerd's record of the
//!   container, under the data root the report names (Docker's hook comes
//!   from `agentguard oci-runtime`, which says so).
//! - [`cri`]: a Kubernetes pod's namespace, name and labels from the
//!   node's CRI runtime, whose socket the report names (the hook comes
//!   from `agentguard oci-runtime --cri-socket`). The one exception to
//!   "files, not APIs": pod labels are nowhere else on the node, and
//!   containerd answers while it starts a pod's container.

pub mod cri;
mod docker;
mod podman;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    cgroup::Cgroup,
    netns::NetnsId,
    policy::{ContainerFacts, ContainerRuntime},
};

#[derive(Debug, Error)]
pub enum ContainersError {
    #[error("container {id}: failed to read {path}: {source}")]
    Read {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: {path} is not valid: {source}")]
    Parse {
        id: String,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "container {id}: bundle {bundle} is not where Podman keeps this container's (…/overlay-containers/{id}/userdata)"
    )]
    Bundle { id: String, bundle: PathBuf },
    #[error("container {id}: the runtime's records ({path}) have no record of it")]
    Unknown { id: String, path: PathBuf },
    #[error("container {id}: {path} {why}")]
    Record {
        id: String,
        path: PathBuf,
        why: String,
    },
    #[error("container {id}: {source}")]
    Cri {
        id: String,
        source: Box<cri::CriError>,
    },
    #[error("failed to save the attached containers: {0}")]
    Save(#[from] crate::atomic_file::WriteError),
}

/// A bundle's config.json is tens of KiB; a larger one is not one.
const MAX_BUNDLE_CONFIG: u64 = 4 << 20;

/// Podman's mark in every container's annotations.
const PODMAN_MANAGER: (&str, &str) = ("io.container.manager", "libpod");

/// Where the daemon finds what the runtime says of a container, when its
/// hook was added by `agentguard oci-runtime` (Podman's hooks need none:
/// its record lies beside the bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeSource {
    /// Docker's: dockerd's data root, which holds its record.
    Docker(PathBuf),
    /// A Kubernetes pod's: the socket of the CRI (containerd's) that
    /// created it.
    Cri(PathBuf),
}

/// What the hook reports: the OCI state's id, first pid and bundle, and
/// where the runtime's record of the container is.
#[derive(Debug, Clone, Default)]
pub struct Created {
    pub id: String,
    pub pid: u32,
    pub bundle: PathBuf,
    pub source: Option<RuntimeSource>,
}

/// A container as events and `status` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub runtime: String,
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
}

/// The daemon's answer to a created container (`POST /v1/containers/created`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreatedView {
    /// The agent it was attached to; `None`: no policy selects it, and it
    /// starts untouched.
    pub agent: Option<String>,
    pub container: Option<ContainerInfo>,
}

/// A container attached to an agent, as `status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerView {
    #[serde(flatten)]
    pub info: ContainerInfo,
    /// Its cgroup, relative to the cgroup v2 mount.
    pub cgroup: String,
    pub cgroup_id: u64,
}

/// What the OCI bundle's config.json holds that selection reads.
#[derive(Debug, Default, Deserialize)]
struct BundleConfig {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads the annotations from the bundle; the runtime from the report
/// (Docker's data root) or the annotations (Podman's mark); and the
/// runtime's name, image and labels for the container. A runtime
/// agentguard does not know gives facts without one, which no selector
/// matches.
pub fn facts(created: &Created) -> Result<ContainerFacts, ContainersError> {
    let path = created.bundle.join("config.json");
    // Written by the runtime, as root; tens of KiB.
    let text =
        read_record(&created.id, &path, MAX_BUNDLE_CONFIG, "the runtime")?.ok_or_else(|| {
            ContainersError::Read {
                id: created.id.clone(),
                path: path.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            }
        })?;
    let config: BundleConfig =
        serde_json::from_slice(&text).map_err(|source| ContainersError::Parse {
            id: created.id.clone(),
            path: path.clone(),
            source,
        })?;
    let podman =
        config.annotations.get(PODMAN_MANAGER.0).map(String::as_str) == Some(PODMAN_MANAGER.1);
    let mut facts = ContainerFacts {
        annotations: config.annotations,
        ..ContainerFacts::default()
    };
    match &created.source {
        Some(RuntimeSource::Docker(root)) => {
            let d = docker::facts(created, &docker::record_path(created, root)?)?;
            facts.runtime = Some(ContainerRuntime::Docker);
            (facts.name, facts.image, facts.labels) = (d.name, d.image, d.labels);
        }
        Some(RuntimeSource::Cri(socket)) => {
            // A pod's sandbox (pause) container keeps no runtime: nothing
            // selects it.
            if let Some(pod) = cri::facts(created, socket, &facts.annotations)? {
                facts.runtime = Some(ContainerRuntime::Kubernetes);
                (facts.name, facts.image, facts.labels) = (pod.name, pod.image, pod.labels);
                (facts.namespace, facts.pod) = (Some(pod.namespace), Some(pod.pod));
            }
        }
        None if podman => {
            let (name, image) = podman::name_and_image(created)?;
            (facts.runtime, facts.name, facts.image) =
                (Some(ContainerRuntime::Podman), name, image);
        }
        None => {}
    }
    Ok(facts)
}

/// A container the daemon attached to an agent: its cgroup has the
/// agent's programs, its network namespace the agent's listeners.
#[derive(Debug, Clone)]
pub struct Attached {
    pub agent: String,
    pub info: Arc<ContainerInfo>,
    pub cgroup: Cgroup,
    pub netns: Option<NetnsId>,
}

/// What is kept of an attached container in the state folder, so that a
/// restarted daemon serves the containers still running (their programs
/// stayed pinned; their listeners went with the old daemon).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub agent: String,
    pub info: ContainerInfo,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
}

/// The file in the state folder.
pub fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("containers.json")
}

/// Writes the attached containers, whole.
pub fn save(path: &Path, attached: &[Attached]) -> Result<(), ContainersError> {
    let saved: Vec<Saved> = attached
        .iter()
        .map(|a| Saved {
            agent: a.agent.clone(),
            info: (*a.info).clone(),
            cgroup: a.cgroup.path.clone(),
            cgroup_id: a.cgroup.id,
        })
        .collect();
    let text = serde_json::to_vec_pretty(&saved).unwrap_or_default();
    crate::atomic_file::replace(path, &text, 0o600)?;
    Ok(())
}

/// The containers a previous daemon attached; none if it saved none. An
/// unreadable file is logged and read as none: those containers stay
/// fail closed (their pinned programs send their connections to
/// listeners that are gone) until they are restarted.
pub fn load(path: &Path) -> Vec<Saved> {
    match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "attached containers unreadable; they stay fail closed until restarted");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Reads a runtime's record of its containers: a plain file of root's
/// (the daemon's user, as for secret files; tests run as whoever runs
/// them) that no one else may write, opened without following a link and
/// without waiting (a FIFO there must not hold every container start), at
/// most `max` bytes. `Ok(None)`: there is no such file.
fn read_record(
    id: &str,
    path: &Path,
    max: u64,
    runtime: &str,
) -> Result<Option<Vec<u8>>, ContainersError> {
    use std::{
        io::Read as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    };
    let read_err = |source| ContainersError::Read {
        id: id.to_owned(),
        path: path.to_owned(),
        source,
    };
    let refuse = |why: String| ContainersError::Record {
        id: id.to_owned(),
        path: path.to_owned(),
        why,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a plain file".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "is not root's alone ({runtime} writes it as root, writable by no one else)"
        )));
    }
    if meta.len() > max {
        return Err(refuse(format!(
            "is larger than any record {runtime} writes ({max} bytes)"
        )));
    }
    let mut text = Vec::with_capacity(meta.len() as usize);
    file.take(max).read_to_end(&mut text).map_err(read_err)?;
    Ok(Some(text))
}

/// The bundle's parent directory must be named after the container (as
/// every runtime here lays it out), so a report cannot make the daemon
/// read another container's record.
fn check_bundle(created: &Created) -> Result<&Path, ContainersError> {
    let bad = || ContainersError::Bundle {
        id: created.id.clone(),
        bundle: created.bundle.clone(),
    };
    let dir = created.bundle.parent().ok_or_else(bad)?;
    let named = dir.file_name().and_then(|n| n.to_str()) == Some(created.id.as_str());
    let clean = created.bundle.is_absolute()
        && created.bundle.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
    if !named || !clean || created.id.is_empty() {
        return Err(bad());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime is Podman's by its mark; a container without it (run
    /// by another runtime) has no runtime, so no selector matches it,
    /// and nothing more is read.
    #[test]
    fn the_runtime_comes_from_the_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("overlay-containers/abc/userdata");
        std::fs::create_dir_all(&bundle).unwrap();
        let created = Created {
            id: "abc".into(),
            pid: 1,
            bundle: bundle.clone(),
            source: None,
        };
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"team":"red"}}"#,
        )
        .unwrap();
        let f = facts(&created).unwrap();
        assert_eq!((f.runtime, f.name), (None, None));
        assert_eq!(f.annotations.get("team").map(String::as_str), Some("red"));
        std::fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.container.manager":"libpod"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("overlay-containers/containers.json"),
            r#"[{"id":"abc","names":["dev-1"],"metadata":"{\"image-name\":\"localhost/a:latest\"}"}]"#,
        )
        .unwrap();
        let f = facts(&created).unwrap();
        assert_eq!(f.runtime, Some(ContainerRuntime::Podman));
        assert_eq!(f.name.as_deref(), Some("dev-1"));
        assert_eq!(f.image.as_deref(), Some("localhost/a:latest"));
        std::fs::write(bundle.join("config.json"), "{").unwrap();
        assert!(
            facts(&created)
                .unwrap_err()
                .to_string()
                .contains("not valid")
        );
    }

    #[test]
    fn a_bundle_must_be_named_after_its_container() {
        let created = |id: &str, bundle: &str| Created {
            id: id.into(),
            pid: 1,
            bundle: bundle.into(),
            source: None,
        };
        assert!(
            check_bundle(&created(
                "abc",
                "/var/lib/c/overlay-containers/abc/userdata"
            ))
            .is_ok()
        );
        for (id, bundle) in [
            ("abc", "/var/lib/c/overlay-containers/def/userdata"),
            ("abc", "relative/abc/userdata"),
            ("abc", "/var/lib/c/def/../abc/userdata"),
            ("", "/userdata"),
        ] {
            assert!(check_bundle(&created(id, bundle)).is_err(), "{id} {bundle}");
        }
    }
}
