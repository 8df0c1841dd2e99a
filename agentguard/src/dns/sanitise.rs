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
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{
            DNSClass, Name, RData, Record, RecordType,
            rdata::{
                A, TXT,
                opt::{ClientSubnet, EdnsCode, EdnsOption},
            },
        },
        serialize::binary::BinDecodable as _,
    };

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// A query as an agent would send it, before any abuse is added.
    fn agent_query(id: u16, qname: &str) -> Message {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name(qname), RecordType::A));
        m
    }

    /// Through the wire and back, as the resolver receives it.
    fn wire(m: &Message) -> Message {
        Message::from_bytes(&m.to_vec().unwrap()).unwrap()
    }

    fn rejection(m: &Message) -> SanitiseError {
        question(&wire(m)).unwrap_err()
    }

    #[test]
    fn an_update_is_not_implemented() {
        let mut m = agent_query(7, "example.com.");
        m.set_op_code(OpCode::Update);
        let e = rejection(&m);
        assert_eq!(e, SanitiseError::OpCode(OpCode::Update));
        assert_eq!(e.rcode(), Some(ResponseCode::NotImp));
        let mut m = agent_query(7, "example.com.");
        m.set_op_code(OpCode::Notify);
        assert_eq!(rejection(&m).rcode(), Some(ResponseCode::NotImp));
    }

    #[test]
    fn malformed_and_unusual_queries_are_refused_with_their_rcode() {
        let mut two = agent_query(1, "a.example.");
        two.add_query(Query::query(name("b.example."), RecordType::A));
        assert_eq!(rejection(&two), SanitiseError::QuestionCount(2));
        assert_eq!(rejection(&two).rcode(), Some(ResponseCode::FormErr));

        let mut none = agent_query(1, "a.example.");
        none.queries_mut().clear();
        assert_eq!(rejection(&none), SanitiseError::QuestionCount(0));

        let mut with_answer = agent_query(1, "a.example.");
        with_answer.add_answer(Record::from_rdata(
            name("a.example."),
            60,
            RData::TXT(TXT::new(vec!["payload".into()])),
        ));
        assert_eq!(rejection(&with_answer).rcode(), Some(ResponseCode::FormErr));

        let mut chaos = agent_query(1, "version.bind.");
        chaos.queries_mut()[0].set_query_class(DNSClass::CH);
        assert_eq!(rejection(&chaos).rcode(), Some(ResponseCode::Refused));

        let mut axfr = agent_query(1, "example.com.");
        axfr.queries_mut()[0].set_query_type(RecordType::AXFR);
        assert_eq!(rejection(&axfr), SanitiseError::MetaType(RecordType::AXFR));
        assert_eq!(rejection(&axfr).rcode(), Some(ResponseCode::Refused));

        let mut any = agent_query(1, "example.com.");
        any.queries_mut()[0].set_query_type(RecordType::ANY);
        assert!(question(&wire(&any)).is_ok());

        let mut response = agent_query(1, "a.example.");
        response.set_message_type(MessageType::Response);
        assert_eq!(rejection(&response).rcode(), None);
    }

    #[test]
    fn only_the_question_is_forwarded_under_a_fresh_id() {
        let mut m = agent_query(0x1234, "Api.Example.com.");
        m.set_checking_disabled(true);
        // Data smuggled in the additional section and EDNS options.
        m.add_additional(Record::from_rdata(
            name("smuggled.example."),
            60,
            RData::TXT(TXT::new(vec!["secret".into()])),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(4096).set_dnssec_ok(true);
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                Ipv4Addr::new(203, 0, 113, 0).into(),
                24,
                0,
            )));
        edns.options_mut()
            .insert(EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7; 8]));
        edns.options_mut().insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Padding),
            vec![1; 64],
        ));
        m.set_edns(edns);
        let request = wire(&m);
        assert_eq!(request.additionals().len(), 1, "fixture carries the record");
        assert_eq!(
            request
                .extensions()
                .as_ref()
                .unwrap()
                .options()
                .as_ref()
                .len(),
            3,
            "fixture carries the options"
        );

        let q = question(&request).unwrap();
        let forwarded = wire(&upstream_query(&request, q, 0xbeef));
        assert_eq!(forwarded.id(), 0xbeef);
        assert_eq!(forwarded.op_code(), OpCode::Query);
        assert!(forwarded.recursion_desired());
        assert!(forwarded.checking_disabled());
        assert_eq!(forwarded.queries().len(), 1);
        assert!(
            forwarded.queries()[0]
                .name()
                .eq_case(&name("Api.Example.com."))
        );
        assert!(forwarded.answers().is_empty());
        assert!(forwarded.name_servers().is_empty());
        assert!(forwarded.additionals().is_empty());
        let edns = forwarded.extensions().as_ref().expect("a fresh OPT");
        assert!(edns.options().as_ref().is_empty());
        assert_eq!(edns.max_payload(), UDP_PAYLOAD);
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.version(), 0);
    }

    #[test]
    fn no_opt_is_invented_and_rd_is_kept_as_the_agent_set_it() {
        let mut m = agent_query(9, "example.com.");
        m.set_recursion_desired(false);
        let request = wire(&m);
        let forwarded = wire(&upstream_query(
            &request,
            question(&request).unwrap(),
            0x4242,
        ));
        assert!(forwarded.extensions().is_none());
        assert!(!forwarded.recursion_desired());
    }

    /// The upstream's answer to `forwarded`, spelling the name its own way.
    fn upstream_answer(forwarded: &Message, qname: &str, records: usize) -> Message {
        let mut r = Message::new();
        r.set_id(forwarded.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_query(Query::query(name(qname), RecordType::A));
        for i in 0..records {
            r.add_answer(Record::from_rdata(
                name(qname),
                60,
                RData::A(A(Ipv4Addr::new(127, 0, (i / 256) as u8, (i % 256) as u8))),
            ));
        }
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        r.set_edns(edns);
        wire(&r)
    }

    #[test]
    fn the_agent_gets_its_own_id_and_question_back() {
        let request = wire(&agent_query(0x1234, "Api.Example.com."));
        let forwarded = upstream_query(&request, question(&request).unwrap(), 0xbeef);
        let reply = upstream_answer(&forwarded, "api.example.com.", 1);
        let bytes = agent_reply(&request, 0xbeef, &reply, "udp").unwrap();
        let got = Message::from_bytes(&bytes).unwrap();
        assert_eq!(got.id(), 0x1234);
        assert!(got.queries()[0].name().eq_case(&name("Api.Example.com.")));
        assert_eq!(got.answers().len(), 1);
        // The agent sent no OPT, so it gets none (RFC 6891 §7).
        assert!(got.extensions().is_none());
    }

    #[test]
    fn a_reply_to_another_question_or_id_is_not_passed_on() {
        let request = wire(&agent_query(1, "api.example.com."));
        let forwarded = upstream_query(&request, question(&request).unwrap(), 0xbeef);
        let other_name = upstream_answer(&forwarded, "evil.example.com.", 1);
        assert_eq!(
            agent_reply(&request, 0xbeef, &other_name, "udp"),
            Err(SanitiseError::ReplyMismatch)
        );
        let right = upstream_answer(&forwarded, "api.example.com.", 1);
        assert_eq!(
            agent_reply(&request, 0xbeee, &right, "udp"),
            Err(SanitiseError::ReplyMismatch)
        );
    }

    #[test]
    fn a_udp_reply_larger_than_the_agent_takes_is_truncated() {
        // No EDNS: the agent takes 512 bytes over UDP (RFC 1035 §4.2.1).
        let request = wire(&agent_query(5, "big.example.com."));
        let forwarded = upstream_query(&request, question(&request).unwrap(), 77);
        let big = upstream_answer(&forwarded, "big.example.com.", 60);
        let udp = agent_reply(&request, 77, &big, "udp").unwrap();
        assert!(udp.len() <= 512, "{}", udp.len());
        let got = Message::from_bytes(&udp).unwrap();
        assert!(got.truncated());
        assert_eq!(got.id(), 5);
        assert_eq!(got.queries().len(), 1);
        // Over TCP the whole answer goes through.
        let tcp = Message::from_bytes(&agent_reply(&request, 77, &big, "tcp").unwrap()).unwrap();
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 60);
    }
}
