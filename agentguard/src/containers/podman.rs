//! Podman's name and image for a container, from containers/storage's
//! record of it: `containers.json` (and `volatile-containers.json`, where
//! `--rm` containers may be kept) in the `overlay-containers` folder that
//! holds the container's bundle. containers/storage replaces these files
//! whole (write, then rename), so reading one while Podman holds its locks
//! sees a complete version; the container's record is written when it is
//! created, before it is started. The files are read as [`read_record`]
//! allows (root's alone, plain, bounded).

use std::path::Path;

use serde::Deserialize;

use super::{ContainersError, Created, check_bundle, read_record};

/// One container in containers/storage's record.
#[derive(Debug, Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// A JSON document of Podman's own: `{"image-name": ..., "name": ...}`.
    #[serde(default)]
    metadata: String,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(rename = "image-name")]
    image_name: Option<String>,
    name: Option<String>,
}

const RECORDS: [&str; 2] = ["containers.json", "volatile-containers.json"];

/// Every container's record is in the one file, about 1 KiB each: room for
/// tens of thousands.
const MAX_RECORDS: u64 = 64 << 20;

/// The container's name and image name.
pub(super) fn name_and_image(
    created: &Created,
) -> Result<(Option<String>, Option<String>), ContainersError> {
    // …/overlay-containers/<id>/userdata → …/overlay-containers
    let store = check_bundle(created)?
        .parent()
        .ok_or_else(|| ContainersError::Bundle {
            id: created.id.clone(),
            bundle: created.bundle.clone(),
        })?;
    for record in RECORDS {
        if let Some(found) = find(store, record, &created.id)? {
            let meta: Metadata = serde_json::from_str(&found.metadata).unwrap_or_default();
            let name = found.names.into_iter().next().or(meta.name);
            return Ok((name, meta.image_name));
        }
    }
    Err(ContainersError::Unknown {
        id: created.id.clone(),
        path: store.join(RECORDS[0]),
    })
}

fn find(store: &Path, record: &str, id: &str) -> Result<Option<StoredContainer>, ContainersError> {
    let path = store.join(record);
    let Some(text) = read_record(id, &path, MAX_RECORDS, "Podman")? else {
        return Ok(None);
    };
    let all: Vec<StoredContainer> =
        serde_json::from_slice(&text).map_err(|source| ContainersError::Parse {
            id: id.to_owned(),
            path: path.clone(),
            source,
        })?;
    Ok(all.into_iter().find(|c| c.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as Podman 4.3 wrote it on this machine (ids shortened).
    #[test]
    fn reads_the_name_and_image_of_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("overlay-containers");
        std::fs::create_dir_all(store.join("abc/userdata")).unwrap();
        std::fs::write(
            store.join("containers.json"),
            r#"[{"id":"def","names":["other"],"metadata":"{}"},
                {"id":"abc","names":["agc-probe-x"],"image":"b305e1","layer":"6aca2e",
                 "metadata":"{\"image-name\":\"localhost/agentguard-netns-test:latest\",\"image-id\":\"b305e1\",\"name\":\"agc-probe-x\",\"created-at\":1796356490}",
                 "created":"2026-12-04T03:54:50.141237432Z","flags":{"MountLabel":"","ProcessLabel":"","Volatile":true}}]"#,
        )
        .unwrap();
        let created = |id: &str| Created {
            id: id.into(),
            pid: 1,
            bundle: store.join(id).join("userdata"),
            source: None,
        };
        assert_eq!(
            name_and_image(&created("abc")).unwrap(),
            (
                Some("agc-probe-x".into()),
                Some("localhost/agentguard-netns-test:latest".into())
            )
        );
        std::fs::create_dir_all(store.join("zzz/userdata")).unwrap();
        let e = name_and_image(&created("zzz")).unwrap_err().to_string();
        assert!(e.contains("no record"), "{e}");
        // A record others may write, or a FIFO (which would hold every
        // start), is refused.
        use std::os::unix::fs::PermissionsExt as _;
        let record = store.join("containers.json");
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = name_and_image(&created("abc")).unwrap_err().to_string();
        assert!(e.contains("not root's alone (Podman"), "{e}");
        std::fs::remove_file(&record).unwrap();
        nix::unistd::mkfifo(&record, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = name_and_image(&created("abc")).unwrap_err().to_string();
        assert!(e.contains("not a plain file"), "{e}");
    }
}
