//! Worker processes: spawn, handshake, monitor, reap, and their logs.
//!
//! ```text
//!  core loop ──SpawnRequest──▶ Spawner thread ── spawn(): socketpair, fork/exec,
//!      ▲                            │             hello + memfd + eventfd, ready
//!      └──── reply queue + eventfd ◀┘
//!  core loop: Worker { end: EngineEnd (rings), process: WorkerProcess (pidfd) }
//!      pidfd in the loop's epoll → readable = the worker died → try_reap()
//! ```
//!
//! The worker contract (docs/design.md §4): the engine starts `argv` (no shell) with
//! one end of a `SOCK_SEQPACKET` socketpair in `NOCTURNE_CONTROL_FD` and the
//! function name in `NOCTURNE_FUNCTION`; the handshake and the channel's memfd
//! travel over it (protocol: `nocturne_functions::control`), and the worker
//! exits when it reads EOF there. Its stdout/stderr lines go to the engine log
//! tagged with function and pid ([`log`]).
//!
//! A worker is watched through a pidfd: it never names another process (no pid
//! reuse race), it polls readable when the worker dies, and `waitid(P_PIDFD)`
//! reaps exactly that child. No zombies: a failed spawn kills and reaps before
//! it returns, and dropping a [`WorkerProcess`] kills it and hands it to a
//! reaper thread if it has not exited yet. Children also get
//! `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the engine even if it is
//! killed before it can close their sockets.
//!
//! * [`spawn`] — blocking start of one worker; [`Spawner`] runs it off the loops
//!   (its threads come and go; one `forker` thread forks every worker, as
//!   their parent thread must outlive them).
//! * [`Worker`] / [`WorkerProcess`] — the channel end and the process handle.
//! * [`Backoff`] — restart delays for a crashing function.
//! * [`log`] — the stdout/stderr forwarder and its sink.

mod backoff;
mod forker;
pub mod log;
mod spawner;
mod sys;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nocturne_functions::control::{
    self, ControlMessage, Hello, Ready, RecvControlError, SendControlError,
};
use nocturne_ipc::channel::{ChannelConfig, ChannelError, EngineEnd, WaitPolicy};
use nocturne_ipc::wake_board::WakeSeat;

pub use crate::sys::eventfd;
pub use backoff::Backoff;
pub use log::{LogForwarder, LogSink};
pub use spawner::{
    SpawnReply, SpawnRequest, Spawner, MAX_SPAWNER_THREADS, SPAWNER_IDLE_RETIRE,
    SPAWNER_IDLE_RETIRE_ENV, SPAWNER_THREADS,
};

