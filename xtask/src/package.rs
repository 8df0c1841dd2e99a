//! `cargo xtask package`: the Debian package, built with cargo-deb.
//!
//! The plan: build agentguard in release mode, generate from that very
//! binary what the package ships besides it (shell completions, man pages,
//! the default config with every `run` option), then let cargo-deb put it
//! together as `agentguard/Cargo.toml`'s `[package.metadata.deb]` lists.
//! Generated from the binary, these can never drift from its options.
//!
//! `--check` then installs the package on this machine, checks it, and
//! purges it again (see `package/check.rs`); `--nspawn` boots a Debian
//! container with systemd and checks the units there (`package/nspawn.rs`).

mod check;
mod nspawn;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cmd, paths, release, setup};

#[derive(Debug, Args)]
pub struct Options {
    /// Install the package on this machine with dpkg, check what it put
    /// where, then purge it (the machine is left as it was).
    #[arg(long)]
    check: bool,
    /// Boot a Debian root (debootstrap) with systemd-nspawn, install the
    /// package in it and check the units end to end under systemd.
    #[arg(long)]
    nspawn: bool,
    /// Skip setup, for a machine that is already set up.
    #[arg(long)]
    no_setup: bool,
    /// Package a plain release build rather than a profile-guided one
    /// (which trains the daemon on the bench's scenarios first: root,
    /// eBPF and a few more minutes; xtask/src/release.rs).
    #[arg(long)]
    no_pgo: bool,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.no_setup {
        println!("setup: skipped (--no-setup)");
    } else {
        setup::run()?;
    }
    let build = release::Build::from_no_pgo(opts.no_pgo);
    let binary = release::daemon(root, build)?;
    // Beside the binary, where cargo-deb looks for build products (it
    // reads the assets' `target/release/` as the profile's directory).
    let out = binary
        .parent()
        .context("the daemon binary has no directory")?
        .join("package");
    generate(&binary, &out)?;
    let mut deb = cmd::cargo(root);
    deb.args([
        "deb",
        "-p",
        "agentguard",
        "--no-build",
        "--locked",
        "--profile",
        build.cargo_profile(),
    ]);
    if build == release::Build::ProfileGuided {
        // By LLVM's strip: binutils' strip, which cargo-deb runs, breaks
        // a BOLT-rewritten binary (xtask/src/release/bolt.rs).
        release::strip_rewritten(&binary)?;
        deb.arg("--no-strip");
    }
    cmd::run(&mut deb)?;
    let deb = find_deb(&paths::target_dir(root).join("debian"))?;
    println!("package: {}", deb.display());
    if opts.check {
        check::run(root, &deb)?;
    }
    if opts.nspawn {
        nspawn::run(root, &deb)?;
    }
    Ok(())
}

/// Completions, man pages and the default config, into `out` (what the
/// package's assets point at).
fn generate(binary: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("failed to clear {}", out.display()))?;
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "agentguard"),
        ("zsh", "_agentguard"),
        ("fish", "agentguard.fish"),
    ] {
        let script = cmd::output(cmd::new(binary).args(["completions", shell]))?;
        fs::write(completions.join(file), script + "\n")?;
    }
    let man = out.join("man");
    cmd::run(cmd::new(binary).arg("manpages").arg(&man))?;
    // Debian compresses man pages; -n leaves the time out, so the same
    // pages make the same package.
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?.flatten().map(|e| e.path()).collect();
    pages.sort();
    let mut gzip = cmd::new("gzip");
    gzip.args(["-9n", "--"]).args(&pages);
    cmd::run(&mut gzip)?;
    write_default_config(binary, &out.join("agentguard.toml"))
}

/// The shipped config file (the package's and the container image's),
/// from `config show` with no file and a clean environment: every option
/// at its default, as a commented-out config file.
pub fn write_default_config(binary: &Path, path: &Path) -> Result<()> {
    let shown = cmd::output(
        cmd::new(binary)
            .args(["--config", "/dev/null", "config", "show"])
            .env_clear(),
    )?;
    fs::write(path, default_config(&shown))
        .with_context(|| format!("failed to write {}", path.display()))
}

/// The shipped config: every option commented out at its default, so the
/// file changes nothing until an operator uncomments a line.
fn default_config(shown: &str) -> String {
    let mut text = String::from(
        "# /etc/agentguard/agentguard.toml: settings of `agentguard run`.\n\
         #\n\
         # Every option of `agentguard run` can be set here, one `key = value` a\n\
         # line: the flag --audit-batch-max is the key audit_batch_max (and the\n\
         # environment variable AGENTGUARD_AUDIT_BATCH_MAX). A flag wins over the\n\
         # environment, which wins over this file. Unknown keys are errors.\n\
         # `agentguard config show` prints what the daemon will use and where each\n\
         # value came from; `man agentguard-run` says what each option does.\n\
         # Below: every option at its default.\n\n",
    );
    for line in shown.lines().filter(|l| !l.starts_with("# config file")) {
        if line.starts_with("# precedence") {
            continue;
        }
        // `key = value   # default` → `#key = value`
        let setting = line.split("  #").next().unwrap_or(line).trim_end();
        if let Some(unset) = setting.strip_prefix("# ") {
            text.push_str(&format!(
                "#{} (unset)\n",
                unset.replace(" is not set", " =")
            ));
        } else {
            text.push_str(&format!("#{setting}\n"));
        }
    }
    text
}

fn find_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .with_context(|| format!("failed to read {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    debs.sort();
    match debs.pop() {
        Some((_, deb)) => Ok(deb),
        None => bail!("cargo deb made no .deb in {}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_comments_every_option_out() {
        let shown = "# config file: none\n\
                     # precedence: flag > environment\n\
                     policies = \"/etc/agentguard/policies\"                    # default\n\
                     # upstream_ca is not set                                 # default\n\
                     proxy_port = 977                                         # default\n";
        let text = default_config(shown);
        assert!(
            text.contains("\n#policies = \"/etc/agentguard/policies\"\n"),
            "{text}"
        );
        assert!(text.contains("\n#proxy_port = 977\n"), "{text}");
        assert!(text.contains("\n#upstream_ca = (unset)\n"), "{text}");
        assert!(!text.contains("# default"), "{text}");
        assert!(
            text.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{text}"
        );
    }
}
