//! The HTTP/1.1 connection state machine on top of a [`Transport`].
//!
//! Per connection the server keeps an input side (a reused buffer holding the
//! unparsed bytes, the incremental parser, the header spans of the request in
//! progress) and an output side (a reused output buffer, the queue of
//! requests handed out and not yet answered, a stash for answers that came
//! out of order). The two sides live in separate tables so that the handler
//! can read a request borrowed from one connection's input while answering
//! any connection through the [`Responder`].
//!
//! Readiness is edge-triggered, so a connection remembers that it is still
//! readable when it stops early (request budget spent, too many requests in
//! flight, too much unsent output) and sits in the ready queue or is marked
//! stalled; the server never sleeps in the transport while the ready queue
//! holds work. Time is read once per turn, after the transport poll; the
//! timers (header, idle, stalled output, linger) are checked by a scan every
//! `tick` (a quarter of the shortest timeout, 1–250 ms), and a sleeping poll
//! is cut short to keep that cadence while connections are open.
//!
//! A connection ends in one of three ways: torn down at once (peer reset,
//! timeout, EOF with nothing owed), or after its last answer is written,
//! either closed (the peer half-closed) or lingering (the server decided to
//! close: `Connection: close`, HTTP/1.0, an error answer): FIN is sent and
//! the peer's input is drained and discarded until it closes or
//! `linger_timeout` passes, so that unread input does not turn the close
//! into a reset that destroys the answer in flight.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parse::{HeaderSpan, Progress, RequestError, RequestParser};
use super::response::{self, Framing, CONTINUE, SERVICE_UNAVAILABLE};
use super::{
    ConnectionLimit, Limits, Method, Request, RequestHandler, RequestHead, RequestId, RespondError,
    Response,
};
use crate::id_hash::IdMap;
use crate::transport::{ConnId, Transport, TransportEvent};

/// Input buffer size a connection starts with; it grows on demand up to what
/// the request in progress may need (see `RequestParser::buffer_need`).
const INITIAL_INPUT: usize = 4096;
/// Buffers grown past this are given back once empty instead of kept.
const KEEP_BUFFER_MAX: usize = 64 * 1024;
/// Compact the input before reading when less room than this is left.
const COMPACT_BELOW: usize = 512;
/// Scratch for draining lingering connections.
const DRAIN_CHUNK: usize = 16 * 1024;
/// Reads per lingering connection per turn, so a flood cannot hog a turn.
const DRAIN_READS_PER_TURN: usize = 4;
/// Reads per connection per visit without a complete request (a large body
/// streaming in), before the others get their turn.
const READS_PER_VISIT: usize = 32;

type ConnIndex = IdMap<ConnId, u32>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    Open,
    /// Write side shut; draining input until EOF or the deadline.
    Lingering {
        until: Instant,
    },
}

/// What to do once every owed answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    /// The peer half-closed: close.
    Close,
    /// We decided to close: lingering close.
    Linger,
}

/// A request handed out (or answered by the server itself), not yet written.
#[derive(Clone, Copy, Debug)]
struct Pending {
    framing: Framing,
    /// The request's size on the wire, counted in `Output::unanswered_bytes`
    /// until it is answered.
    request_bytes: usize,
    /// Its answer, serialized into the stash because earlier ones are owed.
    stashed: Option<(usize, usize)>,
}

/// The output side of a connection.
struct Output {
    id: ConnId,
    phase: Phase,
    out: Vec<u8>,
    /// `out[..out_pos]` is already written.
    out_pos: usize,
    /// The last write hit `WouldBlock`: wait for `Writable`.
    write_blocked: bool,
    /// Requests `send_seq..next_seq`, oldest first.
    inflight: VecDeque<Pending>,
    /// The sizes of the requests in `inflight` not answered yet: what the
    /// handler may hold of this connection (a call's copy of its body).
    unanswered_bytes: usize,
    send_seq: u64,
    next_seq: u64,
    stash: Vec<u8>,
    stashed: usize,
    /// Set once no more requests will be parsed.
    finish: Option<Finish>,
    /// The request being parsed (seq `next_seq`) is owed `100 Continue` once
    /// everything before it is answered.
    continue_owed: bool,
    /// `on_request` was called for this connection.
    handler_seen: bool,
    in_dirty: bool,
}

impl Output {
    fn new() -> Self {
        Self {
            id: 0,
            phase: Phase::Free,
            out: Vec::new(),
            out_pos: 0,
            write_blocked: false,
            inflight: VecDeque::new(),
            unanswered_bytes: 0,
            send_seq: 0,
            next_seq: 0,
            stash: Vec::new(),
            stashed: 0,
            finish: None,
            continue_owed: false,
            handler_seen: false,
            in_dirty: false,
        }
    }

