//! The spawner threads: starting a worker takes milliseconds (fork, exec, the
//! handshake), so core loops never do it themselves. A loop sends a
//! [`SpawnRequest`]; a spawner thread starts the worker, puts the result on
//! the loop's own reply queue and then writes the loop's eventfd, so a loop
//! asleep in epoll wakes up to collect it.
//!
//! They take requests from one queue. [`SPAWNER_THREADS`] start with the
//! engine, and one more is started whenever a request finds every thread
//! busy (up to [`MAX_SPAWNER_THREADS`]): a worker that never completes its
//! handshake holds one thread until its timeout (10 s), never the starts of
//! other functions behind it (a fixed four were all taken by one function
//! with `min_workers = 4` whose workers hang). After a start storm the
//! threads above [`SPAWNER_THREADS`] end once idle for [`SPAWNER_IDLE_RETIRE`]
//! (150 crash-looping functions left 64 threads for good); see
//! `serve_requests` for why a queued start is never left without a thread.
//!
//! The worker's fork and exec are done by one more thread, the *forker*
//! (`forker`): `PR_SET_PDEATHSIG` fires when the worker's parent thread
//! exits, so the threads that retire must not be anyone's parent. The forker
//! lives as long as the [`Spawner`]: dropping it (which ends every thread)
//! kills the workers started. Keep it alive for the whole life of the engine,
//! and drop it after the core loops. Dropping it also cancels the starts in
//! progress (within [`CANCEL_CHECK`]) and answers queued requests with an
//! error, so that an engine stops at once.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::forker::Forker;
#[cfg(doc)]
use super::CANCEL_CHECK;
use super::{spawn_forked_by, LogForwarder, SpawnError, Worker, WorkerSpec};

/// Spawner threads started with the engine, and kept for good.
pub const SPAWNER_THREADS: usize = 4;
/// Spawner threads at most (each one waits out at most one hanging start).
pub const MAX_SPAWNER_THREADS: usize = 64;
/// How long a spawner thread above [`SPAWNER_THREADS`] stays without a
/// request before it ends. Starts come in waves: a crash-looping function
/// retries every 10 s at most (its back-off's ceiling), and load that scales
/// a function up comes and goes in seconds. Three such periods keep a storm's
/// threads for the next wave rather than ending and starting them again; an
/// idle thread costs little meanwhile (a stack it has barely touched).
pub const SPAWNER_IDLE_RETIRE: Duration = Duration::from_secs(30);
/// Overrides [`SPAWNER_IDLE_RETIRE`] for [`Spawner::start`], in
/// milliseconds: for the test suite, which cannot wait 30 s for a thread to
/// end; not a setting.
pub const SPAWNER_IDLE_RETIRE_ENV: &str = "NOCTURNE_TEST_SPAWNER_IDLE_MS";

/// What comes back to the requesting loop: its tag and the outcome.
pub type SpawnReply = (u64, Result<Worker, SpawnError>);

/// A request to start one worker.
pub struct SpawnRequest {
    /// What to start.
    pub spec: WorkerSpec,
    /// The requesting loop's reply queue.
    pub reply: mpsc::Sender<SpawnReply>,
    /// The requesting loop's eventfd: the new channel's response-ring doorbell
    /// (the worker writes it when the loop sleeps), and written (+1) by the
    /// spawner after the reply is queued.
    pub wake_efd: Arc<OwnedFd>,
    /// Echoed in the reply, so the loop can match it to its bookkeeping.
    pub tag: u64,
}

impl SpawnRequest {
    /// Answers the request: queues `result` and wakes the loop.
    fn answer(self, result: Result<Worker, SpawnError>) {
        // A loop that went away drops the worker with the reply:
        // WorkerProcess's drop kills and reaps it.
        let _ = self.reply.send((self.tag, result));
        if let Err(e) = crate::sys::signal_eventfd(self.wake_efd.as_fd()) {
            ::log::info!("nocturne: spawner cannot wake the requesting loop: {e}");
        }
    }
}

/// Handle on the spawner threads. `Sync`: loops share it behind an `Arc`.
pub struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    shared: Arc<Shared>,
}

