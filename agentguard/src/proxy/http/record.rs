//! Recording each request: its audit event and its entry in the admin API's
//! recent-requests view.
//!
//! Bytes and duration are known only when the response body ends, so the
//! response body is wrapped ([`AuditedBody`]) and the event is recorded as it
//! ends: before the last frame is released to the agent (waiting for room in
//! the audit queue if need be), so that every response an agent has
//! received whole is already in the audit queue. A body dropped early (the
//! agent went away) and a request abandoned before its response are recorded
//! too, from `Drop`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use hyper::{
    body::{Body, Bytes, Frame, SizeHint},
    header::HeaderName,
};
use tokio::time::Instant;
use tracing::debug;

use super::{ConnMeta, plan::Noted};
use crate::{
    audit::{AuditSink, Decision, Event, Kind, Permit},
    connlog::{RequestDecision, RequestEntry, RequestLog},
    percent,
    policy::MethodSet,
    proxy::{
        refusal::Refusal,
        respond::{self, Render},
        upstream::{BodyError, ProxyBody},
    },
};

/// The header an agent may use to say what it is doing. Recorded, then
/// removed: it is agentguard's, not the upstream's.
pub const INTENT_HEADER: HeaderName = HeaderName::from_static("x-agentguard-intent");
/// W3C Trace Context's header, recorded with the event.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// A stated intent longer than this is cut: it is prose for an auditor, not
/// a channel for bulk data.
const MAX_INTENT: usize = 1024;

/// The decision on one request, filled in as it is made.
pub struct Outcome {
    /// Boxed (an event is ~800 bytes: moved by value, through the response
    /// body and the queue, it was copied each time into fresh memory);
    /// `None` only once [`Outcome::attach`] or drop has taken it.
    event: Option<Box<Event>>,
    /// The normalised path without the query, for the recent-requests view.
    pub bare_path: String,
    /// How agentguard's own answers to this request are written.
    pub render: Render,
    start: Instant,
    bytes_in: Arc<AtomicU64>,
    /// Where the event goes if the request is abandoned before a response.
    sink: Option<(AuditSink, Arc<RequestLog>)>,
}

impl Outcome {
    /// What every request event of a connection holds from the start: the
    /// caller's identity and both ends. Made once per connection; each
    /// request clones it ([`Outcome::new`]) rather than formatting the
    /// addresses and the executable's path again (measured: making the
    /// event was 3.4% of the full path's instructions, most of it that
    /// formatting).
    pub fn template(meta: &ConnMeta) -> Event {
        let mut event = meta
            .identity
            .stamp(Event {
                kind: Kind::Request,
                ..Event::default()
            })
            .with_src(meta.peer)
            .with_dst(meta.dst);
        event.sni = meta.sni.as_deref().map(Into::into);
        event
    }

