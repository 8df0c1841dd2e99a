use std::{
    ffi::OsString,
    io::{ErrorKind, Read, Write},
    mem::offset_of,
    net::{Ipv6Addr, TcpListener, TcpStream},
    os::fd::AsFd,
};

use super::*;

const READ_TIMEOUT: Duration = Duration::from_secs(2);
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const V4_MAPPED: IpAddr = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "SOCK_DESTROY needs CAP_NET_ADMIN: run these tests as root"
    );
}

/// A client connected from `connect_ip` to a listener on `listen_ip`, and
/// the listener's accepted side; `device` binds the client to a device
/// (SO_BINDTODEVICE) first.
fn connected(
    listen_ip: IpAddr,
    connect_ip: IpAddr,
    device: Option<&str>,
) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((listen_ip, 0)).unwrap();
    let to = SocketAddr::new(connect_ip, listener.local_addr().unwrap().port());
    let client = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    if let Some(device) = device {
        socket::setsockopt(&client, sockopt::BindToDevice, &OsString::from(device)).unwrap();
    }
    client.connect_timeout(&to.into(), READ_TIMEOUT).unwrap();
    let client = TcpStream::from(client);
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }
    (client, server)
}

fn id_of(stream: &TcpStream) -> TcpSocketId {
    TcpSocketId {
        local: stream.local_addr().unwrap(),
        remote: stream.peer_addr().unwrap(),
        cookie: socket_cookie(stream.as_fd()).unwrap(),
    }
}

fn read_one(stream: &mut TcpStream) -> io::Result<usize> {
    stream.read(&mut [0u8; 16])
}

/// Destroys the client's socket by `id` and checks what both sides see.
fn destroy_and_check(
    diag: &SockDiag,
    id: &TcpSocketId,
    mut client: TcpStream,
    mut server: TcpStream,
) {
    assert_eq!(diag.destroy_tcp(id).unwrap(), Destroyed::Closed, "{id}");
    // tcp_abort sets sk_err = ECONNABORTED for the owner...
    let err = read_one(&mut client).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    // ...and sends the peer an RST (tcp_send_active_reset).
    let err = read_one(&mut server).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(diag.destroy_tcp(id).unwrap(), Destroyed::Gone, "{id}");
}

/// Wrong cookies find nothing, and the connection still carries bytes both
/// ways.
fn check_wrong_cookies_miss(diag: &SockDiag, mut client: TcpStream, mut server: TcpStream) {
    let id = id_of(&client);
    for cookie in [0, id.cookie + 1, id.cookie ^ (1 << 40)] {
        let wrong = TcpSocketId { cookie, ..id };
        assert_eq!(
            diag.destroy_tcp(&wrong).unwrap(),
            Destroyed::Gone,
            "{wrong}"
        );
    }
    let mut byte = [0u8; 1];
    client.write_all(b"x").unwrap();
    server.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x");
    server.write_all(b"y").unwrap();
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"y");
}

#[test]
fn destroys_an_ipv4_connection() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let (client, server) = connected(V4, V4, None);
    destroy_and_check(&diag, &id_of(&client), client, server);
}

#[test]
fn destroys_an_ipv6_connection() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let (client, server) = connected(V6, V6, None);
    destroy_and_check(&diag, &id_of(&client), client, server);
}

#[test]
fn destroys_an_ipv6_socket_talking_ipv4_by_its_mapped_addresses() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let (client, server) = connected(V4, V4_MAPPED, None);
    let id = id_of(&client);
    assert_eq!(id.local.ip(), V4_MAPPED, "{id}");
    assert_eq!(id.remote.ip(), V4_MAPPED, "{id}");
    destroy_and_check(&diag, &id, client, server);
}

