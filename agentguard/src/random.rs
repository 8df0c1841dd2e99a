//! System randomness for the ids made per request (audit event ids, the
//! jti of request-bound tokens), drawn from a per-thread buffer refilled
//! by one `getrandom` call per [`BATCH`] bytes: a system call for each
//! id's few bytes showed in profiles of every request.
//!
//! The bytes are the kernel's CSPRNG output, as a direct call would give;
//! each is handed out once and erased from the buffer as it is.

use std::cell::RefCell;

/// Bytes fetched per `getrandom` call.
const BATCH: usize = 4096;

/// Fills `out` (at most [`BATCH`] bytes) with system randomness, or fails
/// if the system RNG does; nothing is filled then, and the next call asks
/// the system again.
pub fn fill(out: &mut [u8]) -> Result<(), getrandom::Error> {
    assert!(
        out.len() <= BATCH,
        "random::fill takes at most {BATCH} bytes"
    );
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with_borrow_mut(|(buf, used)| {
        if buf.len() < BATCH || *used + out.len() > buf.len() {
            buf.resize(BATCH, 0);
            if let Err(e) = getrandom::fill(buf) {
                // Nothing of a failed fill is ever handed out.
                buf.clear();
                return Err(e);
            }
            *used = 0;
        }
        out.copy_from_slice(&buf[*used..*used + out.len()]);
        // Used bytes are erased: no later reader of the buffer sees them.
        buf[*used..*used + out.len()].fill(0);
        *used += out.len();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_never_handed_out_twice() {
        // Across several refills: 16-byte draws, as a jti takes.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * BATCH / 16) {
            let mut b = [0u8; 16];
            fill(&mut b).unwrap();
            assert_ne!(b, [0u8; 16]);
            assert!(seen.insert(b), "a draw repeated");
        }
    }
}