    /// The outcome of a request on the connection `template` was made for
    /// ([`Outcome::template`]).
    pub fn new<B>(
        template: &Event,
        req: &hyper::Request<B>,
        policy_version: &Arc<str>,
        sink: AuditSink,
        requests: Arc<RequestLog>,
    ) -> Self {
        let mut event = Box::new(Event::like(template));
        event.method = Some(method_text(req.method()));
        event.protocol = Some(protocol(req.version()).to_owned());
        event.policy_version = Some(policy_version.clone());
        event.decision = Some(Decision::Refuse);
        event.intent = req
            .headers()
            .get(INTENT_HEADER)
            .map(|v| truncate(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        // W3C trace context, so the agent's traces join this decision: one
        // well-formed header, or nothing (the spec treats several as invalid).
        let mut traceparents = req.headers().get_all(TRACEPARENT).iter();
        event.traceparent = match (traceparents.next(), traceparents.next()) {
            (Some(v), None) => crate::audit::traceparent::normalise(v.as_bytes()),
            _ => None,
        };
        Self {
            event: Some(event),
            bare_path: String::new(),
            render: Render::default(),
            start: Instant::now(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            sink: Some((sink, requests)),
        }
    }

    /// The request's event, as filled in so far.
    pub fn event(&self) -> &Event {
        self.event
            .as_deref()
            .expect("an outcome holds its event until attached")
    }

    pub fn event_mut(&mut self) -> &mut Event {
        self.event
            .as_deref_mut()
            .expect("an outcome holds its event until attached")
    }

    pub fn decide(
        &mut self,
        decision: Decision,
        rule: impl Into<Arc<str>>,
        reason: impl Into<Arc<str>>,
    ) {
        let event = self.event_mut();
        event.decision = Some(decision);
        event.rule = Some(rule.into());
        event.reason = Some(reason.into());
    }

    /// Takes what planning learnt about the request into its record.
    pub fn note(&mut self, noted: Noted) {
        let Noted {
            host,
            path,
            bare_path,
            tool,
            credential_id,
            verdict,
        } = noted;
        let event = self.event_mut();
        event.host = host;
        event.path = path;
        event.tool = tool;
        event.credential_id = credential_id;
        self.bare_path = bare_path;
        if let Some((decision, rule, reason)) = verdict {
            self.decide(decision, rule, reason);
        }
    }

    /// agentguard answers the agent itself: the one place a refusal
    /// becomes the agent's response and the request's record.
    pub fn refuse(&mut self, refusal: Refusal) -> hyper::Response<ProxyBody> {
        let agent = self.event().agent.as_deref().unwrap_or_default();
        let resp = respond::refusal(&refusal, agent, &self.render);
        self.decide(refusal.decision(), refusal.rule(), refusal.to_string());
        resp
    }

    pub fn decision(&self) -> Option<Decision> {
        self.event().decision
    }

    /// Counts the request body's bytes as the upstream reads them.
    pub fn count_request_body(&self, body: ProxyBody) -> ProxyBody {
        use http_body_util::BodyExt as _;
        Counted {
            inner: body,
            bytes: self.bytes_in.clone(),
        }
        .boxed()
    }

    /// Wraps the response so that the event is recorded when it ends.
    pub fn attach(mut self, resp: hyper::Response<ProxyBody>) -> hyper::Response<AuditedBody> {
        let (sink, requests) = self.sink.take().expect("attached once");
        let status = resp.status().as_u16();
        self.event_mut().status = Some(status);
        // Responses that never have a body (RFC 9110 §6.4.1): hyper drops
        // them unread, which is no early end.
        let bodyless = self.event().method.as_deref() == Some("HEAD")
            || status < 200
            || status == 204
            || status == 304;
        let finish = Finish {
            event: self.event.take().expect("attached once"),
            bare_path: std::mem::take(&mut self.bare_path),
            start: self.start,
            bytes_in: self.bytes_in.clone(),
            sink,
            requests,
        };
        resp.map(|inner| AuditedBody {
            inner,
            finish: Some(finish),
            held: None,
            ended: false,
            reserving: None,
            bytes_out: 0,
            failure: None,
            bodyless,
        })
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if let Some((sink, requests)) = self.sink.take() {
            let note = "the agent abandoned the request before the response";
            let Some(event) = self.event.take() else {
                return;
            };
            let finish = Finish {
                event,
                bare_path: std::mem::take(&mut self.bare_path),
                start: self.start,
                bytes_in: self.bytes_in.clone(),
                sink,
                requests,
            };
            let (sink, event) = finish.complete(0, Some(note));
            sink.record_detached(event);
        }
    }
}

/// As OCSF and most logs spell HTTP versions.
fn protocol(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_INTENT {
        let mut end = MAX_INTENT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

struct Finish {
    event: Box<Event>,
    bare_path: String,
    start: Instant,
    bytes_in: Arc<AtomicU64>,
    sink: AuditSink,
    requests: Arc<RequestLog>,
}

impl Finish {
    /// Completes the event, logs it and puts it in the recent view.
    fn complete(self, bytes_out: u64, note: Option<&str>) -> (AuditSink, Box<Event>) {
        let mut e = self.event;
        e.bytes_in = Some(self.bytes_in.load(Ordering::Relaxed));
        e.bytes_out = Some(bytes_out);
        e.duration_us = Some(self.start.elapsed().as_micros() as u64);
        if let Some(note) = note {
            e.reason = Some(match e.reason.take() {
                Some(r) if !r.is_empty() => format!("{r}; {note}").into(),
                _ => note.into(),
            });
        }
        // The audit event is the record; this line, at debug, is for
        // following requests live (at info it took 12% of the proxy's CPU).
        debug!(
            method = e.method.as_deref(),
            host = e.host.as_deref(),
            path = %self.bare_path,
            tool = e.tool.as_deref(),
            decision = e.decision.map(Decision::as_str),
            credential = e.credential_id.as_deref(),
            status = e.status,
            bytes_in = e.bytes_in,
            bytes_out = e.bytes_out,
            dur_us = e.duration_us,
            reason = e.reason.as_deref(),
            "request"
        );
        // The recent view takes its own copies of the few fields it shows,
        // not of the whole event.
        self.requests.push_with(|id, time| RequestEntry {
            id,
            time,
            agent: e.agent.clone().unwrap_or_default(),
            pid: e.pid.unwrap_or_default(),
            method: e.method.clone().unwrap_or_else(|| Arc::from("")),
            host: e.host.clone().unwrap_or_else(|| Arc::from("")),
            path: self.bare_path,
            tool: e.tool.clone(),
            decision: match e.decision {
                Some(Decision::Allow) => RequestDecision::Allow,
                Some(Decision::Deny) => RequestDecision::Deny,
                Some(Decision::WouldDeny) => RequestDecision::WouldDeny,
                _ => RequestDecision::Refuse,
            },
            reason: e.reason.clone().unwrap_or_else(|| Arc::from("")),
            credential: e.credential_id.clone(),
            status: e.status.unwrap_or_default(),
            policy_version: e.policy_version.clone().unwrap_or_else(|| Arc::from("")),
        });
        (self.sink, e)
    }
}

/// The method as the record's text: the standard ones shared (the event
/// and the recent view hold the same text for every request), any other
/// its own.
fn method_text(method: &hyper::Method) -> Arc<str> {
    static STANDARD: std::sync::LazyLock<Vec<Arc<str>>> = std::sync::LazyLock::new(|| {
        MethodSet::STANDARD
            .iter()
            .map(|m| m.as_str().into())
            .collect()
    });
    MethodSet::standard_index(method)
        .map_or_else(|| method.as_str().into(), |i| STANDARD[i].clone())
}

/// A request body that counts what passes through it.
struct Counted {
    inner: ProxyBody,
    bytes: Arc<AtomicU64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Reserve = Pin<Box<dyn Future<Output = Option<Permit>> + Send + 'static>>;

/// The response body as the agent receives it; records the request's event
/// when it ends.
pub struct AuditedBody {
    inner: ProxyBody,
    /// `None` once the event is recorded.
    finish: Option<Finish>,
    /// The last frame, held back until the event is queued.
    held: Option<Result<Frame<Bytes>, BodyError>>,
    ended: bool,
    reserving: Option<Reserve>,
    bytes_out: u64,
    failure: Option<String>,
    bodyless: bool,
}

impl AuditedBody {
    fn record(&mut self, permit: Option<Permit>) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let note = self.failure.take();
        let (sink, event) = finish.complete(self.bytes_out, note.as_deref());
        match permit {
            Some(permit) => permit.record(event),
            None => sink.record_detached(event),
        }
    }
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(finish) = &this.finish else {
                if let Some(frame) = this.held.take() {
                    return Poll::Ready(Some(frame));
                }
                if this.ended {
                    return Poll::Ready(None);
                }
                return Pin::new(&mut this.inner).poll_frame(cx);
            };
            if this.held.is_some() || this.ended {
                // The body is complete: queue the event before the agent
                // sees the end.
                let sink = &finish.sink;
                let reserving = this.reserving.get_or_insert_with(|| sink.reserve());
                match reserving.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(permit) => {
                        this.reserving = None;
                        this.record(permit);
                        continue;
                    }
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.bytes_out += data.len() as u64;
                    }
                    if !this.inner.is_end_stream() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    this.held = Some(Ok(frame));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.failure = Some(format!("the response body failed: {e}"));
                    this.held = Some(Err(e));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finish.is_none() && self.held.is_none() && self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        if self.finish.is_some() {
            if !(self.bodyless || self.ended || self.held.is_some() || self.inner.is_end_stream()) {
                self.failure.get_or_insert_with(|| {
                    "the agent stopped reading before the response ended".into()
                });
            }
            self.record(None);
        }
    }
}

/// The query as the audit record keeps it: where a credential was injected
/// into parameter `param`, its value reads `[redacted]`.
pub fn redacted_query(query: &str, param: &str) -> String {
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            let decoded =
                |n: &str| String::from_utf8_lossy(&percent::decode(n.as_bytes())).into_owned();
            decoded(name) != param && decoded(&name.replace('+', " ")) != param
        })
        .map(str::to_owned)
        .collect();
    pairs.push(format!("{param}=[redacted]"));
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_query_parameters_are_redacted_whatever_the_spelling() {
        assert_eq!(
            redacted_query("q=1&api_key=agentguard-placeholder:k&x=2", "api_key"),
            "q=1&x=2&api_key=[redacted]"
        );
        assert_eq!(
            redacted_query("api%5Fkey=sneaky", "api_key"),
            "api_key=[redacted]"
        );
        assert_eq!(redacted_query("", "k"), "k=[redacted]");
    }

    #[test]
    fn long_intents_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_INTENT);
        let t = truncate(s);
        assert!(t.len() <= MAX_INTENT);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
