//! Docker's name, image and labels for a container, from dockerd's own
//! record of it: `config.v2.json` in the container's folder under Docker's
//! data root (`<root>/containers/<id>/`). dockerd writes that file whole
//! (a temporary file renamed over it) when it creates the container,
//! before it starts it, so it is there and complete when the hook runs.
//!
//! The bundle (containerd's task folder, named after the container) does
//! not say where the data root is; the container's `config.json` does:
//! dockerd bind-mounts `/etc/hostname`, `/etc/hosts` and
//! `/etc/resolv.conf` from files in a container's folder under the data
//! root (the container's own, or the one whose network it joined with
//! `--network container:…`). Any of them gives the root; the record read
//! is always the one named after this container, and its `ID` must be
//! this container's.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

use super::{ContainersError, Created, Mount};

/// The files dockerd mounts from a container's folder.
const MOUNTED_FROM_RECORD: [(&str, &str); 3] = [
    ("/etc/hostname", "hostname"),
    ("/etc/hosts", "hosts"),
    ("/etc/resolv.conf", "resolv.conf"),
];

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

/// `<root>/containers/<id>/config.v2.json` if the bundle is laid out as
/// Docker lays it out (named after the container) and a mount comes from
/// a container folder under a data root; `None`: not a Docker container.
pub(super) fn record_path(created: &Created, mounts: &[Mount]) -> Option<PathBuf> {
    let clean = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    if created.id.is_empty()
        || !clean(&created.bundle)
        || created.bundle.file_name().and_then(|n| n.to_str()) != Some(created.id.as_str())
    {
        return None;
    }
    mounts.iter().find_map(|m| {
        let (_, file) = MOUNTED_FROM_RECORD
            .iter()
            .find(|(dest, _)| m.destination == *dest)?;
        let source = Path::new(&m.source);
        if !clean(source) || source.file_name()? != *file {
            return None;
        }
        // <root>/containers/<some id>/<file> → <root>/containers
        let containers = source.parent()?.parent()?;
        (containers.file_name()? == "containers")
            .then(|| containers.join(&created.id).join("config.v2.json"))
    })
}

/// Reads the record at `path` (from [`record_path`]).
pub(super) fn facts(created: &Created, path: &Path) -> Result<DockerFacts, ContainersError> {
    let text = std::fs::read(path).map_err(|source| ContainersError::Read {
        id: created.id.clone(),
        path: path.to_owned(),
        source,
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
mod tests {
    use super::*;

    fn mount(destination: &str, source: &str) -> Mount {
        Mount {
            destination: destination.into(),
            source: source.into(),
        }
    }

    #[test]
    fn the_record_is_found_from_the_mounts_and_must_be_the_containers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("docker");
        let folder = root.join("containers/abc");
        std::fs::create_dir_all(&folder).unwrap();
        let bundle = dir.path().join("moby/abc");
        let created = Created {
            id: "abc".into(),
            pid: 1,
            bundle: bundle.clone(),
        };
        let hostname = folder.join("hostname");
        let mounts = [
            mount("/proc", "proc"),
            mount("/etc/hostname", hostname.to_str().unwrap()),
        ];
        let path = record_path(&created, &mounts).unwrap();
        assert_eq!(path, folder.join("config.v2.json"));
        // A record as dockerd 20.10 wrote it here (shortened).
        std::fs::write(
            &path,
            r#"{"StreamConfig":{},"State":{"Running":false},"ID":"abc","Created":"2026-12-04T09:10:01Z",
                "Path":"/bin/sleep","Args":["30"],"Config":{"Hostname":"abc","Image":"agtest/img:1",
                "Labels":{"team":"red"}},"Image":"sha256:50c3","Name":"/t2","Driver":"overlay2"}"#,
        )
        .unwrap();
        assert_eq!(
            facts(&created, &path).unwrap(),
            DockerFacts {
                name: Some("t2".into()),
                image: Some("agtest/img:1".into()),
                labels: BTreeMap::from([("team".into(), "red".into())]),
            }
        );
        // Another container's record under the same name is refused.
        std::fs::write(&path, r#"{"ID":"def","Name":"/x","Config":{}}"#).unwrap();
        let e = facts(&created, &path).unwrap_err().to_string();
        assert!(e.contains("no record"), "{e}");

        // Joined another container's network: its hosts file still gives
        // the root, and the record read is this container's.
        let other = [mount(
            "/etc/hosts",
            root.join("containers/def/hosts").to_str().unwrap(),
        )];
        assert_eq!(record_path(&created, &other), Some(path.clone()));

        // Not Docker's layout: no record.
        for (bundle, mounts) in [
            (dir.path().join("moby/def"), mounts.to_vec()),
            (dir.path().join("moby/../abc"), mounts.to_vec()),
            (
                bundle.clone(),
                vec![mount("/etc/hostname", "/tmp/hostname")],
            ),
            (
                bundle.clone(),
                vec![mount(
                    "/etc/hostname",
                    root.join("x/abc/hostname").to_str().unwrap(),
                )],
            ),
            (
                bundle.clone(),
                vec![mount(
                    "/etc/motd",
                    root.join("containers/abc/hostname").to_str().unwrap(),
                )],
            ),
        ] {
            let c = Created {
                bundle: bundle.clone(),
                ..created.clone()
            };
            assert_eq!(record_path(&c, &mounts), None, "{bundle:?} {mounts:?}");
        }
    }
}
