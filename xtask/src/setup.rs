//! `cargo xtask setup`: install everything building and testing agentguard needs.
//!
//! A fresh machine has none of it, and every step is idempotent: each checks
//! first and prints either that the thing is present or what it installs, so
//! `run` and `test` can call setup every time at little cost.

pub mod apt;
mod bpf_linker;
mod bpffs;
mod cargo_deb;
mod cargo_fuzz;
mod kubernetes;
mod npm;
mod runtimes;
mod toolchain;

use anyhow::Result;

/// LLVM for bpf-linker to link against, and its BOLT for the release build
/// (xtask/src/release/bolt.rs). It must be the LLVM major rustc uses (22 for
/// rustc 1.95), or the linker cannot read the bitcode rustc emits for the bpf
/// target. Debian's bookworm-security carries these.
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "bolt-22"];

/// What the end-to-end tests drive: curl as an unmodified client, `ip` (iproute2)
/// for network namespaces, `setpriv` (util-linux) to run agents as another uid,
/// the `sqlite3` shell, with which the audit tests tamper with the store the
/// way an intruder (or an auditor reading it) would; `redis-server`, the
/// replay cache verify-proxy replicas share (the tests start their own on a
/// loopback port); `prometheus` for `promtool check metrics` on the
/// metrics exposition; `nft` (nftables), with which a test drops packets
/// inside a network namespace of its own (a handshake the proxy's side
/// never completes); and, for the web view's browser test, Debian's
/// `chromium` and `libnss3-tools` (`certutil`, with which the test trusts
/// agentguard's CA in the browser's NSS database, as a user would).
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "iproute2",
    "nftables",
    "util-linux",
    "sqlite3",
    "redis-server",
    "prometheus",
    "chromium",
    "libnss3-tools",
];

/// What the service tests and the package need, installed without
/// recommendations (see `Apt::ensure_without_recommends`):
/// `systemd-analyze` (systemd) verifies the shipped units; `man` (man-db)
/// is what it checks their `Documentation=` pages with; `dpkg-deb` and
/// `deb-systemd-helper` (dpkg, init-system-helpers) build and install the
/// Debian package; debootstrap and systemd-nspawn (systemd-container) make
/// and boot the Debian container its units are tested in under a real
/// systemd, debootstrap checking the archive's signature with gpgv and
/// debian-archive-keyring (recommendations of debootstrap, so named here).
pub const SERVICE_PACKAGES: &[&str] = &[
    "systemd",
    "man-db",
    "dpkg",
    "init-system-helpers",
    "debootstrap",
    "gpgv",
    "debian-archive-keyring",
    "systemd-container",
];

/// A real container runtime for the container tests: Podman, with runc as
/// its OCI runtime. (Debian's Podman brings crun, which refuses to start
/// any container on a host whose cgroup v2 hierarchy holds controllers in
/// hybrid mode, as these machines' does ("cgroups in hybrid mode not
/// supported, drop all controllers from cgroupv2"); runc runs there and
/// puts the container in the v2 hierarchy under `--cgroup-parent`.)
const CONTAINER_PACKAGES: &[&str] = &["podman", "runc"];

/// Docker (Debian's dockerd, containerd and client) for the Docker test,
/// which starts a dockerd of its own; without recommends (git, apparmor
/// and the rest are not needed to run a container).
const DOCKER_PACKAGES: &[&str] = &["docker.io"];

/// A Kubernetes node's runtime without the kubelet, for the pod test:
/// containerd (its CRI plugin), the CNI plugins it sets a pod's loopback
/// up with, and protoc, with which the test's CRI client (k8s-cri, the
/// kubelet's side of the API generated from Kubernetes' api.proto) is
/// built. Without recommends.
const CRI_PACKAGES: &[&str] = &[
    "containerd",
    "containernetworking-plugins",
    "protobuf-compiler",
];

pub fn run() -> Result<()> {
    toolchain::ensure()?;
    let mut apt = apt::Apt::default();
    apt.ensure(LLVM_PACKAGES)?;
    // After the LLVM packages: building bpf-linker links against them.
    bpf_linker::ensure()?;
    // After the toolchain: the fuzz targets build with nightly.
    cargo_fuzz::ensure()?;
    apt.ensure(TEST_PACKAGES)?;
    apt.ensure_without_recommends(SERVICE_PACKAGES)?;
    apt.ensure(CONTAINER_PACKAGES)?;
    apt.ensure_without_recommends(DOCKER_PACKAGES)?;
    apt.ensure_without_recommends(CRI_PACKAGES)?;
    cargo_deb::ensure()?;
    runtimes::check()?;
    // After the runtimes: kubernetes-validate installs with pip.
    kubernetes::ensure(&mut apt)?;
    // After the runtimes: npm comes with node.
    npm::ensure()?;
    bpffs::ensure()?;
    println!("setup: done");
    Ok(())
}
