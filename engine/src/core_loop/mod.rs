//! A core loop: one pinned thread that owns a share of everything.
//!
//! Each loop owns, shared-nothing: its listening socket and connections (an
//! [`HttpServer`]), a share of every function's workers and their channels, the
//! per-function dispatch queues and the call table. It never takes a lock on
//! the hot path. One turn:
//!
//! 1. poll the network with a bounded budget: parse requests, admit calls
//!    (dispatch to an idle worker at once, or queue);
//! 2. poll every worker's response ring with a budget: completions are answered
//!    (HTTP reply, or forwarded to the calling worker), internal calls admitted;
//!    a seated worker that has not taken what was sent to it within a grace
//!    period is woken by the loop ([`wake_seats`]);
//! 3. take letters from other loops (calls of functions this loop has no
//!    workers of travel to a loop that has, see [`mailbox`]);
//! 4. take in workers the spawner has started, and reap dead ones;
//! 5. timers (deadlines, scale-down, restarts), at most every millisecond.
//!
//! Time is read once per turn. Between turns the wait policy decides whether to
//! spin, or to arm every ring's doorbell and sleep in epoll (see [`PollMode`]).

mod calls;
mod dispatch;
mod idle_budget;
mod mailbox;
mod routes;
mod wake_seats;
mod workers;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nocturne_net::http::{ConnectionLimit, HttpServer};
use nocturne_net::Transport;

use nocturne_ipc::YieldContention;

use crate::config::{Config, PollMode};
use crate::limiter::ConcurrencyLimiter;
use crate::slab::{Key, Slab};
use crate::status::EngineStatus;
use crate::worker::{Backoff, SpawnError, Spawner, Worker};

use idle_budget::IdleBudget;

pub(crate) use calls::{Call, Origin};
pub(crate) use mailbox::{post_offices, PostOffice};
use wake_seats::{WakeSeats, WakeWatch};
use workers::WorkerSlot;

/// Epoll token of the loop's eventfd (ring doorbells, spawner, stop).
const WAKE_TOKEN: usize = 0;
/// Worker pidfds are registered as `WORKER_TOKEN_BASE + slot index`.
const WORKER_TOKEN_BASE: usize = 1;
/// Requests parsed per turn before the loop looks at its rings again.
const NET_BUDGET: usize = 64;
/// Messages taken from one worker's ring per turn.
const RING_BUDGET: usize = 32;
/// How often timers run.
const TIMER_PERIOD: Duration = Duration::from_millis(1);
/// The longest an idle loop sleeps before looking at its timers.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What a loop shares with the rest of the engine (read-only after start).
pub struct LoopContext {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Counters for `/healthz` and `/system/functions`.
    pub status: Arc<EngineStatus>,
    /// Starts worker processes off the hot path.
    pub spawner: Arc<Spawner>,
    /// `max_connections`, counted over every loop's connections.
    pub connections: Arc<ConnectionLimit>,
    /// Set to ask every loop to stop at once.
    pub stop: Arc<AtomicBool>,
    /// Set to ask every loop to drain: stop accepting, finish in-flight calls
    /// (up to `drain_timeout`), then stop.
    pub draining: Arc<AtomicBool>,
    /// The `nocturne` binary, re-executed for built-in functions.
    pub exe: std::path::PathBuf,
    /// Number of core loops in the engine.
    pub loops: usize,
    /// With `--worker-poll spin`: the worker cores, each given to one worker
    /// at a time (a spinning worker needs a core of its own).
    pub spin_cores: Option<CorePool>,
}

/// Worker cores handed out one per worker. Touched only when a worker is
/// spawned or removed, never on a call's path, so a mutex is fine.
pub struct CorePool {
    free: std::sync::Mutex<Vec<usize>>,
}

impl CorePool {
    /// A pool of `cores`, all free.
    pub fn new(cores: &[usize]) -> Self {
        // Hand out low cores first (pop takes from the end).
        let mut free = cores.to_vec();
        free.sort_unstable_by(|a, b| b.cmp(a));
        Self {
            free: std::sync::Mutex::new(free),
        }
    }

    /// Takes a free core, if any.
    pub fn take(&self) -> Option<usize> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Returns a core taken with [`take`](Self::take).
    pub fn give_back(&self, core: usize) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(core);
    }
}

