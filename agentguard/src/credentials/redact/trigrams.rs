//! Which three-byte strings start near the beginning of a set's forms, one
//! bit each (hashed, so a bit may also stand for strings no form holds):
//! what lets the scan of a request's token ([`super::set::FormSet`]) look
//! at one position in `shortest - 2` of a text instead of every one. Built
//! when a set is first scanned: 1 KiB zeroed in place, a bit set for each
//! of the first strings of each form. (On the heap, 8 KiB zeroed took
//! mimalloc 10k instructions a request, more than the scan it saved.)

/// 2^13 bits: the forms of a request's token (22 characters of its
/// signature: 13 forms) start with at most 260 different strings of three
/// bytes (20 each), so at most one bit in 31 is set, and text that holds
/// none of them passes about one probe in 31 or fewer (each costing the
/// scan a look at 20 positions).
const BITS: usize = 1 << 13;

pub(super) struct Trigrams {
    bits: [u64; BITS / 64],
}

impl Trigrams {
    /// The strings of three bytes that start in the first `starts` bytes
    /// of each form.
    pub(super) fn new<'a>(forms: impl IntoIterator<Item = &'a [u8]>, starts: usize) -> Self {
        let mut bits = [0u64; BITS / 64];
        for form in forms {
            for three in form.windows(3).take(starts) {
                let slot = slot(three);
                bits[slot / 64] |= 1u64 << (slot % 64);
            }
        }
        Self { bits }
    }

    /// False only if no form holds `three` (the first three bytes given).
    pub(super) fn may_hold(&self, three: &[u8]) -> bool {
        let slot = slot(three);
        self.bits[slot / 64] & (1u64 << (slot % 64)) != 0
    }
}

/// The bit for `three`'s first three bytes: the top 13 bits of a
/// multiplicative hash (Knuth's), which spreads strings that differ in
/// any byte.
fn slot(three: &[u8]) -> usize {
    let word = u32::from(three[0]) | u32::from(three[1]) << 8 | u32::from(three[2]) << 16;
    (word.wrapping_mul(0x9E37_79B1) >> (32 - BITS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_first_three_bytes_of_every_form_and_few_others() {
        let forms: [&[u8]; 2] = [b"tok-abcdef-123456", b"%74%6F%6B"];
        let t = Trigrams::new(forms, usize::MAX);
        for form in forms {
            assert!(form.windows(3).all(|w| t.may_hold(w)));
        }
        let first = Trigrams::new(forms, 2);
        for form in forms {
            assert!(form.windows(3).take(2).all(|w| first.may_hold(w)));
        }
        assert!(
            !first.may_hold(b"abc"),
            "starts 4 bytes into the first form"
        );
        // Strings of lowercase letters and spaces that neither form
        // holds: the hash lets through at most a few.
        let letters = b"abcdefghijklmnopqrstuvwxyz ";
        let mut passed = 0;
        let mut tried = 0;
        for &a in letters {
            for &b in letters {
                for &c in letters {
                    let three = [a, b, c];
                    if forms.iter().any(|f| f.windows(3).any(|w| w == three)) {
                        continue;
                    }
                    tried += 1;
                    passed += usize::from(t.may_hold(&three));
                }
            }
        }
        assert!(passed * 100 < tried, "{passed} of {tried} passed");
    }
}