#[test]
fn the_ipv4_form_also_finds_an_unbound_ipv6_socket_talking_ipv4() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let (client, server) = connected(V4, V4_MAPPED, None);
    let mapped = id_of(&client);
    let unmap = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let id = TcpSocketId {
        local: unmap(mapped.local),
        remote: unmap(mapped.remote),
        ..mapped
    };
    assert!(id.local.is_ipv4(), "{id}");
    destroy_and_check(&diag, &id, client, server);
}

#[test]
fn destroys_a_connection_bound_to_a_device() {
    require_root();
    let diag = SockDiag::open().unwrap();
    for ip in [V4, V6] {
        let (client, server) = connected(ip, ip, Some("lo"));
        let id = id_of(&client);
        // Named without its device, the kernel's lookup misses it; the dump
        // finds the device.
        let mut req = InetDiagReqV2::tcp(&id).unwrap();
        let mut exchange = diag.exchange.lock().unwrap();
        assert_eq!(exchange.destroy(&id, &req).unwrap(), Destroyed::Gone);
        let lo = exchange.find_device(&id, &req).unwrap().unwrap();
        assert_ne!(lo, 0);
        req.id.cookie[0] ^= 1;
        assert_eq!(exchange.find_device(&id, &req).unwrap(), None);
        drop(exchange);
        destroy_and_check(&diag, &id, client, server);
    }
}

#[test]
fn a_wrong_cookie_leaves_the_connection_alone() {
    require_root();
    let diag = SockDiag::open().unwrap();
    for (listen, connect, device) in [
        (V4, V4, None),
        (V6, V6, None),
        (V4, V4_MAPPED, None),
        (V4, V4, Some("lo")),
    ] {
        let (client, server) = connected(listen, connect, device);
        check_wrong_cookies_miss(&diag, client, server);
    }
}

/// The kernel's lookup by tuple falls back to a listener on the local
/// address; the cookie is what spares it.
#[test]
fn a_listener_on_the_local_address_is_left_alone() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let listener = TcpListener::bind((V4, 0)).unwrap();
    let (other, _server) = connected(V4, V4, None);
    let id = TcpSocketId {
        local: listener.local_addr().unwrap(),
        remote: SocketAddr::new(V4, 9),
        cookie: socket_cookie(other.as_fd()).unwrap(),
    };
    assert_eq!(diag.destroy_tcp(&id).unwrap(), Destroyed::Gone);
    let _client = TcpStream::connect_timeout(&id.local, READ_TIMEOUT).unwrap();
    listener.accept().unwrap();
}

/// An answer to an earlier request (one that timed out) is skipped by its
/// sequence number, not taken for the current one's.
#[test]
fn a_stale_answer_is_skipped() {
    require_root();
    let diag = SockDiag::open().unwrap();
    let (client, server) = connected(V4, V4, None);
    let id = id_of(&client);
    let req = InetDiagReqV2::tcp(&id).unwrap();
    let wrong = InetDiagReqV2::tcp(&TcpSocketId { cookie: 0, ..id }).unwrap();
    let mut exchange = diag.exchange.lock().unwrap();
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let stale = exchange.send(&id, SOCK_DESTROY, flags, &wrong).unwrap();
    let current = exchange.send(&id, SOCK_DESTROY, flags, &req).unwrap();
    assert_ne!(stale, current);
    // Both acks are queued by now: the kernel answers inside send().
    let errno = exchange
        .receive(&id, current, |_, payload| {
            Ok(Some(nlmsgerr_errno(payload)?))
        })
        .unwrap();
    // The stale request's answer was ESTALE (cookie 0).
    assert_eq!(errno, None, "the current request closed the socket");
    // And it was read and dropped, not left for the next request.
    let pending = socket::recv(
        exchange.fd.as_raw_fd(),
        &mut [0; 64],
        MsgFlags::MSG_DONTWAIT,
    );
    assert_eq!(pending, Err(Errno::EAGAIN));
    drop(exchange);
    let err = read_one(&mut { client }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    drop(server);
}

#[test]
fn socket_cookies_are_distinct_and_stable() {
    let (client, server) = connected(V4, V4, None);
    let a = socket_cookie(client.as_fd()).unwrap();
    assert_ne!(a, 0);
    assert_eq!(socket_cookie(client.as_fd()).unwrap(), a);
    assert_ne!(socket_cookie(server.as_fd()).unwrap(), a);
}

#[test]
fn sock_diag_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync>() {}
    shareable::<SockDiag>();
}