/// Per-function state of one loop: its share of the pool and its queue.
pub(crate) struct FunctionState {
    pub name: String,
    /// Idle workers, most recently used last (LIFO keeps caches warm).
    pub idle: Vec<Key>,
    /// Calls waiting for a worker, oldest first.
    pub pending: VecDeque<Key>,
    pub limiter: ConcurrencyLimiter,
    /// Ready workers of this loop.
    pub workers: usize,
    /// Spawns requested and not yet answered.
    pub starting: usize,
    pub in_flight: usize,
    /// Busy workers blocked on internal calls of their own.
    pub waiting: usize,
    /// This loop's share of `min_workers` / `max_workers`. A share of 0
    /// (fewer workers than loops) sends the function's calls to the loops
    /// that have one ([`Config::worker_loops`]), in turn.
    pub min_share: usize,
    pub max_share: usize,
    /// The next of those loops to take a forwarded call.
    pub next_owner: u8,
    pub backoff: Backoff,
    /// When a backed-off restart is due.
    pub restart_at: Option<Instant>,
}

/// A core loop: its network server and everything else.
pub struct CoreLoop<T: Transport> {
    server: HttpServer<T>,
    st: LoopState,
}

/// Everything but the server, so the server can call into it while polling.
pub(crate) struct LoopState {
    pub index: u8,
    pub ctx: Arc<LoopContext>,
    pub functions: Vec<FunctionState>,
    pub workers: Slab<WorkerSlot>,
    pub calls: Slab<Call>,
    /// Doorbell eventfd: workers, the spawner and `stop` write it.
    pub wake_fd: Arc<OwnedFd>,
    pub spawn_tx: mpsc::Sender<(u64, Result<Worker, SpawnError>)>,
    pub spawn_rx: mpsc::Receiver<(u64, Result<Worker, SpawnError>)>,
    /// Worker slots whose pidfd fired this turn.
    pub exited: Vec<usize>,
    /// Reused buffers.
    pub scratch: Vec<u8>,
    pub timing: String,
    pub keys: Vec<Key>,
    pub now: Instant,
    pub now_ns: u64,
    /// `now` and `now_ns` of one moment, so that a turn reads the clock once
    /// and derives the other.
    clock_base: (Instant, u64),
    pub last_timers: Instant,
    /// Set before an epoll sleep: the first request after it re-reads the clock.
    pub clock_stale: bool,
    /// When draining, the time by which in-flight calls must be done.
    pub drain_deadline: Option<Instant>,
    /// Letters to and from the other loops (`None` with a single loop).
    pub mail: Option<PostOffice>,
    /// The wake board of this loop's yielding workers (`None`: workers
    /// that do not yield, or delegation is off).
    pub wake_seats: Option<WakeSeats>,
    /// Seated workers' messages not yet seen taken (module `wake_seats`).
    pub wake_watch: WakeWatch,
}

impl<T: Transport> CoreLoop<T> {
    /// A loop serving on `transport` (already bound), numbered `index`.
    pub fn new(index: usize, transport: T, ctx: Arc<LoopContext>) -> std::io::Result<Self> {
        let config = &ctx.config;
        let limits = crate::engine::http_limits(config, index);
        let mut server = HttpServer::new(transport, limits);
        server.share_connection_limit(ctx.connections.clone());
        let wake_fd = Arc::new(crate::sys::eventfd()?);
        server
            .transport_mut()
            .register_wake_fd(wake_fd.as_raw_fd(), WAKE_TOKEN)?;
        let loops = ctx.loops;
        let functions = config
            .functions
            .iter()
            .map(|f| {
                let min_share = share(f.min_workers, loops, index);
                let max_share = share(f.max_workers, loops, index).max(min_share);
                FunctionState {
                    name: f.name.clone(),
                    idle: Vec::new(),
                    pending: VecDeque::new(),
                    limiter: ConcurrencyLimiter::new(
                        f.concurrency_coef,
                        min_share.max(1),
                        max_share.max(1),
                    ),
                    workers: 0,
                    starting: 0,
                    in_flight: 0,
                    waiting: 0,
                    min_share,
                    max_share,
                    next_owner: 0,
                    backoff: Backoff::default(),
                    restart_at: None,
                }
            })
            .collect();
        let wake_seats = if config.delegates_wakes() {
            match WakeSeats::new(index as u8) {
                Ok(seats) => Some(seats),
                Err(e) => {
                    log::info!(
                        "nocturne: loop {index}: cannot create its wake board ({e}); \
                         its workers are woken from the loop's core"
                    );
                    None
                }
            }
        } else {
            None
        };
        let (spawn_tx, spawn_rx) = mpsc::channel();
        let now = Instant::now();
        let now_ns = nocturne_functions::protocol::monotonic_ns();
        Ok(Self {
            server,
            st: LoopState {
                index: u8::try_from(index).expect("the configuration allows at most 256 io cores"),
                ctx,
                functions,
                workers: Slab::with_capacity(64),
                calls: Slab::with_capacity(1024),
                wake_fd,
                spawn_tx,
                spawn_rx,
                exited: Vec::new(),
                scratch: Vec::new(),
                timing: String::new(),
                keys: Vec::new(),
                now,
                now_ns,
                clock_base: (now, now_ns),
                last_timers: now,
                clock_stale: false,
                drain_deadline: None,
                mail: None,
                wake_seats,
                wake_watch: WakeWatch::default(),
            },
        })
    }

