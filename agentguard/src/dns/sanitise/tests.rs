//! Unit tests of `sanitise`.

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