    fn reset(&mut self, id: ConnId, phase: Phase, keep_output: usize) {
        self.id = id;
        self.phase = phase;
        self.out.clear();
        if self.out.capacity() > keep_output {
            self.out = Vec::new();
        }
        self.out_pos = 0;
        self.write_blocked = false;
        self.inflight.clear();
        self.unanswered_bytes = 0;
        self.send_seq = 0;
        self.next_seq = 0;
        self.stash.clear();
        if self.stash.capacity() > KEEP_BUFFER_MAX {
            self.stash = Vec::new();
        }
        self.stashed = 0;
        self.finish = None;
        self.continue_owed = false;
        self.handler_seen = false;
        self.in_dirty = false;
    }

    /// Unsent bytes, counting answers waiting in the stash.
    fn pending_bytes(&self) -> usize {
        self.out.len() - self.out_pos + self.stash.len()
    }

    /// Whether another request may be handed out: fewer than
    /// `max_pipelined` in flight, and what the connection holds (unsent
    /// answers, requests not answered yet) within `max_output_bytes`. A peer
    /// that does not read cannot make the server hold more than that plus
    /// one request and the answers of those in flight.
    fn admits_more(&self, limits: &Limits) -> bool {
        self.inflight.len() < limits.max_pipelined
            && self.pending_bytes() + self.unanswered_bytes <= limits.max_output_bytes
    }

    fn begin_request(&mut self, framing: Framing, request_bytes: usize) -> u64 {
        self.inflight.push_back(Pending {
            framing,
            request_bytes,
            stashed: None,
        });
        self.unanswered_bytes += request_bytes;
        self.continue_owed = false;
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Serializes the answer of the `k`-th owed request: straight into the
    /// output when it is the oldest, else into the stash. While the server
    /// drains, the last answer owed says `Connection: close` and ends the
    /// connection: a client learns it must go elsewhere from the answer
    /// itself, not from a reset on its next request.
    fn answer(&mut self, k: usize, draining: bool, write: impl FnOnce(&mut Vec<u8>, Framing)) {
        let mut framing = self.inflight[k].framing;
        if draining && k + 1 == self.inflight.len() {
            framing.keep_alive = false;
            self.finish.get_or_insert(Finish::Linger);
        }
        self.unanswered_bytes -= self.inflight[k].request_bytes;
        if k == 0 {
            write(&mut self.out, framing);
            self.inflight.pop_front();
            self.send_seq += 1;
            self.release_stashed();
        } else {
            let start = self.stash.len();
            write(&mut self.stash, framing);
            self.inflight[k].stashed = Some((start, self.stash.len()));
            self.stashed += 1;
        }
    }

    /// Moves stashed answers that are now next in line to the output.
    fn release_stashed(&mut self) {
        while let Some(&Pending {
            stashed: Some((start, end)),
            ..
        }) = self.inflight.front()
        {
            self.out.extend_from_slice(&self.stash[start..end]);
            self.inflight.pop_front();
            self.send_seq += 1;
            self.stashed -= 1;
        }
        if self.stashed == 0 {
            self.stash.clear();
        }
        if self.inflight.is_empty() && self.continue_owed {
            self.out.extend_from_slice(CONTINUE);
            self.continue_owed = false;
        }
    }

    /// Answers the request being parsed with a server error and stops input.
    fn queue_error(&mut self, status: u16, detail: &str, head_only: bool) {
        self.begin_request(
            Framing {
                keep_alive: false,
                http10: false,
                head_only: false,
            },
            0,
        );
        let k = self.inflight.len() - 1;
        self.answer(k, false, |out, _| {
            response::write_error(out, status, detail, head_only)
        });
        self.finish = Some(Finish::Linger);
    }

    fn owe_continue(&mut self) {
        if self.inflight.is_empty() {
            self.out.extend_from_slice(CONTINUE);
        } else {
            self.continue_owed = true;
        }
    }
}

/// The output sides of all connections: what a [`Responder`] may touch.
struct Outputs {
    slots: Vec<Output>,
    index: ConnIndex,
    /// Connections with new output to flush at the end of the handler call.
    dirty: Vec<(u32, ConnId)>,
    /// [`HttpServer::drain`] was called.
    draining: bool,
}

impl Outputs {
    /// Serializes an answer; returns the connection's slot.
    fn respond(&mut self, id: RequestId, resp: &Response<'_>) -> Result<usize, RespondError> {
        response::validate(resp)?;
        let slot = *self
            .index
            .get(&id.conn)
            .ok_or(RespondError::ConnectionGone)? as usize;
        let output = &mut self.slots[slot];
        if output.phase != Phase::Open {
            return Err(RespondError::ConnectionGone);
        }
        if id.seq < output.send_seq || id.seq >= output.next_seq {
            return Err(RespondError::UnknownRequest);
        }
        let k = (id.seq - output.send_seq) as usize;
        if output.inflight[k].stashed.is_some() {
            return Err(RespondError::UnknownRequest);
        }
        output.answer(k, self.draining, |out, framing| {
            response::write_response(out, resp, framing)
        });
        Ok(slot)
    }

