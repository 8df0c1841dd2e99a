//! Every seed input kept in the repo (`fuzz/seeds/<target>/`) through its
//! entry point, on the stable toolchain: the seeds and the entry points
//! cannot drift apart unnoticed, and a seed that once crashed stays fixed.

use std::{fs, path::PathBuf};

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 9] = [
    ("sniff", super::sniff),
    ("path", super::path),
    ("policy", super::policy),
    ("dns", super::dns),
    ("http_head", super::http_head),
    ("redact", super::redact),
    ("jsonrpc", super::jsonrpc),
    ("sse", super::sse),
    ("placeholder", super::placeholder),
];

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_seed_passes_its_target() {
    for (target, entry) in TARGETS {
        let seeds = seeds(target);
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        for (path, bytes) in seeds {
            if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
                panic!("{target}: seed {} fails", path.display());
            }
        }
    }
}

#[test]
fn the_seeds_reach_past_the_first_check() {
    // Seeds that every parser refuses at once would fuzz nothing: some of
    // each kind must be accepted.
    let accepted = |target: &str, ok: &dyn Fn(&[u8]) -> bool| {
        seeds(target).iter().filter(|(_, b)| ok(b)).count()
    };
    assert!(
        accepted("sniff", &|b| matches!(
            crate::proxy::sniff::classify(b),
            Some(crate::proxy::sniff::Sniffed::Tls { .. })
        )) >= 1
    );
    assert!(
        accepted("policy", &|b| crate::policy::check_text(
            std::path::Path::new("seed.toml"),
            std::str::from_utf8(b).unwrap_or_default()
        )
        .is_ok())
            >= 3
    );
    assert!(accepted("jsonrpc", &|b| crate::mcp::Body::parse(b).is_ok()) >= 3);
    assert!(
        accepted("dns", &|b| {
            b.split_first().is_some_and(|(&split, rest)| {
                let split = usize::from(split) % (rest.len() + 1);
                hickory_proto::op::Message::from_vec(&rest[..split]).is_ok()
            })
        }) >= 2
    );
    assert!(accepted("http_head", &|b| super::request_head(b).is_some()) >= 3);
}
