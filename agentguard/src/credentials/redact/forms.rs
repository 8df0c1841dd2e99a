//! The forms in which a secret comes back from an upstream without anyone
//! having to work for it: what agentguard itself produces (the raw value,
//! HTTP Basic's base64, a percent-encoded query parameter) and what common
//! servers and libraries turn a value into when they echo it (JSON string
//! escapes of the usual encoders, percent-encoding as the usual URL
//! encoders do it, base64 and hex dumps).
//!
//! Each form is a byte string to look for. Encoders disagree on details
//! (which characters to escape, upper- or lowercase hex), so each family
//! gives one form per choice that real encoders make; for a secret of
//! letters and digits most of them are the same and collapse.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};

/// Base64 forms shorter than this are not looked for: a few base64
/// characters occur by chance in any token or hash. Secrets of six bytes and
/// more give forms at least this long at every alignment.
const MIN_BASE64_FORM: usize = 6;

/// Room for the forms of a request's token (22 base64url characters):
/// 13, and 5 more for each alignment of its standard base64 that holds a
/// `+` or `/`.
const FORMS_OF_A_TOKEN: usize = 20;

/// Every form of `secret`, possibly with repeats.
pub(super) fn forms(secret: &str) -> Vec<Vec<u8>> {
    let raw = secret.as_bytes();
    let mut out = Vec::with_capacity(FORMS_OF_A_TOKEN);
    out.push(raw.to_vec());
    // The JSON string of most secrets is the secret itself.
    out.extend(json_forms(secret).into_iter().filter(|f| f != raw));
    out.extend(percent_forms(raw));
    out.push(per_byte_hex(raw, b"", HEX_LOWER));
    out.push(per_byte_hex(raw, b"", HEX_UPPER));
    for core in base64_cores(raw) {
        out.extend(escaped_base64(&core));
        out.push(core);
    }
    out
}

/// Base64 in a URL or a JSON string gets escaped in turn: `+` and `/` as
/// `%2B` and `%2F` (either case; Python's `quote` keeps `/`), `/` as `\/`.
fn escaped_base64(core: &[u8]) -> Vec<Vec<u8>> {
    if !core.iter().any(|&b| b == b'+' || b == b'/') {
        return Vec::new();
    }
    let replace = |plus: &[u8], slash: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(core.len() * 3);
        for &b in core {
            match b {
                b'+' => out.extend_from_slice(plus),
                b'/' => out.extend_from_slice(slash),
                b => out.push(b),
            }
        }
        out
    };
    vec![
        replace(b"%2B", b"%2F"),
        replace(b"%2b", b"%2f"),
        replace(b"%2B", b"/"),
        replace(b"%2b", b"/"),
        replace(b"+", b"\\/"),
    ]
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Every byte as `prefix` and two hex digits: a hex dump with no prefix,
/// `%XX` with `%`. Not `hex::encode`: that collects a `String` char by
/// char, a tenth of a request-bound token's redactor (callgrind), which is
/// built for every request.
fn per_byte_hex(raw: &[u8], prefix: &[u8], hex: &[u8; 16]) -> Vec<u8> {
    // Sized once and written in place: pushing byte by byte took ~40
    // instructions a byte (callgrind), for four forms on every request.
    let width = prefix.len() + 2;
    let mut out = vec![0u8; raw.len() * width];
    for (slot, &b) in out.chunks_exact_mut(width).zip(raw) {
        let (head, digits) = slot.split_at_mut(prefix.len());
        head.copy_from_slice(prefix);
        digits[0] = hex[usize::from(b >> 4)];
        digits[1] = hex[usize::from(b & 0xf)];
    }
    out
}

