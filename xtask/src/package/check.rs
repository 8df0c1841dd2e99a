//! `cargo xtask package --check`: install the package on this machine with
//! `dpkg -i`, check what it put where and with which modes, that a changed
//! config and an operator's policy survive a reinstall, that the installed
//! unit verifies, then purge it and check that the machine is as before.
//!
//! It never touches an agentguard package that was installed before (it
//! refuses to run), and the purge runs even when a check fails.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd;

const UNIT: &str = "/usr/lib/systemd/system/agentguard.service";
const CONFIG: &str = "/etc/agentguard/agentguard.toml";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/agentguard.service";
/// The folders postinst makes, with their modes.
const DIRS: &[(&str, u32)] = &[
    ("/etc/agentguard", 0o755),
    ("/etc/agentguard/policies", 0o750),
    ("/etc/agentguard/secrets", 0o700),
    ("/var/lib/agentguard", 0o711),
];

pub fn run(root: &Path, deb: &Path) -> Result<()> {
    if is_installed() {
        bail!(
            "an agentguard package is already installed here; the check installs and purges \
             its own, so it will not run over it (dpkg --purge agentguard first if it is a \
             leftover)"
        );
    }
    let existed: Vec<bool> = DIRS.iter().map(|(d, _)| Path::new(d).exists()).collect();
    println!("package check: dpkg -i {}", deb.display());
    cmd::run(cmd::new("dpkg").arg("-i").arg(deb))?;
    let checked = Installed {
        root,
        deb,
        existed: &existed,
    }
    .check();
    // Purged whatever the outcome: the machine must be left as it was.
    let purged = purge(&existed);
    checked?;
    purged?;
    println!("package check: passed; package purged, machine as before");
    Ok(())
}

fn is_installed() -> bool {
    cmd::probe(cmd::new("dpkg-query").args(["-W", "-f", "${Status}", "agentguard"]))
        .is_some_and(|s| !s.contains("not-installed"))
}

struct Installed<'a> {
    root: &'a Path,
    deb: &'a Path,
    existed: &'a [bool],
}

impl Installed<'_> {
    fn check(&self) -> Result<()> {
        let version = cmd::output(cmd::new("/usr/bin/agentguard").arg("--version"))?;
        ensure!(
            version == format!("agentguard {}", env!("CARGO_PKG_VERSION")),
            "agentguard --version printed {version:?}"
        );
        println!("package check: {version}");

        for (path, mode) in [
            ("/usr/bin/agentguard", 0o755),
            (UNIT, 0o644),
            (CONFIG, 0o644),
            ("/usr/share/bash-completion/completions/agentguard", 0o644),
            ("/usr/share/zsh/vendor-completions/_agentguard", 0o644),
            (
                "/usr/share/fish/vendor_completions.d/agentguard.fish",
                0o644,
            ),
            ("/usr/share/man/man1/agentguard.1.gz", 0o644),
            ("/usr/share/man/man1/agentguard-run.1.gz", 0o644),
            ("/usr/share/man/man1/agentguard-attach.1.gz", 0o644),
            (
                "/usr/share/doc/agentguard/examples/agent-unit.service",
                0o644,
            ),
        ] {
            expect_file(path, mode, false)?;
        }
        let policies: Vec<_> = fs::read_dir(self.root.join("policies"))?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .map(|e| e.file_name())
            .collect();
        ensure!(
            !policies.is_empty(),
            "no example policies in the repository"
        );
        for name in &policies {
            let path = Path::new("/usr/share/doc/agentguard/examples/policies").join(name);
            expect_file(&path.display().to_string(), 0o644, false)?;
        }
        println!(
            "package check: binary, unit, config, completions, man pages and {} example policies in place",
            policies.len()
        );

        for ((dir, mode), existed) in DIRS.iter().zip(self.existed) {
            // A folder that was there before keeps the operator's mode.
            expect_file(dir, *mode, true).or_else(|e| if *existed { Ok(()) } else { Err(e) })?;
        }
        println!("package check: state, policy and secret folders root's, modes 0711/0750/0700");

        let conffiles =
            cmd::output(cmd::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "agentguard"]))?;
        ensure!(
            conffiles.contains(CONFIG),
            "{CONFIG} is not a conffile: {conffiles:?}"
        );
        self.check_config()?;
        self.check_unit()?;
        ensure!(
            fs::symlink_metadata(ENABLED_LINK).is_ok(),
            "the unit was not enabled ({ENABLED_LINK} missing)"
        );
        self.check_reinstall_keeps_changes()?;
        Ok(())
    }

    /// The shipped config changes nothing, and every line of it, once
    /// uncommented, is a key the daemon knows with a value it accepts.
    fn check_config(&self) -> Result<()> {
        let shown = cmd::output(
            cmd::new("/usr/bin/agentguard")
                .args(["--config", CONFIG, "config", "show"])
                .env_clear(),
        )?;
        ensure!(
            shown
                .lines()
                .filter(|l| !l.starts_with("# config file") && !l.starts_with("# precedence"))
                .all(|l| l.ends_with("# default")),
            "the shipped config sets something:\n{shown}"
        );
        let text = fs::read_to_string(CONFIG)?;
        let options = text
            .lines()
            .filter(|l| l.starts_with('#') && !l.starts_with("# ") && l.contains(" = "))
            .count();
        ensure!(
            options >= 20,
            "the shipped config lists only {options} options:\n{text}"
        );
        // Those with a default value; unset ones have none to try.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, v)| !k.contains(' ') && !k.is_empty() && v != "(unset)")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile_dir()?;
        let all = dir.join("all.toml");
        fs::write(&all, &uncommented)?;
        let shown = cmd::output(
            cmd::new("/usr/bin/agentguard")
                .arg("--config")
                .arg(&all)
                .args(["config", "show"])
                .env_clear(),
        )
        .context("the shipped config, uncommented, is refused")?;
        ensure!(shown.contains("# file "), "{shown}");
        let _ = fs::remove_dir_all(&dir);
        println!(
            "package check: shipped config lists {options} options and sets none; the {} with a default, uncommented, all parse",
            uncommented.lines().count()
        );
        Ok(())
    }

    /// `systemd-analyze verify` on the installed unit (its binary and man
    /// pages are now where it names them): no warning at all.
    fn check_unit(&self) -> Result<()> {
        let out = cmd::new("systemd-analyze")
            .args(["verify", UNIT])
            .output()
            .context("failed to run systemd-analyze")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {UNIT}: {}\n{stderr}",
            out.status
        );
        println!("package check: systemd-analyze verify {UNIT}: clean");
        Ok(())
    }

    /// A changed config and an operator's policy survive a reinstall.
    fn check_reinstall_keeps_changes(&self) -> Result<()> {
        let mut config = fs::read_to_string(CONFIG)?;
        config.push_str("\n# changed by the package check\nlog_format = \"text\"\n");
        fs::write(CONFIG, &config)?;
        let policy = Path::new("/etc/agentguard/policies/package-check.toml");
        let body = "[agent]\nname = \"package-check\"\ncgroup = \"agentguard/package-check\"\n";
        fs::write(policy, body)?;
        cmd::run(
            cmd::new("dpkg")
                .args(["-i", "--force-confold"])
                .arg(self.deb),
        )?;
        ensure!(
            fs::read_to_string(CONFIG)? == config,
            "reinstalling overwrote the changed {CONFIG}"
        );
        ensure!(
            fs::read_to_string(policy)? == body,
            "reinstalling changed an operator's policy"
        );
        println!("package check: reinstall kept the changed config and the operator's policy");
        Ok(())
    }
}