    fn mark_dirty(&mut self, slot: usize) {
        let output = &mut self.slots[slot];
        if !output.in_dirty {
            output.in_dirty = true;
            self.dirty.push((slot as u32, output.id));
        }
    }
}

/// Answers requests from inside [`RequestHandler::on_request`] (the server
/// is mid-poll there, so [`HttpServer::respond`] is out of reach). The bytes
/// are written when the handler returns, batched with the answers to the
/// other requests of the same read.
pub struct Responder<'s> {
    outputs: &'s mut Outputs,
}

impl Responder<'_> {
    /// Same contract as [`HttpServer::respond`].
    pub fn respond(&mut self, id: RequestId, resp: &Response<'_>) -> Result<(), RespondError> {
        let slot = self.outputs.respond(id, resp)?;
        self.outputs.mark_dirty(slot);
        Ok(())
    }
}

/// The input side of a connection.
struct Input {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    parser: RequestParser,
    spans: Vec<HeaderSpan>,
    /// The transport may have more bytes (edge-triggered: until WouldBlock).
    readable: bool,
    /// Parsing paused by backpressure (too many owed answers or bytes).
    stalled: bool,
    in_ready: bool,
    /// When the head of the request in progress started (or the connection
    /// was accepted); the header timeout counts from here.
    head_started: Option<Instant>,
    /// When the head of the request in progress completed, while its body
    /// is still arriving, and how many bytes came since.
    body_started: Option<Instant>,
    body_bytes: usize,
    /// Last read, write or request: the idle and stall timeouts count from
    /// here.
    last_activity: Instant,
}

impl Input {
    fn new(max_header_bytes: usize, now: Instant) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            parser: RequestParser::new(max_header_bytes),
            spans: Vec::new(),
            readable: false,
            stalled: false,
            in_ready: false,
            head_started: None,
            body_started: None,
            body_bytes: 0,
            last_activity: now,
        }
    }

    fn reset(&mut self, now: Instant) {
        self.abandon_request();
        if self.buf.len() > KEEP_BUFFER_MAX {
            self.buf = Vec::new();
        }
        self.readable = false;
        self.stalled = false;
        self.in_ready = false;
        self.last_activity = now;
    }

    fn discard(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Why the body in progress has run out of time, if it has: nothing
    /// came for `idle_timeout`, or, past a grace of `header_timeout` from
    /// the end of the head, it came slower than `min_body_rate` on average.
    /// (The head has its own deadline; without one for the body, a byte now
    /// and then held a connection for as long as the body was long.)
    fn body_expiry(&self, now: Instant, idle_for: Duration, limits: &Limits) -> Option<String> {
        if idle_for >= limits.idle_timeout {
            return Some(format!(
                "request body stopped arriving: nothing for {} ms",
                idle_for.as_millis()
            ));
        }
        let started = self.body_started?;
        let rate = limits.min_body_rate.max(1) as u64;
        let earned = Duration::from_millis(self.body_bytes as u64 * 1000 / rate);
        let elapsed = now.saturating_duration_since(started);
        (elapsed >= limits.header_timeout + earned).then(|| {
            format!(
                "request body arriving slower than {rate} bytes/s: {} bytes in {} ms",
                self.body_bytes,
                elapsed.as_millis()
            )
        })
    }

    /// Drops the request in progress, whatever arrived of it.
    fn abandon_request(&mut self) {
        self.discard();
        self.parser.reset();
        self.head_started = None;
        self.body_started = None;
    }

    /// Bytes of a request not handed out yet are here (or its body is
    /// still to come).
    fn partly_received(&self) -> bool {
        self.end > self.start || !self.parser.in_head()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.discard();
            if self.buf.len() > KEEP_BUFFER_MAX {
                // A large body grew the buffer: don't keep it for the life of
                // a keep-alive connection.
                self.buf.truncate(INITIAL_INPUT);
                self.buf.shrink_to_fit();
            }
        }
    }

    /// Makes room after `end`: compacts, else grows within what the request
    /// in progress may need. `false`: no room can be made.
    fn make_room(&mut self) -> bool {
        let mut room = self.buf.len() - self.end;
        if room < COMPACT_BELOW {
            let freed = self.parser.compact(&mut self.buf[self.start..self.end]);
            self.end -= freed;
            room += freed;
        }
        if self.start > 0 && room < COMPACT_BELOW {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end < self.buf.len() {
            return true;
        }
        let need = self.parser.buffer_need().max(INITIAL_INPUT);
        if self.buf.len() >= need {
            return false;
        }
        let new_len = self.buf.len().saturating_mul(2).clamp(INITIAL_INPUT, need);
        self.buf.resize(new_len, 0);
        true
    }
}

