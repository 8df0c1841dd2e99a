//! Docker's name, image and labels for a container, from dockerd's own
//! record of it: `config.v2.json` in the container's folder under Docker's
//! data root (`<root>/containers/<id>/`). dockerd writes that file whole
//! (a temporary file renamed over it, root's, mode 0600) when it creates
//! the container, before it starts it, so it is there and complete when
//! the hook runs.
//!
//! The data root is the one the operator gave `agentguard oci-runtime`
//! (`--docker-root`), which passes it to the hook: the report says the
//! container is Docker's and where its record is. Nothing is guessed from
//! the container's own configuration (its mounts, which a user's `-v`
//! may replace), and a record that is missing, not root's, writable by
//! others or not a plain file fails the container's start.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

use super::{ContainersError, Created, read_record};

/// dockerd's records are a few KiB; a larger file is not one.
const MAX_RECORD: u64 = 4 << 20;

/// What selection reads of `config.v2.json`.
#[derive(Debug, Deserialize)]
struct Record {
    #[serde(rename = "ID")]
    id: String,
    /// `/name`, as the API reports it.
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: RecordConfig,
}

#[derive(Debug, Default, Deserialize)]
struct RecordConfig {
    #[serde(rename = "Image", default)]
    image: String,
    /// The container's labels: `docker run --label`, and the image's own
    /// (`LABEL` in its Dockerfile), which dockerd copies in.
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// What Docker says of the container.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DockerFacts {
    pub name: Option<String>,
    pub image: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// `<root>/containers/<id>/config.v2.json`. Docker's ids are 64 hex
/// digits; anything else (a path) is refused.
pub(super) fn record_path(created: &Created, root: &Path) -> Result<PathBuf, ContainersError> {
    let clean = root.is_absolute()
        && root
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let id = &created.id;
    if !clean || id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainersError::Record {
            id: id.clone(),
            path: root.to_owned(),
            why: "a Docker container's id is 64 hex digits, under an absolute data root".into(),
        });
    }
    Ok(root.join("containers").join(id).join("config.v2.json"))
}

/// Reads the record at `path` (from [`record_path`]), as
/// [`read_record`] allows.
pub(super) fn facts(created: &Created, path: &Path) -> Result<DockerFacts, ContainersError> {
    let text = read_record(&created.id, path, MAX_RECORD, "dockerd")?.ok_or_else(|| {
        ContainersError::Read {
            id: created.id.clone(),
            path: path.to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        }
    })?;
    let record: Record =
        serde_json::from_slice(&text).map_err(|source| ContainersError::Parse {
            id: created.id.clone(),
            path: path.to_owned(),
            source,
        })?;
    if record.id != created.id {
        return Err(ContainersError::Unknown {
            id: created.id.clone(),
            path: path.to_owned(),
        });
    }
    let name = record.name.trim_start_matches('/');
    Ok(DockerFacts {
        name: (!name.is_empty()).then(|| name.to_owned()),
        image: (!record.config.image.is_empty()).then_some(record.config.image),
        labels: record.config.labels.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
