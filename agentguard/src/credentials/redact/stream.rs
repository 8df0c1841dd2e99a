//! Redaction over a stream cut anywhere (chunks, HTTP/2 DATA frames, SSE
//! events, WebSocket fragments): the result is the same as redacting the
//! whole at once, yet nothing is buffered beyond what could still become a
//! secret.
//!
//! After each chunk, the longest tail that is a proper prefix of some form
//! is held back (less than the longest form); everything before it is
//! final. A match that starts before the held tail lies wholly inside what
//! has been seen (else that tail would be longer), and so does the longest
//! form starting there: the leftmost-longest matches found are the ones a
//! search over the whole stream finds.

use std::sync::Arc;

use hyper::body::Bytes;

use super::{REDACTED, Redactor, set::FormSet};

/// One stream's matcher: a body, a WebSocket message.
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    /// What each stage holds back.
    held: Vec<Vec<u8>>,
    redacted: usize,
}

impl StreamRedactor {
    pub fn new(redactor: Arc<Redactor>) -> Self {
        let held = vec![Vec::new(); redactor.stages.len()];
        Self {
            redactor,
            held,
            redacted: 0,
        }
    }

    /// Takes the next chunk; returns what can be released now (perhaps
    /// nothing).
    pub fn push(&mut self, mut chunk: Bytes) -> Bytes {
        for (stage, held) in self.redactor.stages.iter().zip(&mut self.held) {
            if chunk.is_empty() {
                break;
            }
            chunk = push(stage, held, chunk, &mut self.redacted);
        }
        chunk
    }

    /// The end of the stream: what was held back, redacted.
    pub fn finish(&mut self) -> Bytes {
        let mut out = Bytes::new();
        for (stage, held) in self.redactor.stages.iter().zip(&mut self.held) {
            // What the stage before let go last goes through this one,
            // then this one lets go of the rest.
            let released = push(stage, held, out, &mut self.redacted);
            let rest = std::mem::take(held);
            let rest = match stage.redact(&rest) {
                Some((clean, n)) => {
                    self.redacted += n;
                    clean
                }
                None => rest,
            };
            out = if released.is_empty() {
                Bytes::from(rest)
            } else {
                Bytes::from([&released[..], &rest].concat())
            };
        }
        out
    }

    /// Secrets cut so far.
    pub fn redacted(&self) -> usize {
        self.redacted
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.held.iter().map(Vec::len).sum()
    }
}

/// One stage: `chunk` after what it held, matches before the tail that
/// could still grow into a form replaced, that tail held.
fn push(set: &FormSet, held: &mut Vec<u8>, chunk: Bytes, redacted: &mut usize) -> Bytes {
    let buf = if held.is_empty() {
        chunk
    } else {
        let mut joined = std::mem::take(held);
        joined.extend_from_slice(&chunk);
        Bytes::from(joined)
    };
    let mut hold = set.hold_from(&buf, 0);
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 0;
    set.each_match(&buf, |start, end| {
        if start >= hold {
            return false;
        }
        let o = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
        o.extend_from_slice(&buf[pos..start]);
        o.extend_from_slice(REDACTED);
        pos = end;
        *redacted += 1;
        if pos > hold {
            hold = set.hold_from(&buf, pos);
        }
        true
    });
    *held = buf[hold..].to_vec();
    match out {
        None => buf.slice(..hold),
        Some(mut o) => {
            o.extend_from_slice(&buf[pos..hold]);
            Bytes::from(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::secrets, *};

    fn through(r: &Arc<Redactor>, chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut s = StreamRedactor::new(r.clone());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c)));
            assert!(s.held() < r.longest());
        }
        out.extend_from_slice(&s.finish());
        (out, s.redacted())
    }

    /// Every way of cutting the text into two and three pieces gives what
    /// redacting it whole gives.
    #[test]
    fn any_cut_gives_the_whole_result() {
        let r = Redactor::new(
            &secrets(&["sk-real-123", "sk-real"]),
            &secrets(&["tok/é+n"]),
        )
        .unwrap();
        let text = "a sk-real-123 b sk-real-12 c sk-realsk-real-123 tok%2F%C3%A9%2Bn \
                    dG9rL8OpK24 sk-re"
            .as_bytes();
        let (whole, n) = r.redact(text).unwrap();
        assert_eq!(n, 6, "{}", String::from_utf8_lossy(&whole));
        for i in 0..=text.len() {
            assert_eq!(through(&r, &[&text[..i], &text[i..]]), (whole.clone(), n));
            for j in i..=text.len() {
                assert_eq!(
                    through(&r, &[&text[..i], &text[i..j], &text[j..]]),
                    (whole.clone(), n),
                    "cut at {i} and {j}"
                );
            }
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(through(&r, &bytes), (whole, n));
    }

    /// Only what could still become a secret waits: an SSE event ends with
    /// a blank line, which starts no secret, so the event is released
    /// whole at once.
    #[test]
    fn only_possible_prefixes_are_held() {
        let r = Redactor::new(&secrets(&["sk-real-123"]), &[]).unwrap();
        let mut s = StreamRedactor::new(r.clone());
        let event = Bytes::from_static(b"data: {\"delta\":\"hello\"}\n\n");
        assert_eq!(s.push(event.clone()), event);
        assert_eq!(s.held(), 0);
        assert_eq!(s.push(Bytes::from_static(b"data: sk-re")), "data: ");
        assert_eq!(s.held(), 5);
        assert_eq!(s.push(Bytes::from_static(b"ady\n\n")), "sk-ready\n\n");
        assert_eq!(s.push(Bytes::from_static(b"sk-real-1")), "");
        assert_eq!(s.push(Bytes::from_static(b"23\n\n")), "[redacted]\n\n");
        assert_eq!(s.finish(), "");
        assert_eq!(s.redacted(), 1);
        // A stream that ends on a prefix gives it back as it was.
        let mut s = StreamRedactor::new(r);
        assert_eq!(s.push(Bytes::from_static(b"x sk-real")), "x ");
        assert_eq!(s.finish(), "sk-real");
    }
}
