//! The daemon's release build, profile-guided unless asked otherwise: what
//! the Debian package, the container image and `cargo xtask bench` use.
//!
//! Profile-guided optimisation (PGO): the daemon is built once with
//! counters (cargo profile `pgo-train`), serves the bench's scenarios on
//! every agentguard path over loopback ([`crate::bench::train`]), and is
//! built again (cargo profile `pgo`) with what the counters saw: LLVM then
//! lays out hot code together and inlines and branches for the common
//! case. Measured with callgrind (2,000 keep-alive requests, full path):
//! 181k -> 154k instructions per request and a third fewer instruction-
//! cache misses (docs/benchmarks.md has the current figures). The
//! workload it learns from is the bench's own, so the bench shows the
//! gain at its largest. The profile-guided binary is then rewritten by
//! LLVM's BOLT with a profile of the same workload ([`bolt`]), which lays
//! out the whole linked program, dependencies included.
//!
//! Training needs what the bench needs: root, eBPF and cgroups, and the
//! bench's tools, which it installs as the bench does (nginx, oha,
//! h2load, mitmproxy, valgrind), and BOLT (Debian's `bolt-N`). `--no-pgo`
//! builds a plain release without any of it.

mod bolt;

pub use bolt::strip as strip_rewritten;

use std::{
    fs,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{self, Training},
    cmd, paths,
};

/// Requests per scenario and path in the training run: enough for every
/// hot path to dominate its counts, a minute or two in all.
const TRAINING_REQUESTS: u32 = 500;

/// How the release daemon is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Trained on the bench's workload, then optimised with its profile.
    ProfileGuided,
    /// `cargo build --release` as is.
    Plain,
}

impl Build {
    /// From a command's `--no-pgo` flag.
    pub fn from_no_pgo(no_pgo: bool) -> Self {
        if no_pgo {
            Build::Plain
        } else {
            Build::ProfileGuided
        }
    }

    /// The cargo profile whose output directory holds the binary.
    pub fn cargo_profile(self) -> &'static str {
        match self {
            Build::ProfileGuided => "pgo",
            Build::Plain => "release",
        }
    }

    /// Where this build's daemon binary is (built or not).
    pub fn binary(self, root: &Path) -> PathBuf {
        paths::target_dir(root)
            .join(self.cargo_profile())
            .join("agentguard")
    }

    /// For reports: how the measured binary was built.
    pub fn describe(self) -> String {
        match self {
            Build::ProfileGuided => format!(
                "release, profile-guided and BOLT-optimised (cargo profile `pgo`, both \
                 trained on this bench's scenarios, {TRAINING_REQUESTS} requests each on \
                 every agentguard path)"
            ),
            Build::Plain => "release (cargo profile `release`, not profile-guided)".to_owned(),
        }
    }

    /// For reports of `bench --no-build`: the binary at `binary` was not
    /// built by this run, so only what the file itself shows is said.
    pub fn describe_found(self, binary: &Path) -> Result<String> {
        let bolted = bolt::rewritten(binary)?;
        Ok(format!(
            "as found in target/ (--no-build: not built by this run, so its training is not \
             known here), cargo profile `{}`, {}",
            self.cargo_profile(),
            if bolted {
                "BOLT-rewritten (it has BOLT's note section)"
            } else {
                "not BOLT-rewritten"
            }
        ))
    }
}

/// Builds the daemon for release; returns the binary. A profile-guided
/// build also builds `agentguard-bench` (the bench's servers and clients),
/// plain, in `target/release`: training needs it. A plain build does not:
/// the package and the image need only the daemon, and the bench builds
/// its own ([`bench_tools`]).
pub fn daemon(root: &Path, build: Build) -> Result<PathBuf> {
    match build {
        Build::Plain => cargo_build(root, "release", &["agentguard"], None)?,
        Build::ProfileGuided => profile_guided(root)?,
    }
    Ok(build.binary(root))
}

/// `agentguard-bench`, plain, in `target/release` (already there after a
/// profile-guided build, whose training uses it).
pub fn bench_tools(root: &Path) -> Result<()> {
    cargo_build(root, "release", &["agentguard-bench"], None)
}

fn profile_guided(root: &Path) -> Result<()> {
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        // Even empty, it takes the place of the host target's flags.
        if std::env::var_os(var).is_some() {
            bail!(
                "{var} is set: it would replace the flags a profile-guided build sets \
                 (cargo reads it first); unset it, or pass --no-pgo"
            );
        }
    }
    let llvm_profdata = llvm_profdata()?;
    let bolt = bolt::Tools::find()?;
    let target = paths::target_dir(root);
    let data = target.join("pgo-data");
    let raw = data.join("raw");
    bench_tools(root)?;
    let instrumented_flag = format!("-Cprofile-generate={}", raw.display());
    cargo_build(root, "pgo-train", &["agentguard"], Some(&instrumented_flag))?;
    let instrumented = target.join("pgo-train").join("agentguard");

    // One profile per instrumented binary: the same binary needs no new
    // training, and a new one gets a new file name, so cargo rebuilds
    // everything with it (it compares the flags, not the file's content).
    let stamp = fs::metadata(&instrumented)
        .and_then(|m| m.modified())
        .context("the instrumented daemon")?
        .duration_since(UNIX_EPOCH)?
        .as_nanos();
    let kept = profile_name(&data, stamp, Training::Complete);
    let profile = if kept.exists() {
        println!(
            "pgo: the instrumented daemon is unchanged; using {}",
            kept.display()
        );
        kept
    } else {
        if raw.exists() {
            fs::remove_dir_all(&raw)?;
        }
        fs::create_dir_all(&raw)?;
        println!("==> pgo: training the instrumented daemon on the bench's scenarios");
        let training = train(root, &data, &instrumented, "pgo")?;
        if fs::read_dir(&raw)?.count() == 0 {
            bail!(
                "the instrumented daemon wrote no profile into {} (did it exit cleanly? \
                 is LLVM_PROFILE_FILE set? it overrides that directory)",
                raw.display()
            );
        }
        forget_profiles(&data)?;
        let merging = data.join("merging.profdata");
        cmd::run(
            cmd::new(&llvm_profdata)
                .arg("merge")
                .arg("-o")
                .arg(&merging)
                .arg(&raw),
        )?;
        let profile = profile_name(&data, stamp, training);
        if training == Training::Partial {
            println!(
                "pgo: the profile lacks the failed scenarios; this build uses it, the next \
                 trains again"
            );
        }
        fs::rename(&merging, &profile)?;
        profile
    };
    // Relocations kept in the binary: BOLT needs them to move code.
    cargo_build(
        root,
        "pgo",
        &["agentguard"],
        Some(&format!(
            "-Cprofile-use={} -Clink-arg=-Wl,--emit-relocs",
            profile.display()
        )),
    )?;
    bolt::optimise(&bolt, root, &data, &target.join("pgo").join("agentguard"))
}

