//! The spawner thread: starting a worker takes milliseconds (fork, exec, the
//! handshake), so core loops never do it themselves. A loop sends a
//! [`SpawnRequest`]; the spawner runs [`spawn`](super::spawn), puts the result on
//! the loop's own reply queue and then writes the loop's eventfd, so a loop
//! asleep in epoll wakes up to collect it.
//!
//! The spawner thread is the *parent thread* of every worker it starts, and
//! `PR_SET_PDEATHSIG` fires when that thread exits: dropping the [`Spawner`]
//! (which ends the thread) kills the workers it started. Keep it alive for the
//! whole life of the engine, and drop it after the core loops.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::{spawn_with_log, LogForwarder, SpawnError, Worker, WorkerSpec};

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

/// Handle on the spawner thread. `Sync`: loops share it behind an `Arc`.
pub struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
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

    /// Starts the spawner thread; worker output goes to `log`.
    pub fn with_log(log: LogForwarder) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("nocturne-spawner".into())
            .spawn(move || {
                for req in rx {
                    let result = spawn_with_log(&req.spec, req.wake_efd.as_fd(), &log);
                    req.answer(result);
                }
            })?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
        })
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

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the queued requests.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
