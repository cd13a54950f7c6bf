//! One client thread: its keep-alive connections, its arrival schedule, and
//! the loop that sends each request at its intended time and records its
//! latency from that time.
//!
//! ```text
//!  schedule ──due──▶ dispatch ──idle connection──▶ stage ──▶ write ──▶ in flight
//!                       │ none idle                                  │ response
//!                       ▼                                            ▼
//!                    backlog (per endpoint) ◀──freed── record(now − intended, now − sent)
//! ```
//!
//! The per-request path is kept to the system calls it needs: one `write`
//! per request (straight from the kind's prebuilt bytes), one `read` per
//! response (none that only returns `WouldBlock`), one `epoll_wait` per
//! loop turn for all ready connections, registered once, edge-triggered.
//! Idle connections wait in a queue per endpoint, so a request goes to the
//! one idle longest without a scan. Requests are *staged* on their
//! connection and written at the end of the step that released them (the
//! due arrivals of a turn, or the responses of one read); with
//! `--pipeline` > 1 the requests due in one turn fill one connection and
//! leave in one write, as do backlogged requests fed to a connection
//! freed by several responses. Each request's send time is taken at its
//! write.
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
//! The backlog is bounded ([`BACKLOG_CAP`] per endpoint): when the next
//! arrival finds its endpoint's backlog full, it and every later arrival
//! stay in the schedule, which holds them with their intended times until
//! room frees (the schedule is a pure function of time, so nothing is
//! lost by not drawing them yet). Memory is then bounded whatever the
//! rate, and an offered rate far above what the connections can carry
//! (`--rate 20M` for `20k`) costs no work per overdue request in the loop.
//! At the end of the window the arrivals still in the schedule are unsent
//! like the backlog's, recorded with their latencies (see
//! [`Client::abandon_schedule`]).
//!
//! Waiting: `spin` polls epoll without sleeping; `block` sleeps in epoll
//! with a `timerfd` armed for the next intended send (ns precision, armed
//! only when the thread is about to sleep, never read);
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
use super::run::KindResult;
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
    /// Bytes the server sent with no request in flight (after a complete
    /// response, say): a protocol violation that costs the connection.
    /// Counted once per connection torn down for it; no request is lost.
    pub unsolicited: u64,
}

impl SocketErrors {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.closed + self.protocol + self.unsolicited
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
        self.unsolicited += o.unsolicited;
    }
}

/// Counters the progress line reads while a run goes on (statistics only:
/// `Relaxed` loads and stores, no ordering with anything else).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Warm-up requests sent.
    pub warmup_sent: AtomicU64,
    /// Warm-up responses received.
    pub warmup_completed: AtomicU64,
    /// Measured requests sent.
    pub sent: AtomicU64,
    /// Measured responses received.
    pub completed: AtomicU64,
    /// Failed requests and connection attempts.
    pub errors: AtomicU64,
    /// `write` system calls made to send requests (one per request without
    /// pipelining; fewer with it, when requests due together share one).
    pub writes: AtomicU64,
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
    /// End the window early when `engine::sys::interrupted()` (Ctrl-C).
    pub stop_on_signal: bool,
    pub live: Arc<LiveCounters>,
}

/// What one client thread measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadResult {
    pub latency: LatencyHistogram,
    pub service: LatencyHistogram,
    pub send_lag: LatencyHistogram,
    /// Per request kind (empty for a single kind).
    pub per_kind: Vec<KindResult>,
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
    /// A signal ended the window before its end: the result measures
    /// nothing (`run_rate` drops it).
    pub window_cut: bool,
}

impl ThreadResult {
    /// Counts `f` as sent at `t`.
    fn count_sent(&mut self, f: &InFlight, t: u64) {
        self.requests_total += 1;
        if f.measured {
            self.sent += 1;
            self.send_lag.record_ns(t.saturating_sub(f.intended_ns));
        }
    }
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
    /// Requests at the back of `inflight` that are queued for this turn's
    /// write and not yet written (their bytes are not in `wbuf` yet).
    staged: usize,
    backoff_ns: u64,
}

