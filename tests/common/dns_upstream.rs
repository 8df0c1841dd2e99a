//! A loopback DNS server standing in for the host's resolvers: it answers A
//! records from a fixed table and NXDOMAIN otherwise, and remembers every
//! name it was asked.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, rdata::A},
    serialize::binary::BinDecodable as _,
};

pub struct DnsUpstream {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsUpstream {
    /// Serves `records` (name → IPv4) on `ip` at a free port.
    pub fn start(ip: &str, records: &[(&str, Ipv4Addr)]) -> Self {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let table: HashMap<String, Ipv4Addr> = records
            .iter()
            .map(|(n, ip)| (n.trim_end_matches('.').to_owned(), *ip))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Message::from_bytes(&buf[..n]) else {
                        continue;
                    };
                    if let Some(reply) = answer(&query, &table, &asked) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        Self {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// Names this server was asked, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(
    query: &Message,
    table: &HashMap<String, Ipv4Addr>,
    asked: &Mutex<Vec<String>>,
) -> Option<Vec<u8>> {
    let q = query.queries().first()?;
    let name = q.name().to_utf8().trim_end_matches('.').to_owned();
    asked.lock().unwrap().push(name.clone());
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    match table.get(&name) {
        Some(ip) if q.query_type() == hickory_proto::rr::RecordType::A => {
            let owner = Name::from_ascii(format!("{name}.")).ok()?;
            reply.add_answer(Record::from_rdata(owner, 60, RData::A(A(*ip))));
        }
        // Known name, other type: an empty answer (NOERROR/NODATA).
        Some(_) => {}
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply.to_vec().ok()
}

impl Drop for DnsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
