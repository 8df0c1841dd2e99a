//! Forwarding allowed queries to the host's resolvers. The daemon is outside
//! every agent cgroup, so these sockets are not redirected.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// Per upstream attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// A DNS message over UDP without EDNS is at most 512 bytes; with EDNS,
/// servers rarely exceed a few KiB. 64 KiB is the protocol maximum.
const MAX_MESSAGE: usize = 65_535;

/// The resolvers in /etc/resolv.conf (`nameserver` lines, port 53).
pub fn system_resolvers() -> Vec<SocketAddr> {
    let Ok(conf) = std::fs::read_to_string("/etc/resolv.conf") else {
        return Vec::new();
    };
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().split('%').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Sends `query` to each upstream in turn until one answers with the same
/// id, over the transport the agent used. A truncated UDP answer is passed
/// on as it is: the agent then asks again over TCP (RFC 7766 §5), which the
/// kernel brings here too; answering its UDP query with a TCP-sized reply
/// would overrun the buffer it said it has.
pub async fn forward(
    upstreams: &[SocketAddr],
    query: &[u8],
    id: u16,
    transport: &'static str,
) -> Result<Vec<u8>, String> {
    let mut last = "no upstream resolver configured".to_owned();
    for &server in upstreams {
        let attempt = if transport == "tcp" {
            timeout(ATTEMPT_TIMEOUT, over_tcp(server, query)).await
        } else {
            timeout(ATTEMPT_TIMEOUT, over_udp(server, query, id)).await
        };
        match attempt {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: timed out"),
        }
    }
    Err(last)
}

async fn over_udp(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind).await?;
    // connect() filters datagrams from anyone but the server.
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Ignore stray replies to other ids (spoofing, late answers).
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}
