//! Filtering `tools/list` (and `prompts/list`, `resources/list`) results to
//! what the agent may use, so the model never sees a tool it cannot call.
//!
//! Responses come as one JSON body or as a Server-Sent Events stream
//! (Streamable HTTP). The stream is filtered event by event as it arrives:
//! each complete event is either passed on byte for byte or, when it is the
//! response to a list request of this POST, re-emitted with the entries the
//! policy does not allow removed. Nothing is held back longer than one event.
//!
//! A GET event stream resumed with `Last-Event-ID` may replay the response
//! to a list request of an earlier POST, whose id this stream never saw.
//! The standalone GET stream carries no responses otherwise (MCP, Streamable
//! HTTP: a server sends a response on it only when resuming), so there every
//! response whose result holds a list is filtered by its shape.

use serde_json::Value;

use super::{Body, MessageKind, TargetKind, strict};

/// Largest JSON response or SSE event examined. A list response is a few
/// kilobytes per tool; a bigger one is refused, never passed unfiltered.
pub const MAX_LIST_RESPONSE: usize = 4 << 20;

/// A list method whose result is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    pub fn for_method(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "prompts/list" => Some(ListKind::Prompts),
            "resources/list" => Some(ListKind::Resources),
            _ => None,
        }
    }

    /// The result's array and the key that names an entry.
    fn field_and_key(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools", "name"),
            ListKind::Prompts => ("prompts", "name"),
            ListKind::Resources => ("resources", "uri"),
        }
    }

    pub fn target_kind(self) -> TargetKind {
        match self {
            ListKind::Tools => TargetKind::Tool,
            ListKind::Prompts => TargetKind::Prompt,
            ListKind::Resources => TargetKind::Resource,
        }
    }
}

/// Why a list response could not be filtered: the proxy must then cut
/// the response off, never pass it on unfiltered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("list response larger than {MAX_LIST_RESPONSE} bytes")]
    TooLarge,
    /// A response to a list request agentguard could not read.
    #[error("unreadable list response: {0}")]
    Unreadable(String),
}

/// Filters the responses to the list requests of one POST body, or every
/// list result of a resumed event stream.
pub struct ListFilter<F> {
    /// The list requests by id; `None` on a resumed stream, where the
    /// requests are not known.
    requests: Option<Vec<(Value, ListKind)>>,
    allowed: F,
}

const KINDS: [ListKind; 3] = [ListKind::Tools, ListKind::Prompts, ListKind::Resources];

impl<F: Fn(TargetKind, &str) -> bool> ListFilter<F> {
    /// `None` when `body` has no list request (nothing to filter).
    /// `allowed(kind, name)` says whether the agent may use the tool,
    /// prompt or resource.
    pub fn for_body(body: &Body, allowed: F) -> Option<ListFilter<F>> {
        let requests: Vec<(Value, ListKind)> = body
            .messages()
            .iter()
            .filter(|m| m.kind == MessageKind::Request)
            .filter_map(|m| {
                let kind = ListKind::for_method(m.method.as_deref()?)?;
                Some((m.id.clone()?, kind))
            })
            .collect();
        (!requests.is_empty()).then_some(ListFilter {
            requests: Some(requests),
            allowed,
        })
    }

    /// For a GET event stream of an MCP endpoint: every response there is
    /// one resumed from an earlier POST, so each list result (a `tools`,
    /// `prompts` or `resources` array in a response's `result`) is filtered.
    pub fn for_resumed_stream(allowed: F) -> ListFilter<F> {
        ListFilter {
            requests: None,
            allowed,
        }
    }

    /// Filters one response message in place; `true` if it changed.
    fn filter_message(&self, message: &mut Value) -> bool {
        match &self.requests {
            Some(requests) => {
                let Some(kind) = message
                    .get("id")
                    .and_then(|id| requests.iter().find(|(r, _)| r == id))
                    .map(|(_, k)| *k)
                else {
                    return false;
                };
                self.filter_result(message, kind)
            }
            // A response (an id, no method): requests and notifications
            // name no list of the server's.
            None if message.get("method").is_none() && message.get("id").is_some() => {
                KINDS.into_iter().fold(false, |changed, kind| {
                    self.filter_result(message, kind) | changed
                })
            }
            None => false,
        }
    }

