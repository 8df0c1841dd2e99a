//! The upstream's answer to a JSON-RPC POST, readied for the agent: the
//! results of its list requests filtered to what the agent may use (a JSON
//! body read whole, bounded; an event stream event by event, as it comes),
//! and the errors agentguard answered for denied batch members merged in.
//! A list response that cannot be filtered is never passed on: a JSON body
//! is refused, an event stream ends with an error for each list request.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response, StatusCode,
    body::{Body, Bytes, Frame, SizeHint},
    header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING},
};
use serde_json::{Value, json};
use tracing::warn;

use crate::{
    mcp::{self, BodyPlan, ListFilter, MAX_LIST_RESPONSE, SseFilter, TargetKind},
    proxy::{
        refusal::Refusal,
        upstream::{BodyError, ProxyBody, collect_limited},
    },
};

/// JSON-RPC 2.0 §5.1 "Internal error".
const INTERNAL_ERROR: i64 = -32603;

/// What kind of body the upstream answered with.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Json,
    EventStream,
    Other,
}

fn kind(resp: &Response<ProxyBody>) -> Kind {
    let Some(ct) = resp.headers().get(CONTENT_TYPE) else {
        return Kind::Other;
    };
    if mcp::is_json_content_type(ct.as_bytes()) {
        return Kind::Json;
    }
    let essence = String::from_utf8_lossy(ct.as_bytes())
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "text/event-stream" {
        Kind::EventStream
    } else {
        Kind::Other
    }
}

/// Readies `resp` for the agent. `lists` are the ids of the body's list
/// requests.
pub(super) async fn finish<F>(
    resp: Response<ProxyBody>,
    filter: Option<ListFilter<F>>,
    plan: &BodyPlan,
    lists: Vec<Value>,
    agent: &str,
) -> Result<Response<ProxyBody>, Refusal>
where
    F: Fn(TargetKind, &str) -> bool + Send + Sync + Unpin + 'static,
{
    let local = !plan.local.is_empty();
    if filter.is_none() && !local {
        return Ok(resp);
    }
    if local && resp.status() == StatusCode::ACCEPTED {
        // Only notifications and responses went upstream: the errors are
        // the whole answer.
        let (mut parts, _) = resp.into_parts();
        let body = plan.local_body().unwrap_or_default();
        parts.status = StatusCode::OK;
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        parts.headers.remove(TRANSFER_ENCODING);
        return Ok(Response::from_parts(parts, full(Bytes::from(body))));
    }
    let kind = kind(&resp);
    if kind == Kind::Other {
        // Neither JSON nor an event stream: nothing an MCP client reads a
        // list or a batch answer from.
        return Ok(resp);
    }
    let encoded = resp
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(Refusal::ListUnfiltered(
            "the upstream compressed it although asked not to".into(),
        ));
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    if kind == Kind::EventStream {
        let prefix = local.then(|| Bytes::from(plan.local_sse_events()));
        let body = Filtered {
            inner: body,
            filter: filter.map(ListFilter::into_sse),
            prefix,
            done: false,
            lists,
            agent: agent.to_owned(),
        };
        return Ok(Response::from_parts(parts, body.boxed()));
    }
    let bytes = collect_limited(body, MAX_LIST_RESPONSE)
        .await
        .map_err(|e| Refusal::ListUnfiltered(format!("reading it failed: {e}")))?;
    let mut out = bytes.to_vec();
    if let Some(f) = &filter {
        out = f
            .filter_json(&out)
            .map_err(|e| Refusal::ListUnfiltered(e.to_string()))?;
    }
    if local && parts.status.is_success() {
        out = plan.merge_json(&out).map_err(Refusal::ListUnfiltered)?;
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    parts.headers.remove(TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, full(Bytes::from(out))))
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|n| match n {}).boxed()
}

/// An event stream on its way to the agent: the local errors first, then
/// the upstream's events, list results filtered as each event completes.
struct Filtered<F> {
    inner: ProxyBody,
    filter: Option<SseFilter<F>>,
    /// Sent before the upstream's first byte.
    prefix: Option<Bytes>,
    done: bool,
    lists: Vec<Value>,
    agent: String,
}

impl<F> Filtered<F> {
    /// An error event for each list request: the stream is cut here, and
    /// the client learns why instead of waiting.
    fn cut(&self, why: &str) -> Bytes {
        warn!(reason = why, "list response not filtered; event stream cut");
        let mut out = Vec::new();
        for id in &self.lists {
            let error = mcp::error_response(
                Some(id),
                INTERNAL_ERROR,
                &format!("agentguard: the upstream's list response could not be filtered: {why}"),
                Some(json!({"agent": self.agent, "rule": "list-unfilterable"})),
            );
            out.extend_from_slice(b"event: message\ndata: ");
            out.extend_from_slice(&serde_json::to_vec(&error).expect("JSON values serialise"));
            out.extend_from_slice(b"\n\n");
        }
        Bytes::from(out)
    }
}

