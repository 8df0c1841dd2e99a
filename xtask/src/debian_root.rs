//! Minimal Debian roots made with debootstrap from the archive this
//! machine's apt uses: the systemd container of `package --nspawn` and the
//! base of the container image (`cargo xtask image`) are both one.
//!
//! A root is cached under `target/` and made again only when a file that
//! one of its included packages installs is missing, so the few minutes
//! debootstrap takes are spent once per checkout.

use std::{fs, path::Path};

use anyhow::{Result, bail};

use crate::cmd;

/// The Debian release both roots are made of: the one the release binary
/// is built on here, so the glibc it links against is the one in the root.
pub const SUITE: &str = "bookworm";

/// What a root holds: debootstrap's minimal base plus `include` (packages,
/// comma-separated), and a file of each included package, by which a
/// cached root is known to be complete.
pub struct Spec<'a> {
    pub include: &'a str,
    pub marker_files: &'a [&'a str],
}

/// The root at `cached` (below `base`), made now if missing or incomplete.
pub fn ensure(base: &Path, cached: &Path, spec: &Spec<'_>) -> Result<()> {
    if spec.marker_files.iter().all(|f| cached.join(f).exists()) {
        println!("debian root: {} cached, reusing it", cached.display());
        return Ok(());
    }
    if cached.exists() {
        fs::remove_dir_all(cached)?;
    }
    debootstrap(base, cached, spec.include)
}

/// A minimal Debian root, from the archive apt on this machine uses; made
/// beside its final place and renamed, so an interrupted run leaves no
/// half-made root that looks cached.
fn debootstrap(base: &Path, cached: &Path, include: &str) -> Result<()> {
    let mirror = apt_mirror()?;
    let tmp = cached.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(base)?;
    println!(
        "debian root: debootstrap {SUITE} (a few minutes, once; cached in {})",
        cached.display()
    );
    cmd::run(
        cmd::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={include}"), SUITE])
            .arg(&tmp)
            .arg(&mirror),
    )?;
    fs::rename(&tmp, cached)?;
    Ok(())
}

/// The Debian archive of this machine's apt sources (deb822 or one-line
/// form), for the suite debootstrap installs.
fn apt_mirror() -> Result<String> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.push(fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    match mirror_in(&texts) {
        Some(mirror) => Ok(mirror),
        None => bail!("no apt source for Debian {SUITE} on this machine to debootstrap from"),
    }
}

fn mirror_in(texts: &[String]) -> Option<String> {
    for text in texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
                && suites.split_whitespace().any(|s| s == SUITE)
            {
                return Some(
                    uris.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == SUITE {
                return Some(words[1].to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.test/security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(&[deb822.to_owned()]).as_deref(),
            Some("http://mirror.test/debian")
        );
        let one_line = "deb http://mirror.test/security bookworm-security main\n\
                        deb http://mirror.test/debian bookworm main\n";
        assert_eq!(
            mirror_in(&[one_line.to_owned()]).as_deref(),
            Some("http://mirror.test/debian")
        );
        assert_eq!(mirror_in(&["deb http://x trixie main".to_owned()]), None);
    }
}
