//! The hot path allocates nothing: once a keep-alive connection is warm,
//! parsing a request, handing it out, answering it (at once or later) and
//! writing the answer make no heap allocation. Counted with a wrapping
//! global allocator, client and server in one thread so nothing else
//! allocates in the window.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use counting_alloc::{allocations_in_warm_rounds, NowOrLater, COUNTED_ROUNDS, ROUNDS};
use nocturne_net::{HttpServer, KernelOptions, KernelTransport, Limits};

#[test]
fn warm_keep_alive_requests_allocate_nothing() {
    let transport =
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap();
    let mut server = HttpServer::new(transport, Limits::default());
    let mut client = TcpStream::connect(server.local_addr()).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut handler = NowOrLater::new();

    // One round: a pipelined pair (answered at once / later, out of order)
    // plus a chunked request, all in one write.
    let round: &[u8] = b"POST /now HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nworld\
POST /now HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut expected_reply_len = 0;
    let mut reply = vec![0u8; 64 * 1024];

    let allocations = allocations_in_warm_rounds(|i| {
        client.write_all(round).unwrap();
        let want_now = handler.answered_now + 2;
        while handler.answered_now < want_now || handler.later.is_empty() {
            server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
        }
        // The later answer comes after the request that came after it: it
        // still goes out first.
        handler.answer_later(&mut server);
        if i == 0 {
            // Learn the reply size once (outside the window).
            let mut got = 0;
            while !String::from_utf8_lossy(&reply[..got]).ends_with("From function Bar: hello")
                || String::from_utf8_lossy(&reply[..got])
                    .matches("HTTP/1.1 200")
                    .count()
                    < 3
            {
                got += client.read(&mut reply[got..]).unwrap();
            }
            let text = String::from_utf8_lossy(&reply[..got]).into_owned();
            let first = text.find("From function Bar: hello").unwrap();
            let second = text[first + 1..].find("From function Foo: later").unwrap();
            assert!(second > 0, "answers out of order: {text}");
            expected_reply_len = got;
        } else {
            client.read_exact(&mut reply[..expected_reply_len]).unwrap();
        }
    });
    assert_eq!(handler.body_bytes, ROUNDS * 13);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in {COUNTED_ROUNDS} warm rounds"
    );
}
