//! One client thread: its keep-alive connections, its arrival schedule, and
//! the loop that sends each request at its intended time and records its
//! latency from that time.
//!
//! ```text
//!  schedule ──due──▶ dispatch ──free connection──▶ send (write) ──▶ in flight
//!                       │ none free                              │ response
//!                       ▼                                        ▼
//!                    backlog (per endpoint) ◀──freed── record(now − intended, now − sent)
//! ```
//!
//! A request whose intended time comes while every connection of its
//! endpoint is busy waits in the thread's backlog and goes out on the first
//! connection that frees; its latency still counts from the intended time,
//! so a server stall shows up in the percentiles with its full weight
//! (coordinated-omission correction, as wrk2). Requests that are due keep
//! going out on the other connections while one stalls. At the end of the
//! window the backlog is not sent: those requests are counted as `unsent`
//! and recorded with the latency they had reached, a lower bound; requests
//! still in flight get `timeout` to finish and are recorded as timeouts
//! (again with the lower bound) if they do not.
//!
//! Waiting: `spin` polls epoll without sleeping; `block` sleeps in epoll
//! with a `timerfd` armed for the next intended send (ns precision);
//! `adaptive` sleeps the same way but wakes `spin` early and keeps polling
//! for `spin` after any activity, so a response that comes within that
//! window is seen without a wake-up.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::http::{Response, ResponseParser, MAX_HEAD_BYTES};
use super::schedule::{ArrivalSchedule, KindPicker};
use super::sys::{thread_cpu_time, TimerFd};
use super::LoadError;
use crate::hist::LatencyHistogram;

/// How a client thread waits for its next send or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Never sleep: poll epoll with a zero timeout (a dedicated core).
    Spin,
    /// Poll for `--spin-us` around sends and responses, then sleep.
    Adaptive,
    /// Sleep whenever there is nothing to do (a timerfd for the next send).
    Block,
}

impl PollMode {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Spin => "spin",
            Self::Adaptive => "adaptive",
            Self::Block => "block",
        }
    }
}

/// Socket-level failures, by cause. Request counts, except `connect`,
/// which counts failed connection attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    /// Connection attempts that failed (refused, timed out, reset).
    pub connect: u64,
    /// Requests lost to a failed read.
    pub read: u64,
    /// Requests lost to a failed write.
    pub write: u64,
    /// Requests lost because the server closed the connection first.
    pub closed: u64,
    /// Requests lost to a response that is not valid HTTP.
    pub protocol: u64,
}

impl SocketErrors {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.closed + self.protocol
    }

    /// Requests lost (everything but failed connection attempts).
    pub fn requests(&self) -> u64 {
        self.read + self.write + self.closed + self.protocol
    }

    pub(crate) fn add(&mut self, o: &SocketErrors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.closed += o.closed;
        self.protocol += o.protocol;
    }
}

/// Counters the progress line reads while a run goes on (statistics only:
/// `Relaxed` loads and stores, no ordering with anything else).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Measured requests sent.
    pub sent: AtomicU64,
    /// Measured responses received.
    pub completed: AtomicU64,
    /// Failed requests and connection attempts.
    pub errors: AtomicU64,
}

/// A request kind as the loop needs it.
#[derive(Debug)]
pub(crate) struct Wire {
    pub endpoint: usize,
    pub bytes: Vec<u8>,
    pub has_body: bool,
}

/// Everything one client thread is told.
pub(crate) struct ThreadPlan {
    pub core: Option<usize>,
    pub schedule: ArrivalSchedule,
    pub picker: KindPicker,
    pub kinds: Arc<Vec<Wire>>,
    pub kind_histograms: bool,
    pub endpoints: Vec<SocketAddr>,
    /// The endpoint of each of this thread's connections.
    pub connections: Vec<usize>,
    pub warmup_ns: u64,
    pub end_ns: u64,
    pub pipeline: usize,
    pub poll: PollMode,
    pub spin_ns: u64,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub live: Arc<LiveCounters>,
}