impl<F> Body for Filtered<F>
where
    F: Fn(TargetKind, &str) -> bool + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    // An unfinished last event is dropped: never checked.
                    if let Some(f) = &mut this.filter {
                        f.finish();
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers pass.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let Some(filter) = &mut this.filter else {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            };
            match filter.push(&data) {
                // Part of an event: wait for the rest.
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                Err(e) => {
                    this.done = true;
                    this.filter = None;
                    let ending = this.cut(&e.to_string());
                    return match ending.is_empty() {
                        true => Poll::Ready(None),
                        false => Poll::Ready(Some(Ok(Frame::data(ending)))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.prefix.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(kind: TargetKind, name: &str) -> bool {
        kind == TargetKind::Tool && name.starts_with("list_")
    }

    fn body(text: &str) -> mcp::Body {
        mcp::Body::parse(text.as_bytes()).unwrap()
    }

    fn resp(ct: &str, body: ProxyBody) -> Response<ProxyBody> {
        Response::builder()
            .header(CONTENT_TYPE, ct)
            .body(body)
            .unwrap()
    }

    async fn text(resp: Response<ProxyBody>) -> String {
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
    const TOOLS: &str = r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"list_issues"},{"name":"delete_repo"}]}}"#;

    fn no_local(b: &mcp::Body) -> BodyPlan {
        BodyPlan::new(b, &vec![mcp::MemberOutcome::Forward; b.messages().len()])
    }

    #[tokio::test]
    async fn json_lists_are_filtered_and_sized_again() {
        let b = body(LIST);
        let f = ListFilter::for_body(&b, allowed);
        let r = finish(
            resp("application/json", full(Bytes::from(TOOLS))),
            f,
            &no_local(&b),
            vec![json!(4)],
            "bot",
        )
        .await
        .unwrap();
        let len: usize = r.headers()[CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let t = text(r).await;
        assert_eq!(t.len(), len);
        assert!(
            t.contains("list_issues") && !t.contains("delete_repo"),
            "{t}"
        );
        // Compressed: refused, never passed unfiltered.
        let mut compressed = resp("application/json", full(Bytes::from(TOOLS)));
        compressed
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let f = ListFilter::for_body(&b, allowed);
        assert!(matches!(
            finish(compressed, f, &no_local(&b), vec![json!(4)], "bot").await,
            Err(Refusal::ListUnfiltered(_))
        ));
    }

    #[tokio::test]
    async fn event_streams_are_filtered_event_by_event_and_cut_when_unreadable() {
        let b = body(LIST);
        let stream = format!("event: message\ndata: {TOOLS}\n\n");
        let f = ListFilter::for_body(&b, allowed);
        let r = finish(
            resp("text/event-stream", full(Bytes::from(stream))),
            f,
            &no_local(&b),
            vec![json!(4)],
            "bot",
        )
        .await
        .unwrap();
        let t = text(r).await;
        assert!(
            t.contains("list_issues") && !t.contains("delete_repo"),
            "{t}"
        );
        // A list response with a repeated key: cut, with an error for the
        // list request.
        let dup = TOOLS.replace(
            r#"{"name":"delete_repo"}"#,
            r#"{"name":"delete_repo","name":"x"}"#,
        );
        let f = ListFilter::for_body(&b, allowed);
        let r = finish(
            resp(
                "text/event-stream",
                full(Bytes::from(format!("data: {dup}\n\n"))),
            ),
            f,
            &no_local(&b),
            vec![json!(4)],
            "bot",
        )
        .await
        .unwrap();
        let t = text(r).await;
        assert!(!t.contains("delete_repo"), "{t}");
        let data: Value =
            serde_json::from_str(t.trim().strip_prefix("event: message\ndata: ").unwrap()).unwrap();
        assert_eq!(data["id"], 4);
        assert_eq!(data["error"]["data"]["rule"], "list-unfilterable");
    }

    /// A response no list filter applies to.
    type NoFilter = Option<ListFilter<fn(TargetKind, &str) -> bool>>;

    #[tokio::test]
    async fn a_batchs_local_errors_join_the_upstreams_answer() {
        let b = body(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_issues"}},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repo"}}]"#,
        );
        let plan = BodyPlan::new(
            &b,
            &[
                mcp::MemberOutcome::Forward,
                mcp::MemberOutcome::Refuse {
                    code: mcp::POLICY_DENIED,
                    message: "agentguard: no".into(),
                    data: None,
                },
            ],
        );
        let none: NoFilter = None;
        let upstream = r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#;
        let r = finish(
            resp("application/json", full(Bytes::from(upstream))),
            none,
            &plan,
            vec![],
            "bot",
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&text(r).await).unwrap();
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[1]["id"], 2);
        assert_eq!(v[1]["error"]["code"], mcp::POLICY_DENIED);
        // As an event stream: the errors come first.
        let none: NoFilter = None;
        let r = finish(
            resp(
                "text/event-stream",
                full(Bytes::from(format!(
                    "data: {}\n\n",
                    &upstream[1..upstream.len() - 1]
                ))),
            ),
            none,
            &plan,
            vec![],
            "bot",
        )
        .await
        .unwrap();
        let t = text(r).await;
        assert!(
            t.starts_with("event: message\ndata: {\"error\"")
                || t.starts_with("event: message\ndata: {"),
            "{t}"
        );
        assert!(
            t.find("\"id\":2").unwrap() < t.find("\"id\":1").unwrap(),
            "{t}"
        );
        // The upstream answered 202 (only notifications went): the errors.
        let none: NoFilter = None;
        let mut accepted = resp("text/plain", full(Bytes::new()));
        *accepted.status_mut() = StatusCode::ACCEPTED;
        let r = finish(accepted, none, &plan, vec![], "bot").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = serde_json::from_str(&text(r).await).unwrap();
        assert_eq!(v[0]["id"], 2);
    }
}