/// Everything needed to start one worker.
#[derive(Clone)]
pub struct WorkerSpec {
    /// The function it serves (`NOCTURNE_FUNCTION`).
    pub function: String,
    /// Its id in ring headers.
    pub function_id: u32,
    /// `[program, args…]`, executed without a shell. A built-in function is
    /// `[current_exe, "worker", name]`.
    pub argv: Vec<OsString>,
    /// Extra environment, on top of the engine's own.
    pub env: Vec<(OsString, OsString)>,
    /// CPUs the worker may run on (`sched_setaffinity` before exec); `None`
    /// inherits the spawning thread's affinity.
    pub cores: Option<Vec<usize>>,
    /// Layout of its channel.
    pub channel: ChannelConfig,
    /// Name → id of every function, sent in the hello.
    pub functions: Vec<(String, u32)>,
    /// How it waits on its request ring.
    pub wait: WaitPolicy,
    /// Its seat on its core loop's wake board (yielding workers): the slot
    /// goes in the hello and the board's memfd with it.
    pub wake_seat: Option<WakeSeat>,
    /// How long exec + handshake may take before the worker is killed.
    pub handshake_timeout: Duration,
    /// Which worker of the engine this is (sent in the hello, echoed back).
    pub worker_index: u32,
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It is gone but its status was collected by someone else (e.g. the
    /// engine runs with `SIGCHLD` ignored, which makes the kernel reap).
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Exited(code) => write!(f, "exited with code {code}"),
            Self::Signaled(sig) => match signal_name(sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
            Self::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

/// How a worker that failed its handshake ended, as the end of a sentence.
fn ended(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Signaled(_) => format!("it was {status}"),
        _ => format!("it {status}"),
    }
}

/// `text` with control characters but tab escaped (`\u{1b}`): what a worker
/// says must not rewrite the operator's terminal.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Why the handshake with a started worker failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// It closed the control socket (usually: it exited) before answering.
    #[error("it closed the control socket before answering")]
    Closed,
    /// It answered `Refused` (the reason as it gave it, control characters
    /// escaped: it goes to the log and to clients).
    #[error("it refused: {}", escape_controls(.0))]
    Refused(String),
    /// The control socket failed.
    #[error("control socket: {0}")]
    Io(#[source] io::Error),
}

/// Why a worker could not be started. A worker that was started has been
/// killed and reaped by the time this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spec's argv is empty.
    #[error("worker {function:?}: empty command")]
    EmptyArgv {
        /// The function.
        function: String,
    },
    /// The spec pins the worker to no CPU, or to one beyond what a CPU set holds.
    #[error("worker {function:?}: invalid core list {cores:?}")]
    BadCores {
        /// The function.
        function: String,
        /// The offending list.
        cores: Vec<usize>,
    },
    /// The channel could not be created.
    #[error("worker {function:?}: cannot create its channel: {source}")]
    Channel {
        /// The function.
        function: String,
        /// Why.
        #[source]
        source: ChannelError,
    },
    /// A system resource (socketpair, pidfd, log pipe) could not be set up.
    #[error("worker {function:?}: {what}: {source}")]
    Sys {
        /// The function.
        function: String,
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program could not be started: not found, not executable, or the
    /// child's setup before exec failed (e.g. `cores` names an offline CPU).
    #[error("cannot start {} for worker {function:?}: {source}", program(argv))]
    Exec {
        /// The function.
        function: String,
        /// The command.
        argv: Vec<OsString>,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The worker started but the handshake failed.
    #[error(
        "worker {function:?} (pid {pid}) failed the handshake: {cause}; {}",
        ended(status)
    )]
    Handshake {
        /// The function.
        function: String,
        /// Its pid.
        pid: u32,
        /// What went wrong.
        cause: HandshakeFailure,
        /// How it ended (after being killed, if it had not exited).
        status: ExitStatus,
    },
    /// The worker did not answer within the handshake timeout and was killed.
    #[error(
        "worker {function:?} (pid {pid}) did not complete the handshake within {timeout:?}; killed"
    )]
    Timeout {
        /// The function.
        function: String,
        /// Its pid.
        pid: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The engine stopped while the worker was starting; it was killed.
    #[error("worker {function:?} (pid {pid}) was still starting when the engine stopped; killed")]
    Cancelled {
        /// The function.
        function: String,
        /// Its pid.
        pid: u32,
    },
    /// The worker answered something the protocol does not allow and was killed.
    #[error("worker {function:?} (pid {pid}) broke the control protocol: {detail}; killed")]
    Protocol {
        /// The function.
        function: String,
        /// Its pid.
        pid: u32,
        /// What it did.
        detail: String,
    },
}

fn program(argv: &[OsString]) -> String {
    argv.first()
        .map(|p| format!("{:?}", p.to_string_lossy()))
        .unwrap_or_default()
}

/// A started worker: its end of the channel and its process. Take the end out
/// ([`take_end`](Self::take_end)) to split it into the loop's sender and
/// receiver, and keep the `Worker` for the process.
pub struct Worker {
    /// Its pid (for logs; use [`WorkerProcess`] to act on it).
    pub pid: u32,
    /// The function it serves.
    pub function_id: u32,
    /// Which worker of the engine this is.
    pub worker_index: u32,
    /// The engine's end of its channel, until taken.
    pub end: Option<EngineEnd>,
    /// The process: pidfd, control socket, exit status.
    pub process: WorkerProcess,
}

impl Worker {
    /// Takes the channel end out (once).
    pub fn take_end(&mut self) -> Option<EngineEnd> {
        self.end.take()
    }