/// What one client thread measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadResult {
    pub latency: LatencyHistogram,
    pub service: LatencyHistogram,
    pub send_lag: LatencyHistogram,
    pub per_kind: Vec<LatencyHistogram>,
    pub offered: u64,
    pub sent: u64,
    pub completed: u64,
    pub unsent: u64,
    pub timeouts: u64,
    pub non_2xx: u64,
    pub socket: SocketErrors,
    pub statuses: BTreeMap<u16, u64>,
    pub responses_in_window: u64,
    pub requests_total: u64,
    pub reconnects: u64,
    pub cpu: Duration,
    pub first_error: Option<String>,
}

/// Runs one client thread: pins, connects, reports ready on `ready`, waits
/// for the start time (`None`: abort), runs the window, returns what it
/// measured.
pub(crate) fn run_thread(
    plan: ThreadPlan,
    index: usize,
    ready: Sender<(usize, Result<(), LoadError>)>,
    start: Receiver<Option<Instant>>,
) -> Result<ThreadResult, LoadError> {
    let mut client = match Client::new(plan) {
        Ok(c) => {
            let _ = ready.send((index, Ok(())));
            c
        }
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            return Err(LoadError::Aborted);
        }
    };
    let Ok(Some(start)) = start.recv() else {
        return Err(LoadError::Aborted);
    };
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    client.start = start;
    client.run()
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connected,
    /// A non-blocking connect is under way; give up at `deadline_ns`.
    Connecting {
        deadline_ns: u64,
    },
    /// Closed; try again at `retry_ns`.
    Down {
        retry_ns: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    intended_ns: u64,
    sent_ns: u64,
    kind: usize,
    measured: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    intended_ns: u64,
    kind: usize,
    measured: bool,
}

struct Conn {
    endpoint: usize,
    state: ConnState,
    stream: Option<MioStream>,
    inflight: VecDeque<InFlight>,
    parser: ResponseParser,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Bytes accepted for sending that the socket has not taken yet.
    wbuf: Vec<u8>,
    /// Listed in its endpoint's ready queue.
    in_ready: bool,
    backoff_ns: u64,
}

/// Why a connection is torn down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Read,
    Write,
    Closed,
    Protocol,
}

const TIMER: Token = Token(usize::MAX);
const FIRST_BACKOFF_NS: u64 = 1_000_000;
const MAX_BACKOFF_NS: u64 = 200_000_000;
/// How often timeouts and reconnections are looked at.
const HOUSEKEEPING_NS: u64 = 5_000_000;

