//! The hash chain that makes the store tamper-evident.
//!
//! Each event row stores `prev_hash` (the previous row's `hash`) and `hash`:
//!
//! ```text
//! hash = SHA-256( "agentguard-audit-v1\n"
//!               || seq        as 8 bytes, big-endian, two's complement
//!               || prev_hash  as 32 raw bytes
//!               || for each base column (event::BASE_COLUMNS, in order):
//!                    value(v)
//!               || for each extension column whose value is not NULL, in order:
//!                    0x03 || length of its name as 1 byte || name || value(v) )
//!
//! value(v) = NULL     -> 0x00
//!            INTEGER  -> 0x01 || 8 bytes big-endian
//!            TEXT     -> 0x02 || length as 4 bytes big-endian || UTF-8 bytes
//! ```
//!
//! Extension columns are the ones added after the chain's first version
//! (`traceparent`, ...). A row in which they are all NULL, as in every row
//! written before they existed, hashes exactly as it did then, so a store
//! from an older agentguard still verifies after an upgrade. A set
//! extension value is tagged with its column's name, a byte (0x03) no base
//! value starts with, so it cannot pass for another column's or a base one.
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

use super::event::{BASE_COLUMNS, COLUMNS};

pub type Hash = [u8; 32];

/// `prev_hash` of the very first event.
pub const GENESIS: Hash = [0; 32];

const DOMAIN: &[u8] = b"agentguard-audit-v1\n";

/// The hash of the row `seq` holding `values` (in [`COLUMNS`] order). `Err`
/// names a value of a type the store never writes (REAL, BLOB): that row was
/// not written by agentguard.
pub fn hash_row(seq: i64, prev: &Hash, values: &[Value]) -> Result<Hash, String> {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    let base = values.len().min(BASE_COLUMNS);
    for v in &values[..base] {
        hash_value(&mut h, v)?;
    }
    for (v, name) in values[base..].iter().zip(&COLUMNS[BASE_COLUMNS..]) {
        if *v == Value::Null {
            continue;
        }
        h.update([EXTENSION_TAG]);
        // Column names are short identifiers (a test checks).
        h.update([name.len() as u8]);
        h.update(name.as_bytes());
        hash_value(&mut h, v)?;
    }
    Ok(h.finalize().into())
}

/// Opens a set extension column's entry; base values open with 0, 1 or 2.
const EXTENSION_TAG: u8 = 3;

fn hash_value(h: &mut Sha256, v: &Value) -> Result<(), String> {
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
    Ok(())
}

pub fn to_hex(h: &Hash) -> String {
    // Into a buffer, not hex::encode: that collects a String char by
    // char (measured: 1.4% of the full path's instructions, for the two
    // hashes of each record).
    let mut buf = [0u8; 64];
    hex::encode_to_slice(h, &mut buf).expect("64 hex digits for 32 bytes");
    String::from_utf8(buf.to_vec()).expect("hex digits are ASCII")
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

    /// The row hash of the chain's first version, for a row of every base
    /// column, computed by agentguard before extension columns existed
    /// (commit e057790): a row without extension values must keep it.
    #[test]
    fn rows_without_extension_values_hash_as_in_the_first_version() {
        let mut values: Vec<Value> = (0..BASE_COLUMNS as i64)
            .map(|i| {
                if i % 3 == 0 {
                    Value::Null
                } else if i % 3 == 1 {
                    Value::Integer(i * 1000)
                } else {
                    text(&format!("column {i}"))
                }
            })
            .collect();
        let v1 = "1984f121e0b1637c43f7b6c15df56d2690d631a375e31f18b596a4f076ce9340";
        assert_eq!(to_hex(&hash_row(42, &[9; 32], &values).unwrap()), v1);
        // With the extension columns present but NULL: the same.
        values.extend((BASE_COLUMNS..COLUMNS.len()).map(|_| Value::Null));
        assert_eq!(to_hex(&hash_row(42, &[9; 32], &values).unwrap()), v1);
        // A set extension value changes it, and differs per column name
        // and from the same text in a base column.
        let mut traced = values.clone();
        traced[BASE_COLUMNS] = text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let with = hash_row(42, &[9; 32], &traced).unwrap();
        assert_ne!(to_hex(&with), v1);
        assert!(COLUMNS.iter().all(|c| c.len() < 256));
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