/// The connections that can take another request, per endpoint, in the
/// order they became free. A request goes to the one that has waited
/// longest, so the load is spread round robin over the idle connections,
/// and finding it takes no scan of the connections. Entries are checked
/// when popped (a connection listed while free may have gone down since).
#[derive(Debug)]
struct ReadyQueues {
    queues: Vec<VecDeque<usize>>,
    /// Whether each connection is in its endpoint's queue (never twice).
    listed: Vec<bool>,
}

impl ReadyQueues {
    fn new(endpoints: usize, connections: usize) -> Self {
        Self {
            queues: (0..endpoints)
                .map(|_| VecDeque::with_capacity(connections))
                .collect(),
            listed: vec![false; connections],
        }
    }

    /// Lists `c` (of endpoint `ep`) at the back, unless it is listed.
    fn push(&mut self, ep: usize, c: usize) {
        if !self.listed[c] {
            self.listed[c] = true;
            self.queues[ep].push_back(c);
        }
    }

    /// The longest-waiting connection of `ep` that is `usable`; the ones
    /// passed over on the way are unlisted.
    fn pop(&mut self, ep: usize, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        while let Some(c) = self.queues[ep].pop_front() {
            self.listed[c] = false;
            if usable(c) {
                return Some(c);
            }
        }
        None
    }

    /// Unlists `c` (of endpoint `ep`).
    fn remove(&mut self, ep: usize, c: usize) {
        if std::mem::take(&mut self.listed[c]) {
            self.queues[ep].retain(|&x| x != c);
        }
    }

