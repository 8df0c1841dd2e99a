//! Percent-encoding (RFC 3986 §2.1), one codec for the whole crate, on the
//! `percent-encoding` crate: the request path the policy matches, query
//! parameters that carry a credential, placeholders hidden in escapes,
//! form bodies and the admin API's parameters all read and write escapes
//! the same way, so no two parts of agentguard can disagree on what a
//! request says.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};

/// Everything but the RFC 3986 §2.3 unreserved characters: safe in any
/// part of a URI, whatever a server's parser thinks `+`, `;` or `=` mean.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// As [`COMPONENT`], with the space left for [`encode_form`] to make `+`.
const FORM: &AsciiSet = &COMPONENT.remove(b' ');

/// RFC 3986 §3.3 pchar: unreserved characters, sub-delims, `:` and `@`
/// stay as they are.
const PATH_SEGMENT: &AsciiSet = &COMPONENT
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Encodes every byte but unreserved characters (upper-case hex).
pub fn encode(input: &str) -> String {
    utf8_percent_encode(input, COMPONENT).to_string()
}

/// `application/x-www-form-urlencoded` (the WHATWG serializer, which RFC
/// 6749 Appendix B points at): as [`encode`], but a space is `+`.
pub fn encode_form(input: &str) -> String {
    // Every '+' in the input is encoded (%2B), so the only ones left are
    // spaces.
    utf8_percent_encode(input, FORM)
        .to_string()
        .replace(' ', "+")
}

/// A path's segments and their `/` separators.
const PATH: &AsciiSet = &PATH_SEGMENT.remove(b'/');

/// Encodes one path segment canonically: what a segment may hold
/// unencoded (pchar) stays, everything else is encoded.
pub fn encode_path_segment(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

/// Whether every byte of `path` is one a canonical path holds as it is:
/// nothing in it is encoded, nothing needs to be.
pub fn is_canonical_path(path: &str) -> bool {
    // The encoder borrows the input when it changes nothing, but also
    // hands back a borrowed static `%XX` for an input of one byte it
    // encodes: only the input itself, whole, means unchanged.
    match std::borrow::Cow::from(utf8_percent_encode(path, PATH)) {
        std::borrow::Cow::Borrowed(out) => path.is_empty() || std::ptr::eq(out, path),
        std::borrow::Cow::Owned(_) => false,
    }
}

/// Decodes `%XX` escapes; malformed ones are kept as they are, as lenient
/// servers do.
pub fn decode(input: &[u8]) -> Vec<u8> {
    percent_decode(input).collect()
}

/// Decodes a form-encoded value (`+` is a space), as text.
pub fn decode_form(input: &str) -> String {
    String::from_utf8_lossy(&decode(input.replace('+', " ").as_bytes())).into_owned()
}

/// Decodes `%XX` escapes, or `None` if any `%` does not start one (two hex
/// digits): for input whose meaning must not depend on how leniently a
/// server reads it.
pub fn decode_strict(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    well_formed.then(|| decode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_those_the_encoding_leaves_alone() {
        for yes in ["", "/", "/v1/chat/completions", "/a;b=c/@x:y/~-._!$&'()*+,"] {
            assert!(is_canonical_path(yes), "{yes:?}");
        }
        // One byte to encode alone, as well as among others.
        for no in ["%", "\\", " ", "\x01", "\u{e9}", "/a%2f", "/a b", "/\u{e9}"] {
            assert!(!is_canonical_path(no), "{no:?}");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(encode("a b&c=d+é"), "a%20b%26c%3Dd%2B%C3%A9");
        assert_eq!(encode_form("a b:c+d"), "a+b%3Ac%2Bd");
        assert_eq!(
            encode_path_segment("a b:c@d;e=f%g/h"),
            "a%20b:c@d;e=f%25g%2Fh"
        );
    }

    #[test]
    fn lenient_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(decode(b"api%5fkey%5F%zz%4"), b"api_key_%zz%4");
        // An escape at the very end is one too.
        assert_eq!(decode(b"api_ke%79"), b"api_key");
        // A sign is not a hex digit ("+f" would parse as a number).
        assert_eq!(decode(b"%+f"), b"%+f");
        assert_eq!(decode_form("agent+one%2Btwo"), "agent one+two");
    }

    #[test]
    fn strict_decoding_refuses_malformed_escapes() {
        assert_eq!(decode_strict("a%2Fb%41").unwrap(), b"a/bA");
        assert_eq!(decode_strict("plain").unwrap(), b"plain");
        for bad in ["%", "%4", "%zz", "a%+f", "%-1", "%4g"] {
            assert_eq!(decode_strict(bad), None, "{bad}");
        }
    }
}
