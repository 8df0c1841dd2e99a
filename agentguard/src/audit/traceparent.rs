//! The W3C Trace Context `traceparent` header
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>), checked
//! before it enters the record: the agent writes it, so only a well-formed
//! value is kept, never arbitrary text under a trusted-looking name.

/// `version-traceid-parentid-flags`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const LEN: usize = 55;

/// The parts of a well-formed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The value to record for a request's `traceparent` header: the header
/// itself when well formed (for a future version, its first 55 characters,
/// the part this version defines), else `None`.
pub fn normalise(value: &[u8]) -> Option<String> {
    parse(value)?;
    // parse() accepted only ASCII hex digits and dashes in the first 55.
    std::str::from_utf8(&value[..LEN]).ok().map(str::to_owned)
}

/// Parses a `traceparent` as §3.2 and §4.3 (versioning) specify: lowercase
/// hex, version `ff` invalid, trace and parent ids not all zero, exactly 55
/// characters for version 00, and for a later version at least 55 with a
/// `-` after them.
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    if value.len() < LEN {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if version == 0 && value.len() != LEN {
        return None;
    }
    if value.len() > LEN && value[LEN] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        flags,
    })
}

/// Two lowercase hex digits (the spec allows no uppercase).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_specs_example_parses() {
        let t = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t.trace_id[0], 0x0a);
        assert_eq!(t.span_id[7], 0x31);
        assert_eq!(t.flags, 1);
        assert_eq!(normalise(GOOD.as_bytes()).as_deref(), Some(GOOD));
    }

    #[test]
    fn malformed_values_are_not_kept() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            assert_eq!(normalise(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_keeps_the_part_this_one_defines() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future";
        assert_eq!(
            normalise(later.as_bytes()).as_deref(),
            Some("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
}
