//! Deciding and answering one query.

use std::net::SocketAddr;

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
    serialize::binary::BinDecodable as _,
};

use super::{DnsQueryRecord, Shared, sanitise, upstream};

/// Answers one DNS message from `client`; `None` when nothing should be
/// sent back (unparseable input, or a response rather than a query).
///
/// The record of each query is handed to the audit stream before the reply
/// goes out, waiting while its queue is full: a resolver flooded faster
/// than the audit store can write slows down instead of queueing without
/// bound.
pub async fn answer(
    shared: &Shared,
    agent: &str,
    bytes: &[u8],
    client: SocketAddr,
    transport: &'static str,
) -> Option<Vec<u8>> {
    let Some(live) = shared.live.get() else {
        // Not serving yet: no policy to decide with.
        let request = Message::from_bytes(bytes).ok()?;
        return refusal(&request, ResponseCode::ServFail).to_vec().ok();
    };
    let state = live.load();
    let mut record = DnsQueryRecord {
        agent: agent.to_owned(),
        name: String::new(),
        qtype: String::new(),
        decision: "fail",
        detail: None,
        answers: Vec::new(),
        rcode: String::new(),
        client,
        transport,
        policy_version: state.policy.version.clone(),
    };
    let Ok(request) = Message::from_bytes(bytes) else {
        record.rcode = "malformed".into();
        (shared.on_query)(record).await;
        return None;
    };
    if let Some(query) = request.queries().first() {
        record.name = query.name().to_utf8().trim_end_matches('.').to_owned();
        record.qtype = query.query_type().to_string();
    }
    let query = match sanitise::question(&request) {
        Ok(query) => query,
        Err(reason) => {
            record.decision = "refuse";
            record.detail = Some(reason.to_string());
            let Some(code) = reason.rcode() else {
                record.rcode = "none".into();
                (shared.on_query)(record).await;
                return None;
            };
            return respond(shared, record, refusal(&request, code)).await;
        }
    };

    let allowed = state
        .policy
        .agent(agent)
        .is_some_and(|policy| policy.resolves(&record.name));
    if !allowed {
        record.decision = "deny";
        return respond(shared, record, refusal(&request, ResponseCode::NXDomain)).await;
    }
    let id = fresh_id();
    let forward = match sanitise::upstream_query(&request, query, id).to_vec() {
        Ok(forward) => forward,
        Err(e) => {
            record.detail = Some(format!("failed to encode the query: {e}"));
            return respond(shared, record, refusal(&request, ResponseCode::ServFail)).await;
        }
    };
    let reply = match upstream::forward(&shared.upstreams, &forward, id, transport).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(agent, name = %record.name, error = %e, "no upstream resolver answered");
            return respond(shared, record, refusal(&request, ResponseCode::ServFail)).await;
        }
    };
    let passed_on = Message::from_vec(&reply)
        .map_err(|e| sanitise::SanitiseError::ReplyUnparsed(e.to_string()))
        .and_then(|parsed| {
            let bytes = sanitise::agent_reply(&request, id, &parsed, transport)?;
            Ok((parsed, bytes))
        });
    let (parsed, bytes) = match passed_on {
        Ok(passed_on) => passed_on,
        Err(e) => {
            tracing::warn!(agent, name = %record.name, error = %e, "upstream reply not passed on");
            record.detail = Some(e.to_string());
            return respond(shared, record, refusal(&request, ResponseCode::ServFail)).await;
        }
    };
    record.decision = "allow";
    record.answers = parsed
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    record.rcode = parsed.response_code().to_string();
    remember_addresses(shared, agent, &record.name, &parsed);
    (shared.on_query)(record).await;
    Some(bytes)
}

/// A random id for the forwarded query: neither chosen nor predictable by
/// the agent. getrandom does not fail on Linux once the kernel's pool is
/// initialised (long before a daemon starts); were it to, the id would be 0
/// and only the spoofing protection of random ids would be lost.
fn fresh_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_ne_bytes(b)
}

/// Binds the queried name to every address in the answer (a CNAME chain
/// ends in them), for the proxy's destination checks, and tells whoever
/// watches the bindings (passthrough's direct way).
fn remember_addresses(shared: &Shared, agent: &str, name: &str, reply: &Message) {
    let name = name.to_ascii_lowercase();
    for record in reply.answers() {
        let ip = match record.data() {
            RData::A(a) => std::net::IpAddr::V4(a.0),
            RData::AAAA(aaaa) => std::net::IpAddr::V6(aaaa.0),
            _ => continue,
        };
        let ttl = std::time::Duration::from_secs(u64::from(record.ttl()));
        let expires = shared.answers.remember(agent, &name, ip, ttl);
        if let Some(on_bound) = shared.on_bound.get() {
            on_bound(&super::Bound {
                agent,
                name: &name,
                ip,
                expires,
                names: shared.answers.names_for(agent, ip),
            });
        }
    }
}

async fn respond(shared: &Shared, mut record: DnsQueryRecord, reply: Message) -> Option<Vec<u8>> {
    record.rcode = reply.response_code().to_string();
    (shared.on_query)(record).await;
    reply.to_vec().ok()
}

/// A reply carrying only a response code. It echoes the question when
/// there is exactly one: with none or several there is no question to
/// answer.
fn refusal(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    if let [query] = request.queries() {
        reply.add_query(query.clone());
    }
    reply
}