/// The part of the base64 encoding of `raw` that is the same wherever `raw`
/// sits in a longer text, for each of the three alignments and both
/// alphabets (RFC 4648 §4 and §5): the characters that encode only bits of
/// `raw`. So `base64(user ":" secret)`, or a base64 dump of a whole echoed
/// request, holds one of them, whatever precedes the secret.
fn base64_cores(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut cores = Vec::with_capacity(6);
    // `raw` after two zero bytes: each alignment's text is a suffix.
    let mut text = Vec::with_capacity(raw.len() + 2);
    text.extend_from_slice(&[0, 0]);
    text.extend_from_slice(raw);
    // Four characters for every three bytes or part of them: the padded
    // length of the longest text, more than any of them takes unpadded.
    let mut buf = vec![0u8; text.len().div_ceil(3) * 4];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for align in 0..3usize {
            let text = &text[2 - align..];
            let n = engine
                .encode_slice(text, &mut buf)
                .expect("sized for the longest text");
            let encoded = &buf[..n];
            // Character i holds bits [6i, 6i + 6) of the text; the secret's
            // bits are [8 align, 8 (align + len)).
            let start = (8 * align).div_ceil(6);
            let end = 8 * (align + raw.len()) / 6;
            if end >= start + MIN_BASE64_FORM {
                cores.push(encoded[start..end].to_vec());
            }
        }
    }
    cores
}

/// RFC 3986 §2.3: everything but unreserved characters encoded (Rust's
/// `url`, Go's `QueryEscape` but for spaces, PHP's `rawurlencode`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Python's `quote`, which keeps `/` by default.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');
/// JavaScript's `encodeURIComponent`.
const URI_COMPONENT: &AsciiSet = &UNRESERVED
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
/// JavaScript's `encodeURI`, which keeps the reserved characters.
const URI: &AsciiSet = &URI_COMPONENT
    .remove(b';')
    .remove(b',')
    .remove(b'/')
    .remove(b'?')
    .remove(b':')
    .remove(b'@')
    .remove(b'&')
    .remove(b'=')
    .remove(b'+')
    .remove(b'$')
    .remove(b'#');
/// PHP's `urlencode` (with `+` for spaces), which encodes `~`.
const PHP_FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// Percent-encodings of `raw` as URL encoders write them: each character
/// set, a space as `%20` or `+` (forms), hex digits upper- or lowercase;
/// and every byte escaped.
fn percent_forms(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        per_byte_hex(raw, b"%", HEX_UPPER),
        per_byte_hex(raw, b"%", HEX_LOWER),
    ];
    // Letters, digits, `-`, `.` and `_` only (most API keys and every
    // JWT): each encoder leaves it as it is (PHP's encodes `~`).
    if raw
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return out;
    }
    for set in [UNRESERVED, PATH, URI_COMPONENT, URI, PHP_FORM] {
        let upper = percent_encode(raw, set).to_string();
        let plus = upper.replace("%20", "+");
        for form in [upper, plus] {
            out.push(lowercase_escapes(&form).into_bytes());
            out.push(form.into_bytes());
        }
    }
    out
}

fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// JSON string escapes (RFC 8259 §7) of `secret` as encoders write them:
/// `\/` or `/` (PHP escapes it), `<>&'` as `\u003c`... (Go, for HTML
/// safety), non-ASCII as `\uXXXX` (Python's default) or not, hex in either
/// case; and every character as `\uXXXX`.
fn json_forms(secret: &str) -> Vec<Vec<u8>> {
    // A choice that changes nothing for this secret is not made: an
    // ASCII secret of letters and digits has one form here, not sixteen.
    let choices = |present: bool| {
        if present {
            &[false, true][..]
        } else {
            &[false][..]
        }
    };
    let html_chars = secret.contains(['<', '>', '&', '\'']);
    let non_ascii = !secret.is_ascii();
    let mut out = Vec::new();
    for &slash in choices(secret.contains('/')) {
        for &html in choices(html_chars) {
            for &ascii in choices(non_ascii) {
                for &upper in choices(html_chars || non_ascii) {
                    out.push(json_escape(secret, |c| match c {
                        '/' if slash => Some(Escape::Slash),
                        '<' | '>' | '&' | '\'' if html => Some(Escape::Unicode(upper)),
                        c if ascii && !c.is_ascii() => Some(Escape::Unicode(upper)),
                        _ => None,
                    }));
                }
            }
        }
    }
    for upper in [false, true] {
        out.push(json_escape(secret, |_| Some(Escape::Unicode(upper))));
    }
    out
}

