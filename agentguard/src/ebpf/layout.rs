//! Checks, against the running kernel's BTF, the one kernel struct layout
//! the programs rely on without CO-RE: `struct bpf_sock_addr_kern`, which
//! the Unix-socket hooks read with bpf_probe_read_kernel (see
//! agentguard-ebpf/src/unix.rs). Were `uaddrlen` to move, the programs
//! could read a shorter length and match a prefix of the path an agent
//! dialled, so the daemon refuses to start instead.

use super::btf::Btf;

/// Where the programs expect each field (bytes), as in the kernel since
/// 6.7 (include/linux/filter.h).
pub const SOCK_ADDR_KERN: &str = "bpf_sock_addr_kern";
pub const EXPECTED: [(&str, u32); 2] = [("uaddr", 8), ("uaddrlen", 32)];

/// Compares the running kernel's `bpf_sock_addr_kern` with [`EXPECTED`].
pub fn check_sock_addr_kern(btf: &Btf) -> Result<(), String> {
    let members = btf.member_offsets(SOCK_ADDR_KERN)?;
    for (field, want) in EXPECTED {
        match members.iter().find(|(n, _)| n == field) {
            Some((_, got)) if *got == want => {}
            Some((_, got)) => {
                return Err(format!(
                    "struct {SOCK_ADDR_KERN}.{field} is at byte {got}, the programs read byte {want}"
                ));
            }
            None => return Err(format!("struct {SOCK_ADDR_KERN} has no field {field}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_matches_the_programs() {
        let btf = Btf::read(std::path::Path::new(super::super::VMLINUX_BTF)).unwrap();
        check_sock_addr_kern(&btf).unwrap();
    }
}