    /// True when some endpoint has a connection listed.
    fn any(&self) -> bool {
        self.queues.iter().any(|q| !q.is_empty())
    }
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
/// Status codes are three digits.
const STATUS_CODES: usize = 1000;
const FIRST_BACKOFF_NS: u64 = 1_000_000;
const MAX_BACKOFF_NS: u64 = 200_000_000;
/// The first error of a request that was not answered in time.
const TIMED_OUT: &str = "no response within the timeout";
/// The first error of a thread whose first failure was an answer after
/// the timeout.
const LATE: &str = "a response came after the timeout (counted as a timeout)";
/// Most requests one thread holds waiting for a connection of one
/// endpoint (24 bytes each). Far more than any sane run has waiting: at
/// that depth its latencies are already dominated by the queue. Beyond it
/// the schedule holds the arrivals (see the module doc); with several
/// endpoints, arrivals for the others then wait behind the full one's.
pub(crate) const BACKLOG_CAP: usize = 4096;
/// Arrivals still in the schedule at the end of a window that are drawn
/// and recorded one by one; beyond, the rest are recorded in bulk (see
/// [`Client::abandon_schedule`]).
const EXACT_TAIL: u64 = 1 << 20;
/// How often timeouts and reconnections are looked at.
const HOUSEKEEPING_NS: u64 = 5_000_000;

struct Client {
    start: Instant,
    poll: Poll,
    timer: TimerFd,
    /// The time the timer is armed for (`u64::MAX`: not armed).
    armed_ns: u64,
    conns: Vec<Conn>,
    ready: ReadyQueues,
    /// Connections with staged requests, in the order they were staged.
    dirty: Vec<usize>,
    /// Per endpoint, the connection that took the last request of this
    /// turn: with `--pipeline` > 1 the next one due joins it (one write).
    coalesce: Vec<Option<usize>>,
    /// Responses by status code (an array: no map lookup per response).
    statuses: Box<[u64]>,
    backlog: Vec<VecDeque<Pending>>,
    schedule: ArrivalSchedule,
    picker: KindPicker,
    kinds: Arc<Vec<Wire>>,
    endpoints: Vec<SocketAddr>,
    /// The next arrival's intended time and kind (its kind is drawn with
    /// its time: its endpoint decides whether it can be released).
    next_due_ns: u64,
    next_kind: usize,
    warmup_ns: u64,
    end_ns: u64,
    stop_on_signal: bool,
    pipeline: usize,
    mode: PollMode,
    spin_ns: u64,
    timeout_ns: u64,
    connect_timeout: Duration,
    last_activity_ns: u64,
    next_housekeeping_ns: u64,
    live: Arc<LiveCounters>,
    /// Writes made by `write_staged` (the first attempt of each).
    writes: u64,
    /// Warm-up responses received (for the progress line only: the
    /// result leaves the warm-up out).
    warmup_completed: u64,
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
        let mut ready = ReadyQueues::new(plan.endpoints.len(), plan.connections.len());
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
                staged: 0,
                backoff_ns: FIRST_BACKOFF_NS,
            });
            ready.push(endpoint, i);
        }
        let mut schedule = plan.schedule;
        let next_due_ns = schedule.next_ns();
        let mut picker = plan.picker;
        let next_kind = picker.pick();
        let per_kind = if plan.kind_histograms {
            vec![KindResult::default(); plan.kinds.len()]
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
            dirty: Vec::with_capacity(plan.connections.len()),
            coalesce: vec![None; plan.endpoints.len()],
            statuses: vec![0; STATUS_CODES].into_boxed_slice(),
            backlog: vec![VecDeque::new(); plan.endpoints.len()],
            schedule,
            picker,
            kinds: plan.kinds,
            endpoints: plan.endpoints,
            next_due_ns,
            next_kind,
            warmup_ns: plan.warmup_ns,
            end_ns: plan.end_ns,
            stop_on_signal: plan.stop_on_signal,
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
            writes: 0,
            warmup_completed: 0,
            out: ThreadResult {
                per_kind,
                ..ThreadResult::default()
            },
        })
    }

    fn publish(&self) {
        // Relaxed: statistics, read for display (and by tests after the
        // thread is joined).
        self.live
            .warmup_sent
            .store(self.out.requests_total - self.out.sent, Ordering::Relaxed);
        self.live
            .warmup_completed
            .store(self.warmup_completed, Ordering::Relaxed);
        self.live.sent.store(self.out.sent, Ordering::Relaxed);
        self.live
            .completed
            .store(self.out.completed, Ordering::Relaxed);
        self.live.writes.store(self.writes, Ordering::Relaxed);
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
            let stop = self.stop_on_signal && crate::engine::sys::interrupted();
            if drain_deadline_ns.is_none() {
                self.release_due(now);
                self.write_staged_all();
                // Ctrl-C ends the window as its end would (`run_rate`
                // leaves the cut-short rate out).
                if now >= self.end_ns || stop {
                    self.out.window_cut = now < self.end_ns;
                    self.abandon_backlog(now);
                    self.abandon_schedule(now);
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
                // Ctrl-C cuts the drain short too: the window is whole and
                // is reported; what it still waits for counts as timed out
                // (with the latency it reached, as at the deadline).
                if now >= deadline || stop {
                    self.time_out_all(
                        now,
                        if now >= deadline {
                            TIMED_OUT
                        } else {
                            "no response before a signal cut the wait short"
                        },
                    );
                    break;
                }
            }
            // Published once a turn: a plain store, not a locked add per
            // request.
            self.publish();
            let timeout = self.wait_timeout(now, drain_deadline_ns)?;
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(LoadError::Setup(e));
                }
            }
            if self.spin_ns > 0 && !events.is_empty() {
                self.last_activity_ns = self.now_ns();
            }
            for event in events.iter() {
                let token = event.token();
                if token == TIMER {
                    // Not read: arming the timer again resets its expiry
                    // count, and each expiry raises a new edge.
                    self.armed_ns = u64::MAX;
                    continue;
                }
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
                // Requests this event freed a connection for leave now.
                self.write_staged_all();
            }
        }
        self.out.cpu = thread_cpu_time().saturating_sub(cpu_before);
        for (status, &n) in self.statuses.iter().enumerate() {
            if n > 0 {
                let status = u16::try_from(status).expect("fewer than 1000 status codes");
                *self.out.statuses.entry(status).or_default() += n;
            }
        }
        self.publish();
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
    /// wake-up per request when the server is saturated). Likewise when the
    /// next arrival's backlog is full: it waits in the schedule until a
    /// response makes room (waking for it would only spin).
    fn next_wake(&self, drain_deadline_ns: Option<u64>) -> u64 {
        let releasable = self.ready.any() && !self.backlog_full(self.next_kind);
        let mut wake = match drain_deadline_ns {
            None if releasable => self.next_due_ns.min(self.end_ns),
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

    /// Releases, in order, every arrival whose intended time has come,
    /// while its endpoint can take it: a free connection or room in the
    /// backlog. The first that finds its backlog full stops the release;
    /// it and the ones after it stay in the schedule (see the module doc).
    fn release_due(&mut self, now: u64) {
        while self.next_due_ns <= now && self.next_due_ns < self.end_ns {
            if self.backlog_full(self.next_kind) {
                break;
            }
            let measured = self.next_due_ns >= self.warmup_ns;
            if measured {
                self.out.offered += 1;
                if let Some(k) = self.out.per_kind.get_mut(self.next_kind) {
                    k.offered += 1;
                }
            }
            self.dispatch(Pending {
                intended_ns: self.next_due_ns,
                kind: self.next_kind,
                measured,
            });
            self.next_due_ns = self.schedule.next_ns();
            self.next_kind = self.picker.pick();
        }
    }

    /// Whether a request of `kind` would find its endpoint's backlog full.
    fn backlog_full(&self, kind: usize) -> bool {
        self.backlog[self.kinds[kind].endpoint].len() >= BACKLOG_CAP
    }

    /// Gives `p` to a free connection of its endpoint, or to the backlog
    /// (which has room: [`release_due`](Self::release_due) checked).
    fn dispatch(&mut self, p: Pending) {
        let ep = self.kinds[p.kind].endpoint;
        if self.backlog[ep].is_empty() {
            // With pipelining, requests due in the same turn share the
            // connection that took the previous one while it has room: one
            // write instead of one per request.
            let c = match self.coalesce[ep] {
                Some(c) if self.can_send(c) => Some(c),
                _ => self.pop_ready(ep),
            };
            if let Some(c) = c {
                self.stage(c, p);
                if self.pipeline > 1 {
                    self.coalesce[ep] = Some(c);
                }
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
        let (conns, pipeline) = (&self.conns, self.pipeline);
        self.ready.pop(ep, |c| {
            conns[c].state == ConnState::Connected && conns[c].inflight.len() < pipeline
        })
    }

    fn mark_ready(&mut self, c: usize) {
        if self.can_send(c) {
            self.ready.push(self.conns[c].endpoint, c);
        }
    }

    /// Puts `p` in flight on connection `c` (which has room). Its bytes
    /// leave with the connection's next [`write_staged`](Self::write_staged),
    /// in the same turn, which also stamps its send time.
    fn stage(&mut self, c: usize, p: Pending) {
        let conn = &mut self.conns[c];
        conn.inflight.push_back(InFlight {
            intended_ns: p.intended_ns,
            sent_ns: 0,
            kind: p.kind,
            measured: p.measured,
        });
        if conn.staged == 0 {
            self.dirty.push(c);
        }
        conn.staged += 1;
    }

    /// Writes the staged requests of every connection that has some.
    fn write_staged_all(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            self.write_staged(c);
        }
        debug_assert!(self.dirty.is_empty(), "writing stages nothing");
        dirty.clear();
        self.dirty = dirty;
        self.coalesce.fill(None);
    }

    /// Sends the staged requests of connection `c` in one write (a single
    /// one straight from its prebuilt bytes), stamps their send time, and
    /// lists `c` as ready again if it still has room.
    fn write_staged(&mut self, c: usize) {
        let n = std::mem::take(&mut self.conns[c].staged);
        if n == 0 || self.conns[c].state != ConnState::Connected {
            return;
        }
        let sent_ns = self.now_ns();
        self.last_activity_ns = sent_ns;
        let kinds = &self.kinds;
        let out = &mut self.out;
        let conn = &mut self.conns[c];
        let first = conn.inflight.len() - n;
        for f in conn.inflight.range_mut(first..) {
            f.sent_ns = sent_ns;
            out.count_sent(f, sent_ns);
        }
        let stream = conn
            .stream
            .as_mut()
            .expect("a connected connection has a stream");
        let result = if conn.wbuf.is_empty() && n == 1 {
            self.writes += 1;
            let bytes = &kinds[conn.inflight[first].kind].bytes;
            write_some(stream, bytes).map(|w| conn.wbuf.extend_from_slice(&bytes[w..]))
        } else {
            // Bytes already waiting mean the socket is full: the writable
            // event flushes them with these.
            let blocked = !conn.wbuf.is_empty();
            for f in conn.inflight.range(first..) {
                conn.wbuf.extend_from_slice(&kinds[f.kind].bytes);
            }
            if blocked {
                Ok(())
            } else {
                self.writes += 1;
                write_some(stream, &conn.wbuf).map(|w| {
                    conn.wbuf.drain(..w);
                })
            }
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
                self.out.socket.unsolicited += 1;
                // Relaxed: a statistic for the progress line.
                self.live.errors.fetch_add(1, Ordering::Relaxed);
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
        // An answer that comes after the timeout is a timeout, not a late
        // success: housekeeping looks for stale requests only every
        // HOUSEKEEPING_NS, so one can arrive between its passes. It is
        // counted and recorded as `time_out` would have (latency reached,
        // no status, not achieved); the connection stays up, since the
        // answer came and framing is intact.
        let late = t.saturating_sub(f.sent_ns) >= self.timeout_ns;
        if late {
            if f.measured {
                self.count_timeout(&f, t);
                self.note_error(c, LATE);
            }
        } else if (self.warmup_ns..self.end_ns).contains(&t) {
            self.out.responses_in_window += 1;
            if let Some(k) = self.out.per_kind.get_mut(f.kind) {
                k.responses_in_window += 1;
            }
        }
        if f.measured && !late {
            let latency = t.saturating_sub(f.intended_ns);
            self.out.latency.record_ns(latency);
            self.out.service.record_ns(t.saturating_sub(f.sent_ns));
            self.out.completed += 1;
            match self.statuses.get_mut(usize::from(response.status)) {
                Some(n) => *n += 1,
                None => *self.out.statuses.entry(response.status).or_default() += 1,
            }
            let failed = !(200..300).contains(&response.status);
            if failed {
                self.out.non_2xx += 1;
                self.live.errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(k) = self.out.per_kind.get_mut(f.kind) {
                k.latency.record_ns(latency);
                k.completed += 1;
                k.non_2xx += u64::from(failed);
            }
        } else if !f.measured {
            self.warmup_completed += 1;
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
            self.stage(c, p);
        }
        self.mark_ready(c);
    }

    /// Closes `c` and counts what was in flight on it as lost to `why`.
    fn fail(&mut self, c: usize, why: Failure, detail: &str) {
        let mut lost = 0;
        for f in self.conns[c].inflight.iter().filter(|f| f.measured) {
            lost += 1;
            if let Some(k) = self.out.per_kind.get_mut(f.kind) {
                k.lost += 1;
            }
        }
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
        // Requests staged for this turn's write were given to this
        // connection and are lost with it (`fail` counted them), as if
        // written: they count as sent now.
        let staged = std::mem::take(&mut conn.staged);
        let first = conn.inflight.len() - staged;
        for f in conn.inflight.range(first..) {
            self.out.count_sent(f, now);
        }
        conn.inflight.clear();
        conn.parser = ResponseParser::new();
        conn.rstart = 0;
        conn.rend = 0;
        conn.wbuf.clear();
        conn.state = ConnState::Down {
            retry_ns: now + retry_after_ns,
        };
        let ep = conn.endpoint;
        self.ready.remove(ep, c);
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
                        self.time_out(c, now, TIMED_OUT);
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
    /// latency each has reached (a lower bound), and closes `c`; `detail`
    /// says why, for the first error.
    fn time_out(&mut self, c: usize, now: u64, detail: &str) {
        let inflight = std::mem::take(&mut self.conns[c].inflight);
        for f in inflight.iter().filter(|f| f.measured) {
            self.count_timeout(f, now);
        }
        if !inflight.is_empty() {
            self.note_error(c, detail);
        }
        self.close(c, 0);
    }

    /// Counts measured request `f` as timed out at `now`, recording the
    /// latency it has reached (a lower bound).
    fn count_timeout(&mut self, f: &InFlight, now: u64) {
        self.out.timeouts += 1;
        self.out
            .latency
            .record_ns(now.saturating_sub(f.intended_ns));
        self.out.service.record_ns(now.saturating_sub(f.sent_ns));
        if let Some(k) = self.out.per_kind.get_mut(f.kind) {
            k.latency.record_ns(now.saturating_sub(f.intended_ns));
            k.timeouts += 1;
        }
        // Relaxed: a statistic for the progress line.
        self.live.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn time_out_all(&mut self, now: u64, detail: &str) {
        for c in 0..self.conns.len() {
            if !self.conns[c].inflight.is_empty() {
                self.time_out(c, now, detail);
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
                    if let Some(k) = self.out.per_kind.get_mut(p.kind) {
                        k.latency.record_ns(now.saturating_sub(p.intended_ns));
                        k.unsent += 1;
                    }
                }
            }
        }
    }

    /// The window is over (at `now`): the arrivals the schedule still holds
    /// that were due by then (and before the window's end) were never
    /// sent either. They are offered and unsent, and recorded with the
    /// latency they have reached, like the backlog's.
    ///
    /// The first [`EXACT_TAIL`] are drawn one by one (time and kind). Past
    /// that — only an offered rate far beyond what the connections carry
    /// gets there — the rest are recorded in bulk, in time linear in the
    /// histogram's buckets, not in the requests: evenly spaced at the
    /// schedule's (mean) gap, which is exact for fixed arrivals and, for
    /// Poisson ones, the mean count and spread (given their number, Poisson
    /// arrivals are uniform over the interval), split over the kinds by
    /// weight.
    fn abandon_schedule(&mut self, now: u64) {
        let limit = now.saturating_add(1).min(self.end_ns);
        let mut drawn = 0;
        while self.next_due_ns < limit && drawn < EXACT_TAIL {
            if self.next_due_ns >= self.warmup_ns {
                self.out.offered += 1;
                self.out.unsent += 1;
                let latency = now.saturating_sub(self.next_due_ns);
                self.out.latency.record_ns(latency);
                if let Some(k) = self.out.per_kind.get_mut(self.next_kind) {
                    k.latency.record_ns(latency);
                    k.offered += 1;
                    k.unsent += 1;
                }
            }
            self.next_due_ns = self.schedule.next_ns();
            self.next_kind = self.picker.pick();
            drawn += 1;
        }
        if self.next_due_ns >= limit {
            return;
        }
        // In bulk: the measured arrivals at first, first + gap, … < limit.
        let gap = self.schedule.mean_gap_ns();
        let mut first = self.next_due_ns as f64;
        if first < self.warmup_ns as f64 {
            first += ((self.warmup_ns as f64 - first) / gap).ceil() * gap;
        }
        if first >= limit as f64 {
            return;
        }
        let count = ((limit as f64 - first) / gap).ceil().max(1.0) as u64;
        self.out.offered += count;
        self.out.unsent += count;
        // Latencies now − t, smallest (the latest arrival) first.
        let lowest = now as f64 - (first + (count - 1) as f64 * gap);
        self.out.latency.record_progression(lowest, gap, count);
        if !self.out.per_kind.is_empty() {
            for (kind, n) in self.picker.shares(count).into_iter().enumerate() {
                if n > 0 {
                    // Each kind's share, spread over the same interval.
                    let step = gap * count as f64 / n as f64;
                    let k = &mut self.out.per_kind[kind];
                    k.latency.record_progression(lowest, step, n);
                    k.offered += n;
                    k.unsent += n;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::echo::{EchoPoll, EchoServer};
    use crate::load::schedule::Arrival;

    #[test]
    fn idle_connections_take_turns() {
        let mut q = ReadyQueues::new(2, 5);
        for c in 0..3 {
            q.push(0, c);
        }
        q.push(1, 3);
        q.push(1, 4);
        q.push(0, 1); // listed already: no second entry
                      // Each connection, once used, goes to the back: round robin.
        let mut order = Vec::new();
        for _ in 0..9 {
            let c = q.pop(0, |_| true).unwrap();
            order.push(c);
            q.push(0, c);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        // Even use under any mix of work: every connection of an endpoint
        // serves the same number of requests, ±1.
        let mut uses = [0u32; 5];
        for i in 0..1000 {
            let ep = usize::from(i % 3 == 0);
            let c = q.pop(ep, |_| true).unwrap();
            uses[c] += 1;
            q.push(ep, c);
        }
        assert!(uses[..3].iter().max().unwrap() - uses[..3].iter().min().unwrap() <= 1);
        assert!(uses[3].abs_diff(uses[4]) <= 1, "{uses:?}");
        // Unusable entries are passed over and unlisted; removed ones are gone.
        q.remove(0, 1);
        assert_eq!(q.pop(0, |c| c != 0), Some(2));
        assert_eq!(q.pop(0, |_| true), None, "0 was dropped, 1 removed");
        q.push(0, 0);
        assert_eq!(q.pop(0, |_| true), Some(0));
        assert!(q.any(), "endpoint 1 still has its connections");
    }

    /// Runs one client thread against an in-process echo server; returns
    /// its result and its live counters as they were left.
    fn run_against_echo(
        rate: f64,
        warmup: Duration,
        window: Duration,
        connections: usize,
        pipeline: usize,
    ) -> (ThreadResult, Arc<LiveCounters>) {
        let server =
            EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoPoll::Block, None).unwrap();
        let plan = echo_plan(server.addr(), rate, warmup, window, connections, pipeline);
        let live = Arc::clone(&plan.live);
        let (ready_tx, _ready_rx) = std::sync::mpsc::channel();
        let (start_tx, start_rx) = std::sync::mpsc::channel();
        start_tx.send(Some(Instant::now())).unwrap();
        let out = run_thread(plan, 0, ready_tx, start_rx).unwrap();
        server.stop().unwrap();
        (out, live)
    }

    /// One client thread's plan against the echo server at `addr`.
    fn echo_plan(
        addr: SocketAddr,
        rate: f64,
        warmup: Duration,
        window: Duration,
        connections: usize,
        pipeline: usize,
    ) -> ThreadPlan {
        ThreadPlan {
            core: None,
            schedule: ArrivalSchedule::new(Arrival::Fixed, rate, 1),
            picker: KindPicker::new(&[1], 1),
            kinds: Arc::new(vec![Wire {
                endpoint: 0,
                bytes: b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
                has_body: true,
            }]),
            kind_histograms: false,
            endpoints: vec![addr],
            connections: vec![0; connections],
            warmup_ns: nanos(warmup),
            end_ns: nanos(warmup + window),
            pipeline,
            poll: PollMode::Block,
            spin_ns: 0,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            // A test beside `a_caught_signal_only_raises_the_flag` would
            // see the flag it raises.
            stop_on_signal: false,
            live: Arc::new(LiveCounters::default()),
        }
    }

    #[test]
    fn an_answer_after_the_timeout_is_a_timeout_not_a_success() {
        // Driven by hand, not by the clock: `complete` gets the arrival
        // time, so the test does not depend on when housekeeping runs.
        let server =
            EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoPoll::Block, None).unwrap();
        let plan = echo_plan(
            server.addr(),
            1.0,
            Duration::ZERO,
            Duration::from_secs(60),
            1,
            2,
        );
        let mut client = Client::new(plan).unwrap();
        let timeout = client.timeout_ns;
        for _ in 0..2 {
            client.conns[0].inflight.push_back(InFlight {
                intended_ns: 0,
                sent_ns: 10,
                kind: 0,
                measured: true,
            });
        }
        let ok = Response {
            status: 200,
            close: false,
        };
        // Just in time, then exactly at the timeout.
        client.complete(0, ok, 10 + timeout - 1, true);
        client.complete(0, ok, 10 + timeout, true);
        let out = &client.out;
        assert_eq!(out.completed, 1, "only the first is an answer");
        assert_eq!(out.timeouts, 1, "the late one is a timeout");
        assert_eq!(out.responses_in_window, 1, "a late answer is not achieved");
        assert_eq!(client.statuses[200], 1, "a late answer has no status");
        assert_eq!(out.non_2xx, 0);
        // Both in the corrected histogram: the timeout at the latency it
        // reached, as `time_out` records one (3 significant figures).
        assert_eq!(out.latency.len(), 2);
        assert!(out.latency.max_ns() as f64 >= (10 + timeout) as f64 * 0.999);
        assert!(out
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("after the timeout")));
        // The answer came: the connection is still up.
        assert_eq!(client.conns[0].state, ConnState::Connected);
        drop(client);
        server.stop().unwrap();
    }

    /// Every request the schedule offered is accounted for exactly once.
    fn assert_accounted(out: &ThreadResult) {
        assert_eq!(out.socket, SocketErrors::default(), "{:?}", out.first_error);
        assert_eq!(out.timeouts, 0);
        assert_eq!(out.offered, out.sent + out.unsent);
        assert_eq!(out.sent, out.completed);
        assert_eq!(out.requests_total, out.sent);
        assert_eq!(out.latency.len(), out.completed + out.unsent);
        assert_eq!(out.service.len(), out.completed);
        assert_eq!(out.send_lag.len(), out.sent);
        assert_eq!(out.statuses.get(&200).copied(), Some(out.completed));
        assert_eq!(out.statuses.len(), 1);
    }

    #[test]
    fn without_pipelining_each_request_is_one_write() {
        let (out, live) =
            run_against_echo(5_000.0, Duration::ZERO, Duration::from_millis(100), 4, 1);
        // Relaxed: the thread that stored it has returned.
        let writes = live.writes.load(Ordering::Relaxed);
        assert_accounted(&out);
        assert!(out.completed > 0);
        assert_eq!(
            writes, out.requests_total,
            "one write per request, none split"
        );
    }

    #[test]
    fn a_rate_far_beyond_the_connections_is_held_by_the_schedule() {
        // A billion a second for 20 ms: 20 million due, two connections.
        // The backlog stops at its cap, the schedule holds the rest, and
        // every request is still accounted for and in the histogram.
        let (out, _) = run_against_echo(1e9, Duration::ZERO, Duration::from_millis(20), 2, 1);
        assert_accounted(&out);
        assert_eq!(out.offered, 20_000_000);
        assert!(out.unsent > out.offered - 100_000, "{}", out.unsent);
        // The unsent waited up to the end of the window.
        assert!(
            out.latency.max_ns() >= 19_000_000,
            "{}",
            out.latency.max_ns()
        );
    }

    #[test]
    fn with_pipelining_requests_due_together_share_a_write() {
        // Far more than one connection can answer one by one: requests are
        // always due several at a time, and up to 8 share a write.
        let (out, live) =
            run_against_echo(1_000_000.0, Duration::ZERO, Duration::from_millis(30), 1, 8);
        // Relaxed: the thread that stored it has returned.
        let writes = live.writes.load(Ordering::Relaxed);
        assert_accounted(&out);
        assert!(out.completed > 100, "{}", out.completed);
        assert!(
            writes * 2 <= out.requests_total,
            "{writes} writes for {} requests",
            out.requests_total
        );
    }

    #[test]
    fn the_live_counters_keep_the_warm_up_apart_from_the_window() {
        // 1000/s: 50 warm-up requests, then 100 measured ones.
        let (out, live) = run_against_echo(
            1_000.0,
            Duration::from_millis(50),
            Duration::from_millis(100),
            2,
            1,
        );
        // Relaxed: the thread that stored them has returned.
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&live.warmup_sent), 50);
        assert_eq!(load(&live.warmup_completed), 50);
        assert_eq!(load(&live.sent), out.sent);
        assert_eq!(load(&live.completed), out.completed);
        assert_eq!(out.sent + out.unsent, 100);
        assert_eq!(out.requests_total, 50 + out.sent);
    }
}
