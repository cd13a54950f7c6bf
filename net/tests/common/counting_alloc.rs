//! The harness of the no-allocation tests (`no_alloc` on the kernel
//! transport, `smoltcp_no_alloc` on smoltcp): a global allocator that counts
//! one thread's allocations while a window is open, the warm-up-then-count
//! loop, and the handler both drive. Including this module installs the
//! counting allocator for the whole test binary, so it is not part of
//! `common/mod.rs`: only those two binaries name it.
#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use nocturne_net::{
    ConnId, HttpServer, Request, RequestHandler, RequestHead, RequestId, Responder, Response,
    Transport,
};

/// Rounds before the window opens: connections, buffers and queues reach
/// their steady size.
pub const WARM_UP_ROUNDS: usize = 100;
/// Rounds inside the window; every one of them must allocate nothing.
pub const COUNTED_ROUNDS: usize = 500;
/// Every round, warm-up and counted.
pub const ROUNDS: usize = WARM_UP_ROUNDS + COUNTED_ROUNDS;

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

/// Runs `round(i)` for every `i` in `0..ROUNDS` on this thread and returns
/// how many allocations this thread made in the last [`COUNTED_ROUNDS`] of
/// them. Client and server must both run inside `round`, on this thread, so
/// that nothing else allocates in the window.
pub fn allocations_in_warm_rounds(mut round: impl FnMut(usize)) -> u64 {
    for i in 0..WARM_UP_ROUNDS {
        round(i);
    }
    COUNTING.with(|c| c.set(true));
    for i in WARM_UP_ROUNDS..ROUNDS {
        round(i);
    }
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// The body of the answers to `/now`.
pub const NOW_BODY: &[u8] = b"From function Bar: hello";
/// The body of the answers given from outside the poll.
pub const LATER_BODY: &[u8] = b"From function Foo: later";

const SERVER_TIMING: [(&str, &str); 1] = [("Server-Timing", "queue;dur=1, exec;dur=2")];

/// Answers `/now` inside the poll, with a content type and extra headers;
/// queues every other request for [`answer_later`](Self::answer_later)
/// from outside the poll, out of order with the requests that follow.
pub struct NowOrLater {
    /// Requests to answer from outside the poll (capacity reserved).
    pub later: Vec<RequestId>,
    /// Requests answered inside the poll.
    pub answered_now: u64,
    /// Body bytes of every request seen.
    pub body_bytes: usize,
}

impl NowOrLater {
    pub fn new() -> Self {
        Self {
            later: Vec::with_capacity(64),
            answered_now: 0,
            body_bytes: 0,
        }
    }

    /// Answers the queued requests with [`LATER_BODY`].
    pub fn answer_later<T: Transport>(&mut self, server: &mut HttpServer<T>) {
        for id in self.later.drain(..) {
            server.respond(id, &Response::new(200, LATER_BODY)).unwrap();
        }
    }
}

impl RequestHandler for NowOrLater {
    fn body_limit(&mut self, _head: &RequestHead<'_>) -> usize {
        1024
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        self.body_bytes += req.body.len();
        assert!(req.head.header("host").is_some());
        if req.head.path == "/now" {
            let resp = Response::new(200, NOW_BODY)
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