/// The queue and the state of the spawner threads.
struct Shared {
    /// Lock order: `queue`, then `pool`.
    queue: Mutex<mpsc::Receiver<SpawnRequest>>,
    pool: Mutex<Pool>,
    /// Set on drop: starts in progress give up, queued ones are refused,
    /// no thread is added.
    stopping: AtomicBool,
    /// Threads waiting for a request (not starting a worker): counted up
    /// before a thread takes the `queue` lock, down only under it (see
    /// `serve_requests`).
    waiting: AtomicUsize,
    idle_retire: Duration,
    forker: Forker,
    log: LogForwarder,
}

/// The spawner threads alive.
#[derive(Default)]
struct Pool {
    threads: Vec<JoinHandle<()>>,
    /// Threads started so far (they are named by it).
    started: usize,
}

impl Spawner {
    /// Starts the spawner threads; worker output goes to the engine's stderr.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as `std::thread::spawn`); see
    /// [`try_start`](Self::try_start).
    pub fn start() -> Self {
        Self::try_start().expect("cannot start the worker spawner thread")
    }

    /// Starts the spawner threads; worker output goes to the engine's stderr.
    /// Threads above [`SPAWNER_THREADS`] end after [`SPAWNER_IDLE_RETIRE`]
    /// idle, or [`SPAWNER_IDLE_RETIRE_ENV`] if set.
    pub fn try_start() -> io::Result<Self> {
        Self::with_idle_retire(LogForwarder::stderr()?, idle_retire_from_env())
    }

    /// Starts the spawner threads; worker output goes to `log`.
    pub fn with_log(log: LogForwarder) -> io::Result<Self> {
        Self::with_idle_retire(log, SPAWNER_IDLE_RETIRE)
    }

    /// Starts the spawner threads; worker output goes to `log`, threads above
    /// [`SPAWNER_THREADS`] end after `idle_retire` without a request.
    pub fn with_idle_retire(log: LogForwarder, idle_retire: Duration) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let shared = Arc::new(Shared {
            queue: Mutex::new(rx),
            pool: Mutex::new(Pool::default()),
            stopping: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            idle_retire,
            forker: Forker::start()?,
            log,
        });
        for _ in 0..SPAWNER_THREADS {
            add_thread(&shared)?;
        }
        Ok(Self {
            requests: Some(tx),
            shared,
        })
    }

    /// Spawner threads alive (the forker not counted).
    pub fn threads(&self) -> usize {
        self.shared.pool().threads.len()
    }

    /// Queues a request; never blocks. The answer always comes on
    /// `req.reply` — an error one if the spawner thread is gone.
    pub fn request(&self, req: SpawnRequest) {
        let Some(tx) = &self.requests else { return };
        if let Err(mpsc::SendError(req)) = tx.send(req) {
            let error = SpawnError::Sys {
                function: req.spec.function.clone(),
                what: "spawner",
                source: io::Error::other("the spawner thread is gone"),
            };
            req.answer(Err(error));
        }
    }
}

/// [`SPAWNER_IDLE_RETIRE_ENV`] if set to a number of milliseconds, else
/// [`SPAWNER_IDLE_RETIRE`].
fn idle_retire_from_env() -> Duration {
    let Ok(value) = std::env::var(SPAWNER_IDLE_RETIRE_ENV) else {
        return SPAWNER_IDLE_RETIRE;
    };
    match value.parse() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => {
            ::log::info!(
                "nocturne: {SPAWNER_IDLE_RETIRE_ENV}={value:?} is not a number of milliseconds; \
                 ignored"
            );
            SPAWNER_IDLE_RETIRE
        }
    }
}

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts one more spawner thread (none past [`MAX_SPAWNER_THREADS`], or
/// once the spawner stops).
fn add_thread(shared: &Arc<Shared>) -> io::Result<()> {
    let mut pool = shared.pool();
    // Relaxed: read under the lock `Drop` takes after setting it.
    if pool.threads.len() >= MAX_SPAWNER_THREADS || shared.stopping.load(Ordering::Relaxed) {
        return Ok(());
    }
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("nocturne-spawner-{}", pool.started))
        .spawn(move || serve_requests(&for_thread))?;
    pool.threads.push(thread);
    pool.started += 1;
    Ok(())
}

