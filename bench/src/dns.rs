//! A DNS stand-in for the host's resolvers, on loopback: agentguard forwards
//! the bench agent's queries here (`--dns-upstream`), so the passthrough
//! name resolves to the upstream, and agentguard remembers that answer (it
//! only relays passthrough TLS to an address its resolver gave the agent).

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
    serialize::binary::BinDecodable as _,
};
use tokio::net::UdpSocket;

/// The longest TTL agentguard keeps an answer for: one lookup before the
/// passthrough measurements lasts the whole benchmark.
const TTL: u32 = 3600;

/// Answers A queries for `names` with `ip` (NXDOMAIN for anything else) on
/// 127.0.0.1 at a free port, until the process exits.
pub async fn start(names: &[String], ip: Ipv4Addr) -> Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = socket.local_addr()?;
    let names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(query) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if let Some(reply) = answer(&query, &names, ip) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    Ok(addr)
}

fn answer(query: &Message, names: &[String], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let q = query.queries().first()?;
    let name = q
        .name()
        .to_utf8()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    if !names.contains(&name) {
        reply.set_response_code(ResponseCode::NXDomain);
    } else if q.query_type() == RecordType::A {
        let owner = Name::from_ascii(format!("{name}.")).ok()?;
        reply.add_answer(Record::from_rdata(owner, TTL, RData::A(A(ip))));
    }
    // A known name asked for another type gets an empty NOERROR answer.
    reply.to_vec().ok()
}
