//! The hot path allocates nothing: once a keep-alive connection is warm,
//! parsing a request, handing it out, answering it (at once or later) and
//! writing the answer make no heap allocation. Counted with a wrapping
//! global allocator, client and server in one thread so nothing else
//! allocates in the window.
#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nocturne_net::{
    ConnId, HttpServer, KernelOptions, KernelTransport, Limits, Request, RequestHandler,
    RequestHead, RequestId, Responder, Response,
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

const SERVER_TIMING: [(&str, &str); 1] = [("Server-Timing", "queue;dur=1, exec;dur=2")];

struct Handler {
    /// Requests to answer from outside the poll (capacity reserved).
    later: Vec<RequestId>,
    answered_now: u64,
    body_bytes: usize,
}

impl RequestHandler for Handler {
    fn body_limit(&mut self, _head: &RequestHead<'_>) -> usize {
        1024
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        self.body_bytes += req.body.len();
        assert!(req.head.header("host").is_some());
        if req.head.path == "/now" {
            let resp = Response::new(200, b"From function Bar: hello")
                .with_content_type("text/plain")
                .with_headers(&SERVER_TIMING);
            responder.respond(req.id, &resp).unwrap();
            self.answered_now += 1;
        } else {
            self.later.push(req.id);
        }
    }

    fn on_wake(&mut self, _token: usize) {}

    fn on_closed(&mut self, _conn: ConnId) {}
}

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
    let mut handler = Handler {
        later: Vec::with_capacity(64),
        answered_now: 0,
        body_bytes: 0,
    };

    // One round: a pipelined pair (answered at once / later, out of order)
    // plus a chunked request, all in one write.
    let round: &[u8] = b"POST /now HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nworld\
POST /now HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut expected_reply_len = 0;
    let mut reply = vec![0u8; 64 * 1024];

    for i in 0..600 {
        if i == 100 {
            COUNTING.with(|c| c.set(true));
        }
        client.write_all(round).unwrap();
        let want_now = handler.answered_now + 2;
        while handler.answered_now < want_now || handler.later.is_empty() {
            server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
        }
        // The later answer comes after the request that came after it: it
        // still goes out first.
        for id in handler.later.drain(..) {
            server
                .respond(id, &Response::new(200, b"From function Foo: later"))
                .unwrap();
        }
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
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(handler.body_bytes, 600 * 13);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations in 500 warm rounds"
    );
}
