//! The smoltcp transport allocates nothing per poll: once a keep-alive
//! connection is warm, receiving requests through the TAP, running them
//! through smoltcp and the HTTP layer, and sending the answers make no heap
//! allocation — idle polls neither. Counted with a wrapping global
//! allocator; client and server run in one thread (inside a private network
//! namespace) so nothing else allocates in the window.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use counting_alloc::{allocations_in_warm_rounds, NowOrLater, COUNTED_ROUNDS, ROUNDS};
use netns::Netns;
use nocturne_net::smoltcp::{DeviceSpec, SmoltcpOptions, SmoltcpTransport};
use nocturne_net::{HttpServer, Limits};

#[test]
fn warm_requests_and_idle_polls_allocate_nothing() {
    let Some(ns) = Netns::for_test() else { return };
    ns.add_tap("nct0", "192.0.2.1/24");
    ns.run(|| {
        let opts = SmoltcpOptions::new(
            DeviceSpec::Tap("nct0".into()),
            "192.0.2.2/24".parse().unwrap(),
            8080,
        );
        let transport = SmoltcpTransport::open(&opts).unwrap();
        let mut server = HttpServer::new(transport, Limits::default());
        let mut handler = NowOrLater::new();
        // Connect without blocking: this thread also runs the server.
        let addr: SocketAddr = "192.0.2.2:8080".parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&addr.into());
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.connection_count() == 0 {
            assert!(Instant::now() < deadline, "no connection");
            server
                .poll(Some(Duration::from_millis(1)), 64, &mut handler)
                .unwrap();
        }
        socket.set_nonblocking(false).unwrap();
        let mut client: TcpStream = socket.into();
        client.set_nodelay(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();

        // One round: answered at once, answered from outside the poll.
        let round: &[u8] = b"POST /now HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nworld";
        let mut reply = vec![0u8; 64 * 1024];
        let mut reply_len = 0;
        let allocations = allocations_in_warm_rounds(|i| {
            client.write_all(round).unwrap();
            let want = handler.answered_now + 1;
            while handler.answered_now < want || handler.later.is_empty() {
                server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
            }
            handler.answer_later(&mut server);
            // Idle polls between rounds (timers, flushes, epoll).
            for _ in 0..10 {
                server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
            }
            if i == 0 {
                // Learn the reply size once (outside the window).
                while !String::from_utf8_lossy(&reply[..reply_len]).ends_with("later") {
                    reply_len += client.read(&mut reply[reply_len..]).unwrap();
                }
            } else {
                client.read_exact(&mut reply[..reply_len]).unwrap();
            }
        });
        assert!(String::from_utf8_lossy(&reply[..reply_len]).contains("From function Bar: hello"));
        assert_eq!(handler.answered_now as usize, ROUNDS);
        assert_eq!(handler.body_bytes, ROUNDS * 10);
        assert_eq!(
            allocations, 0,
            "{allocations} allocations in {COUNTED_ROUNDS} warm rounds"
        );
    });
}
