//! The kernel transport on its own, and SO_REUSEPORT across two servers.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{get, Options, TestServer};
use nocturne_net::{KernelOptions, KernelTransport, Transport, TransportEvent};

fn poll_until(
    t: &mut KernelTransport,
    events: &mut Vec<TransportEvent>,
    what: &str,
    cond: impl Fn(&TransportEvent) -> bool,
) -> TransportEvent {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pos) = events.iter().position(&cond) {
            return events.remove(pos);
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        t.poll(Some(Duration::from_millis(50)), events).unwrap();
    }
}

#[test]
fn accept_read_write_shutdown_close() {
    let mut t =
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap();
    let mut client = TcpStream::connect(t.local_addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut events = Vec::new();
    let TransportEvent::Accepted(id) = poll_until(&mut t, &mut events, "accept", |e| {
        matches!(e, TransportEvent::Accepted(_))
    }) else {
        unreachable!()
    };
    assert_eq!(t.connection_count(), 1);

    client.write_all(b"ping").unwrap();
    poll_until(&mut t, &mut events, "readable", |e| {
        *e == TransportEvent::Readable(id)
    });
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    loop {
        match t.read(id, &mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if got.len() == 4 {
                    break;
                }
                poll_until(&mut t, &mut events, "more", |e| {
                    *e == TransportEvent::Readable(id)
                });
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, b"ping");

    assert_eq!(t.write(id, b"pong").unwrap(), 4);
    t.shutdown_write(id);
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"pong");

    // Peer close shows as EOF.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match t.read(id, &mut buf) {
            Ok(0) => break,
            Ok(_) => panic!("unexpected bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline);
                t.poll(Some(Duration::from_millis(50)), &mut events)
                    .unwrap();
            }
            Err(_) => break, // a reset is an acceptable end too
        }
    }
    t.close(id);
    assert_eq!(t.connection_count(), 0);
    // The id is dead for good, even after its slot is reused.
    let _second = TcpStream::connect(t.local_addr()).unwrap();
    let TransportEvent::Accepted(id2) = poll_until(&mut t, &mut events, "accept", |e| {
        matches!(e, TransportEvent::Accepted(_))
    }) else {
        unreachable!()
    };
    assert_ne!(id, id2);
    assert_eq!(
        t.write(id, b"x").unwrap_err().kind(),
        std::io::ErrorKind::NotConnected
    );
}

#[test]
fn accept_budget_leaves_the_rest_for_the_next_poll() {
    let opts = KernelOptions {
        accept_budget: 2,
        ..KernelOptions::default()
    };
    let mut t = KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let clients: Vec<TcpStream> = (0..7)
        .map(|_| TcpStream::connect(t.local_addr()).unwrap())
        .collect();
    let mut accepted = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.len() < clients.len() {
        assert!(
            Instant::now() < deadline,
            "accepted only {}",
            accepted.len()
        );
        let mut events = Vec::new();
        t.poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        let new: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                TransportEvent::Accepted(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert!(new.len() <= 2, "budget exceeded: {}", new.len());
        accepted.extend(new);
    }
    assert_eq!(t.connection_count(), 7);
}

#[test]
fn wake_fd_reports_its_token() {
    let mut t =
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap();
    let (mut bell, bell_reader) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::AsRawFd;
    t.register_wake_fd(bell_reader.as_raw_fd(), 42).unwrap();
    bell.write_all(b"!").unwrap();
    let mut events = Vec::new();
    poll_until(&mut t, &mut events, "wake", |e| {
        *e == TransportEvent::Wake(42)
    });
    t.deregister_wake_fd(bell_reader.as_raw_fd()).unwrap();
    // Registering the same fd twice is an error from epoll.
    t.register_wake_fd(bell_reader.as_raw_fd(), 1).unwrap();
    assert!(t.register_wake_fd(bell_reader.as_raw_fd(), 2).is_err());
}

#[test]
fn two_transports_share_a_port_with_so_reuseport() {
    let first = TestServer::start(Options::default());
    let second = TestServer::start(Options {
        addr: Some(first.addr),
        ..Options::default()
    });
    assert_eq!(first.addr, second.addr);
    // Every connection is served by one of the two, whichever the kernel
    // picks.
    for i in 0..16 {
        let mut client = first.connect();
        let resp = client.roundtrip(&get(&format!("/echo/{i}")));
        assert_eq!(resp.body_str(), format!("GET /echo/{i} "));
    }
    let served = first
        .published
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        + second
            .published
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(served, 16);
}

#[test]
fn binding_a_taken_port_without_reuseport_partner_fails_cleanly() {
    // A plain std listener (no SO_REUSEPORT) holds the port: bind errors.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = KernelTransport::bind(holder.local_addr().unwrap(), &KernelOptions::default());
    assert!(err.is_err());
}

#[test]
fn an_address_held_with_reuseport_is_not_free_to_a_new_group() {
    let opts = KernelOptions::default();
    let first = KernelTransport::bind_group("127.0.0.1:0".parse().unwrap(), 2, &opts).unwrap();
    let addr = first[0].local_addr();
    assert_eq!(first[1].local_addr(), addr, "the group shares one port");
    // Another loop of the same engine may still join (that is what
    // SO_REUSEPORT is for)...
    let joined = KernelTransport::bind(addr, &opts).unwrap();
    // ...but a new group, which checks first, is told the address is taken.
    let Err(err) = KernelTransport::bind_group(addr, 1, &opts) else {
        panic!("a second group bound {addr}");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    drop((first, joined));
    assert_eq!(
        KernelTransport::bind_group(addr, 1, &opts).unwrap().len(),
        1
    );
}

/// A short read empties the socket (the HTTP server then skips the read
/// that would say `WouldBlock`) unless epoll has reported the peer's FIN:
/// a FIN that arrived with the data under one edge brings no new event, so
/// the reader must go on to EOF.
#[test]
fn a_short_read_drains_the_socket_unless_the_peer_closed() {
    let mut t =
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap();
    let mut events = Vec::new();
    let mut open = || {
        let client = TcpStream::connect(t.local_addr()).unwrap();
        let TransportEvent::Accepted(id) = poll_until(&mut t, &mut events, "accept", |e| {
            matches!(e, TransportEvent::Accepted(_))
        }) else {
            unreachable!()
        };
        (client, id)
    };
    let (mut talking, talking_id) = open();
    let (mut closing, closing_id) = open();

    talking.write_all(b"request").unwrap();
    closing.write_all(b"request").unwrap();
    closing.shutdown(std::net::Shutdown::Write).unwrap();
    // Both segments (and the FIN) are queued before the transport looks.
    std::thread::sleep(Duration::from_millis(50));
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        let TransportEvent::Readable(id) = poll_until(&mut t, &mut events, "readable", |e| {
            matches!(e, TransportEvent::Readable(_))
        }) else {
            unreachable!()
        };
        seen.insert(id);
    }
    let mut buf = [0u8; 64];
    assert_eq!(t.read(talking_id, &mut buf).unwrap(), 7);
    assert!(t.short_read_drains(talking_id), "an open peer: drained");
    assert_eq!(t.read(closing_id, &mut buf).unwrap(), 7);
    assert!(!t.short_read_drains(closing_id), "FIN reported: read on");
    assert_eq!(t.read(closing_id, &mut buf).unwrap(), 0, "then EOF");
    // Unknown and closed ids never claim a drained socket.
    t.close(talking_id);
    assert!(!t.short_read_drains(talking_id));
    drop(talking);
}
