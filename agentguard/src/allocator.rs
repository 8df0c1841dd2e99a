//! The daemon's allocator: mimalloc, asked for an explicit alignment only
//! where its plain allocation would not already give it.
//!
//! The proxy allocates per request (headers, audit events, TLS buffers) from
//! several threads; glibc's malloc spent 17% of the daemon's CPU on it, in
//! the profile of `cargo xtask bench`, and mimalloc (Microsoft's allocator,
//! the usual choice for Rust servers) much less.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every
//! layout. mimalloc serves that from its fast path only for blocks up to
//! 1 KiB or of a power-of-two size; any other larger block (a 1,500-byte
//! header buffer, a 16 KiB + 5 TLS record) it over-allocates by the
//! alignment and marks its page as holding shifted blocks, which costs on
//! `mi_malloc` and on every later `mi_free` in that page: ~8 such
//! allocations and ~2.2k instructions a request on the full path
//! (callgrind). Plain `mi_malloc` already returns blocks aligned to 16
//! bytes whenever the size is at least 16 (its size classes are multiples
//! of 16 from there, and its pages start 16-aligned), and to 8 bytes
//! below that, the same guarantee std's `System` allocator relies on for
//! glibc; so a layout whose alignment is at most 16 and at most its size
//! needs nothing more.

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys as mi;

/// mimalloc's `MI_MAX_ALIGN_SIZE` on x86_64 and aarch64: what every block
/// of at least this size is aligned to.
const PLAIN_ALIGNMENT: usize = 16;

/// mimalloc as the global allocator.
pub struct MiMalloc;

/// Whether `mi_malloc(size)` is aligned enough for `align`.
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGNMENT && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it; `mi_free`
// and `mi_realloc*` take blocks from either entry point (mimalloc finds the
// start of an over-allocated block itself), and each allocation is aligned
// as its layout asks, by `plain_is_aligned` or by the aligned entry point.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size; the
        // aligned one any power-of-two alignment, which `Layout` ensures.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a block this allocator returned; the new block
        // keeps the layout's alignment, checked against the new size.
        unsafe {
            if plain_is_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout gets a block aligned as it asks, whichever entry point
    /// served it, through growth and shrinking by `realloc` (which must
    /// keep the contents), for the sizes around mimalloc's class borders.
    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        let sizes = [
            1, 7, 8, 9, 15, 16, 17, 24, 40, 100, 1000, 1024, 1025, 1500, 4096, 16_389, 70_000,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // SAFETY: a non-zero size; each block is freed once
                    // with the layout it has at that point.
                    unsafe {
                        let p = if zeroed {
                            MiMalloc.alloc_zeroed(layout)
                        } else {
                            MiMalloc.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            let block = std::slice::from_raw_parts(p, size);
                            assert!(block.iter().all(|&b| b == 0), "size {size}");
                        }
                        std::ptr::write_bytes(p, 0xA5, size);
                        let mut current = (p, size);
                        for &new_size in &sizes {
                            let q = MiMalloc.realloc(
                                current.0,
                                Layout::from_size_align(current.1, align).unwrap(),
                                new_size,
                            );
                            assert!(!q.is_null());
                            assert_eq!(
                                q as usize % align,
                                0,
                                "realloc {} -> {new_size} align {align}",
                                current.1
                            );
                            let kept = current.1.min(new_size);
                            let block = std::slice::from_raw_parts(q, kept);
                            assert!(
                                block.iter().all(|&b| b == 0xA5),
                                "realloc {} -> {new_size}",
                                current.1
                            );
                            std::ptr::write_bytes(q, 0xA5, new_size);
                            current = (q, new_size);
                        }
                        MiMalloc.dealloc(
                            current.0,
                            Layout::from_size_align(current.1, align).unwrap(),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_small_alignments_take_the_plain_entry_point() {
        assert!(plain_is_aligned(16, 16));
        assert!(plain_is_aligned(1500, 8));
        assert!(plain_is_aligned(8, 8));
        // Below 16 bytes mimalloc aligns to 8 only.
        assert!(!plain_is_aligned(8, 16));
        assert!(!plain_is_aligned(4096, 32));
    }
}
