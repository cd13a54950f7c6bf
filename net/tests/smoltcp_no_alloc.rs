//! The smoltcp transport allocates nothing per poll: once a keep-alive
//! connection is warm, receiving requests through the TAP, running them
//! through smoltcp and the HTTP layer, and sending the answers make no heap
//! allocation — idle polls neither. Counted with a wrapping global
//! allocator; client and server run in one thread (inside a private network
//! namespace) so nothing else allocates in the window.
#![allow(unsafe_code)] // the counting allocator

mod netns;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netns::Netns;
use nocturne_net::smoltcp::{DeviceSpec, SmoltcpOptions, SmoltcpTransport};
use nocturne_net::{
    ConnId, HttpServer, Limits, Request, RequestHandler, RequestHead, RequestId, Responder,
    Response,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and drop-free: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        // Relaxed: a plain counter read by the same thread after the window.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded as is; `ptr` came from this allocator, i.e. from
        // `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Handler {
    /// Requests to answer from outside the poll (capacity reserved).
    later: Vec<RequestId>,
    answered: u64,
}

impl RequestHandler for Handler {
    fn body_limit(&mut self, _head: &RequestHead<'_>) -> usize {
        1024
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        if req.head.path == "/now" {
            responder
                .respond(req.id, &Response::new(200, b"From function Bar: hello"))
                .unwrap();
            self.answered += 1;
        } else {
            self.later.push(req.id);
        }
    }

    fn on_wake(&mut self, _token: usize) {}

    fn on_closed(&mut self, _conn: ConnId) {}
}

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
        let mut handler = Handler {
            later: Vec::with_capacity(64),
            answered: 0,
        };
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
        for i in 0..600 {
            if i == 100 {
                COUNTING.with(|c| c.set(true));
            }
            client.write_all(round).unwrap();
            let want = handler.answered + 1;
            while handler.answered < want || handler.later.is_empty() {
                server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
            }
            for id in handler.later.drain(..) {
                server
                    .respond(id, &Response::new(200, b"From function Foo: later"))
                    .unwrap();
            }
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
        }
        COUNTING.with(|c| c.set(false));
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        assert!(String::from_utf8_lossy(&reply[..reply_len]).contains("From function Bar: hello"));
        assert_eq!(handler.answered, 600);
        assert_eq!(
            allocations, 0,
            "{allocations} allocations in 500 warm rounds"
        );
    });
}
