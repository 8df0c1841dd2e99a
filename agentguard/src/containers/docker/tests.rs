//! Tests of reading dockerd's record of a container.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

const ID: &str = "cd16483155b8656021a099fe4ee77904d9ee45ded88aa36bce0d65ff93cb972f";

fn created(id: &str) -> Created {
    Created {
        id: id.into(),
        pid: 1,
        bundle: format!("/run/containerd/moby/{id}").into(),
        source: None,
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_record_is_the_containers_own_under_the_data_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docker");
    let c = created(ID);
    let path = record_path(&c, &root).unwrap();
    assert_eq!(
        path,
        root.join("containers").join(ID).join("config.v2.json")
    );
    // A record as dockerd 20.10 wrote it here (shortened).
    write(
        &path,
        &format!(
            r#"{{"StreamConfig":{{}},"State":{{"Running":false}},"ID":"{ID}","Created":"2026-12-04T09:10:01Z",
                "Path":"/bin/sleep","Args":["30"],"Config":{{"Hostname":"cd16","Image":"agtest/img:1",
                "Labels":{{"team":"red"}}}},"Image":"sha256:50c3","Name":"/t2","Driver":"overlay2"}}"#
        ),
        0o600,
    );
    assert_eq!(
        facts(&c, &path).unwrap(),
        DockerFacts {
            name: Some("t2".into()),
            image: Some("agtest/img:1".into()),
            labels: BTreeMap::from([("team".into(), "red".into())]),
        }
    );
    // Without labels, name or image.
    write(
        &path,
        &format!(r#"{{"ID":"{ID}","Config":{{"Labels":null}}}}"#),
        0o600,
    );
    assert_eq!(
        facts(&c, &path).unwrap(),
        DockerFacts {
            name: None,
            image: None,
            labels: BTreeMap::new(),
        }
    );
}

#[test]
fn what_is_not_the_containers_record_fails_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docker");
    let c = created(ID);
    let path = record_path(&c, &root).unwrap();
    let err = |c: &Created| facts(c, &path).unwrap_err().to_string();
    // Missing.
    assert!(err(&c).contains("failed to read"), "{}", err(&c));
    // Another container's record under this one's name.
    write(&path, r#"{"ID":"def","Name":"/x","Config":{}}"#, 0o600);
    assert!(err(&c).contains("no record"), "{}", err(&c));
    // Writable by others, or by the group.
    for mode in [0o666, 0o620] {
        write(&path, &format!(r#"{{"ID":"{ID}"}}"#), mode);
        assert!(err(&c).contains("root's alone"), "{mode:o}: {}", err(&c));
    }
    // A link, a FIFO (which would hold every start), not JSON.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
    assert!(err(&c).contains("failed to read"), "{}", err(&c));
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(err(&c).contains("not a plain file"), "{}", err(&c));
    write(&path, "{", 0o600);
    assert!(err(&c).contains("not valid"), "{}", err(&c));
    // Ids that are not Docker's, and a data root that is not absolute.
    for id in ["../../etc", "abc", &ID.to_uppercase().replace('C', "G")] {
        assert!(record_path(&created(id), &root).is_err(), "{id}");
    }
    assert!(record_path(&c, Path::new("var/lib/docker")).is_err());
    assert!(record_path(&c, Path::new("/var/lib/../docker")).is_err());
}
