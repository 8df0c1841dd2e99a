//! The hash chain that makes the store tamper-evident.
//!
//! Each event row stores `prev_hash` (the previous row's `hash`) and `hash`:
//!
//! ```text
//! hash = SHA-256( "agentguard-audit-v1\n"
//!               || seq        as 8 bytes, big-endian, two's complement
//!               || prev_hash  as 32 raw bytes
//!               || for each column in event::COLUMNS order:
//!                    NULL     -> 0x00
//!                    INTEGER  -> 0x01 || 8 bytes big-endian
//!                    TEXT     -> 0x02 || length as 4 bytes big-endian || UTF-8 bytes )
//! ```
//!
//! Every value is typed and length-prefixed, so no two different rows
//! serialise alike (no `"ab"+"c"` vs `"a"+"bc"` ambiguity), and `seq` and
//! `prev_hash` are inside the hash, so a row moved, removed or edited breaks
//! the chain at that sequence number. The first event's `prev_hash` is 32
//! zero bytes ([`GENESIS`]); after retention removed old events, it is the
//! hash of the signed checkpoint they ended at (the anchor). Hashes are stored
//! as lowercase hex, so that `sqlite3` shows them readably.

use rusqlite::types::Value;
use sha2::{Digest as _, Sha256};

pub type Hash = [u8; 32];

/// `prev_hash` of the very first event.
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"agentguard-audit-v1\n";

/// The hash of the row `seq` holding `values` (in [`super::event::COLUMNS`]
/// order). `Err` names a value of a type the store never writes (REAL, BLOB):
/// that row was not written by agentguard.
pub fn hash_row(seq: i64, prev: &Hash, values: &[Value]) -> Result<Hash, String> {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    for v in values {
        match v {
            Value::Null => h.update([0u8]),
            Value::Integer(n) => {
                h.update([1u8]);
                h.update(n.to_be_bytes());
            }
            Value::Text(s) => {
                h.update([2u8]);
                let len = u32::try_from(s.len()).map_err(|_| "text value over 4 GiB")?;
                h.update(len.to_be_bytes());
                h.update(s.as_bytes());
            }
            Value::Real(_) => return Err("a REAL value, which agentguard never writes".into()),
            Value::Blob(_) => return Err("a BLOB value, which agentguard never writes".into()),
        }
    }
    Ok(h.finalize().into())
}

pub fn to_hex(h: &Hash) -> String {
    hex::encode(h)
}

pub fn from_hex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn hash_covers_seq_prev_and_every_value() {
        let values = vec![text("a"), Value::Null, Value::Integer(7)];
        let base = hash_row(1, &GENESIS, &values).unwrap();
        assert_ne!(base, hash_row(2, &GENESIS, &values).unwrap());
        assert_ne!(base, hash_row(1, &[1; 32], &values).unwrap());
        let edited = vec![text("a"), Value::Null, Value::Integer(8)];
        assert_ne!(base, hash_row(1, &GENESIS, &edited).unwrap());
        // NULL and the empty string differ; so do split points.
        assert_ne!(
            hash_row(1, &GENESIS, &[Value::Null]).unwrap(),
            hash_row(1, &GENESIS, &[text("")]).unwrap()
        );
        assert_ne!(
            hash_row(1, &GENESIS, &[text("ab"), text("c")]).unwrap(),
            hash_row(1, &GENESIS, &[text("a"), text("bc")]).unwrap()
        );
        assert!(hash_row(1, &GENESIS, &[Value::Real(1.0)]).is_err());
    }

    #[test]
    fn hex_round_trips() {
        let h = hash_row(1, &GENESIS, &[]).unwrap();
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        // A sign is not a hex digit, though u8::from_str_radix takes one.
        assert_eq!(from_hex(&"+f".repeat(32)), None);
        assert_eq!(from_hex(&to_hex(&h).to_uppercase()), Some(h));
    }
}