struct Client {
    start: Instant,
    poll: Poll,
    timer: TimerFd,
    /// The time the timer is armed for (`u64::MAX`: not armed).
    armed_ns: u64,
    conns: Vec<Conn>,
    ready: Vec<VecDeque<usize>>,
    backlog: Vec<VecDeque<Pending>>,
    schedule: ArrivalSchedule,
    picker: KindPicker,
    kinds: Arc<Vec<Wire>>,
    endpoints: Vec<SocketAddr>,
    next_due_ns: u64,
    warmup_ns: u64,
    end_ns: u64,
    pipeline: usize,
    mode: PollMode,
    spin_ns: u64,
    timeout_ns: u64,
    connect_timeout: Duration,
    last_activity_ns: u64,
    next_housekeeping_ns: u64,
    live: Arc<LiveCounters>,
    out: ThreadResult,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Client {
    /// Pins the thread and opens every connection (blocking, with the
    /// connect timeout): a refused or unreachable server is reported here,
    /// before the run starts.
    fn new(plan: ThreadPlan) -> Result<Self, LoadError> {
        if let Some(core) = plan.core {
            crate::pin::pin_current_thread(core)?;
        }
        let poll = Poll::new().map_err(LoadError::Setup)?;
        let timer = TimerFd::new().map_err(LoadError::Setup)?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)
            .map_err(LoadError::Setup)?;
        let mut conns = Vec::with_capacity(plan.connections.len());
        let mut ready = vec![VecDeque::new(); plan.endpoints.len()];
        for (i, &endpoint) in plan.connections.iter().enumerate() {
            let addr = plan.endpoints[endpoint];
            let connect_err = |source| LoadError::Connect { addr, source };
            let std_stream =
                TcpStream::connect_timeout(&addr, plan.connect_timeout).map_err(connect_err)?;
            std_stream.set_nodelay(true).map_err(connect_err)?;
            std_stream.set_nonblocking(true).map_err(connect_err)?;
            let mut stream = MioStream::from_std(std_stream);
            poll.registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(LoadError::Setup)?;
            conns.push(Conn {
                endpoint,
                state: ConnState::Connected,
                stream: Some(stream),
                inflight: VecDeque::with_capacity(plan.pipeline),
                parser: ResponseParser::new(),
                rbuf: vec![0; MAX_HEAD_BYTES].into_boxed_slice(),
                rstart: 0,
                rend: 0,
                wbuf: Vec::new(),
                in_ready: true,
                backoff_ns: FIRST_BACKOFF_NS,
            });
            ready[endpoint].push_back(i);
        }
        let mut schedule = plan.schedule;
        let next_due_ns = schedule.next_ns();
        let per_kind = if plan.kind_histograms {
            vec![LatencyHistogram::new(); plan.kinds.len()]
        } else {
            Vec::new()
        };
        Ok(Self {
            start: Instant::now(),
            poll,
            timer,
            armed_ns: u64::MAX,
            conns,
            ready,
            backlog: vec![VecDeque::new(); plan.endpoints.len()],
            schedule,
            picker: plan.picker,
            kinds: plan.kinds,
            endpoints: plan.endpoints,
            next_due_ns,
            warmup_ns: plan.warmup_ns,
            end_ns: plan.end_ns,
            pipeline: plan.pipeline.max(1),
            mode: plan.poll,
            spin_ns: match plan.poll {
                PollMode::Adaptive => plan.spin_ns,
                _ => 0,
            },
            timeout_ns: nanos(plan.timeout),
            connect_timeout: plan.connect_timeout,
            last_activity_ns: 0,
            next_housekeeping_ns: HOUSEKEEPING_NS,
            live: plan.live,
            out: ThreadResult {
                per_kind,
                ..ThreadResult::default()
            },
        })
    }

