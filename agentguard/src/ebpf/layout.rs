//! Checks, against the running kernel's BTF, the one kernel struct layout
//! the programs rely on without CO-RE: `struct bpf_sock_addr_kern`, which
//! the Unix-socket hooks read with bpf_probe_read_kernel (see
//! agentguard-ebpf/src/unix.rs). Were `uaddrlen` to move, the programs
//! could read a shorter length and match a prefix of the path an agent
//! dialled, so the daemon refuses to start instead.
//!
//! A minimal reader of the BTF format (Documentation/bpf/btf.rst): the
//! header, then the type section walked record by record to the struct.

use std::path::Path;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Where the programs expect each field (bytes), as in the kernel since
/// 6.7 (include/linux/filter.h).
pub const SOCK_ADDR_KERN: &str = "bpf_sock_addr_kern";
pub const EXPECTED: [(&str, u32); 2] = [("uaddr", 8), ("uaddrlen", 32)];

/// Byte offsets of `strukt`'s members, from the BTF in `btf`.
pub fn member_offsets(btf: &[u8], strukt: &str) -> Result<Vec<(String, u32)>, String> {
    let u16_at = |at: usize| -> Result<u16, String> {
        btf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated".to_owned())
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        btf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated".to_owned())
    };
    if u16_at(0)? != BTF_MAGIC {
        return Err("not little-endian BTF".into());
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let name = |off: u32| -> Result<&str, String> {
        let start = strings + off as usize;
        let tail = btf.get(start..).ok_or("string out of range")?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated string")?;
        std::str::from_utf8(&tail[..end]).map_err(|e| e.to_string())
    };
    let mut at = types;
    while at < types + type_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        if kind == KIND_STRUCT && name(name_off)? == strukt {
            let mut members = Vec::with_capacity(vlen);
            for m in 0..vlen {
                let rec = at + 12 * m;
                let offset = u32_at(rec + 8)?;
                // With kind_flag the low 24 bits are the bit offset.
                let bits = if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                };
                members.push((name(u32_at(rec)?)?.to_owned(), bits / 8));
            }
            return Ok(members);
        }
        at += match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
            other => return Err(format!("unknown BTF kind {other}")),
        };
    }
    Err(format!("struct {strukt} not found"))
}

/// Compares the running kernel's `bpf_sock_addr_kern` with [`EXPECTED`].
pub fn check_sock_addr_kern(vmlinux: &Path) -> Result<(), String> {
    let btf = std::fs::read(vmlinux).map_err(|e| format!("{}: {e}", vmlinux.display()))?;
    let members = member_offsets(&btf, SOCK_ADDR_KERN)?;
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

    /// The running kernel's BTF (every machine this runs on has it: the
    /// daemon requires it).
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    #[test]
    fn the_running_kernel_matches_the_programs() {
        check_sock_addr_kern(Path::new(VMLINUX)).unwrap();
        let btf = std::fs::read(VMLINUX).unwrap();
        // A struct whose layout is UAPI, as a check on the reader itself.
        let sockaddr_un = member_offsets(&btf, "sockaddr_un").unwrap();
        assert_eq!(
            sockaddr_un,
            vec![("sun_family".to_owned(), 0), ("sun_path".to_owned(), 2)]
        );
        assert!(member_offsets(&btf, "no_such_struct_agentguard").is_err());
        assert!(member_offsets(b"\x00\x00garbage", "x").is_err());
    }
}
