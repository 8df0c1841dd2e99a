//! What of an agent's DNS message reaches the host's resolver: only a
//! standard query's one question, in a message agentguard builds itself.
//! Forwarding the agent's bytes would hand the host's resolver whatever the
//! agent put in them (an UPDATE, NOTIFY, records in any section, EDNS
//! options such as client subnet, cookies or padding, its own id), a channel
//! out of the policy for arbitrary data.

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, RecordType},
};
use thiserror::Error;

/// The UDP payload size advertised upstream at most: DNS Flag Day 2020's
/// value, which keeps replies from being fragmented on common paths
/// (<https://www.dnsflagday.net/2020/>).
const UDP_PAYLOAD: u16 = 1232;
/// A reply over TCP is length-prefixed with 16 bits (RFC 1035 §4.2.2).
const TCP_MAX: usize = u16::MAX as usize;

/// Why a message is not forwarded, or why a reply is not passed on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SanitiseError {
    #[error("a response, not a query")]
    Response,
    #[error("opcode {0} is not a standard query")]
    OpCode(OpCode),
    #[error("{0} questions; a query has exactly one")]
    QuestionCount(usize),
    #[error("{answers} answer and {authority} authority records in a query")]
    RecordsInQuery { answers: usize, authority: usize },
    #[error("class {0} is not IN")]
    Class(DNSClass),
    #[error("query type {0} is a transfer or meta type")]
    MetaType(RecordType),
    #[error("failed to parse the upstream's reply: {0}")]
    ReplyUnparsed(String),
    #[error("the upstream's reply does not answer the question forwarded")]
    ReplyMismatch,
    #[error("failed to encode the reply: {0}")]
    Encode(String),
}

impl SanitiseError {
    /// The response code the agent gets; `None`: no reply at all.
    pub fn rcode(&self) -> Option<ResponseCode> {
        match self {
            // Answering a response could start a loop between two resolvers
            // (BIND and Unbound drop them too).
            Self::Response => None,
            // RFC 1035 §4.1.1: "Not Implemented - The name server does not
            // support the requested kind of query."
            Self::OpCode(_) => Some(ResponseCode::NotImp),
            Self::QuestionCount(_) | Self::RecordsInQuery { .. } => Some(ResponseCode::FormErr),
            Self::Class(_) | Self::MetaType(_) => Some(ResponseCode::Refused),
            Self::ReplyUnparsed(_) | Self::ReplyMismatch | Self::Encode(_) => {
                Some(ResponseCode::ServFail)
            }
        }
    }
}

/// The question of a standard query (RFC 1035 §4.1): QR 0, opcode QUERY,
/// exactly one question (RFC 9619), class IN, no answer or authority
/// records. Additional records (EDNS, signatures) are never forwarded, so
/// they need no check.
pub fn question(request: &Message) -> Result<&Query, SanitiseError> {
    if request.message_type() != MessageType::Query {
        return Err(SanitiseError::Response);
    }
    if request.op_code() != OpCode::Query {
        return Err(SanitiseError::OpCode(request.op_code()));
    }
    let [query] = request.queries() else {
        return Err(SanitiseError::QuestionCount(request.queries().len()));
    };
    if !request.answers().is_empty() || !request.name_servers().is_empty() {
        return Err(SanitiseError::RecordsInQuery {
            answers: request.answers().len(),
            authority: request.name_servers().len(),
        });
    }
    // Stub resolvers ask class IN; CHAOS and the rest are server
    // introspection (version.bind), not names on the network.
    if query.query_class() != DNSClass::IN {
        return Err(SanitiseError::Class(query.query_class()));
    }
    // OPT and the meta types 128-254 (TKEY, TSIG, IXFR, AXFR, MAILB,
    // MAILA; RFC 6895 §3.1) are not questions a stub asks; a transfer would
    // have the host's resolver stream zones. ANY (255) is a plain query.
    let code = u16::from(query.query_type());
    if code == u16::from(RecordType::OPT) || (128..=254).contains(&code) {
        return Err(SanitiseError::MetaType(query.query_type()));
    }
    Ok(query)
}

/// The message forwarded for `request`, whose question
/// [`question`] accepted: that question, the id `id` (not the agent's: an
/// agent-chosen id would be 16 bits it controls, and one it can predict),
/// the standard query flags the agent set (RD; AD and CD, RFC 6840 §5.7-5.9)
/// and, if the agent spoke EDNS, a fresh OPT record with no options: its
/// payload size (at most [`UDP_PAYLOAD`]) and DO bit (RFC 3225) only.
pub fn upstream_query(request: &Message, query: &Query, id: u16) -> Message {
    let mut forward = Message::new();
    forward
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_authentic_data(request.authentic_data())
        .set_checking_disabled(request.checking_disabled())
        .add_query(query.clone());
    if let Some(edns) = request.extensions() {
        let mut fresh = Edns::new();
        fresh
            .set_max_payload(edns.max_payload().min(UDP_PAYLOAD))
            .set_dnssec_ok(edns.flags().dnssec_ok);
        forward.set_edns(fresh);
    }
    forward
}

/// The upstream's `reply` to the query [`upstream_query`] built with id
/// `id`, as the agent gets it: the agent's id and question (its own spelling
/// of the name), no OPT record unless the agent sent one (RFC 6891 §7), and
/// over UDP no larger than the agent can take, or truncated (TC) so that it
/// asks again over TCP, which the kernel brings here too.
pub fn agent_reply(
    request: &Message,
    id: u16,
    reply: &Message,
    transport: &str,
) -> Result<Vec<u8>, SanitiseError> {
    let asked = request.queries();
    let matches = reply.id() == id
        && reply.message_type() == MessageType::Response
        && reply.queries().len() == 1
        && asked.len() == 1
        && reply.queries()[0].name() == asked[0].name()
        && reply.queries()[0].query_type() == asked[0].query_type()
        && reply.queries()[0].query_class() == asked[0].query_class();
    if !matches {
        return Err(SanitiseError::ReplyMismatch);
    }
    let mut reply = reply.clone();
    reply.set_id(request.id());
    *reply.queries_mut() = asked.to_vec();
    if request.extensions().is_none() {
        *reply.extensions_mut() = None;
    }
    let limit = if transport == "udp" {
        usize::from(request.max_payload())
    } else {
        TCP_MAX
    };
    let bytes = reply
        .to_vec()
        .map_err(|e| SanitiseError::Encode(e.to_string()))?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    reply
        .truncate()
        .to_vec()
        .map_err(|e| SanitiseError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests;