// Offsets from the kernel headers (linux/netlink.h, linux/inet_diag.h).
#[test]
fn the_structs_match_the_kernel_layout() {
    assert_eq!(offset_of!(NlMsgHdr, kind), 4);
    assert_eq!(offset_of!(NlMsgHdr, flags), 6);
    assert_eq!(offset_of!(NlMsgHdr, seq), 8);
    assert_eq!(offset_of!(NlMsgHdr, pid), 12);
    assert_eq!(offset_of!(InetDiagReqV2, states), 4);
    assert_eq!(offset_of!(InetDiagReqV2, id), 8);
    assert_eq!(offset_of!(InetDiagSockId, dport), 2);
    assert_eq!(offset_of!(InetDiagSockId, src), 4);
    assert_eq!(offset_of!(InetDiagSockId, dst), 20);
    assert_eq!(offset_of!(InetDiagSockId, ifindex), 36);
    assert_eq!(offset_of!(InetDiagSockId, cookie), 40);
}

#[test]
fn an_ipv4_request_encodes_as_the_kernel_reads_it() {
    let id = TcpSocketId {
        local: "10.1.2.3:4660".parse().unwrap(),
        remote: "192.0.2.9:443".parse().unwrap(),
        cookie: 0x1122_3344_5566_7788,
    };
    let req = InetDiagReqV2::tcp(&id).unwrap();
    let bytes = encode_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 0xa0b0c0d0, &req);
    assert_eq!(bytes.len(), 72);
    let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_ne_bytes(bytes[i..i + 2].try_into().unwrap());
    // nlmsghdr
    assert_eq!(u32_at(0), 72);
    assert_eq!(u16_at(4), 21);
    assert_eq!(u16_at(6), 0x1 | 0x4);
    assert_eq!(u32_at(8), 0xa0b0c0d0);
    assert_eq!(u32_at(12), 0);
    // inet_diag_req_v2 at 16
    assert_eq!(bytes[16], libc::AF_INET as u8);
    assert_eq!(bytes[17], libc::IPPROTO_TCP as u8);
    assert_eq!(&bytes[18..20], [0, 0]);
    assert_eq!(u32_at(20), !0);
    // inet_diag_sockid at 24
    assert_eq!(&bytes[24..26], [0x12, 0x34]);
    assert_eq!(&bytes[26..28], [0x01, 0xbb]);
    assert_eq!(
        &bytes[28..44],
        [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        &bytes[44..60],
        [192, 0, 2, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(u32_at(60), 0);
    assert_eq!(u32_at(64), 0x5566_7788);
    assert_eq!(u32_at(68), 0x1122_3344);
}

#[test]
fn an_ipv6_request_carries_sixteen_address_bytes() {
    let id = TcpSocketId {
        local: "[2001:db8::1]:1".parse().unwrap(),
        remote: "[::ffff:127.0.0.1]:2".parse().unwrap(),
        cookie: 7,
    };
    let bytes = encode_request(
        SOCK_DESTROY,
        NLM_F_REQUEST,
        1,
        &InetDiagReqV2::tcp(&id).unwrap(),
    );
    assert_eq!(bytes[16], libc::AF_INET6 as u8);
    assert_eq!(
        &bytes[28..44],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    );
    // v4-mapped: the kernel reads the IPv4 address from word 3.
    assert_eq!(
        &bytes[44..60],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
    );
}

#[test]
fn requests_that_cannot_name_one_socket_are_refused() {
    let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let v6: SocketAddr = "[::ffff:127.0.0.1]:2".parse().unwrap();
    let mixed = TcpSocketId {
        local: v4,
        remote: v6,
        cookie: 1,
    };
    assert!(matches!(
        InetDiagReqV2::tcp(&mixed),
        Err(SockDiagError::MixedFamilies { .. })
    ));
    let unchecked = TcpSocketId {
        local: v4,
        remote: v4,
        cookie: u64::MAX,
    };
    let err = InetDiagReqV2::tcp(&unchecked).unwrap_err();
    assert!(matches!(err, SockDiagError::NoCookie { .. }), "{err}");
    // Only both words all ones turn the check off.
    for cookie in [u64::MAX - 1, u64::from(u32::MAX), u64::MAX << 32] {
        InetDiagReqV2::tcp(&TcpSocketId {
            cookie,
            ..unchecked
        })
        .unwrap();
    }
}

fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    NlMsgHdr {
        len: (NlMsgHdr::SIZE + payload.len()) as u32,
        kind,
        flags: 0,
        seq,
        pid: 0,
    }
    .encode(&mut out);
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

#[test]
fn messages_split_a_datagram_and_reject_bad_lengths() {
    let mut datagram = message(NLMSG_ERROR, 1, &(-libc::ENOENT).to_ne_bytes());
    // A payload of 5 bytes: the next message starts after 3 bytes of padding.
    datagram.extend(message(SOCK_DIAG_BY_FAMILY, 2, &[1, 2, 3, 4, 5]));
    datagram.extend(message(NLMSG_DONE, 2, &0i32.to_ne_bytes()));
    let messages: Vec<_> = Messages(&datagram).map(Result::unwrap).collect();
    let kinds: Vec<_> = messages.iter().map(|(h, _)| (h.kind, h.seq)).collect();
    assert_eq!(
        kinds,
        [(NLMSG_ERROR, 1), (SOCK_DIAG_BY_FAMILY, 2), (NLMSG_DONE, 2)]
    );
    assert_eq!(nlmsgerr_errno(messages[0].1), Ok(Some(Errno::ENOENT)));
    assert_eq!(messages[1].1, [1, 2, 3, 4, 5]);
    assert_eq!(nlmsgerr_errno(messages[2].1), Ok(None));

    let mut long = message(NLMSG_ERROR, 1, &[0; 4]);
    long[0] = 200;
    assert!(Messages(&long).next().unwrap().is_err());
    let mut short = message(NLMSG_ERROR, 1, &[0; 4]);
    short[0] = 8;
    assert!(Messages(&short).next().unwrap().is_err());
    assert!(Messages(&[0; 10]).next().unwrap().is_err());
    assert!(nlmsgerr_errno(&[0; 3]).is_err());
    assert!(nlmsgerr_errno(&5i32.to_ne_bytes()).is_err());
}

#[test]
fn a_dumped_socket_is_matched_whatever_its_device() {
    let id = TcpSocketId {
        local: "[::1]:1000".parse().unwrap(),
        remote: "[::1]:2000".parse().unwrap(),
        cookie: 0xdead_beef_0000_0001,
    };
    let req = InetDiagReqV2::tcp(&id).unwrap();
    let mut dumped = InetDiagSockId {
        ifindex: 3,
        ..req.id
    };
    // family, state, timer, retrans; the id; expires, queues, uid, inode.
    let mut payload = vec![libc::AF_INET6 as u8, 1, 0, 0];
    dumped.encode(&mut payload);
    payload.extend_from_slice(&[0; 20]);
    assert_eq!(dumped_id(&payload), Some(dumped));
    assert!(dumped.same_socket(&req.id));
    assert_eq!(dumped_id(&payload[..71]), None);
    dumped.cookie[1] ^= 1;
    assert!(!dumped.same_socket(&req.id));
}
