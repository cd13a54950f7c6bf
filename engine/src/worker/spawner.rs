//! The spawner threads: starting a worker takes milliseconds (fork, exec, the
//! handshake), so core loops never do it themselves. A loop sends a
//! [`SpawnRequest`]; a spawner thread runs [`spawn`](super::spawn), puts the
//! result on the loop's own reply queue and then writes the loop's eventfd,
//! so a loop asleep in epoll wakes up to collect it.
//!
//! There are [`SPAWNER_THREADS`] of them, taking requests from one queue: a
//! worker that never completes its handshake holds one thread until its
//! timeout (10 s), not every other function's starts and restarts behind it.
//!
//! A spawner thread is the *parent thread* of every worker it starts, and
//! `PR_SET_PDEATHSIG` fires when that thread exits: dropping the [`Spawner`]
//! (which ends the threads) kills the workers they started. Keep it alive for
//! the whole life of the engine, and drop it after the core loops. Dropping it
//! also cancels the starts in progress (within [`CANCEL_CHECK`]) and answers
//! queued requests with an error, so that an engine stops at once.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

#[cfg(doc)]
use super::CANCEL_CHECK;
use super::{spawn_cancellable, LogForwarder, SpawnError, Worker, WorkerSpec};

/// Worker starts that may be in progress at once.
pub const SPAWNER_THREADS: usize = 4;

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
    threads: Vec<JoinHandle<()>>,
    /// Set on drop: starts in progress give up, queued ones are refused.
    stopping: Arc<AtomicBool>,
}

impl Spawner {
    /// Starts the spawner thread; worker output goes to the engine's stderr.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as `std::thread::spawn`); see
    /// [`try_start`](Self::try_start).
    pub fn start() -> Self {
        Self::try_start().expect("cannot start the worker spawner thread")
    }

    /// Starts the spawner thread; worker output goes to the engine's stderr.
    pub fn try_start() -> io::Result<Self> {
        Self::with_log(LogForwarder::stderr()?)
    }

    /// Starts the spawner threads; worker output goes to `log`.
    pub fn with_log(log: LogForwarder) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let queue = Arc::new(Mutex::new(rx));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut spawner = Self {
            requests: Some(tx),
            threads: Vec::with_capacity(SPAWNER_THREADS),
            stopping: stopping.clone(),
        };
        for i in 0..SPAWNER_THREADS {
            let (queue, stopping, log) = (queue.clone(), stopping.clone(), log.clone());
            let thread = std::thread::Builder::new()
                .name(format!("nocturne-spawner-{i}"))
                .spawn(move || serve_requests(&queue, &stopping, &log))?;
            spawner.threads.push(thread);
        }
        Ok(spawner)
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

/// One spawner thread: takes requests until the queue closes.
fn serve_requests(
    queue: &Mutex<mpsc::Receiver<SpawnRequest>>,
    stopping: &AtomicBool,
    log: &LogForwarder,
) {
    loop {
        // The lock is held only while waiting for a request, never while a
        // worker starts: the other threads take the next ones meanwhile.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(req) = next else { return };
        // Relaxed: a flag; see `spawn_cancellable`.
        let result = if stopping.load(Ordering::Relaxed) {
            Err(SpawnError::Sys {
                function: req.spec.function.clone(),
                what: "spawner",
                source: io::Error::other("the engine is stopping"),
            })
        } else {
            spawn_cancellable(&req.spec, req.wake_efd.as_fd(), log, stopping)
        };
        req.answer(result);
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Relaxed: the threads poll it; joining them below is the
        // synchronisation that matters.
        self.stopping.store(true, Ordering::Relaxed);
        // Closing the queue ends the threads once it is empty.
        self.requests = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