enum Fill {
    Got,
    Empty,
    Eof,
    Full,
    Dead,
}

/// An HTTP/1.1 server over one transport, polled by one core loop; see the
/// [module docs](super).
pub struct HttpServer<T: Transport> {
    transport: T,
    limits: Limits,
    events: Vec<TransportEvent>,
    inputs: Vec<Input>,
    outputs: Outputs,
    free_slots: Vec<u32>,
    ready: VecDeque<(u32, ConnId)>,
    /// `on_closed` notifications not delivered yet.
    closed: Vec<ConnId>,
    drain_buf: Box<[u8]>,
    active: usize,
    lingering: usize,
    rejected: u64,
    /// A cap shared with other servers, on top of `limits.max_connections`.
    shared_limit: Option<Arc<ConnectionLimit>>,
    now: Instant,
    tick: Duration,
    next_scan: Instant,
}

impl<T: Transport> HttpServer<T> {
    /// A server answering on `transport`.
    pub fn new(transport: T, mut limits: Limits) -> Self {
        // Zero would stall every connection before its first request.
        limits.max_pipelined = limits.max_pipelined.max(1);
        let shortest = limits
            .header_timeout
            .min(limits.idle_timeout)
            .min(limits.linger_timeout);
        let tick = (shortest / 4).clamp(Duration::from_millis(1), Duration::from_millis(250));
        let now = Instant::now();
        Self {
            transport,
            limits,
            events: Vec::with_capacity(256),
            inputs: Vec::new(),
            outputs: Outputs {
                slots: Vec::new(),
                index: ConnIndex::default(),
                dirty: Vec::new(),
                draining: false,
            },
            free_slots: Vec::new(),
            ready: VecDeque::new(),
            closed: Vec::new(),
            drain_buf: vec![0; DRAIN_CHUNK].into_boxed_slice(),
            active: 0,
            lingering: 0,
            rejected: 0,
            shared_limit: None,
            now,
            tick,
            next_scan: now + tick,
        }
    }

    /// The transport (e.g. to register wake-up fds on a kernel transport).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The transport's listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Open connections, not counting ones in a lingering close.
    pub fn connection_count(&self) -> usize {
        self.active
    }

    /// Connections in a lingering close (at most `Limits::max_lingering`).
    pub fn lingering_count(&self) -> usize {
        self.lingering
    }

    /// Connections refused with 503 because `max_connections` were open.
    pub fn rejected_connections(&self) -> u64 {
        self.rejected
    }

    /// Counts this server's open connections against `limit` too, which
    /// other servers may share (one per core loop): one more than it allows
    /// is answered 503, as over `Limits::max_connections`.
    pub fn share_connection_limit(&mut self, limit: Arc<ConnectionLimit>) {
        self.shared_limit = Some(limit);
    }

    /// One open connection fewer.
    fn close_counted(&mut self) {
        self.active -= 1;
        if let Some(limit) = &self.shared_limit {
            limit.release();
        }
    }

    /// Starts a graceful shutdown of the open connections (the listener is
    /// the caller's to stop): from now on each connection ends after the
    /// last answer it owes, which says `Connection: close` unless it was
    /// serialized before (waiting behind an earlier one), so that a
    /// client learns from the answer itself that it must go elsewhere
    /// (where closing idle connections at once would race with the requests
    /// they are sending). A request that is partly received goes on
    /// arriving, so that it can be answered ([`Self::requests_in_progress`],
    /// [`Self::refuse_in_progress`]) instead of cut off unanswered.
    pub fn drain(&mut self) {
        self.outputs.draining = true;
        // Answers owed already serialized (out of order, before the drain)
        // keep their keep-alive framing: such a connection closes after its
        // last one all the same, rather than stay open until the engine
        // exits and reset its client's next request.
        for output in &mut self.outputs.slots {
            if output.phase == Phase::Open && !output.inflight.is_empty() {
                output.finish.get_or_insert(Finish::Linger);
            }
        }
    }

    /// Open connections with a request partly received (or received and not
    /// parsed yet) and nothing else owed: what a drain should wait for.
    pub fn requests_in_progress(&self) -> usize {
        (0..self.outputs.slots.len())
            .filter(|&slot| self.in_progress(slot))
            .count()
    }

    /// Answers every request [`Self::requests_in_progress`] counts with a
    /// `status` error (e.g. 503 when a drain runs out of time) and closes
    /// its connection.
    pub fn refuse_in_progress(&mut self, status: u16, detail: &str) {
        for slot in 0..self.outputs.slots.len() {
            if self.in_progress(slot) {
                self.refuse(slot, status, detail);
            }
        }
        self.flush_dirty();
    }

    fn in_progress(&self, slot: usize) -> bool {
        let output = &self.outputs.slots[slot];
        output.phase == Phase::Open
            && output.finish.is_none()
            && output.inflight.is_empty()
            && self.inputs[slot].partly_received()
    }