/// One spawner thread: takes requests until the queue closes, or until it
/// has been idle for `idle_retire` and may retire (see [`next_request`]).
/// A thread that takes a request and leaves none waiting starts another
/// first, so that a start that hangs (for its whole handshake timeout) never
/// holds up the requests behind it.
fn serve_requests(shared: &Arc<Shared>) {
    let mut idle_since = Instant::now();
    loop {
        let Some((req, others_waiting)) = next_request(shared, idle_since) else {
            return;
        };
        if others_waiting == 0 {
            if let Err(e) = add_thread(shared) {
                ::log::info!("nocturne: cannot start another spawner thread: {e}");
            }
        }
        // Relaxed: a flag; see `spawn_cancellable`.
        let result = if shared.stopping.load(Ordering::Relaxed) {
            Err(SpawnError::Sys {
                function: req.spec.function.clone(),
                what: "spawner",
                source: io::Error::other("the engine is stopping"),
            })
        } else {
            spawn_forked_by(
                &req.spec,
                req.wake_efd.as_fd(),
                &shared.log,
                &shared.stopping,
                &|command| shared.forker.spawn(command),
            )
        };
        req.answer(result);
        idle_since = Instant::now();
    }
}

/// Waits for the next request: it, and how many other threads still wait;
/// `None` when this thread ends (the queue closed, or it retires).
///
/// A thread retires when it has been idle for `idle_retire`, the pool is
/// above [`SPAWNER_THREADS`], *and another thread waits*. The last rule is
/// what keeps a start from being queued with no thread to take it (the race
/// between a thread deciding to end and a request arriving): every decision
/// to retire is taken under the `queue` lock, and so is every count down of
/// `waiting` (a thread that takes a request, or retires), so while the
/// deciding thread holds the lock no waiting thread can stop waiting. If it
/// sees another, that one still waits when it leaves, and will take the lock
/// and the request; if it sees none (every other thread starts a worker), it
/// stays, as a request arriving right after would need it. A thread that
/// stops waiting because it took a request, and sees no other waiting, adds
/// one (up to [`MAX_SPAWNER_THREADS`]): so some thread waits whenever the
/// pool is below its maximum, as before threads retired.
fn next_request(shared: &Shared, mut idle_since: Instant) -> Option<(SpawnRequest, usize)> {
    // Relaxed: a count; the increment may be seen late by a thread deciding
    // to retire, which then only stays. The decrements below, under the
    // queue lock, pair with each other through that lock.
    shared.waiting.fetch_add(1, Ordering::Relaxed);
    // The lock is held only while waiting for a request, never while a
    // worker starts: the other threads take the next ones meanwhile.
    let queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    let next = loop {
        let idle_left = shared.idle_retire.saturating_sub(idle_since.elapsed());
        let received = if idle_left.is_zero() {
            queue.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            queue.recv_timeout(idle_left)
        };
        match received {
            Ok(req) => break Some(req),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) if idle_left.is_zero() => {
                if retire(shared) {
                    // `waiting` was counted down by `retire`.
                    return None;
                }
                // Needed (the base threads, or the last one waiting): wait
                // another period before asking again.
                idle_since = Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    };
    // Relaxed: under the queue lock (see above).
    let others_waiting = shared.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
    drop(queue);
    next.map(|req| (req, others_waiting))
}

/// Ends this thread's membership of the pool if the pool may lose it: above
/// [`SPAWNER_THREADS`], with another thread waiting. Called under the queue
/// lock (see [`next_request`]); counts `waiting` down if so.
fn retire(shared: &Shared) -> bool {
    let mut pool = shared.pool();
    // Relaxed: under the queue lock, as every decrement (see `next_request`).
    if pool.threads.len() <= SPAWNER_THREADS || shared.waiting.load(Ordering::Relaxed) < 2 {
        return false;
    }
    shared.waiting.fetch_sub(1, Ordering::Relaxed);
    let me = std::thread::current().id();
    // Our handle is dropped (detached): the thread ends right after, and no
    // worker dies with it (the forker is their parent). Not found when the
    // spawner is being dropped: `Drop` took the handles, and joins ours.
    pool.threads.retain(|t| t.thread().id() != me);
    true
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Relaxed: the threads poll it; joining them below is the
        // synchronisation that matters. Set before the threads are taken,
        // so none is added after.
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Closing the queue ends the threads once it is empty.
        self.requests = None;
        let threads = std::mem::take(&mut self.shared.pool().threads);
        for thread in threads {
            let _ = thread.join();
        }
        // No thread forks any more (a retired one never does again): the
        // forker ends, and the workers with it.
        self.shared.forker.stop();
    }
}
