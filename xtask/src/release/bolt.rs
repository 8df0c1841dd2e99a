//! BOLT, LLVM's post-link optimiser, on the profile-guided daemon: the
//! binary is instrumented (`llvm-bolt -instrument`), serves the same
//! training workload as PGO, and is rewritten with what it saw: hot basic
//! blocks and functions laid out together, cold ones split away. PGO
//! already lays out within functions and modules; BOLT lays out the whole
//! linked program, dependencies included, which is what keeps the daemon's
//! hot path (hyper, h2, rustls, tokio, SQLite, its own code) in fewer
//! cache lines and pages. Measured (`cargo xtask bench --paths
//! full,jwt,nginx --scenarios ka_sat_1k,h2_sat --runs 3`, the profile-guided
//! binary before and after BOLT, 2026-12-05): L1 instruction misses per
//! request (callgrind) 3,879 -> 3,481 on keep-alive 1 KiB and 2,984 ->
//! 2,614 on HTTP/2; the full path's CPU per request 0.036 -> 0.033 ms and
//! 0.029 -> 0.026 ms (medians), its throughput 20.3k -> 21.9k and 26.1k ->
//! 28.7k req/s; the JWT path's 13.4k -> 14.5k req/s. On a plain release
//! build BOLT alone took a third of the instruction misses away.
//!
//! The rewritten binary takes the place of cargo's in `target/pgo/`
//! (renamed over it: cargo's copy there is a hard link to the one in
//! `deps/`, which must stay as cargo built it). cargo puts its own back at
//! every build, so the result is kept beside the training data, named
//! after the binary it came from, and put in place again while that
//! binary is unchanged.

use std::{
    fs,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::{Context as _, Result, bail};

use super::{llvm_major, train};
use crate::cmd;

/// What the optimising pass does with the profile (LLVM's recommended set
/// for BOLT: block and function layout from the profile, cold code split
/// off, identical functions folded).
const OPTIMISE: &[&str] = &[
    "-reorder-blocks=ext-tsp",
    "-reorder-functions=cdsort",
    "-split-functions",
    "-split-all-cold",
    "-split-eh",
    "-icf=1",
    "-use-gnu-stack",
];

/// Rewrites `binary` (linked with `--emit-relocs`) with a profile of the
/// training workload, in place; `data` holds the profile and the result.
pub fn optimise(root: &Path, data: &Path, binary: &Path) -> Result<()> {
    let (bolt, merge) = tools()?;
    let stamp = fs::metadata(binary)
        .and_then(|m| m.modified())
        .with_context(|| format!("the daemon binary {}", binary.display()))?
        .duration_since(UNIX_EPOCH)?
        .as_nanos();
    let dir = data.join("bolt");
    let optimised = dir.join(format!("agentguard-{stamp}"));
    if optimised.exists() {
        println!(
            "bolt: the daemon is unchanged; using {}",
            optimised.display()
        );
    } else {
        // Results for binaries that are gone.
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let raw = dir.join("raw");
        fs::create_dir_all(&raw)?;
        let instrumented = dir.join("agentguard.instrumented");
        println!("==> bolt: instrumenting the daemon");
        cmd::run(
            cmd::new(&bolt)
                .arg(binary)
                .arg("-instrument")
                // One file per process: the training runs several daemons,
                // and each writes its counts as it exits.
                .arg(format!(
                    "-instrumentation-file={}",
                    raw.join("prof").display()
                ))
                .arg("-instrumentation-file-append-pid")
                .arg("-o")
                .arg(&instrumented),
        )?;
        println!("==> bolt: training the instrumented daemon on the bench's scenarios");
        train(root, data, &instrumented)?;
        let profiles: Vec<PathBuf> = fs::read_dir(&raw)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        if profiles.is_empty() {
            bail!(
                "the BOLT-instrumented daemon wrote no profile into {} (did it exit cleanly?)",
                raw.display()
            );
        }
        let merged = dir.join("merged.fdata");
        cmd::run(cmd::new(&merge).args(&profiles).arg("-o").arg(&merged))?;
        let writing = dir.join("agentguard.writing");
        cmd::run(
            cmd::new(&bolt)
                .arg(binary)
                .arg(format!("-data={}", merged.display()))
                .args(OPTIMISE)
                .arg("-o")
                .arg(&writing),
        )?;
        fs::remove_file(&instrumented)?;
        fs::rename(&writing, &optimised)?;
    }
    // A copy renamed over cargo's hard link, which leaves `deps/` alone.
    let placing = binary.with_extension("bolt-placing");
    fs::copy(&optimised, &placing)?;
    fs::rename(&placing, binary)?;
    println!("bolt: {} optimised", binary.display());
    Ok(())
}

/// `llvm-bolt` and `merge-fdata` of rustc's LLVM major version (Debian's
/// `bolt-N`, which `cargo xtask setup` installs).
fn tools() -> Result<(PathBuf, PathBuf)> {
    let major = llvm_major()?;
    let find = |tool: &str| {
        let path = PathBuf::from(format!("/usr/bin/{tool}-{major}"));
        if path.exists() {
            Ok(path)
        } else {
            bail!(
                "{} not found: the release build runs LLVM's BOLT on the daemon (Debian \
                 package bolt-{major}, which `cargo xtask setup` installs); install it, or \
                 pass --no-pgo",
                path.display()
            )
        }
    };
    Ok((find("llvm-bolt")?, find("merge-fdata")?))
}
