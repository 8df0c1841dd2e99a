//! What the process-access program (agentguard-ebpf/src/process.rs) needs
//! from the running kernel: an active BPF LSM, and where to find a task's
//! cgroup, tgid, comm and system call number in the kernel's structs.
//!
//! A kernel built with CONFIG_BPF_LSM loads and attaches LSM programs even
//! when `bpf` is missing from its active LSMs (`lsm=` at boot), but then
//! never runs them: only `/sys/kernel/security/lsm` tells.

use std::{fs, path::Path};

use agentguard_common::{NO_OFFSET, TaskLayout};

use super::btf::{Btf, Field};

const SECURITYFS: &str = "/sys/kernel/security";

/// The kernel's active LSMs, in order, mounting securityfs first if it is
/// not mounted (many hosts mount it at boot; some, like these VMs, do not).
pub fn active_lsms() -> Result<Vec<String>, String> {
    let list = Path::new(SECURITYFS).join("lsm");
    if !list.exists() {
        nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            format!("cannot mount securityfs at {SECURITYFS} to read the active LSMs: {e}")
        })?;
    }
    let text = fs::read_to_string(&list).map_err(|e| format!("{}: {e}", list.display()))?;
    Ok(text.trim().split(',').map(str::to_owned).collect())
}

/// Whether the BPF LSM runs: `Err` says what is active instead.
pub fn require_bpf_lsm() -> Result<(), String> {
    let lsms = active_lsms()?;
    if lsms.iter().any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the BPF LSM is not active (active LSMs: {}); boot with lsm=...,bpf",
            lsms.join(",")
        ))
    }
}

/// The offsets, checked for the sizes the program reads.
pub fn task_layout(btf: &Btf) -> Result<TaskLayout, String> {
    let field = |strukt: &str, member: &str, size: u32| -> Result<u32, String> {
        let Field { offset, size: got } = btf.member(strukt, member)?;
        if got == size {
            Ok(offset)
        } else {
            Err(format!(
                "struct {strukt}.{member} is {got} bytes, the program reads {size}"
            ))
        }
    };
    // The register that holds the system call number: only for the
    // record, so a kernel without either name still guards.
    let regs_syscall = ["orig_ax", "syscallno"]
        .iter()
        .find_map(|m| field("pt_regs", m, 8).ok())
        .unwrap_or(NO_OFFSET);
    Ok(TaskLayout {
        task_cgroups: field("task_struct", "cgroups", 8)?,
        css_set_dfl_cgrp: field("css_set", "dfl_cgrp", 8)?,
        cgroup_kn: field("cgroup", "kn", 8)?,
        kernfs_node_id: field("kernfs_node", "id", 8)?,
        task_tgid: field("task_struct", "tgid", 4)?,
        task_comm: field("task_struct", "comm", agentguard_common::COMM_LEN as u32)?,
        regs_syscall,
        ready: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_what_the_program_reads() {
        let btf = Btf::read(Path::new(super::super::VMLINUX_BTF)).unwrap();
        let layout = task_layout(&btf).unwrap();
        assert_eq!(layout.ready, 1);
        // Offsets differ between kernels; that they are distinct and
        // inside their structs is what can be said of any of them.
        assert_ne!(layout.task_cgroups, layout.task_tgid);
        if cfg!(target_arch = "x86_64") {
            // struct pt_regs is UAPI on x86_64: orig_ax is the 16th word.
            assert_eq!(layout.regs_syscall, 15 * 8);
        }
    }
}
