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
//! request (callgrind) 3,879 -> 3,490 on keep-alive 1 KiB and 2,984 ->
//! 2,571 on HTTP/2; the full path's CPU per request 0.036 -> 0.032 ms and
//! 0.029 -> 0.026 ms (medians), its throughput 20.3k -> 22.6k and 26.1k ->
//! 28.6k req/s; the JWT path's 13.4k -> 14.1k req/s. On a plain release
//! build BOLT alone took a third of the instruction misses away (5,680 ->
//! 3,740 and 4,506 -> 2,788).
//!
//! The rewritten binary takes the place of cargo's in `target/pgo/`
//! (renamed over it: cargo's copy there is a hard link to the one in
//! `deps/`, which must stay as cargo built it). cargo puts its own back at
//! every build, so the result is kept beside the training data, named
//! after the binary it came from and how it was rewritten, and put in
//! place again while both are unchanged; a result whose training had
//! failed scenarios serves its build only.
//!
//! The package strips it with LLVM's strip ([`strip`]): binutils' `strip`
//! (which cargo-deb would run) cannot place the sections of BOLT's new
//! segment and writes a binary that crashes at once. The bench keeps the
//! symbols, for its profiles. Stripped, it is bigger than the
//! profile-guided binary it came from (39 MB against 26 MB): BOLT keeps
//! the original code in place for the functions it cannot move, never
//! read at run time.

use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::{Context as _, Result, bail};

use super::{Training, llvm_major, train};
use crate::cmd;

/// A function only the daemon runs (its proxy's accept loop): a profile
/// without it holds no daemon's counts (the training's daemons did not
/// exit cleanly, and only the CLI's runs wrote theirs).
const HOT_SYMBOL: &str = "accept_loop";

/// Relocation mode, which function reordering needs: without relocations
/// in the binary (`--emit-relocs`), BOLT fails rather than quietly
/// optimising less.
const RELOCS: &str = "-relocs";

/// What the optimising pass does with the profile (LLVM's recommended set
/// for BOLT: block and function layout from the profile, cold code split
/// off, identical functions folded where no address is compared). Not
/// `-use-gnu-stack`, also in that set: it puts BOLT's new segment in the
/// place of the `PT_GNU_STACK` header, and without that header the
/// process's stacks are executable (the hardened unit's
/// MemoryDenyWriteExecute then refuses every thread stack; see
/// [`check_stack`]).
const OPTIMISE: &[&str] = &[
    "-reorder-blocks=ext-tsp",
    "-reorder-functions=cdsort",
    "-split-functions",
    "-split-all-cold",
    "-split-eh",
    "-icf=safe",
];

/// `llvm-bolt` and `merge-fdata` of rustc's LLVM major version (Debian's
/// `bolt-N`, which `cargo xtask setup` installs).
pub struct Tools {
    bolt: PathBuf,
    merge: PathBuf,
    /// What names a rewrite: the tool's version and [`OPTIMISE`].
    recipe: u64,
}

impl Tools {
    /// Found before anything is built or trained: a missing tool fails
    /// the build at once, not after the profile-guided build's minutes.
    pub fn find() -> Result<Self> {
        let bolt = llvm_tool("llvm-bolt")?;
        let merge = llvm_tool("merge-fdata")?;
        let version = cmd::output(cmd::new(&bolt).arg("--version"))?;
        let mut recipe = DefaultHasher::new();
        (version, RELOCS, OPTIMISE).hash(&mut recipe);
        Ok(Self {
            bolt,
            merge,
            recipe: recipe.finish(),
        })
    }
}