    /// One bounded turn: poll the transport (`Some(ZERO)` when spinning;
    /// `None`/`Some(t)` to sleep, cut short while the server holds work or
    /// its timers are due), read and parse up to `budget` requests and hand
    /// them to `handler`, write ready output, run the timers. Returns the
    /// amount of work done (events, requests, closes); 0 means an idle turn.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        budget: usize,
        handler: &mut impl RequestHandler,
    ) -> io::Result<usize> {
        let mut work = self.deliver_closed(handler);
        let timeout = if !self.ready.is_empty() || work > 0 {
            Some(Duration::ZERO)
        } else if self.active + self.lingering > 0 {
            let to_scan = self.next_scan.saturating_duration_since(self.now);
            Some(timeout.map_or(to_scan, |t| t.min(to_scan)))
        } else {
            timeout
        };
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let polled = self.transport.poll(timeout, &mut events);
        self.now = Instant::now();
        for event in events.drain(..) {
            work += 1;
            match event {
                TransportEvent::Accepted(id) => self.on_accepted(id),
                TransportEvent::Readable(id) => {
                    if let Some(slot) = self.slot_of(id) {
                        self.inputs[slot].readable = true;
                        self.push_ready(slot);
                    }
                }
                TransportEvent::Writable(id) => {
                    if let Some(slot) = self.slot_of(id) {
                        self.outputs.slots[slot].write_blocked = false;
                        self.flush(slot);
                    }
                }
                TransportEvent::Closed(id) => {
                    if let Some(slot) = self.slot_of(id) {
                        self.teardown(slot);
                    }
                }
                TransportEvent::Wake(token) => handler.on_wake(token),
            }
        }
        self.events = events;
        polled?;

        work += self.run_ready(budget, handler);
        self.flush_dirty();
        if self.now >= self.next_scan {
            self.scan_timers();
            self.flush_dirty();
            self.next_scan = self.now + self.tick;
        }
        work += self.deliver_closed(handler);
        Ok(work)
    }

    /// Answers a request, now or long after `on_request`. A connection's
    /// answers go out in request order: one for a later request waits until
    /// the earlier ones are answered. Adds `Content-Length` and, where
    /// needed, `Connection`. Writes at once as far as the transport takes it.
    pub fn respond(&mut self, id: RequestId, resp: &Response<'_>) -> Result<(), RespondError> {
        let slot = self.outputs.respond(id, resp)?;
        self.flush(slot);
        Ok(())
    }

    fn slot_of(&self, id: ConnId) -> Option<usize> {
        self.outputs.index.get(&id).map(|&slot| slot as usize)
    }

    fn deliver_closed(&mut self, handler: &mut impl RequestHandler) -> usize {
        let n = self.closed.len();
        for &id in &self.closed {
            handler.on_closed(id);
        }
        self.closed.clear();
        n
    }

    fn alloc_slot(&mut self, id: ConnId, phase: Phase) -> usize {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot as usize,
            None => {
                self.inputs
                    .push(Input::new(self.limits.max_header_bytes, self.now));
                self.outputs.slots.push(Output::new());
                self.inputs.len() - 1
            }
        };
        self.outputs.slots[slot].reset(id, phase, self.limits.max_output_bytes);
        self.inputs[slot].reset(self.now);
        self.outputs.index.insert(id, slot as u32);
        slot
    }

    fn on_accepted(&mut self, id: ConnId) {
        let shared_full = self.shared_limit.as_ref().is_some_and(|l| !l.try_acquire());
        if self.active >= self.limits.max_connections || shared_full {
            if !shared_full {
                // Acquired above: this one is refused all the same.
                if let Some(limit) = &self.shared_limit {
                    limit.release();
                }
            }
            self.rejected += 1;
            if self.rejected == 1 {
                let open = self.shared_limit.as_ref().map_or(self.active, |l| l.open());
                log::info!(
                    "nocturne-net: {open} connections open (the limit); answering new ones 503"
                );
            }
            // A fresh socket's send buffer takes the whole canned answer.
            let _ = self.transport.write(id, SERVICE_UNAVAILABLE);
            if self.lingering >= self.limits.max_lingering.max(1) {
                self.transport.close(id);
                return;
            }
            self.transport.shutdown_write(id);
            let until = self.now + self.limits.linger_timeout;
            let slot = self.alloc_slot(id, Phase::Lingering { until });
            self.lingering += 1;
            self.inputs[slot].readable = true;
            self.push_ready(slot);
            return;
        }
        let slot = self.alloc_slot(id, Phase::Open);
        self.active += 1;
        let input = &mut self.inputs[slot];
        input.head_started = Some(self.now);
        // The request often arrives with the connection: try at once rather
        // than wait a poll for the first Readable.
        input.readable = true;
        self.push_ready(slot);
    }

    fn push_ready(&mut self, slot: usize) {
        let input = &mut self.inputs[slot];
        if !input.in_ready {
            input.in_ready = true;
            self.ready
                .push_back((slot as u32, self.outputs.slots[slot].id));
        }
    }

    fn run_ready(&mut self, budget: usize, handler: &mut impl RequestHandler) -> usize {
        let mut budget = budget;
        let mut delivered = 0;
        // Only the connections queued now: ones that queue themselves again
        // (a lingering flood, a long body) or wake up during this pass wait
        // for the next turn, which bounds the turn.
        let mut visits = self.ready.len();
        while budget > 0 && visits > 0 {
            visits -= 1;
            let Some((slot, id)) = self.ready.pop_front() else {
                break;
            };
            let slot = slot as usize;
            let output = &self.outputs.slots[slot];
            if output.id != id || output.phase == Phase::Free {
                continue; // the connection went away after it was queued
            }
            self.inputs[slot].in_ready = false;
            delivered += self.service(slot, &mut budget, handler);
            self.flush_dirty();
        }
        delivered
    }

    /// Parses and reads one connection's input until it runs dry, stalls or
    /// the budget is spent; returns the requests handed to the handler.
    fn service(
        &mut self,
        slot: usize,
        budget: &mut usize,
        handler: &mut impl RequestHandler,
    ) -> usize {
        let mut delivered = 0;
        let mut reads = 0;
        loop {
            match self.outputs.slots[slot].phase {
                Phase::Free => return delivered,
                Phase::Lingering { .. } => {
                    self.drain_lingering(slot);
                    return delivered;
                }
                Phase::Open => {}
            }
            let output = &self.outputs.slots[slot];
            if output.finish.is_some() {
                return delivered;
            }
            if !output.admits_more(&self.limits) {
                self.inputs[slot].stalled = true;
                return delivered;
            }
            if *budget == 0 {
                self.push_ready(slot);
                return delivered;
            }
            let input = &mut self.inputs[slot];
            let progress = input
                .parser
                .advance(&mut input.buf[input.start..input.end], &mut input.spans);
            match progress {
                Ok(Progress::NeedMore) if reads == READS_PER_VISIT => {
                    self.push_ready(slot);
                    return delivered;
                }
                Ok(Progress::NeedMore) => match self.fill(slot) {
                    Fill::Got => {
                        reads += 1;
                        continue;
                    }
                    Fill::Empty => return delivered,
                    Fill::Eof => {
                        self.on_eof(slot);
                        return delivered;
                    }
                    Fill::Full => {
                        self.reject(slot, RequestError::Malformed("request does not fit"));
                        return delivered;
                    }
                    Fill::Dead => {
                        self.teardown(slot);
                        return delivered;
                    }
                },
                Ok(Progress::HeadComplete(info)) => {
                    let Self {
                        inputs,
                        outputs,
                        limits,
                        now,
                        ..
                    } = self;
                    let input = &mut inputs[slot];
                    input.head_started = None;
                    input.body_started = Some(*now);
                    // What came with the head counts.
                    input.body_bytes = (input.end - input.start).saturating_sub(info.head_len);
                    input.last_activity = *now;
                    let raw = &input.buf[input.start..input.start + info.head_len];
                    let head = RequestHead::new(raw, &info, &input.spans);
                    let limit = handler.body_limit(&head).min(limits.max_body_bytes);
                    let over = info.content_length.is_some_and(|n| n > limit);
                    if over || info.expect_continue {
                        if let Some(early) = handler.answer_before_body(&head) {
                            self.refuse(slot, early.status, &early.detail);
                            return delivered;
                        }
                    }
                    if let Err(e) = input.parser.set_body_limit(limit) {
                        self.reject(slot, e);
                        return delivered;
                    }
                    // A client that already started sending the body is not
                    // waiting for 100 Continue.
                    if info.expect_continue && input.end - input.start == info.head_len {
                        outputs.slots[slot].owe_continue();
                        outputs.mark_dirty(slot);
                    }
                }
                Ok(Progress::Complete {
                    head,
                    body,
                    consumed,
                }) => {
                    let Self {
                        inputs,
                        outputs,
                        now,
                        ..
                    } = self;
                    let output = &mut outputs.slots[slot];
                    let seq = output.begin_request(
                        Framing {
                            keep_alive: head.keep_alive,
                            http10: head.minor_version == 0,
                            head_only: head.method == Method::Head,
                        },
                        consumed,
                    );
                    output.handler_seen = true;
                    if !head.keep_alive {
                        output.finish = Some(Finish::Linger);
                    }
                    let id = RequestId {
                        conn: output.id,
                        seq,
                    };
                    let input = &inputs[slot];
                    let start = input.start;
                    let req = Request {
                        id,
                        head: RequestHead::new(
                            &input.buf[start..start + head.head_len],
                            &head,
                            &input.spans,
                        ),
                        body: &input.buf[start + body.start..start + body.end],
                    };
                    handler.on_request(req, &mut Responder { outputs });
                    let input = &mut inputs[slot];
                    input.last_activity = *now;
                    input.body_started = None;
                    if head.keep_alive {
                        input.consume(consumed);
                        input.head_started = (input.end > input.start).then_some(*now);
                    } else {
                        input.discard();
                        input.head_started = None;
                    }
                    *budget -= 1;
                    delivered += 1;
                    reads = 0;
                }
                Err(e) => {
                    self.reject(slot, e);
                    return delivered;
                }
            }
        }
    }

    /// Reads more input into the connection's buffer.
    fn fill(&mut self, slot: usize) -> Fill {
        let input = &mut self.inputs[slot];
        if !input.readable {
            return Fill::Empty;
        }
        if !input.make_room() {
            return Fill::Full;
        }
        let id = self.outputs.slots[slot].id;
        let room = input.buf.len() - input.end;
        match self.transport.read(id, &mut input.buf[input.end..]) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                input.end += n;
                if input.body_started.is_some() {
                    input.body_bytes += n;
                }
                if n < room && self.transport.short_read_drains(id) {
                    input.readable = false;
                }
                input.last_activity = self.now;
                if input.head_started.is_none() && input.parser.in_head() {
                    input.head_started = Some(self.now);
                }
                Fill::Got
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                input.readable = false;
                Fill::Empty
            }
            Err(_) => Fill::Dead,
        }
    }

    /// The peer half-closed: answer what is complete, drop a partial
    /// request, then close.
    fn on_eof(&mut self, slot: usize) {
        let input = &mut self.inputs[slot];
        input.readable = false;
        input.abandon_request();
        let output = &mut self.outputs.slots[slot];
        output.continue_owed = false;
        output.finish.get_or_insert(Finish::Close);
        self.flush(slot);
    }

    /// Answers a request the server refuses itself, saying why, and closes:
    /// no more input is parsed on this connection.
    fn reject(&mut self, slot: usize, error: RequestError) {
        self.refuse(slot, error.status(), &error.to_string());
    }

    fn refuse(&mut self, slot: usize, status: u16, detail: &str) {
        let input = &mut self.inputs[slot];
        // RFC 9110 §9.3.2: an answer to HEAD has no content, errors included.
        let head_only = is_head_request(&input.buf[input.start..input.end]);
        input.abandon_request();
        self.outputs.slots[slot].queue_error(status, detail, head_only);
        self.outputs.mark_dirty(slot);
    }

    fn flush_dirty(&mut self) {
        while let Some((slot, id)) = self.outputs.dirty.pop() {
            let slot = slot as usize;
            let output = &mut self.outputs.slots[slot];
            if output.id != id || output.phase == Phase::Free {
                continue;
            }
            output.in_dirty = false;
            self.flush(slot);
        }
    }

    /// Writes what the transport takes, then settles the connection: finish
    /// it when nothing more is owed, or resume a stalled input.
    fn flush(&mut self, slot: usize) {
        let output = &mut self.outputs.slots[slot];
        if output.phase != Phase::Open {
            return;
        }
        let mut wrote = false;
        while output.out_pos < output.out.len() && !output.write_blocked {
            match self
                .transport
                .write(output.id, &output.out[output.out_pos..])
            {
                Ok(0) => {
                    self.teardown(slot);
                    return;
                }
                Ok(n) => {
                    output.out_pos += n;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => output.write_blocked = true,
                Err(_) => {
                    self.teardown(slot);
                    return;
                }
            }
        }
        if output.out_pos == output.out.len() {
            output.out.clear();
            output.out_pos = 0;
            // Answers up to the output limit keep their buffer (no
            // allocation per answer); a rare larger one gives it back.
            if output.out.capacity() > self.limits.max_output_bytes.max(KEEP_BUFFER_MAX) {
                output.out = Vec::new();
            }
        } else if output.out_pos > output.out.len() / 2 {
            // A slow reader: keep the written prefix from piling up.
            output.out.drain(..output.out_pos);
            output.out_pos = 0;
        }
        let input = &mut self.inputs[slot];
        if wrote {
            input.last_activity = self.now;
            if output.inflight.is_empty() && input.head_started.is_some() {
                // The header clock of a request pipelined behind answers we
                // owed starts when we stop owing.
                input.head_started = Some(self.now);
            }
        }
        if let Some(finish) = output.finish {
            if output.inflight.is_empty() && output.out.is_empty() {
                match finish {
                    Finish::Close => self.teardown(slot),
                    Finish::Linger => self.start_linger(slot),
                }
            }
            return;
        }
        if input.stalled && output.admits_more(&self.limits) {
            input.stalled = false;
            self.push_ready(slot);
        }
    }

    fn start_linger(&mut self, slot: usize) {
        if self.lingering >= self.limits.max_lingering.max(1) {
            self.teardown(slot);
            return;
        }
        let output = &mut self.outputs.slots[slot];
        self.transport.shutdown_write(output.id);
        output.phase = Phase::Lingering {
            until: self.now + self.limits.linger_timeout,
        };
        self.close_counted();
        self.lingering += 1;
        // Input may already be waiting, and its edge may be spent.
        self.inputs[slot].readable = true;
        self.push_ready(slot);
    }

    /// Reads and discards a lingering connection's input; closes it at EOF.
    fn drain_lingering(&mut self, slot: usize) {
        let id = self.outputs.slots[slot].id;
        if !self.inputs[slot].readable {
            return;
        }
        for _ in 0..DRAIN_READS_PER_TURN {
            match self.transport.read(id, &mut self.drain_buf) {
                Ok(0) => {
                    self.teardown(slot);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.inputs[slot].readable = false;
                    return;
                }
                Err(_) => {
                    self.teardown(slot);
                    return;
                }
            }
        }
        self.push_ready(slot);
    }

    fn teardown(&mut self, slot: usize) {
        match self.outputs.slots[slot].phase {
            Phase::Free => return,
            Phase::Open => self.close_counted(),
            Phase::Lingering { .. } => self.lingering -= 1,
        }
        let output = &mut self.outputs.slots[slot];
        let id = output.id;
        self.transport.close(id);
        self.outputs.index.remove(&id);
        if output.handler_seen {
            self.closed.push(id);
        }
        output.reset(id, Phase::Free, self.limits.max_output_bytes);
        self.inputs[slot].reset(self.now);
        self.free_slots.push(slot as u32);
    }

    fn scan_timers(&mut self) {
        enum Expiry {
            Keep,
            Close,
            /// Part of a head came and then nothing: say why we close.
            RequestTimeout,
            /// A body stopped arriving, or arrives too slowly to finish.
            BodyTimeout(String),
            /// Earlier answers are owed: a body in progress may be held back
            /// for a `100 Continue` sent after them, so its clock restarts.
            KeepBodyWaiting,
        }
        let now = self.now;
        let header_timeout = self.limits.header_timeout;
        let idle_timeout = self.limits.idle_timeout;
        for slot in 0..self.outputs.slots.len() {
            let output = &self.outputs.slots[slot];
            let input = &self.inputs[slot];
            let idle_for = now.saturating_duration_since(input.last_activity);
            let expiry = match output.phase {
                Phase::Free => Expiry::Keep,
                Phase::Lingering { until } if now >= until => Expiry::Close,
                Phase::Lingering { .. } => Expiry::Keep,
                Phase::Open => {
                    let owes_nothing = output.inflight.is_empty() && output.finish.is_none();
                    let head_expired = input
                        .head_started
                        .is_some_and(|t| now.saturating_duration_since(t) >= header_timeout);
                    if output.write_blocked {
                        // A peer that stopped reading.
                        if idle_for >= idle_timeout {
                            Expiry::Close
                        } else {
                            Expiry::Keep
                        }
                    } else if !owes_nothing {
                        // The handler has the floor (its own deadlines apply).
                        Expiry::KeepBodyWaiting
                    } else if !input.parser.in_head() {
                        input
                            .body_expiry(now, idle_for, &self.limits)
                            .map_or(Expiry::Keep, Expiry::BodyTimeout)
                    } else if head_expired {
                        if input.end > input.start {
                            Expiry::RequestTimeout
                        } else {
                            Expiry::Close
                        }
                    } else if input.head_started.is_none()
                        && output.out.is_empty()
                        && input.end == input.start
                        && idle_for >= idle_timeout
                    {
                        Expiry::Close
                    } else {
                        Expiry::Keep
                    }
                }
            };
            match expiry {
                Expiry::Keep => {}
                Expiry::KeepBodyWaiting => {
                    let input = &mut self.inputs[slot];
                    if input.body_started.is_some() {
                        input.body_started = Some(now);
                        input.body_bytes = 0;
                    }
                }
                Expiry::Close => self.teardown(slot),
                Expiry::BodyTimeout(detail) => self.refuse(slot, 408, &detail),
                Expiry::RequestTimeout => {
                    let detail = format!(
                        "request head not complete within {} ms",
                        header_timeout.as_millis()
                    );
                    self.refuse(slot, 408, &detail);
                }
            }
        }
    }
}

/// Whether `request` (a request's first bytes, however few) is a `HEAD`
/// request: the parser may not have got as far as the method, or may have
/// given up on the request.
fn is_head_request(request: &[u8]) -> bool {
    // The parser skips empty lines before a request line (RFC 9112 §2.2).
    let first = request.iter().position(|&b| b != b'\r' && b != b'\n');
    first.is_some_and(|i| request[i..].starts_with(b"HEAD "))
}
