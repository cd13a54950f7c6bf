//! The forker thread: the one thread that forks the workers a [`Spawner`]
//! starts.
//!
//! `PR_SET_PDEATHSIG` follows the parent *thread*: a worker gets its SIGKILL
//! when the thread that forked it exits, even while the engine lives on. The
//! spawner threads come and go (the pool grows in a start storm and shrinks
//! when it is over), so none of them may be a worker's parent; this thread
//! lives as long as the [`Spawner`], and it ends (killing the workers) only
//! when the spawner is dropped.
//!
//! It only forks and execs: `Command::spawn` returns once the exec has
//! succeeded or failed, in about a millisecond; forks of one process are
//! serialized by the kernel anyway (a fork holds the parent's memory map
//! lock). The handshake, which may take seconds, stays on the spawner thread
//! that asked.
//!
//! [`Spawner`]: super::Spawner

use std::io;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

/// A command to fork and exec, and where its outcome goes.
type ForkRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Handle on the forker thread.
pub(crate) struct Forker {
    /// `None` once stopped.
    requests: Mutex<Option<mpsc::Sender<ForkRequest>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Forker {
    /// Starts the forker thread.
    pub(crate) fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<ForkRequest>();
        let thread = std::thread::Builder::new()
            .name("nocturne-forker".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The asking thread waits for the answer: it is there.
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(Self {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Forks and execs `command` on the forker thread, which becomes the
    /// child's parent thread.
    pub(crate) fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the worker forker thread is gone");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(gone)?;
        let (reply, outcome) = mpsc::sync_channel(1);
        requests.send((command, reply)).map_err(|_| gone())?;
        outcome.recv().map_err(|_| gone())?
    }

    /// Ends the thread once the forks asked for so far are done; the workers
    /// it forked get their SIGKILL. Call it when no thread forks any more.
    pub(crate) fn stop(&self) {
        // The thread ends when the last sender is gone: this one, and the
        // clones of `spawn`s under way (none, if no thread forks any more).
        drop(
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