/// Rewrites `binary` (linked with `--emit-relocs`) with a profile of the
/// training workload, in place; `data` holds the profile and the result.
pub fn optimise(tools: &Tools, root: &Path, data: &Path, binary: &Path) -> Result<()> {
    let Tools {
        bolt,
        merge,
        recipe,
    } = tools;
    let stamp = fs::metadata(binary)
        .and_then(|m| m.modified())
        .with_context(|| format!("the daemon binary {}", binary.display()))?
        .duration_since(UNIX_EPOCH)?
        .as_nanos();
    let dir = data.join("bolt");
    let kept = dir.join(format!("agentguard-{stamp}-{recipe:016x}"));
    let optimised = if kept.exists() {
        println!("bolt: the daemon is unchanged; using {}", kept.display());
        kept
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
            cmd::new(bolt)
                .arg(binary)
                .arg(RELOCS)
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
        let training = train(root, data, &instrumented, "bolt")?;
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
        cmd::run(cmd::new(merge).args(&profiles).arg("-o").arg(&merged))?;
        let profile = fs::read(&merged)?;
        if !profile
            .windows(HOT_SYMBOL.len())
            .any(|w| w == HOT_SYMBOL.as_bytes())
        {
            bail!(
                "the BOLT profile {} holds no daemon's counts (no {HOT_SYMBOL}): did the \
                 training's daemons exit cleanly?",
                merged.display()
            );
        }
        let writing = dir.join("agentguard.writing");
        cmd::run(
            cmd::new(bolt)
                .arg(binary)
                .arg(RELOCS)
                .arg(format!("-data={}", merged.display()))
                .args(OPTIMISE)
                .arg("-o")
                .arg(&writing),
        )?;
        check_stack(&writing)?;
        runs(&writing)?;
        fs::remove_file(&instrumented)?;
        if training == Training::Partial {
            // Not kept under the name the next build looks for: that one
            // trains again (see `profile_name` in release.rs).
            println!(
                "bolt: the profile lacks the failed scenarios; this build uses it, the next \
                 trains again"
            );
            writing
        } else {
            // On disk before it is named: a name is what says it is whole.
            fs::File::open(&writing)?.sync_all()?;
            fs::rename(&writing, &kept)?;
            kept
        }
    };
    // A copy renamed over cargo's hard link, which leaves `deps/` alone.
    let placing = binary.with_extension("bolt-placing");
    fs::copy(&optimised, &placing)?;
    fs::rename(&placing, binary)?;
    println!("bolt: {} optimised", binary.display());
    Ok(())
}

/// Strips the BOLT-rewritten `binary` in place with LLVM's strip, which
/// keeps it whole (see the module docs), and checks that it still runs.
pub fn strip(binary: &Path) -> Result<()> {
    cmd::run(cmd::new(llvm_tool("llvm-strip")?).arg(binary))?;
    check_stack(binary)?;
    runs(binary)
}

/// `TOOL-N` of rustc's LLVM major version N (Debian's `bolt-N` and
/// `llvm-N`, which `cargo xtask setup` installs).
fn llvm_tool(tool: &str) -> Result<PathBuf> {
    let major = llvm_major()?;
    let path = PathBuf::from(format!("/usr/bin/{tool}-{major}"));
    if !path.exists() {
        bail!(
            "{} not found: the release build runs LLVM's BOLT on the daemon (Debian \
             packages bolt-{major} and llvm-{major}, which `cargo xtask setup` installs); \
             install them, or pass --no-pgo",
            path.display()
        );
    }
    Ok(path)
}

/// Fails unless `binary --version` succeeds: a binary a rewrite broke
/// crashes at once.
fn runs(binary: &Path) -> Result<()> {
    cmd::output(cmd::new(binary).arg("--version")).map(drop)
}

/// ELF `PT_GNU_STACK` and the executable flag of a program header.
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;

/// Fails unless the ELF file at `path` (64-bit, little-endian, as
/// x86_64's) has a `PT_GNU_STACK` header without the executable flag:
/// without one, the kernel and glibc give the process executable stacks.
fn check_stack(path: &Path) -> Result<()> {
    let bytes = fs::read(path)?;
    let elf = Elf::new(&bytes, path)?;
    let phoff = elf.offset(0x20)?;
    let (phentsize, phnum) = (elf.u16(0x36)?, elf.u16(0x38)?);
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if elf.u32(header)? == PT_GNU_STACK {
            if elf.u32(header + 4)? & PF_X != 0 {
                bail!("{}: BOLT made the stack executable", path.display());
            }
            return Ok(());
        }
    }
    bail!(
        "{}: BOLT left no PT_GNU_STACK header (the stack would be executable)",
        path.display()
    )
}

/// The note section BOLT adds to every binary it rewrites.
const BOLT_NOTE: &[u8] = b".note.bolt_info";