    /// See [`WorkerProcess::pidfd`].
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.process.pidfd()
    }

    /// See [`WorkerProcess::try_reap`].
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        self.process.try_reap()
    }

    /// See [`WorkerProcess::kill`].
    pub fn kill(&self) {
        self.process.kill()
    }

    /// See [`WorkerProcess::close_control`].
    pub fn close_control(&mut self) {
        self.process.close_control()
    }
}

/// A worker process. Dropping it kills it (`SIGKILL`) and reaps it (on a
/// background reaper thread if it is not dead yet), so it never leaves a
/// zombie; for a clean stop use [`close_control`](Self::close_control) and
/// reap when the pidfd turns readable, or [`shutdown`](Self::shutdown).
pub struct WorkerProcess {
    function: String,
    pid: u32,
    pidfd: OwnedFd,
    control: Option<UnixStream>,
    exit: Option<ExitStatus>,
    started: Instant,
}

impl fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("function", &self.function)
            .field("pid", &self.pid)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl WorkerProcess {
    /// The function it serves.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it was started (for [`Backoff::on_failure`]'s uptime).
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// A pidfd: register it (readable) in an epoll to learn of the worker's
    /// death at once, then call [`try_reap`](Self::try_reap).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Reaps the worker if it has exited (never blocks); the status is kept, so
    /// later calls return it again.
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = match sys::waitid_pidfd(self.pidfd.as_fd(), false) {
                Ok(status) => status,
                // ECHILD: reaped by someone else (SIGCHLD ignored); it is gone.
                Err(_) => Some(ExitStatus::Unknown),
            };
        }
        self.exit
    }

    /// The exit status, if it was reaped already.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Sends `SIGKILL` (through the pidfd: never another process). A no-op
    /// once it has exited.
    pub fn kill(&self) {
        if self.exit.is_none() {
            if let Err(e) = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL) {
                ::log::info!(
                    "nocturne: cannot kill worker {} pid={}: {e}",
                    self.function,
                    self.pid
                );
            }
        }
    }

    /// Closes the control socket: the worker reads EOF and exits on its own.
    /// Its pidfd turns readable when it is gone.
    pub fn close_control(&mut self) {
        self.control = None;
    }

    /// Stops the worker: closes its control socket, waits up to `grace` for it
    /// to exit, kills it if it has not, and reaps it. Blocks.
    pub fn shutdown(mut self, grace: Duration) -> ExitStatus {
        self.shutdown_ref(grace)
    }

    /// [`shutdown`](Self::shutdown) of a worker that is not given away.
    fn shutdown_ref(&mut self, grace: Duration) -> ExitStatus {
        self.close_control();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.try_reap() {
                return status;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || sys::poll_readable(self.pidfd.as_fd(), Some(left)).is_err() {
                return self.kill_and_reap();
            }
        }
    }

    /// Kills and reaps, blocking until it is gone.
    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        self.kill();
        let status = match sys::waitid_pidfd(self.pidfd.as_fd(), true) {
            Ok(Some(status)) => status,
            Ok(None) | Err(_) => ExitStatus::Unknown,
        };
        self.exit = Some(status);
        status
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        self.kill();
        if self.try_reap().is_some() {
            return;
        }
        // Dying takes a moment after SIGKILL; a core loop must not wait for it.
        match self.pidfd.try_clone() {
            Ok(pidfd) => reap_in_background(pidfd),
            Err(_) => {
                let _ = sys::waitid_pidfd(self.pidfd.as_fd(), true);
            }
        }
    }
}

/// Hands a killed child's pidfd to the reaper thread, which blocks in
/// `waitid` for it. Reaps inline if the thread cannot be started.
fn reap_in_background(pidfd: OwnedFd) {
    static REAPER: OnceLock<Option<mpsc::Sender<OwnedFd>>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        std::thread::Builder::new()
            .name("nocturne-reaper".into())
            .spawn(move || {
                for pidfd in rx {
                    let _ = sys::waitid_pidfd(pidfd.as_fd(), true);
                }
            })
            .ok()
            .map(|_| tx)
    });
    let pidfd = match reaper {
        Some(tx) => match tx.send(pidfd) {
            Ok(()) => return,
            Err(mpsc::SendError(pidfd)) => pidfd,
        },
        None => pidfd,
    };
    let _ = sys::waitid_pidfd(pidfd.as_fd(), true);
}

