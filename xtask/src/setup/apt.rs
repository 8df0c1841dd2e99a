//! Debian packages, checked with dpkg-query and installed with apt-get.

use std::io::ErrorKind;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::cmd;

#[derive(Default)]
pub struct Apt {
    /// `apt-get update` is slow; run it at most once per setup.
    updated: bool,
}

impl Apt {
    pub fn ensure(&mut self, packages: &[&str]) -> Result<()> {
        self.install(packages, true)
    }

    /// Like [`Apt::ensure`], without the packages' recommendations: for
    /// packages whose recommendations change the machine beyond what the
    /// tests need (systemd's time daemon and D-Bus, systemd-container's
    /// NSS module in nsswitch.conf). What they really need is listed.
    pub fn ensure_without_recommends(&mut self, packages: &[&str]) -> Result<()> {
        self.install(packages, false)
    }

    fn install(&mut self, packages: &[&str], recommends: bool) -> Result<()> {
        let mut missing = Vec::new();
        for &package in packages {
            if installed(package)? {
                println!("setup: Debian package {package} already present, skipping");
            } else {
                missing.push(package);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }

        println!("setup: installing Debian packages {}", missing.join(" "));
        // stdin closed: CI runs without one, and nothing here may wait for a prompt.
        if !self.updated {
            cmd::run(cmd::new("apt-get").arg("update").stdin(Stdio::null()))?;
            self.updated = true;
        }
        cmd::run(
            cmd::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y"])
                .args((!recommends).then_some("--no-install-recommends"))
                .args(&missing)
                .stdin(Stdio::null()),
        )?;
        for package in missing {
            if !installed(package)? {
                bail!("apt-get install reported success but {package} is not installed");
            }
        }
        Ok(())
    }
}

/// dpkg keeps records of removed packages too ("deinstall ok config-files"), so
/// only this exact status means the files are on disk.
fn installed(package: &str) -> Result<bool> {
    let out = cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(err) if err.kind() == ErrorKind::NotFound => bail!(
            "dpkg-query not found: setup installs {package} with apt, so it needs a \
             Debian-based system; elsewhere install the equivalent package by hand"
        ),
        Err(err) => return Err(err).context("failed to start dpkg-query"),
    };
    // dpkg-query exits 1 for a package it has never heard of: that is "missing".
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}