/// Whether the ELF file at `path` was rewritten by BOLT: one of its
/// sections is BOLT's note (by the section's name, not by the bytes
/// anywhere in the file, which any program naming it would hold).
pub fn rewritten(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("the daemon binary {}", path.display()))?;
    let elf = Elf::new(&bytes, path)?;
    let shoff = elf.offset(0x28)?;
    let (shentsize, shnum, shstrndx) = (elf.u16(0x3a)?, elf.u16(0x3c)?, elf.u16(0x3e)?);
    // Section header fields: the name's offset in the name table (0x00),
    // the section's offset in the file (0x18).
    let names = elf.offset(shoff + shstrndx * shentsize + 0x18)?;
    for i in 0..shnum {
        let name = names + usize::try_from(elf.u32(shoff + i * shentsize)?)?;
        // A shorter name may end too near the file's end for the
        // comparison's length: it is not BOLT's, and no error.
        let named = elf.bytes(name, BOLT_NOTE.len() + 1).ok();
        if named.and_then(|n| n.strip_suffix(b"\0")) == Some(BOLT_NOTE) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A 64-bit little-endian ELF file's bytes, read field by field; a field
/// past the end is an error naming the file.
struct Elf<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> Elf<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Result<Self> {
        let elf = Self { bytes, path };
        if elf.bytes(0, 4)? != b"\x7fELF" {
            bail!("{}: not an ELF file", path.display());
        }
        Ok(elf)
    }

    fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8]> {
        at.checked_add(n)
            .and_then(|end| self.bytes.get(at..end))
            .with_context(|| format!("{}: not a whole ELF file", self.path.display()))
    }

    fn u16(&self, at: usize) -> Result<usize> {
        Ok(usize::from(u16::from_le_bytes(
            self.bytes(at, 2)?.try_into()?,
        )))
    }

    fn u32(&self, at: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into()?))
    }

    /// A 64-bit file offset.
    fn offset(&self, at: usize) -> Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            self.bytes(at, 8)?.try_into()?,
        ))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program header of this test binary's `PT_GNU_STACK`: where its
    /// type and flags are.
    fn gnu_stack_header(elf: &[u8]) -> usize {
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let phentsize = usize::from(u16::from_le_bytes(elf[0x36..0x38].try_into().unwrap()));
        let phnum = usize::from(u16::from_le_bytes(elf[0x38..0x3a].try_into().unwrap()));
        (0..phnum)
            .map(|i| phoff + i * phentsize)
            .find(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == PT_GNU_STACK)
            .expect("the test binary has a PT_GNU_STACK header")
    }

    #[test]
    fn only_a_binary_with_a_stack_that_is_not_executable_passes() {
        let dir = std::env::temp_dir().join(format!("xtask-bolt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let elf = fs::read("/proc/self/exe").unwrap();
        let header = gnu_stack_header(&elf);
        let write = |name: &str, elf: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, elf).unwrap();
            path
        };
        check_stack(&write("as-built", &elf)).unwrap();

        let mut executable = elf.clone();
        executable[header + 4] |= PF_X as u8;
        let e = check_stack(&write("executable", &executable)).unwrap_err();
        assert!(e.to_string().contains("made the stack executable"), "{e}");

        // What -use-gnu-stack does: the header becomes another one.
        let mut replaced = elf.clone();
        replaced[header..header + 4].copy_from_slice(&1u32.to_le_bytes());
        let e = check_stack(&write("replaced", &replaced)).unwrap_err();
        assert!(e.to_string().contains("no PT_GNU_STACK"), "{e}");

        let e = check_stack(&write("cut", &elf[..0x30])).unwrap_err();
        assert!(e.to_string().contains("not a whole ELF file"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A binary is taken for BOLT's by a section of that name, not by the
    /// name's bytes elsewhere: this test binary holds them (in
    /// `BOLT_NOTE`) and was not rewritten.
    #[test]
    fn a_rewritten_binary_is_told_by_its_section() {
        let dir = std::env::temp_dir().join(format!("xtask-bolt-note-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let elf = fs::read("/proc/self/exe").unwrap();
        let path = dir.join("as-built");
        fs::write(&path, &elf).unwrap();
        assert!(!rewritten(&path).unwrap());

        // Another section renamed BOLT's: `.gcc_except_table` (unwinding's
        // tables, in every binary that unwinds) is longer, so the new name
        // and its NUL fit where it was. Every copy of the name is
        // replaced, the section's among them.
        let other = b".gcc_except_table\0";
        let mut renamed = elf.clone();
        let mut at = 0;
        while let Some(found) = renamed[at..].windows(other.len()).position(|w| w == other) {
            let start = at + found;
            renamed[start..start + BOLT_NOTE.len() + 1]
                .copy_from_slice(&[BOLT_NOTE, b"\0"].concat());
            at = start + other.len();
        }
        assert!(at > 0, "the test binary has no .gcc_except_table");
        fs::write(&path, &renamed).unwrap();
        assert!(rewritten(&path).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