enum Escape {
    Slash,
    /// `\uXXXX`, uppercase hex if true.
    Unicode(bool),
}

/// `secret` as the inside of a JSON string: the escapes JSON requires
/// (`"`, `\`, control characters), plus those `choose` asks for.
fn json_escape(secret: &str, choose: impl Fn(char) -> Option<Escape>) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() * 2);
    let unicode = |out: &mut Vec<u8>, c: char, upper: bool| {
        let hex = if upper { HEX_UPPER } else { HEX_LOWER };
        let mut units = [0u16; 2];
        for &unit in c.encode_utf16(&mut units).iter() {
            let digit = |shift: u16| hex[usize::from((unit >> shift) & 0xf)];
            out.extend_from_slice(&[b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]);
        }
    };
    for c in secret.chars() {
        match (choose(c), c) {
            (Some(Escape::Unicode(upper)), c) => unicode(&mut out, c, upper),
            (Some(Escape::Slash), _) => out.extend_from_slice(b"\\/"),
            (None, '"') => out.extend_from_slice(b"\\\""),
            (None, '\\') => out.extend_from_slice(b"\\\\"),
            (None, '\n') => out.extend_from_slice(b"\\n"),
            (None, '\r') => out.extend_from_slice(b"\\r"),
            (None, '\t') => out.extend_from_slice(b"\\t"),
            (None, '\u{8}') => out.extend_from_slice(b"\\b"),
            (None, '\u{c}') => out.extend_from_slice(b"\\f"),
            (None, c) if (c as u32) < 0x20 => unicode(&mut out, c, false),
            (None, c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn has(forms: &[Vec<u8>], s: &str) -> bool {
        forms.iter().any(|f| f == s.as_bytes())
    }

    #[test]
    fn base64_cores_sit_inside_every_alignment() {
        let secret = b"open sesame";
        let cores = base64_cores(secret);
        // RFC 7617's example: "Aladdin:open sesame".
        let basic = STANDARD.encode(b"Aladdin:open sesame");
        assert_eq!(basic, "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(
            cores
                .iter()
                .any(|c| basic.as_bytes().windows(c.len()).any(|w| w == c))
        );
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            let text = format!("{prefix}open sesame!?");
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let encoded = engine.encode(&text);
                assert!(
                    cores
                        .iter()
                        .any(|c| encoded.as_bytes().windows(c.len()).any(|w| w == c)),
                    "{prefix:?}: {encoded}"
                );
            }
        }
        // Too short to look for at some alignment: only the long ones.
        assert!(
            base64_cores(b"abcd")
                .iter()
                .all(|c| c.len() >= MIN_BASE64_FORM)
        );
    }

    #[test]
    fn percent_and_json_forms_cover_the_usual_encoders() {
        let f = forms("a/b c<é");
        for want in [
            "a/b c<é",
            "a%2Fb%20c%3C%C3%A9",
            "a%2fb%20c%3c%c3%a9",
            "a%2Fb+c%3C%C3%A9",
            "a/b%20c%3C%C3%A9",
            "%61%2F%62%20%63%3C%C3%A9",
            "a\\/b c<é",
            "a/b c\\u003c\\u00e9",
            "a/b c\\u003C\\u00E9",
            "\\u0061\\u002f\\u0062\\u0020\\u0063\\u003c\\u00e9",
            &hex::encode("a/b c<é"),
        ] {
            assert!(has(&f, want), "{want}");
        }
        // Astral characters are surrogate pairs in JSON.
        assert!(has(&forms("k😀y"), "k\\ud83d\\ude00y"));
        // Quotes and backslashes are always escaped in JSON.
        assert!(has(&forms("a\"b\\c"), "a\\\"b\\\\c"));
    }
}
