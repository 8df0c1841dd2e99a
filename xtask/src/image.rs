//! `cargo xtask image`: agentguard's container image, for the DaemonSet in
//! `deploy/kubernetes`, built with podman from Debian's packages and no
//! registry.
//!
//! The plan: build agentguard in release mode; make (once, cached) a
//! minimal Debian root with debootstrap, the release the binary is built
//! on, so its glibc is the one the binary links against; trim what a
//! container never reads; stage a build context with that root as a tar,
//! the binary, the default config and the example policies; and build
//! `packaging/container/Containerfile` (`FROM scratch`) in it.
//!
//! `--check` then runs the image as the DaemonSet would (see
//! `image/check.rs`).

mod check;
mod manifest;

use std::{fs, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cmd, debian_root, package, paths, release, setup};

#[derive(Debug, Args)]
pub struct Options {
    /// Run the built image as the DaemonSet would: `--version`, `policy
    /// check` on the shipped and the DaemonSet's policies, its config, its
    /// init check, and the daemon itself with the DaemonSet's capabilities.
    #[arg(long)]
    check: bool,
    /// Skip setup, for a machine that is already set up.
    #[arg(long)]
    no_setup: bool,
    /// Put a plain release build in the image rather than a
    /// profile-guided one (xtask/src/release.rs).
    #[arg(long)]
    no_pgo: bool,
}

/// The image's name: podman's local store, not a registry. The DaemonSet
/// refers to it by this name (and the version); an operator pushes it to
/// a registry the nodes pull from and renames it there.
pub const NAME: &str = "localhost/agentguard";

/// Beyond debootstrap's minimal base: the system roots that verify
/// upstreams (rustls-native-certs reads /etc/ssl/certs).
const INCLUDE: &str = "ca-certificates";
/// Files by which a cached root is known complete: the roots bundle, and
/// nsenter (util-linux), with which the DaemonSet enters the host's cgroup
/// namespace.
const MARKER_FILES: &[&str] = &["etc/ssl/certs/ca-certificates.crt", "usr/bin/nsenter"];
/// Emptied in the image's root: manuals, info pages, translations and
/// apt's caches and indexes, which nothing reads in a container (Debian's
/// own slim images leave them out too). Under `usr/share/doc` only each
/// package's `copyright` stays.
const TRIMMED: &[&str] = &[
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
];

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.no_setup {
        println!("setup: skipped (--no-setup)");
    } else {
        setup::run()?;
    }
    let started = Instant::now();
    let binary = release::daemon(root, release::Build::from_no_pgo(opts.no_pgo))?;
    let version = version_of(&binary)?;
    let base = paths::target_dir(root).join("image");
    let rootfs = base.join("root");
    debian_root::ensure(
        &base,
        &rootfs,
        &debian_root::Spec {
            include: INCLUDE,
            marker_files: MARKER_FILES,
        },
    )?;
    trim(&rootfs)?;
    let context = base.join("context");
    stage(root, &binary, &rootfs, &context)?;
    let tag = format!("{NAME}:{version}");
    let previous = image_id(&tag);
    cmd::run(
        cmd::new("podman")
            .args(["build", "--pull=never", "--network=none"])
            .arg(format!("--build-arg=VERSION={version}"))
            .arg("--file")
            .arg(context.join("Containerfile"))
            .args(["--tag", &tag])
            .arg(&context),
    )?;
    // The image the tag named before is left without a name: remove it,
    // or each build would keep one more (only ours: by id, never a prune).
    if let Some(old) = previous
        && image_id(&tag).as_ref() != Some(&old)
    {
        let _ = cmd::probe(cmd::new("podman").args(["rmi", &old]));
    }
    let size: u64 =
        cmd::output(cmd::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]))?
            .parse()
            .context("podman image inspect gave no size")?;
    let _ = fs::remove_dir_all(&context);
    println!(
        "image: {tag} built in {:.0?}, {:.1} MB",
        started.elapsed(),
        size as f64 / 1e6
    );
    if opts.check {
        let checked = Instant::now();
        check::run(root, &tag, &version)?;
        println!("image: checks passed in {:.0?}", checked.elapsed());
    }
    Ok(())
}

/// `0.1.0` from `agentguard 0.1.0`.
fn version_of(binary: &Path) -> Result<String> {
    let out = cmd::output(cmd::new(binary).arg("--version"))?;
    match out.strip_prefix("agentguard ") {
        Some(v) if !v.is_empty() && !v.contains(char::is_whitespace) => Ok(v.to_owned()),
        _ => bail!("unexpected `agentguard --version`: {out:?}"),
    }
}

fn image_id(tag: &str) -> Option<String> {
    cmd::probe(cmd::new("podman").args(["image", "inspect", "--format", "{{.Id}}", tag]))
}

/// Empties [`TRIMMED`] and `usr/share/doc` but for copyright files;
/// a trimmed root is left as it is.
fn trim(rootfs: &Path) -> Result<()> {
    for dir in TRIMMED {
        let dir = rootfs.join(dir);
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            remove(&entry.path())?;
        }
    }
    for package in fs::read_dir(rootfs.join("usr/share/doc"))?.flatten() {
        if !package.file_type()?.is_dir() {
            remove(&package.path())?;
            continue;
        }
        for entry in fs::read_dir(package.path())?.flatten() {
            if entry.file_name() != "copyright" {
                remove(&entry.path())?;
            }
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("failed to remove {}", path.display()))
}

/// The build context the Containerfile names: the root as a tar, the
/// binary, the default config, the example policies.
fn stage(repo: &Path, binary: &Path, rootfs: &Path, context: &Path) -> Result<()> {
    if context.exists() {
        fs::remove_dir_all(context)?;
    }
    fs::create_dir_all(context.join("policies"))?;
    // Numeric owners: the root's files are root's in the image whatever
    // this machine's user names are; sorted, so the same root makes the
    // same tar.
    cmd::run(
        cmd::new("tar")
            .args(["--numeric-owner", "--sort=name", "-C"])
            .arg(rootfs)
            .arg("-cf")
            .arg(context.join("rootfs.tar"))
            .arg("."),
    )?;
    fs::copy(binary, context.join("agentguard"))?;
    package::write_default_config(binary, &context.join("agentguard.toml"))?;
    for entry in fs::read_dir(repo.join("policies"))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            fs::copy(&path, context.join("policies").join(entry.file_name()))?;
        }
    }
    fs::copy(
        repo.join("packaging/container/Containerfile"),
        context.join("Containerfile"),
    )?;
    Ok(())
}
