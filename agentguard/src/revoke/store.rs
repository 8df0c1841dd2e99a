//! `<state-dir>/revoked.json`: the revoked agents, written whole to a
//! temporary file, synced and renamed over the old one, so that a crash
//! leaves either the old list or the new one, never half of one.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{RevokeError, Revoked};

const FILE: &str = "revoked.json";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    revoked: BTreeMap<String, Revoked>,
}

/// No file: nobody is revoked.
pub fn load(path: &Path) -> Result<BTreeMap<String, Revoked>, RevokeError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(RevokeError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |reason: String| RevokeError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let on_disk: OnDisk = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if on_disk.version != 1 {
        return Err(corrupt(format!("unknown version {}", on_disk.version)));
    }
    Ok(on_disk.revoked)
}

pub fn save(path: &Path, revoked: &BTreeMap<String, Revoked>) -> Result<(), RevokeError> {
    let err = |source| RevokeError::Write {
        path: path.to_owned(),
        source,
    };
    let body = serde_json::to_vec_pretty(&OnDisk {
        version: 1,
        revoked: revoked.clone(),
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(&body).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}
