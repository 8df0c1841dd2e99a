//! A bpf_link for the cgroup/setsockopt program that can be pinned like the
//! others. aya 0.14 attaches cgroup sockopt programs with a bpf_link but,
//! unlike the other cgroup program types, gives no way to turn that link
//! into an [`FdLink`], so it could not be pinned: a daemon crash would
//! detach it. Here the link is made with BPF_LINK_CREATE and pinned with
//! BPF_OBJ_PIN (include/uapi/linux/bpf.h), then adopted through aya's
//! [`PinnedLink`], after which it is handled exactly like every other link.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::programs::links::{FdLink, PinnedLink};
use nix::libc;

/// enum bpf_cmd.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// enum bpf_attach_type: BPF_CGROUP_SETSOCKOPT.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// `union bpf_attr`, as large as the kernel's today; the fields used are at
/// the start and the rest stays zero, as the kernel requires.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr-sized buffer that lives
    // across the call; the size passed is its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Attaches `prog` to `cgroup` as `attach_type` with a new bpf_link, pins
/// it at `scratch` only long enough to hand it to aya, and returns it.
pub fn attach(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    scratch: &Path,
) -> io::Result<FdLink> {
    // link_create: prog_fd, target_fd, attach_type, flags (0: the kernel
    // always attaches links as BPF_F_ALLOW_MULTI).
    let mut attr = BpfAttr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32);
    attr.put_u32(4, cgroup.as_raw_fd() as u32);
    attr.put_u32(8, attach_type);
    let raw = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we now own.
    let link = unsafe { OwnedFd::from_raw_fd(raw as i32) };

    let path = CString::new(scratch.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // obj_pin: pathname (a pointer), bpf_fd.
    let mut attr = BpfAttr::new();
    attr.put_u64(0, path.as_ptr() as u64);
    attr.put_u32(8, link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    // Dropping `link` afterwards is fine: aya's FdLink holds its own fd.
    PinnedLink::from_pin(scratch)
        .map_err(io::Error::other)?
        .unpin()
}
