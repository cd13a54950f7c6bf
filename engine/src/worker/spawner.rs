//! The spawner threads: starting a worker takes milliseconds (fork, exec, the
//! handshake), so core loops never do it themselves. A loop sends a
//! [`SpawnRequest`]; a spawner thread runs [`spawn`](super::spawn), puts the
//! result on the loop's own reply queue and then writes the loop's eventfd,
//! so a loop asleep in epoll wakes up to collect it.
//!
//! They take requests from one queue. [`SPAWNER_THREADS`] start with the
//! engine, and one more is started whenever a request finds every thread
//! busy (up to [`MAX_SPAWNER_THREADS`]): a worker that never completes its
//! handshake holds one thread until its timeout (10 s), never the starts of
//! other functions behind it (a fixed four were all taken by one function
//! with `min_workers = 4` whose workers hang).
//!
//! A spawner thread is the *parent thread* of every worker it starts, and
//! `PR_SET_PDEATHSIG` fires when that thread exits: dropping the [`Spawner`]
//! (which ends the threads) kills the workers they started. Keep it alive for
//! the whole life of the engine, and drop it after the core loops. Dropping it
//! also cancels the starts in progress (within [`CANCEL_CHECK`]) and answers
//! queued requests with an error, so that an engine stops at once.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

#[cfg(doc)]
use super::CANCEL_CHECK;
use super::{spawn_cancellable, LogForwarder, SpawnError, Worker, WorkerSpec};

/// Spawner threads started with the engine.
pub const SPAWNER_THREADS: usize = 4;
/// Spawner threads at most (each one waits out at most one hanging start).
pub const MAX_SPAWNER_THREADS: usize = 64;

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
    queue: Mutex<mpsc::Receiver<SpawnRequest>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set on drop: starts in progress give up, queued ones are refused,
    /// no thread is added.
    stopping: AtomicBool,
    /// Threads waiting for a request (not starting a worker).
    waiting: AtomicUsize,
    log: LogForwarder,
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
    pub fn try_start() -> io::Result<Self> {
        Self::with_log(LogForwarder::stderr()?)
    }

    /// Starts the spawner threads; worker output goes to `log`.
    pub fn with_log(log: LogForwarder) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let shared = Arc::new(Shared {
            queue: Mutex::new(rx),
            threads: Mutex::new(Vec::with_capacity(SPAWNER_THREADS)),
            stopping: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
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

    /// Spawner threads started so far.
    pub fn threads(&self) -> usize {
        self.shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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

/// Starts one more spawner thread (none past [`MAX_SPAWNER_THREADS`], or
/// once the spawner stops).
fn add_thread(shared: &Arc<Shared>) -> io::Result<()> {
    let mut threads = shared.threads.lock().unwrap_or_else(|e| e.into_inner());
    // Relaxed: read under the lock `Drop` takes after setting it.
    if threads.len() >= MAX_SPAWNER_THREADS || shared.stopping.load(Ordering::Relaxed) {
        return Ok(());
    }
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("nocturne-spawner-{}", threads.len()))
        .spawn(move || serve_requests(&for_thread))?;
    threads.push(thread);
    Ok(())
}

/// One spawner thread: takes requests until the queue closes. A thread that
/// takes a request and leaves none waiting starts another first, so that a
/// start that hangs (for its whole handshake timeout) never holds up the
/// requests behind it.
fn serve_requests(shared: &Arc<Shared>) {
    loop {
        // Relaxed: a count, read only to decide whether to add a thread; a
        // race adds one too many or leaves the next request to the next
        // thread that frees, never loses it.
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        // The lock is held only while waiting for a request, never while a
        // worker starts: the other threads take the next ones meanwhile.
        let next = shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv();
        let others_waiting = shared.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        let Ok(req) = next else { return };
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
            spawn_cancellable(
                &req.spec,
                req.wake_efd.as_fd(),
                &shared.log,
                &shared.stopping,
            )
        };
        req.answer(result);
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Relaxed: the threads poll it; joining them below is the
        // synchronisation that matters. Set before the threads are taken,
        // so none is added after.
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Closing the queue ends the threads once it is empty.
        self.requests = None;
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }
}