    /// Keeps the entries of `kind`'s array in the response's result that the
    /// agent may use; `true` if any went.
    fn filter_result(&self, message: &mut Value, kind: ListKind) -> bool {
        let (field, key) = kind.field_and_key();
        let Some(Value::Array(entries)) = message.get_mut("result").and_then(|r| r.get_mut(field))
        else {
            return false;
        };
        let before = entries.len();
        entries.retain(|e| {
            e.get(key)
                .and_then(Value::as_str)
                .is_some_and(|name| (self.allowed)(kind.target_kind(), name))
        });
        entries.len() != before
    }

    /// Filters a value that may be one response or a batch of them.
    fn filter_value(&self, value: &mut Value) -> bool {
        match value {
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, m| self.filter_message(m) | changed),
            other => self.filter_message(other),
        }
    }

    /// Filters a whole `application/json` response body.
    pub fn filter_json(&self, body: &[u8]) -> Result<Vec<u8>, FilterError> {
        if body.len() > MAX_LIST_RESPONSE {
            return Err(FilterError::TooLarge);
        }
        let mut value = strict::parse(body).map_err(FilterError::Unreadable)?;
        if self.filter_value(&mut value) {
            Ok(serde_json::to_vec(&value).expect("JSON values serialise"))
        } else {
            Ok(body.to_vec())
        }
    }

    /// A streaming filter for a `text/event-stream` response.
    pub fn into_sse(self) -> SseFilter<F> {
        SseFilter {
            filter: self,
            pending: Vec::new(),
        }
    }
}

/// Filters an SSE stream event by event (the event grammar of the HTML
/// standard, §9.2.5: lines end in CRLF, LF or CR; a blank line ends an event).
pub struct SseFilter<F> {
    filter: ListFilter<F>,
    /// Bytes of the event not yet complete.
    pending: Vec<u8>,
}

impl<F: Fn(TargetKind, &str) -> bool> SseFilter<F> {
    /// Takes the next chunk of the stream; returns what may be sent on now.
    /// After an error the stream must be cut off: the rest is not checked.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, FilterError> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut event_start = 0;
        let mut line_start = 0;
        let mut i = 0;
        while i < self.pending.len() {
            let b = self.pending[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let len = if b == b'\r' {
                // A CR at the end of the chunk may be the first half of CRLF.
                match self.pending.get(i + 1) {
                    None => break,
                    Some(b'\n') => 2,
                    Some(_) => 1,
                }
            } else {
                1
            };
            let blank = i == line_start;
            i += len;
            line_start = i;
            if blank {
                self.event(event_start, i, &mut out)?;
                event_start = i;
            }
        }
        self.pending.drain(..event_start);
        if self.pending.len() > MAX_LIST_RESPONSE {
            return Err(FilterError::TooLarge);
        }
        Ok(out)
    }