/// Purges the package and checks it left nothing of its own: the folders
/// it made are gone, those that were there before stay. The check's own
/// policy file, left in the policies folder, must be kept and reported,
/// then goes with the folder if the check made it.
fn purge(existed: &[bool]) -> Result<()> {
    let out = cmd::new("dpkg")
        .args(["--purge", "agentguard"])
        .output()
        .context("failed to run dpkg --purge")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let policy = Path::new("/etc/agentguard/policies/package-check.toml");
    let kept_policy = policy.exists();
    let _ = fs::remove_file(policy);
    // Restore: what the check's file kept alive goes if the package made it.
    for ((dir, _), existed) in DIRS.iter().zip(existed).rev() {
        if !existed {
            let _ = fs::remove_dir(dir);
        }
    }
    ensure!(out.status.success(), "dpkg --purge failed: {stderr}");
    ensure!(
        kept_policy && stderr.contains("kept /etc/agentguard/policies"),
        "purge removed or did not report the operator's policy folder: {stderr}"
    );
    for path in ["/usr/bin/agentguard", UNIT, CONFIG, ENABLED_LINK] {
        ensure!(
            fs::symlink_metadata(path).is_err(),
            "{path} is still there after purge"
        );
    }
    for ((dir, _), existed) in DIRS.iter().zip(existed) {
        ensure!(
            Path::new(dir).exists() == *existed,
            "{dir}: {} before the check, {} after the purge",
            if *existed { "present" } else { "absent" },
            if Path::new(dir).exists() {
                "present"
            } else {
                "absent"
            },
        );
    }
    ensure!(!is_installed(), "dpkg still lists agentguard after purge");
    println!("package check: purged; nothing of the package left");
    Ok(())
}

/// `path` exists, is root's, and has exactly `mode` (a folder if `dir`).
fn expect_file(path: &str, mode: u32, dir: bool) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("{path} is missing"))?;
    ensure!(meta.is_dir() == dir, "{path}: wrong file type");
    let actual = meta.permissions().mode() & 0o7777;
    ensure!(
        actual == mode,
        "{path}: mode {actual:04o}, expected {mode:04o}"
    );
    ensure!(
        meta.uid() == 0 && meta.gid() == 0,
        "{path}: owned by {}:{}, expected root:root",
        meta.uid(),
        meta.gid()
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agentguard-package-check-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