/// Starts one worker and completes its handshake. Blocking (milliseconds):
/// call it from the [`Spawner`] thread, not from a core loop.
///
/// 1. creates the channel (`EngineEnd::create_with_eventfd` with `notify_efd`,
///    which the worker's response sender writes to wake the engine);
/// 2. forks and execs `spec.argv` with the control socket in
///    `NOCTURNE_CONTROL_FD`, `PR_SET_PDEATHSIG(SIGKILL)` (parent re-checked to
///    close the race) and the affinity, stdout/stderr piped to the forwarder;
/// 3. sends the hello with the memfd and `notify_efd` (`SCM_RIGHTS`) and waits
///    for ready within `spec.handshake_timeout`.
///
/// On any failure after the fork, the child is killed and reaped before this
/// returns. Its stdout/stderr go to the engine's stderr.
pub fn spawn(spec: &WorkerSpec, notify_efd: BorrowedFd<'_>) -> Result<Worker, SpawnError> {
    let log = LogForwarder::stderr().map_err(|source| SpawnError::Sys {
        function: spec.function.clone(),
        what: "cannot start the log forwarder",
        source,
    })?;
    spawn_with_log(spec, notify_efd, &log)
}

/// [`spawn`], with the worker's stdout/stderr going to `log`.
pub fn spawn_with_log(
    spec: &WorkerSpec,
    notify_efd: BorrowedFd<'_>,
    log: &LogForwarder,
) -> Result<Worker, SpawnError> {
    spawn_cancellable(spec, notify_efd, log, &AtomicBool::new(false))
}

/// [`spawn_with_log`], giving up (and killing the worker) within
/// [`CANCEL_CHECK`] once `cancel` is set: an engine that stops does not wait
/// out a worker's handshake timeout.
pub fn spawn_cancellable(
    spec: &WorkerSpec,
    notify_efd: BorrowedFd<'_>,
    log: &LogForwarder,
    cancel: &AtomicBool,
) -> Result<Worker, SpawnError> {
    spawn_forked_by(spec, notify_efd, log, cancel, &|mut command| {
        command.spawn()
    })
}

