//! Base64 for credentials, on the `base64` crate: the standard alphabet with
//! padding for HTTP Basic (RFC 7617 §2), and a lenient decoder to look
//! inside Basic credentials for placeholders. Percent-encoding is
//! [`crate::percent`].

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};

/// Standard alphabet; padding or not, and stray bits after the last whole
/// byte allowed: what lenient servers accept.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Base64, standard alphabet, with padding (RFC 4648 §4), as HTTP Basic
/// needs (RFC 7617 §2).
pub(super) fn base64_encode(input: &[u8]) -> String {
    STANDARD.encode(input)
}

/// Decodes standard base64, leniently. `None` on anything else: it is only
/// used to look inside `Authorization: Basic` for placeholders, where junk
/// is simply not looked into, and what a lenient server would still read
/// must be looked into: any padding is dropped, and so is a last character
/// that holds no whole byte.
pub(super) fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let input = input
        .strip_suffix(b"==")
        .or(input.strip_suffix(b"="))
        .unwrap_or(input);
    let input = match input.len() % 4 {
        1 => &input[..input.len() - 1],
        _ => input,
    };
    LENIENT.decode(input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        // RFC 4648 §10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
        assert!(base64_decode(b"not base64!").is_none());
    }

    #[test]
    fn decoding_is_as_lenient_as_lenient_servers() {
        // Padding missing, short, or a stray last character.
        assert_eq!(base64_decode(b"Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode(b"Zm9vYg=").unwrap(), b"foob");
        assert_eq!(base64_decode(b"Zm9vY").unwrap(), b"foo");
        // Bits after the last whole byte that a strict decoder wants zero.
        assert_eq!(base64_decode(b"Zm9vYh==").unwrap(), b"foob");
        // Padding in the middle is not base64.
        assert!(base64_decode(b"Zg==Zg==").is_none());
    }
}