    /// Nanoseconds since the start of the run.
    #[inline]
    fn now_ns(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.start))
    }

    fn run(mut self) -> Result<ThreadResult, LoadError> {
        let cpu_before = thread_cpu_time();
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline_ns: Option<u64> = None;
        loop {
            let now = self.now_ns();
            if drain_deadline_ns.is_none() {
                self.release_due(now);
                if now >= self.end_ns {
                    self.abandon_backlog(now);
                    drain_deadline_ns = Some(now.saturating_add(self.timeout_ns));
                }
            }
            if now >= self.next_housekeeping_ns {
                self.housekeeping(now, drain_deadline_ns.is_some());
                self.next_housekeeping_ns = now + HOUSEKEEPING_NS;
            }
            if let Some(deadline) = drain_deadline_ns {
                if self.conns.iter().all(|c| c.inflight.is_empty()) {
                    break;
                }
                if now >= deadline {
                    self.time_out_all(now);
                    break;
                }
            }
            let timeout = self.wait_timeout(now, drain_deadline_ns)?;
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(LoadError::Setup(e));
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == TIMER {
                    self.timer.clear();
                    self.armed_ns = u64::MAX;
                    continue;
                }
                self.last_activity_ns = self.now_ns();
                let c = token.0;
                match self.conns[c].state {
                    ConnState::Connecting { .. } => self.finish_connect(c),
                    ConnState::Connected => {
                        if event.is_writable() && !self.conns[c].wbuf.is_empty() {
                            self.flush(c);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let peer_closed = event.is_read_closed() || event.is_error();
                            self.read_ready(c, drain_deadline_ns.is_some(), peer_closed);
                        }
                    }
                    ConnState::Down { .. } => {}
                }
            }
        }
        self.out.cpu = thread_cpu_time().saturating_sub(cpu_before);
        Ok(self.out)
    }

    /// The next time the loop must act without an event: the next intended
    /// send (only if a connection is free to take it), the end of the
    /// window, a housekeeping pass while something is pending, the drain
    /// deadline.
    ///
    /// With every connection busy, an arrival could only join the backlog:
    /// it is released at the next response instead, with the same intended
    /// time, so skipping its wake-up changes no latency (and saves a timer
    /// wake-up per request when the server is saturated).
    fn next_wake(&self, drain_deadline_ns: Option<u64>) -> u64 {
        let mut wake = match drain_deadline_ns {
            None if self.ready.iter().any(|q| !q.is_empty()) => self.next_due_ns.min(self.end_ns),
            None => self.end_ns,
            Some(deadline) => deadline,
        };
        let pending = self
            .conns
            .iter()
            .any(|c| !c.inflight.is_empty() || c.state != ConnState::Connected);
        if pending {
            wake = wake.min(self.next_housekeeping_ns);
        }
        wake
    }

    /// The epoll timeout for this turn; arms the timer when the thread is
    /// going to sleep. (Spinning turns never look at the connections.)
    fn wait_timeout(
        &mut self,
        now: u64,
        drain_deadline_ns: Option<u64>,
    ) -> Result<Option<Duration>, LoadError> {
        if self.mode == PollMode::Spin || now < self.last_activity_ns.saturating_add(self.spin_ns) {
            return Ok(Some(Duration::ZERO));
        }
        let wake_ns = self.next_wake(drain_deadline_ns);
        if wake_ns <= now.saturating_add(self.spin_ns) {
            return Ok(Some(Duration::ZERO));
        }
        let alarm = wake_ns - self.spin_ns;
        if alarm != self.armed_ns {
            self.timer
                .arm_after(Duration::from_nanos(alarm - now))
                .map_err(LoadError::Setup)?;
            self.armed_ns = alarm;
        }
        // The timer wakes the thread; the cap is a safety net only.
        Ok(Some(Duration::from_millis(100)))
    }

    /// Releases every arrival whose intended time has come.
    fn release_due(&mut self, now: u64) {
        while self.next_due_ns <= now && self.next_due_ns < self.end_ns {
            let kind = self.picker.pick();
            let measured = self.next_due_ns >= self.warmup_ns;
            if measured {
                self.out.offered += 1;
            }
            self.dispatch(Pending {
                intended_ns: self.next_due_ns,
                kind,
                measured,
            });
            self.next_due_ns = self.schedule.next_ns();
        }
    }

    fn dispatch(&mut self, p: Pending) {
        let ep = self.kinds[p.kind].endpoint;
        if self.backlog[ep].is_empty() {
            if let Some(c) = self.pop_ready(ep) {
                self.send(c, p);
                return;
            }
        }
        self.backlog[ep].push_back(p);
    }

    fn can_send(&self, c: usize) -> bool {
        let conn = &self.conns[c];
        conn.state == ConnState::Connected && conn.inflight.len() < self.pipeline
    }

    fn pop_ready(&mut self, ep: usize) -> Option<usize> {
        while let Some(c) = self.ready[ep].pop_front() {
            self.conns[c].in_ready = false;
            if self.can_send(c) {
                return Some(c);
            }
        }
        None
    }

    fn mark_ready(&mut self, c: usize) {
        if !self.conns[c].in_ready && self.can_send(c) {
            self.conns[c].in_ready = true;
            let ep = self.conns[c].endpoint;
            self.ready[ep].push_back(c);
        }
    }

    /// Sends `p` on connection `c` (which has room), then lists `c` as ready
    /// again if it still has room.
    fn send(&mut self, c: usize, p: Pending) {
        let sent_ns = self.now_ns();
        self.last_activity_ns = sent_ns;
        self.out.requests_total += 1;
        if p.measured {
            self.out.sent += 1;
            self.out
                .send_lag
                .record_ns(sent_ns.saturating_sub(p.intended_ns));
            // Relaxed: a statistic for the progress line.
            self.live.sent.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = &self.kinds[p.kind].bytes;
        let conn = &mut self.conns[c];
        conn.inflight.push_back(InFlight {
            intended_ns: p.intended_ns,
            sent_ns,
            kind: p.kind,
            measured: p.measured,
        });
        let result = if conn.wbuf.is_empty() {
            let stream = conn
                .stream
                .as_mut()
                .expect("a connected connection has a stream");
            match write_some(stream, bytes) {
                Ok(n) => {
                    conn.wbuf.extend_from_slice(&bytes[n..]);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            conn.wbuf.extend_from_slice(bytes);
            Ok(())
        };
        match result {
            Ok(()) => self.mark_ready(c),
            Err(e) => self.fail(c, Failure::Write, &e.to_string()),
        }
    }

    /// Writes what the socket takes of the connection's pending bytes.
    fn flush(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        let stream = conn
            .stream
            .as_mut()
            .expect("a connected connection has a stream");
        match write_some(stream, &conn.wbuf) {
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) => self.fail(c, Failure::Write, &e.to_string()),
        }
    }

    /// Reads everything the socket has and completes the responses in it.
    ///
    /// A read that does not fill the buffer drained the socket: with
    /// edge-triggered epoll, data arriving later raises a new event, so the
    /// usual extra read that only returns `WouldBlock` is skipped (one
    /// system call less per response). Not when the peer has closed: the
    /// end of the stream must be read.
    fn read_ready(&mut self, c: usize, draining: bool, peer_closed: bool) {
        loop {
            let conn = &mut self.conns[c];
            if conn.rend == conn.rbuf.len() {
                conn.rbuf.copy_within(conn.rstart..conn.rend, 0);
                conn.rend -= conn.rstart;
                conn.rstart = 0;
                // The parser takes every complete head and all body bytes, so
                // a full buffer holds one unfinished head: the parser will have
                // refused it as too large.
                debug_assert!(conn.rend < conn.rbuf.len());
            }
            let stream = conn
                .stream
                .as_mut()
                .expect("a connected connection has a stream");
            let rend = conn.rend;
            match stream.read(&mut conn.rbuf[rend..]) {
                Ok(0) => {
                    let done = self.conns[c].parser.finish_at_eof();
                    if let Some(response) = done {
                        let t = self.now_ns();
                        self.complete(c, response, t, draining);
                        if self.conns[c].state != ConnState::Connected {
                            return;
                        }
                    }
                    if self.conns[c].inflight.is_empty() {
                        // The server closed an idle keep-alive connection.
                        self.close(c, 0);
                    } else {
                        self.fail(c, Failure::Closed, "the server closed the connection");
                    }
                    return;
                }
                Ok(n) => {
                    let drained = rend + n < self.conns[c].rbuf.len();
                    self.conns[c].rend += n;
                    let t = self.now_ns();
                    if !self.parse_responses(c, t, draining) || (drained && !peer_closed) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(c, Failure::Read, &e.to_string());
                    return;
                }
            }
        }
    }

    /// Completes every response in the connection's buffer (received at
    /// `t`); false when the connection went down.
    fn parse_responses(&mut self, c: usize, t: u64, draining: bool) -> bool {
        loop {
            let conn = &mut self.conns[c];
            if conn.rstart == conn.rend {
                conn.rstart = 0;
                conn.rend = 0;
                return true;
            }
            let Some(front) = conn.inflight.front() else {
                self.fail(
                    c,
                    Failure::Protocol,
                    "the server sent bytes nobody asked for",
                );
                return false;
            };
            let has_body = self.kinds[front.kind].has_body;
            match conn
                .parser
                .parse(&conn.rbuf[conn.rstart..conn.rend], has_body)
            {
                Ok((n, done)) => {
                    conn.rstart += n;
                    match done {
                        Some(response) => {
                            self.complete(c, response, t, draining);
                            if self.conns[c].state != ConnState::Connected {
                                return false;
                            }
                        }
                        None => {
                            if conn.rstart == conn.rend {
                                conn.rstart = 0;
                                conn.rend = 0;
                            }
                            return true;
                        }
                    }
                }
                Err(e) => {
                    self.fail(c, Failure::Protocol, &e.to_string());
                    return false;
                }
            }
        }
    }

    /// Records the response to the oldest request in flight on `c`.
    fn complete(&mut self, c: usize, response: Response, t: u64, draining: bool) {
        let f = self.conns[c]
            .inflight
            .pop_front()
            .expect("the parser only completes responses to requests in flight");
        if (self.warmup_ns..self.end_ns).contains(&t) {
            self.out.responses_in_window += 1;
        }
        if f.measured {
            let latency = t.saturating_sub(f.intended_ns);
            self.out.latency.record_ns(latency);
            self.out.service.record_ns(t.saturating_sub(f.sent_ns));
            if let Some(h) = self.out.per_kind.get_mut(f.kind) {
                h.record_ns(latency);
            }
            self.out.completed += 1;
            *self.out.statuses.entry(response.status).or_default() += 1;
            // Relaxed: statistics for the progress line.
            self.live.completed.fetch_add(1, Ordering::Relaxed);
            if !(200..300).contains(&response.status) {
                self.out.non_2xx += 1;
                self.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if response.close {
            if self.conns[c].inflight.is_empty() {
                self.close(c, 0);
            } else {
                self.fail(
                    c,
                    Failure::Closed,
                    "the server closed the connection (Connection: close) with requests pipelined",
                );
            }
            return;
        }
        if !draining {
            self.feed(c);
        }
    }

    /// Gives connection `c` work from its endpoint's backlog while it has
    /// room, then lists it as ready.
    fn feed(&mut self, c: usize) {
        let ep = self.conns[c].endpoint;
        while self.can_send(c) {
            let Some(p) = self.backlog[ep].pop_front() else {
                break;
            };
            self.send(c, p);
        }
        self.mark_ready(c);
    }

    /// Closes `c` and counts what was in flight on it as lost to `why`.
    fn fail(&mut self, c: usize, why: Failure, detail: &str) {
        let lost = self.conns[c].inflight.iter().filter(|f| f.measured).count() as u64;
        let counter = match why {
            Failure::Read => &mut self.out.socket.read,
            Failure::Write => &mut self.out.socket.write,
            Failure::Closed => &mut self.out.socket.closed,
            Failure::Protocol => &mut self.out.socket.protocol,
        };
        *counter += lost;
        // Relaxed: a statistic for the progress line.
        self.live.errors.fetch_add(lost, Ordering::Relaxed);
        self.note_error(c, detail);
        let backoff = self.conns[c].backoff_ns;
        self.conns[c].backoff_ns = (backoff * 2).min(MAX_BACKOFF_NS);
        self.close(c, backoff);
    }

    fn note_error(&mut self, c: usize, detail: &str) {
        if self.out.first_error.is_none() {
            let addr = self.endpoints[self.conns[c].endpoint];
            self.out.first_error = Some(format!("{addr}: {detail}"));
        }
    }

    /// Tears `c` down; it reconnects `retry_after_ns` from now.
    fn close(&mut self, c: usize, retry_after_ns: u64) {
        let now = self.now_ns();
        let conn = &mut self.conns[c];
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.inflight.clear();
        conn.parser = ResponseParser::new();
        conn.rstart = 0;
        conn.rend = 0;
        conn.wbuf.clear();
        conn.state = ConnState::Down {
            retry_ns: now + retry_after_ns,
        };
        if conn.in_ready {
            conn.in_ready = false;
            let ep = conn.endpoint;
            self.ready[ep].retain(|&x| x != c);
        }
        // Reconnect at the next housekeeping pass, or now if it is due.
        self.next_housekeeping_ns = self.next_housekeeping_ns.min(now + retry_after_ns);
    }

    /// Starts a non-blocking connect for `c`.
    fn start_connect(&mut self, c: usize, now: u64) {
        let addr = self.endpoints[self.conns[c].endpoint];
        let result = MioStream::connect(addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(c),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match result {
            Ok(stream) => {
                let conn = &mut self.conns[c];
                conn.stream = Some(stream);
                conn.state = ConnState::Connecting {
                    deadline_ns: now + nanos(self.connect_timeout),
                };
            }
            Err(e) => self.connect_failed(c, &e.to_string()),
        }
    }

    /// A connecting socket reported an event: connected, or failed.
    fn finish_connect(&mut self, c: usize) {
        let stream = self.conns[c]
            .stream
            .as_mut()
            .expect("a connecting connection has a stream");
        let outcome = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(true) => {
                let _ = stream.set_nodelay(true);
                let conn = &mut self.conns[c];
                conn.state = ConnState::Connected;
                conn.backoff_ns = FIRST_BACKOFF_NS;
                self.out.reconnects += 1;
                self.feed(c);
            }
            Ok(false) => {}
            Err(e) => self.connect_failed(c, &e.to_string()),
        }
    }

    fn connect_failed(&mut self, c: usize, detail: &str) {
        self.out.socket.connect += 1;
        // Relaxed: a statistic for the progress line.
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        self.note_error(c, &format!("reconnect failed: {detail}"));
        let backoff = self.conns[c].backoff_ns;
        self.conns[c].backoff_ns = (backoff * 2).min(MAX_BACKOFF_NS);
        self.close(c, backoff);
    }

    /// Times out stale requests and connects, and reconnects closed
    /// connections that are due (not after the window ended).
    fn housekeeping(&mut self, now: u64, ended: bool) {
        for c in 0..self.conns.len() {
            match self.conns[c].state {
                ConnState::Connected => {
                    let stale = self.conns[c]
                        .inflight
                        .front()
                        .is_some_and(|f| now.saturating_sub(f.sent_ns) >= self.timeout_ns);
                    if stale {
                        self.time_out(c, now);
                    }
                }
                ConnState::Connecting { deadline_ns } if now >= deadline_ns => {
                    self.connect_failed(c, "connection attempt timed out");
                }
                ConnState::Down { retry_ns } if now >= retry_ns && !ended => {
                    self.start_connect(c, now);
                }
                _ => {}
            }
        }
    }

    /// Counts everything in flight on `c` as timed out, recording the
    /// latency each has reached (a lower bound), and closes `c`.
    fn time_out(&mut self, c: usize, now: u64) {
        let inflight = std::mem::take(&mut self.conns[c].inflight);
        for f in inflight.iter().filter(|f| f.measured) {
            self.out.timeouts += 1;
            self.out
                .latency
                .record_ns(now.saturating_sub(f.intended_ns));
            self.out.service.record_ns(now.saturating_sub(f.sent_ns));
            if let Some(h) = self.out.per_kind.get_mut(f.kind) {
                h.record_ns(now.saturating_sub(f.intended_ns));
            }
            // Relaxed: a statistic for the progress line.
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        }
        if !inflight.is_empty() {
            self.note_error(c, "no response within the timeout");
        }
        self.close(c, 0);
    }

    fn time_out_all(&mut self, now: u64) {
        for c in 0..self.conns.len() {
            if !self.conns[c].inflight.is_empty() {
                self.time_out(c, now);
            }
        }
    }

    /// The window is over: what is still waiting for a connection is never
    /// sent. Counted as unsent, recorded with the latency it has reached.
    fn abandon_backlog(&mut self, now: u64) {
        for ep in 0..self.backlog.len() {
            for p in std::mem::take(&mut self.backlog[ep]) {
                if p.measured {
                    self.out.unsent += 1;
                    self.out
                        .latency
                        .record_ns(now.saturating_sub(p.intended_ns));
                    if let Some(h) = self.out.per_kind.get_mut(p.kind) {
                        h.record_ns(now.saturating_sub(p.intended_ns));
                    }
                }
            }
        }
    }
}

/// Writes as much of `bytes` as the socket takes; 0 when it takes nothing.
fn write_some(stream: &mut MioStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