/// Where the profile of instrumented binary `stamp` goes: under the name
/// the next build looks for only if the training ran every scenario. A
/// partial one (a scenario failed, say on a loaded machine) would else
/// stand in for that binary's profile for as long as the binary is
/// unchanged, its missing paths never trained again.
fn profile_name(data: &Path, stamp: u128, training: Training) -> PathBuf {
    match training {
        Training::Complete => data.join(format!("agentguard-{stamp}.profdata")),
        Training::Partial => data.join(format!("agentguard-{stamp}.partial.profdata")),
    }
}

/// Runs the bench's scenarios through `instrumented`, which writes its
/// counts where it was built to as each of its processes exits; `tool`
/// (pgo, bolt) names the training in what it prints.
fn train(root: &Path, data: &Path, instrumented: &Path, tool: &str) -> Result<Training> {
    // The bench takes both binaries from one directory.
    let bin = data.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(instrumented, bin.join("agentguard"))?;
    fs::copy(
        paths::target_dir(root)
            .join("release")
            .join("agentguard-bench"),
        bin.join("agentguard-bench"),
    )?;
    bench::train(root, &bin, TRAINING_REQUESTS, tool).context("training the instrumented daemon")
}

/// Earlier profiles: each belonged to an instrumented binary that no
/// longer exists.
fn forget_profiles(data: &Path) -> Result<()> {
    for entry in fs::read_dir(data)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "profdata") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `cargo build --profile PROFILE -p …`, with `rustflags` for the host
/// target (build scripts and proc macros take them too, harmlessly; the
/// eBPF programs, built for the bpf target by aya-build with flags of its
/// own, take none). They replace `[build] rustflags` for this build.
pub fn cargo_build(
    root: &Path,
    profile: &str,
    packages: &[&str],
    rustflags: Option<&str>,
) -> Result<()> {
    let mut c = cmd::cargo(root);
    c.args(["build", "--locked", "--profile", profile]);
    for p in packages {
        c.args(["-p", p]);
    }
    if let Some(flags) = rustflags {
        c.env(host_rustflags_var()?, flags);
    }
    cmd::run(&mut c)
}

/// `CARGO_TARGET_<HOST>_RUSTFLAGS`.
fn host_rustflags_var() -> Result<String> {
    let host = rustc_fact("host: ")?;
    Ok(format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.to_uppercase().replace(['-', '.'], "_")
    ))
}

/// The `llvm-profdata` of rustc's own LLVM major version (its profiles'
/// format must match): `llvm-profdata-22` from Debian's llvm-22, which
/// `cargo xtask setup` installs for bpf-linker.
fn llvm_profdata() -> Result<PathBuf> {
    let major = llvm_major()?;
    let tool = format!("llvm-profdata-{major}");
    let candidates = [
        Path::new("/usr/bin").join(&tool),
        PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata")),
    ];
    if let Some(found) = candidates.into_iter().find(|p| p.exists()) {
        return Ok(found);
    }
    bail!(
        "{tool} not found: rustc uses LLVM {major}, and its profiles need that \
         version's llvm-profdata (Debian package llvm-{major}); install it, or pass --no-pgo"
    )
}

/// The major version of rustc's LLVM.
fn llvm_major() -> Result<String> {
    let version = rustc_fact("LLVM version: ")?;
    Ok(version.split('.').next().unwrap_or_default().to_owned())
}

/// A line of `rustc -vV`, after `prefix`.
fn rustc_fact(prefix: &str) -> Result<String> {
    let out = cmd::output(cmd::new("rustc").arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_owned)
        .with_context(|| format!("`rustc -vV` printed no {prefix:?} line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a complete training's profile gets the name a later build of
    /// the same instrumented binary reuses; every profile, partial or not,
    /// is one `forget_profiles` removes before the next training.
    #[test]
    fn a_partial_profile_is_not_kept_for_the_next_build() {
        let data = Path::new("/data");
        let complete = profile_name(data, 7, Training::Complete);
        let partial = profile_name(data, 7, Training::Partial);
        assert_eq!(complete, data.join("agentguard-7.profdata"));
        assert_ne!(partial, complete);
        for p in [&complete, &partial] {
            assert_eq!(p.extension().unwrap(), "profdata");
        }
    }
}
