//! Deciding and answering one query.

use std::net::SocketAddr;

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RData,
    serialize::binary::BinDecodable as _,
};

use super::{DnsQueryRecord, Shared, upstream};

/// Answers one DNS message from `client`; `None` when nothing should be
/// sent back (unparseable input).
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
    let Some(query) = request.queries().first() else {
        return respond(shared, record, refusal(&request, ResponseCode::FormErr)).await;
    };
    record.name = query.name().to_utf8().trim_end_matches('.').to_owned();
    record.qtype = query.query_type().to_string();

    let allowed = request.queries().len() == 1
        && state
            .policy
            .agent(agent)
            .is_some_and(|policy| policy.resolves(&record.name));
    if !allowed {
        record.decision = "deny";
        return respond(shared, record, refusal(&request, ResponseCode::NXDomain)).await;
    }
    match upstream::forward(&shared.upstreams, bytes, request.id(), transport).await {
        Ok(reply) => {
            record.decision = "allow";
            if let Ok(parsed) = Message::from_bytes(&reply) {
                record.answers = parsed
                    .answers()
                    .iter()
                    .map(|r| r.data().to_string())
                    .collect();
                record.rcode = parsed.response_code().to_string();
                remember_addresses(shared, agent, &record.name, &parsed);
            }
            (shared.on_query)(record).await;
            Some(reply)
        }
        Err(e) => {
            tracing::warn!(agent, name = %record.name, error = %e, "no upstream resolver answered");
            respond(shared, record, refusal(&request, ResponseCode::ServFail)).await
        }
    }
}

/// Binds the queried name to every address in the answer (a CNAME chain
/// ends in them), for the proxy's destination checks.
fn remember_addresses(shared: &Shared, agent: &str, name: &str, reply: &Message) {
    for record in reply.answers() {
        let ip = match record.data() {
            RData::A(a) => std::net::IpAddr::V4(a.0),
            RData::AAAA(aaaa) => std::net::IpAddr::V6(aaaa.0),
            _ => continue,
        };
        let ttl = std::time::Duration::from_secs(u64::from(record.ttl()));
        shared.answers.remember(agent, name, ip, ttl);
    }
}

async fn respond(shared: &Shared, mut record: DnsQueryRecord, reply: Message) -> Option<Vec<u8>> {
    record.rcode = reply.response_code().to_string();
    (shared.on_query)(record).await;
    reply.to_vec().ok()
}

/// A reply carrying only a response code, echoing the question.
fn refusal(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code)
        .add_queries(request.queries().to_vec());
    reply
}