    /// The eventfd that wakes this loop from an epoll sleep.
    pub fn wake_fd(&self) -> Arc<OwnedFd> {
        self.st.wake_fd.clone()
    }

    /// Connects this loop to the others (before it runs): `office` is its
    /// entry of [`post_offices`] over every loop's [`wake_fd`](Self::wake_fd).
    pub fn connect(&mut self, office: PostOffice) {
        debug_assert_eq!(office.index(), self.st.index);
        self.st.mail = Some(office);
    }

    /// Runs until the context's `stop` flag is set.
    pub fn run(mut self) {
        let config = self.st.ctx.config.clone();
        let now = Instant::now();
        let mut idle = match config.poll {
            PollMode::Spin => IdleBudget::endless(now),
            PollMode::Adaptive => IdleBudget::new(
                Duration::from_micros(config.spin_us),
                Duration::from_micros(config.spin_max_us),
                now,
            ),
            PollMode::Block => IdleBudget::new(Duration::ZERO, Duration::ZERO, now),
        };
        // A spinning loop on a core that workers share would hold it for a
        // whole time slice while the worker it just handed a call to waits:
        // on such a core, yield between idle turns instead (`spin` never
        // shares: the configuration refuses it).
        let yield_when_idle = config.io_shares_workers();
        // Beside a CPU-bound thread a yield costs a scheduler tick, and the
        // loop, runnable but not running, sees nothing meanwhile: sleep in
        // epoll at once while that lasts (nocturne_ipc::contention).
        let mut contention = YieldContention::new();
        for f in 0..self.st.functions.len() {
            self.st.ensure_min_workers(f as u32);
        }
        // Relaxed: the flags carry no data; a loop only needs to notice them
        // within a turn or two (the eventfd write that follows wakes sleepers).
        while !self.st.ctx.stop.load(Ordering::Relaxed) {
            self.st.tick();
            if self.st.ctx.draining.load(Ordering::Relaxed) && self.drain_step() {
                break;
            }
            let mut work = self.poll_net(Some(Duration::ZERO));
            work += self.turn_rest();
            if work > 0 {
                idle.worked(self.st.now, self.st.calls.is_empty());
                continue;
            }
            // A delegated wake not yet settled keeps the loop awake: its
            // grace is µs, an epoll sleep lasts a millisecond at least.
            let polling = self.st.wake_watch.keeps_awake() || idle.polls_at(self.st.now);
            if polling && !yield_when_idle {
                std::hint::spin_loop();
                continue;
            }
            if polling && !contention.contended(self.st.now) && !contention.timed_yield().1 {
                continue;
            }
            // Idle past the spin budget (or yielding does not pay now): arm
            // every doorbell, then sleep in epoll unless something arrived
            // meanwhile (arming re-checks each ring).
            // Arming the mailbox after the doorbells: a letter posted from
            // here on writes the eventfd, so the sleep below cannot miss it.
            let mut work = 0;
            if self.st.arm_all() && self.st.mail.as_ref().is_none_or(PostOffice::may_sleep) {
                let sleep = self.st.sleep_budget();
                self.st.clock_stale = true;
                work += self.poll_net(Some(sleep));
                self.st.clock_stale = false;
            }
            self.st.disarm_all();
            if let Some(mail) = &self.st.mail {
                mail.awake();
            }
            self.st.tick();
            work += self.turn_rest();
            // A wake-up with nothing to do (a timeout, for the timers) is
            // no arrival: the loop goes back to sleep at once.
            if work > 0 {
                idle.worked(self.st.now, self.st.calls.is_empty());
            }
        }
        // Finish every connection (a userspace stack's would otherwise hang
        // their clients), then end the workers.
        self.server
            .transport_mut()
            .close_all(Duration::from_millis(200));
        self.st.close_mail();
        self.st.shutdown();
    }

