//! A loopback DNS server standing in for the host's resolvers, over UDP and
//! TCP on one port: it answers A and AAAA records from a fixed table and
//! NXDOMAIN otherwise, and remembers every message it was sent.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
    serialize::binary::BinDecodable as _,
};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// The raw message: what the daemon forwarded, byte for byte.
    pub bytes: Vec<u8>,
}

impl Received {
    /// The header's OPCODE (RFC 1035 §4.1.1), read from the raw bytes so
    /// that messages hickory cannot parse count too.
    pub fn opcode(&self) -> Option<u8> {
        self.bytes.get(2).map(|b| (b >> 3) & 0x0f)
    }

    pub fn parsed(&self) -> Option<Message> {
        Message::from_bytes(&self.bytes).ok()
    }
}

type Table = HashMap<String, IpAddr>;

#[derive(Default)]
struct Log {
    /// Names asked, in order.
    asked: Vec<String>,
    received: Vec<Received>,
}

pub struct DnsUpstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsUpstream {
    /// Serves `records` (name → IPv4) on `ip` at a free port, UDP and TCP.
    pub fn start(ip: &str, records: &[(&str, Ipv4Addr)]) -> Self {
        let records: Vec<(&str, IpAddr)> = records.iter().map(|(n, a)| (*n, (*a).into())).collect();
        Self::start_with(ip, &records)
    }

    /// [`DnsUpstream::start`] with IPv6 addresses too (AAAA records).
    pub fn start_with(ip: &str, records: &[(&str, IpAddr)]) -> Self {
        let (udp, tcp) = bind(ip);
        let addr = udp.local_addr().unwrap();
        let table: Arc<Table> = Arc::new(
            records
                .iter()
                .map(|(n, ip)| (n.trim_end_matches('.').to_owned(), *ip))
                .collect(),
        );
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (table, log, stop) = (table.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || serve_udp(&udp, &table, &log, &stop))
        };
        let tcp_thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || serve_tcp(&tcp, &table, &log, &stop))
        };
        Self {
            addr,
            log,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// Names this server was asked, in order.
    pub fn asked(&self) -> Vec<String> {
        self.log.lock().unwrap().asked.clone()
    }

    /// Every message this server received, in order, parseable or not.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().received.clone()
    }
}

/// A UDP socket and a TCP listener on the same free port of `ip`.
fn bind(ip: &str) -> (UdpSocket, TcpListener) {
    for _ in 0..16 {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        // The port was free for UDP; TCP's is a separate space and may not be.
        let Ok(tcp) = TcpListener::bind((ip, port)) else {
            continue;
        };
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        return (udp, tcp);
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

fn serve_udp(socket: &UdpSocket, table: &Table, log: &Mutex<Log>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..n], "udp", table, log) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// One connection at a time: the daemon's queries in these tests are few.
fn serve_tcp(listener: &TcpListener, table: &Table, log: &Mutex<Log>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = tcp_session(stream, table, log);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2) until the daemon closes.
fn tcp_session(mut stream: TcpStream, table: &Table, log: &Mutex<Log>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut msg)?;
        if let Some(reply) = answer(&msg, "tcp", table, log) {
            stream.write_all(&(reply.len() as u16).to_be_bytes())?;
            stream.write_all(&reply)?;
        }
    }
}

fn answer(
    bytes: &[u8],
    transport: &'static str,
    table: &Table,
    log: &Mutex<Log>,
) -> Option<Vec<u8>> {
    let mut log = log.lock().unwrap();
    log.received.push(Received {
        transport,
        bytes: bytes.to_vec(),
    });
    let query = Message::from_bytes(bytes).ok()?;
    let q = query.queries().first()?;
    let name = q.name().to_utf8().trim_end_matches('.').to_owned();
    log.asked.push(name.clone());
    drop(log);
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    let data = match (table.get(&name), q.query_type()) {
        (Some(IpAddr::V4(ip)), RecordType::A) => Some(RData::A(A(*ip))),
        (Some(IpAddr::V6(ip)), RecordType::AAAA) => Some(RData::AAAA(AAAA(*ip))),
        _ => None,
    };
    match (table.get(&name), data) {
        (_, Some(data)) => {
            let owner = Name::from_ascii(format!("{name}.")).ok()?;
            reply.add_answer(Record::from_rdata(owner, 60, data));
        }
        // Known name, other type: an empty answer (NOERROR/NODATA).
        (Some(_), None) => {}
        (None, None) => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply.to_vec().ok()
}

impl Drop for DnsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