/// [`spawn_cancellable`], with the fork and exec of the worker's command done
/// by `fork` (on another thread: the worker's parent thread, whose exit kills
/// it, see `forker`).
pub(crate) fn spawn_forked_by(
    spec: &WorkerSpec,
    notify_efd: BorrowedFd<'_>,
    log: &LogForwarder,
    cancel: &AtomicBool,
    fork: &dyn Fn(Command) -> io::Result<Child>,
) -> Result<Worker, SpawnError> {
    let function = &spec.function;
    let sys_err = |what| {
        move |source| SpawnError::Sys {
            function: function.clone(),
            what,
            source,
        }
    };
    let Some(program) = spec.argv.first() else {
        return Err(SpawnError::EmptyArgv {
            function: function.clone(),
        });
    };
    let cpus = match &spec.cores {
        None => None,
        Some(cores) => match (cores.is_empty(), sys::CpuSet::new(cores)) {
            (false, Some(set)) => Some(set),
            _ => {
                return Err(SpawnError::BadCores {
                    function: function.clone(),
                    cores: cores.clone(),
                })
            }
        },
    };

    let region_name = region_name(function, spec.worker_index);
    let end = EngineEnd::create_with_eventfd(&spec.channel, &region_name, notify_efd).map_err(
        |source| SpawnError::Channel {
            function: function.clone(),
            source,
        },
    )?;

    let (engine_sock, child_sock) = control::control_socketpair().map_err(sys_err("socketpair"))?;
    let child_fd =
        sys::above_stdio(OwnedFd::from(child_sock)).map_err(sys_err("dup control socket"))?;

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(control::CONTROL_FD_ENV, child_fd.as_raw_fd().to_string())
        .env(control::FUNCTION_ENV, function)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::prepare_child(
        &mut cmd,
        child_fd.as_raw_fd(),
        std::process::id() as libc::pid_t,
        cpus,
    );
    let mut child = fork(cmd).map_err(|source| SpawnError::Exec {
        function: function.clone(),
        argv: spec.argv.clone(),
        source,
    })?;
    // The child has its copy. Ours would keep the worker's end open, and the
    // engine would wait out the timeout instead of seeing EOF when the worker
    // dies during the handshake.
    drop(child_fd);

    let pid = child.id();
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(sys_err("pidfd_open")(e));
        }
    };
    // From here on, dropping `process` (on any error path) kills and reaps.
    let mut process = WorkerProcess {
        function: function.clone(),
        pid,
        pidfd,
        control: None,
        exit: None,
        started: Instant::now(),
    };
    if let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) {
        if let Err(e) = log.forward(function, pid, stdout, stderr) {
            process.kill_and_reap();
            return Err(sys_err("cannot forward its output")(e));
        }
    }
    drop(child); // a std Child neither kills nor waits on drop; the pidfd rules.

    match handshake(&engine_sock, spec, &end, notify_efd, pid, cancel) {
        Ok(()) => {
            process.control = Some(engine_sock);
            Ok(Worker {
                pid,
                function_id: spec.function_id,
                worker_index: spec.worker_index,
                end: Some(end),
                process,
            })
        }
        Err(failure) => {
            drop(engine_sock);
            // A worker that closed the socket or refused is on its way out:
            // give it a moment, so that its own exit status is what the log
            // shows, not the engine's SIGKILL.
            let status = match failure {
                Failed::Handshake(_) => process.shutdown_ref(HANDSHAKE_EXIT_GRACE),
                _ => process.kill_and_reap(),
            };
            let function = function.clone();
            Err(match failure {
                Failed::Timeout => SpawnError::Timeout {
                    function,
                    pid,
                    timeout: spec.handshake_timeout,
                },
                Failed::Cancelled => SpawnError::Cancelled { function, pid },
                Failed::Protocol(detail) => SpawnError::Protocol {
                    function,
                    pid,
                    detail,
                },
                Failed::Handshake(cause) => SpawnError::Handshake {
                    function,
                    pid,
                    cause,
                    status,
                },
            })
        }
    }
}

/// The memfd's name (shown in `/proc/<pid>/fd`; the kernel takes at most 249
/// bytes): the function name cut at a character boundary, and the index.
fn region_name(function: &str, worker_index: u32) -> String {
    let mut end = function.len().min(64);
    while !function.is_char_boundary(end) {
        end -= 1;
    }
    format!("nocturne-{}-{worker_index}", &function[..end])
}

enum Failed {
    Timeout,
    Cancelled,
    Protocol(String),
    Handshake(HandshakeFailure),
}