    /// The stream ended. An incomplete last event is dropped: clients
    /// discard it too (HTML §9.2.6), and it was never checked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.pending.clear();
        Vec::new()
    }

    fn event(&self, start: usize, end: usize, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let raw = &self.pending[start..end];
        let text = String::from_utf8_lossy(raw);
        let mut data: Option<String> = None;
        let mut other_lines = Vec::new();
        for line in text
            .split_terminator(['\n', '\r'])
            .filter(|l| !l.is_empty())
        {
            match line.strip_prefix("data") {
                Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                    let value = rest.strip_prefix(':').unwrap_or_default();
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => data = Some(value.to_owned()),
                    }
                }
                _ => other_lines.push(line),
            }
        }
        let Some(data) = data else {
            out.extend_from_slice(raw);
            return Ok(());
        };
        let mut value = match strict::parse(data.as_bytes()) {
            Ok(v) => v,
            Err(e) => {
                // JSON that strict parsing refuses may still be a list
                // response to another reader: never pass that unfiltered.
                if let Ok(mut lenient) = serde_json::from_str::<Value>(&data)
                    && self.filter.filter_value(&mut lenient)
                {
                    return Err(FilterError::Unreadable(e));
                }
                out.extend_from_slice(raw);
                return Ok(());
            }
        };
        if !self.filter.filter_value(&mut value) {
            out.extend_from_slice(raw);
            return Ok(());
        }
        for line in other_lines {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&value).expect("JSON values serialise"));
        out.extend_from_slice(b"\n\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn allowed(kind: TargetKind, name: &str) -> bool {
        match kind {
            TargetKind::Tool => name.starts_with("list_") || name == "get_issue",
            TargetKind::Prompt => name == "review",
            TargetKind::Resource => name.starts_with("repo://acme/"),
        }
    }

    fn list_body() -> Body {
        Body::parse(br#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#).unwrap()
    }

    const TOOLS: &str = r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"list_issues","inputSchema":{}},{"name":"delete_repo"},{"name":"get_issue"},{"noname":1}],"nextCursor":"c"}}"#;

    fn names(v: &Value) -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn only_bodies_with_list_requests_are_filtered() {
        let call =
            Body::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#)
                .unwrap();
        assert!(ListFilter::for_body(&call, allowed).is_none());
        let note = Body::parse(br#"{"jsonrpc":"2.0","method":"tools/list"}"#).unwrap();
        assert!(ListFilter::for_body(&note, allowed).is_none());
        assert!(ListFilter::for_body(&list_body(), allowed).is_some());
    }

    #[test]
    fn a_json_list_keeps_only_allowed_tools() {
        let f = ListFilter::for_body(&list_body(), allowed).unwrap();
        let out: Value = serde_json::from_slice(&f.filter_json(TOOLS.as_bytes()).unwrap()).unwrap();
        assert_eq!(names(&out), ["list_issues", "get_issue"]);
        assert_eq!(out["result"]["nextCursor"], "c");
        assert_eq!(out["result"]["tools"][0]["inputSchema"], json!({}));
        // Another id is left alone, byte for byte.
        let other = TOOLS.replace("\"id\":4", "\"id\":5");
        assert_eq!(f.filter_json(other.as_bytes()).unwrap(), other.as_bytes());
        // Errors and unreadable bodies.
        let err = r#"{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"x"}}"#;
        assert_eq!(f.filter_json(err.as_bytes()).unwrap(), err.as_bytes());
        assert!(f.filter_json(b"{\"id\":4,\"id\":4}").is_err());
        assert_eq!(
            f.filter_json(&vec![b' '; MAX_LIST_RESPONSE + 1]),
            Err(FilterError::TooLarge)
        );
    }

    #[test]
    fn batches_prompts_and_resources_are_filtered_too() {
        let body = Body::parse(
            br#"[{"jsonrpc":"2.0","id":"p","method":"prompts/list"},{"jsonrpc":"2.0","id":"r","method":"resources/list"}]"#,
        )
        .unwrap();
        let f = ListFilter::for_body(&body, allowed).unwrap();
        let out: Value = serde_json::from_slice(
            &f.filter_json(
                br#"[{"jsonrpc":"2.0","id":"p","result":{"prompts":[{"name":"review"},{"name":"leak"}]}},
                    {"jsonrpc":"2.0","id":"r","result":{"resources":[{"uri":"repo://acme/a"},{"uri":"repo://evil/b"}]}}]"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out[0]["result"]["prompts"], json!([{"name": "review"}]));
        assert_eq!(
            out[1]["result"]["resources"],
            json!([{"uri": "repo://acme/a"}])
        );
    }

    #[test]
    fn sse_events_are_filtered_as_they_complete() {
        let f = ListFilter::for_body(&list_body(), allowed).unwrap();
        let mut sse = f.into_sse();
        let progress = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n";
        let list = format!("id: 9\nevent: message\ndata: {TOOLS}\n\n");
        let stream = format!(": keep-alive\n\n{progress}{list}");
        // Byte by byte: every event leaves as soon as its blank line arrives.
        let mut out = Vec::new();
        let mut emitted_at = Vec::new();
        for (i, b) in stream.as_bytes().iter().enumerate() {
            let piece = sse.push(&[*b]).unwrap();
            if !piece.is_empty() {
                emitted_at.push(i + 1);
            }
            out.extend(piece);
        }
        assert!(sse.finish().is_empty());
        let ends: Vec<usize> = vec![
            ": keep-alive\n\n".len(),
            ": keep-alive\n\n".len() + progress.len(),
            stream.len(),
        ];
        assert_eq!(emitted_at, ends);
        let text = String::from_utf8(out).unwrap();
        // Untouched events pass byte for byte.
        assert!(
            text.starts_with(&format!(": keep-alive\n\n{progress}")),
            "{text}"
        );
        let last = &text[ends[1]..];
        assert!(last.starts_with("id: 9\nevent: message\ndata: "), "{last}");
        let data = last
            .trim_end()
            .strip_prefix("id: 9\nevent: message\ndata: ")
            .unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(names(&v), ["list_issues", "get_issue"]);
    }

    #[test]
    fn sse_multi_line_data_cr_endings_and_bounds() {
        let f = ListFilter::for_body(&list_body(), allowed).unwrap();
        let mut sse = f.into_sse();
        // data split over two lines joins with "\n" (still JSON); CR endings.
        let split = TOOLS.replacen(",\"result\"", "\rdata: ,\"result\"", 1);
        // The last CR may be half of a CRLF: the event waits for one more byte.
        assert!(
            sse.push(format!("data: {split}\r\r").as_bytes())
                .unwrap()
                .is_empty()
        );
        let out = sse.push(b":").unwrap();
        let text = String::from_utf8(out).unwrap();
        let v: Value =
            serde_json::from_str(text.trim_end().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(names(&v), ["list_issues", "get_issue"]);
        // An unfinished event at the end is dropped, not passed on unchecked.
        assert!(
            sse.push(format!("\ndata: {TOOLS}\n").as_bytes())
                .unwrap()
                .is_empty()
        );
        assert!(sse.finish().is_empty());
        // Duplicate keys in a list response: refused.
        let mut sse = ListFilter::for_body(&list_body(), allowed)
            .unwrap()
            .into_sse();
        let dup = TOOLS.replacen(
            "{\"name\":\"delete_repo\"}",
            "{\"name\":\"delete_repo\",\"name\":\"x\"}",
            1,
        );
        assert!(sse.push(format!("data: {dup}\n\n").as_bytes()).is_err());
        // Non-JSON data passes.
        let mut sse = ListFilter::for_body(&list_body(), allowed)
            .unwrap()
            .into_sse();
        assert_eq!(sse.push(b"data: hello\n\n").unwrap(), b"data: hello\n\n");
        // An endless event is refused.
        assert_eq!(
            sse.push(&vec![b'x'; MAX_LIST_RESPONSE + 1]),
            Err(FilterError::TooLarge)
        );
    }

    #[test]
    fn a_resumed_stream_filters_every_list_result_by_its_shape() {
        let mut sse = ListFilter::for_resumed_stream(allowed).into_sse();
        // A tools/list answer of an earlier POST (any id), replayed.
        let replayed = TOOLS.replace("\"id\":4", "\"id\":\"earlier-7\"");
        let out = sse
            .push(format!("id: 12\ndata: {replayed}\n\n").as_bytes())
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("id: 12\n"), "{text}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(names(&v), ["list_issues", "get_issue"]);
        assert_eq!(v["id"], "earlier-7");
        // Prompts and resources likewise.
        let prompts = r#"{"jsonrpc":"2.0","id":5,"result":{"prompts":[{"name":"review"},{"name":"leak"}],"resources":[{"uri":"repo://acme/a"},{"uri":"repo://other/b"}]}}"#;
        let out = sse.push(format!("data: {prompts}\n\n").as_bytes()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let v: Value =
            serde_json::from_str(text.trim_end().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["result"]["prompts"], json!([{"name": "review"}]));
        assert_eq!(v["result"]["resources"], json!([{"uri": "repo://acme/a"}]));
        // The server's own requests and notifications pass byte for byte,
        // whatever they carry; so do responses without a list.
        for event in [
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"sampling/createMessage","params":{"tools":[{"name":"delete_repo"}]}}"#,
            r#"{"jsonrpc":"2.0","id":6,"result":{"content":[{"type":"text","text":"delete_repo"}]}}"#,
        ] {
            let raw = format!("event: message\ndata: {event}\n\n");
            assert_eq!(sse.push(raw.as_bytes()).unwrap(), raw.as_bytes());
        }
        // A list result that strict parsing refuses: the stream is cut.
        let dup = replayed.replacen(
            "{\"name\":\"delete_repo\"}",
            "{\"name\":\"delete_repo\",\"name\":\"x\"}",
            1,
        );
        assert!(sse.push(format!("data: {dup}\n\n").as_bytes()).is_err());
    }
}