    /// One step of a graceful shutdown; `true` once the loop may stop.
    fn drain_step(&mut self) -> bool {
        let now = self.st.now;
        let deadline = *self.st.drain_deadline.get_or_insert_with(|| {
            self.server.transport_mut().stop_accepting();
            self.server.drain();
            let timeout = self.st.ctx.config.drain_timeout;
            // A call handed to another loop is that loop's to count: each
            // call is counted once across the engine's lines.
            let own_calls = self.st.calls.iter().filter(|(_, c)| c.forwarded_to.is_none());
            log::info!(
                "nocturne: loop {}: draining {} call(s) and {} request(s) still arriving, up to {} ms",
                self.st.index,
                own_calls.count(),
                self.server.requests_in_progress(),
                timeout.as_millis()
            );
            now + timeout
        });
        // Requests still arriving are waited for too: once complete they
        // get a 503 that closes their connection, where cutting them off
        // would leave their clients not knowing what happened.
        let busy = !self.st.calls.is_empty() || self.server.requests_in_progress() > 0;
        if busy && now < deadline {
            return false;
        }
        if !self.st.calls.is_empty() {
            self.st
                .fail_all(503, "the engine is shutting down", &mut self.server);
        }
        self.server
            .refuse_in_progress(503, "the engine is shutting down");
        // Let written answers leave the socket buffers of slow readers.
        let flush_until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < flush_until {
            self.poll_net(Some(Duration::from_millis(5)));
        }
        true
    }

    fn poll_net(&mut self, timeout: Option<Duration>) -> usize {
        match self.server.poll(timeout, NET_BUDGET, &mut self.st) {
            Ok(n) => n,
            Err(e) => {
                log::info!(
                    "nocturne: core loop {}: network poll failed: {e}",
                    self.st.index
                );
                std::thread::sleep(Duration::from_millis(1));
                0
            }
        }
    }

    /// Rings, spawns, deaths, timers: everything after the network.
    fn turn_rest(&mut self) -> usize {
        let mut work = self.st.poll_workers(&mut self.server);
        if self.st.mail.is_some() {
            work += self.st.take_letters(&mut self.server);
        }
        work += self.st.take_spawned(&mut self.server);
        work += self.st.reap_exited(&mut self.server);
        if self.st.now.duration_since(self.st.last_timers) >= TIMER_PERIOD {
            self.st.last_timers = self.st.now;
            self.st.run_timers(&mut self.server);
        }
        work
    }
}

impl LoopState {
    /// Reads the clock: once per turn (and once after an epoll sleep).
    /// `Instant` is CLOCK_MONOTONIC on Linux, the clock of `now_ns` too, so
    /// one read gives both.
    pub(crate) fn tick(&mut self) {
        self.now = Instant::now();
        let (base, base_ns) = self.clock_base;
        let since = self.now.saturating_duration_since(base).as_nanos();
        self.now_ns = base_ns + u64::try_from(since).unwrap_or(u64::MAX - base_ns);
    }

    fn sleep_budget(&self) -> Duration {
        // Timers need the loop back when calls are in flight or queued.
        if self.calls.is_empty() {
            MAX_SLEEP
        } else {
            TIMER_PERIOD.max(Duration::from_millis(1))
        }
    }

    /// Publishes this loop's counters of function `f`.
    fn publish(&self, f: u32) {
        let fs = &self.functions[f as usize];
        self.ctx.status.publish(
            usize::from(self.index),
            f as usize,
            fs.workers as u32,
            fs.in_flight as u32,
            fs.pending.len() as u32,
        );
    }
}

/// Loop `index`'s share of `total` spread over `loops` (the first loops take
/// the remainder: [`Config::worker_loops`] relies on it).
fn share(total: usize, loops: usize, index: usize) -> usize {
    total / loops + usize::from(index < total % loops)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up() {
        for loops in 1..5 {
            for total in 0..10 {
                let sum: usize = (0..loops).map(|i| share(total, loops, i)).sum();
                assert_eq!(sum, total);
            }
        }
    }
}