fn handshake(
    sock: &UnixStream,
    spec: &WorkerSpec,
    end: &EngineEnd,
    notify_efd: BorrowedFd<'_>,
    pid: u32,
    cancel: &AtomicBool,
) -> Result<(), Failed> {
    let hello = Hello {
        function: spec.function.clone(),
        function_id: spec.function_id,
        worker_index: spec.worker_index,
        wait: spec.wait,
        channel: spec.channel,
        wake_slot: spec.wake_seat.as_ref().map(WakeSeat::slot),
        functions: spec.functions.clone(),
    };
    // The board's memfd rides third, when the worker has a seat.
    let mut fds = vec![end.region_fd(), notify_efd];
    fds.extend(spec.wake_seat.as_ref().map(|s| s.shared_board().fd()));
    match control::send(sock, &ControlMessage::Hello(hello), &fds) {
        Ok(()) => {}
        // Bad names in the spec: the engine's fault, but the worker must go.
        Err(SendControlError::Emit(e)) => {
            return Err(Failed::Protocol(format!("cannot encode the hello: {e}")))
        }
        // EPIPE/ECONNRESET: it is already gone.
        Err(SendControlError::Io(e))
            if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) =>
        {
            return Err(Failed::Handshake(HandshakeFailure::Closed))
        }
        Err(SendControlError::Io(e)) => return Err(Failed::Handshake(HandshakeFailure::Io(e))),
    }
    let deadline = Instant::now() + spec.handshake_timeout;
    let left = wait_readable(sock, deadline, cancel)?;
    // Something arrived (or EOF): the answer, read whole within what is left.
    sock.set_read_timeout(Some(left))
        .map_err(|e| Failed::Handshake(HandshakeFailure::Io(e)))?;
    let answer = control::recv(sock, 0);
    sock.set_read_timeout(None)
        .map_err(|e| Failed::Handshake(HandshakeFailure::Io(e)))?;
    match answer {
        Ok(None) => Err(Failed::Handshake(HandshakeFailure::Closed)),
        Ok(Some((ControlMessage::Ready(ready), _))) => check_ready(&ready, spec, pid),
        Ok(Some((ControlMessage::Refused { reason }, _))) => {
            Err(Failed::Handshake(HandshakeFailure::Refused(reason)))
        }
        Ok(Some((other, _))) => Err(Failed::Protocol(format!(
            "sent {:?} instead of ready",
            other.kind()
        ))),
        Err(e) if e.is_timeout() => Err(Failed::Timeout),
        Err(RecvControlError::Parse(e)) => Err(Failed::Protocol(e.to_string())),
        // fds attached to its answer (fdpass refuses them: InvalidData).
        Err(RecvControlError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Failed::Protocol(e.to_string()))
        }
        Err(RecvControlError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
            Err(Failed::Handshake(HandshakeFailure::Closed))
        }
        Err(RecvControlError::Io(e)) => Err(Failed::Handshake(HandshakeFailure::Io(e))),
    }
}

/// How long a worker whose handshake failed (it closed the socket, or
/// refused) gets to exit on its own before it is killed.
const HANDSHAKE_EXIT_GRACE: Duration = Duration::from_millis(200);

/// How often a starting worker's handshake looks at its cancel flag.
pub const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Waits until `sock` has bytes (or EOF), in slices of
/// [`CANCEL_CHECK`] so that `cancel` is seen; returns the time left.
fn wait_readable(
    sock: &UnixStream,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<Duration, Failed> {
    let io = |e| Failed::Handshake(HandshakeFailure::Io(e));
    loop {
        // Relaxed: a flag; nothing else is read on its word.
        if cancel.load(Ordering::Relaxed) {
            return Err(Failed::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failed::Timeout);
        }
        // Readable also means EOF or a reset: the read that follows says which.
        if sys::poll_readable(sock.as_fd(), Some(left.min(CANCEL_CHECK))).map_err(io)? {
            return Ok(left);
        }
    }
}

fn check_ready(ready: &Ready, spec: &WorkerSpec, pid: u32) -> Result<(), Failed> {
    if ready.pid != pid {
        // The engine watches the pid it started; a command that forks the real
        // worker instead of exec'ing it would leave that worker unwatched.
        return Err(Failed::Protocol(format!(
            "ready from pid {} but the engine started pid {pid} (the command must exec the worker, not fork it)",
            ready.pid
        )));
    }
    if ready.function_id != spec.function_id || ready.worker_index != spec.worker_index {
        return Err(Failed::Protocol(format!(
            "ready for function id {} worker {} but the hello said {} / {}",
            ready.function_id, ready.worker_index, spec.function_id, spec.worker_index
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_bounded_and_valid_utf8() {
        assert_eq!(region_name("foo", 3), "nocturne-foo-3");
        let long = "é".repeat(200);
        let name = region_name(&long, 7);
        assert!(name.len() <= 9 + 64 + 2, "{name}");
        assert!(name.ends_with("-7"));
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(ExitStatus::Exited(3).to_string(), "exited with code 3");
        assert_eq!(
            ExitStatus::Signaled(libc::SIGSEGV).to_string(),
            "killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(ExitStatus::Signaled(64).to_string(), "killed by signal 64");
        assert_eq!(ExitStatus::Unknown.to_string(), "exited (status unknown)");
    }

    #[test]
    fn exec_error_shows_the_program() {
        let err = SpawnError::Exec {
            function: "f".into(),
            argv: vec!["/bin/nope".into(), "arg".into()],
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("cannot start \"/bin/nope\" for worker \"f\""),
            "{text}"
        );
    }
}
