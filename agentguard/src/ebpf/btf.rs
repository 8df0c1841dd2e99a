//! A minimal reader of the kernel's BTF (Documentation/bpf/btf.rst): enough
//! to find where a struct's member sits and how large it is. The kernel
//! programs are written in Rust without CO-RE, so the few kernel structs
//! they read with bpf_probe_read_kernel are located here, in user space,
//! from the running kernel's own description of itself.

use std::path::Path;

const BTF_MAGIC: u16 = 0xeb9f;

/// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: its header and where its trailing data starts.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Byte offset of the data after the 12-byte header.
    data: usize,
}

/// A member found by [`Btf::member`]: its byte offset from the start of
/// the outer struct, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    bytes: Vec<u8>,
    strings: usize,
    /// Type id `n` is `types[n - 1]` (id 0 is void).
    types: Vec<Type>,
}

impl Btf {
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self, String> {
        let mut btf = Self {
            bytes,
            strings: 0,
            types: Vec::new(),
        };
        if btf.u16_at(0)? != BTF_MAGIC {
            return Err("not little-endian BTF".into());
        }
        let hdr_len = btf.u32_at(4)? as usize;
        let (type_off, type_len) = (btf.u32_at(8)? as usize, btf.u32_at(12)? as usize);
        btf.strings = hdr_len + btf.u32_at(16)? as usize;
        let start = hdr_len + type_off;
        let mut at = start;
        while at < start + type_len {
            let (name_off, info, size_or_type) =
                (btf.u32_at(at)?, btf.u32_at(at + 4)?, btf.u32_at(at + 8)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            at += 12;
            btf.types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                data: at,
            });
            at += match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
                other => return Err(format!("unknown BTF kind {other}")),
            };
        }
        Ok(btf)
    }

    fn u16_at(&self, at: usize) -> Result<u16, String> {
        self.bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated".to_owned())
    }

    fn u32_at(&self, at: usize) -> Result<u32, String> {
        self.bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated".to_owned())
    }

    fn name(&self, off: u32) -> Result<&str, String> {
        let start = self.strings + off as usize;
        let tail = self.bytes.get(start..).ok_or("string out of range")?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated string")?;
        std::str::from_utf8(&tail[..end]).map_err(|e| e.to_string())
    }

    fn ty(&self, id: u32) -> Result<Type, String> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .copied()
            .ok_or_else(|| format!("BTF type id {id} out of range"))
    }

    fn find_struct(&self, name: &str) -> Result<Type, String> {
        for t in &self.types {
            if t.kind == KIND_STRUCT && self.name(t.name_off)? == name {
                return Ok(*t);
            }
        }
        Err(format!("struct {name} not found"))
    }

    /// (name, byte offset, type id) of each direct member of `t`.
    fn members(&self, t: Type) -> Result<Vec<(String, u32, u32)>, String> {
        let mut out = Vec::with_capacity(t.vlen);
        for m in 0..t.vlen {
            let rec = t.data + 12 * m;
            let offset = self.u32_at(rec + 8)?;
            // With kind_flag the low 24 bits are the bit offset.
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            out.push((
                self.name(self.u32_at(rec)?)?.to_owned(),
                bits / 8,
                self.u32_at(rec + 4)?,
            ));
        }
        Ok(out)
    }

    /// Byte offsets of `strukt`'s direct members.
    pub fn member_offsets(&self, strukt: &str) -> Result<Vec<(String, u32)>, String> {
        let t = self.find_struct(strukt)?;
        Ok(self
            .members(t)?
            .into_iter()
            .map(|(name, offset, _)| (name, offset))
            .collect())
    }

    /// Where `strukt.member` is, looking through anonymous struct and union
    /// members (as the kernel's own code sees them).
    pub fn member(&self, strukt: &str, member: &str) -> Result<Field, String> {
        let t = self.find_struct(strukt)?;
        self.find_member(t, member)?
            .ok_or_else(|| format!("struct {strukt} has no field {member}"))
    }

    fn find_member(&self, t: Type, member: &str) -> Result<Option<Field>, String> {
        for (name, offset, type_id) in self.members(t)? {
            if name == member {
                return Ok(Some(Field {
                    offset,
                    size: self.size_of(type_id)?,
                }));
            }
            if name.is_empty() {
                let inner = self.ty(self.resolve(type_id)?)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(f) = self.find_member(inner, member)?
                {
                    return Ok(Some(Field {
                        offset: offset + f.offset,
                        size: f.size,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(format!("BTF type {id}: too many typedefs"))
    }

    fn size_of(&self, id: u32) -> Result<u32, String> {
        let t = self.ty(self.resolve(id)?)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Ok(t.size_or_type),
            KIND_PTR => Ok(8),
            KIND_ARRAY => {
                let elem = self.u32_at(t.data)?;
                let n = self.u32_at(t.data + 8)?;
                Ok(self.size_of(elem)? * n)
            }
            k => Err(format!("BTF type {id} (kind {k}) has no size")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF (every machine this runs on has it: the
    /// daemon requires it).
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    #[test]
    fn reads_uapi_structs_of_the_running_kernel() {
        let btf = Btf::read(Path::new(VMLINUX)).unwrap();
        // Structs whose layout is UAPI, as a check on the reader itself.
        assert_eq!(
            btf.member_offsets("sockaddr_un").unwrap(),
            vec![("sun_family".to_owned(), 0), ("sun_path".to_owned(), 2)]
        );
        assert_eq!(
            btf.member("sockaddr_un", "sun_path").unwrap(),
            Field {
                offset: 2,
                size: 108
            }
        );
        // bpf_sock_addr (UAPI) holds `sk` in an anonymous union
        // (__bpf_md_ptr), 8-aligned after 15 u32 fields.
        assert_eq!(
            btf.member("bpf_sock_addr", "sk").unwrap(),
            Field {
                offset: 64,
                size: 8
            }
        );
        assert!(btf.member("sockaddr_un", "no_such_field").is_err());
        assert!(btf.member_offsets("no_such_struct_agentguard").is_err());
        assert!(Btf::parse(b"\x00\x00garbage".to_vec()).is_err());
    }
}
