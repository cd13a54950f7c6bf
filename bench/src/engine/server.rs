//! The servers a run measures, as separate processes: `nocturne serve`
//! (one per poll mode) and the floor server, each behind a
//! [`ServerProcess`] guard.
//!
//! A server is started the way a user would start it, with its log (stdout
//! and stderr) read by two threads into a bounded [`LogTail`]. It is ready
//! once it logs `nocturne: listening on http://ADDR` and, for the engine,
//! `GET /healthz` answers 200; if it exits first or takes too long, the
//! error carries its log. A server started inside a network namespace
//! (`ip netns exec`, see [`super::netns`]) is also reached from inside it:
//! [`ServerProcess::connect`] creates the client socket there. Servers that share the io core take turns:
//! [`ServerProcess::pause`] freezes one (`SIGSTOP`, waiting until every
//! thread is stopped) and [`ServerProcess::resume`] thaws it, so a spinning
//! server never steals the core from the one being measured.
//!
//! Every exit path ends the process: the guard's `Drop` (SIGCONT, SIGTERM,
//! a bounded wait, then SIGKILL), and `PR_SET_PDEATHSIG` for the case where
//! the benchmark itself is killed. Config files written for an engine are
//! removed with its guard.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{build_request, ClientError, HttpClient};
use super::netns;
use super::procfs::{self, ChildProcess};
use super::sys::{self, Signal};

/// Lines of a server's log kept for error messages.
const LOG_LINES: usize = 200;
/// What a server logs once it accepts connections.
const LISTENING: &str = "listening on http://";
/// How long [`ServerProcess::shutdown`] waits after SIGTERM before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The last lines a server logged.
#[derive(Debug, Default)]
pub struct LogTail {
    lines: Mutex<VecDeque<String>>,
}

impl LogTail {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, indented for an error message (or a note that the
    /// server logged nothing).
    pub fn render(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            return "    (nothing logged)".into();
        }
        lines
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
            .trim_end()
            .to_owned()
    }
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be created (or its config written).
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// Which server.
        name: String,
        /// The cause.
        source: io::Error,
    },
    /// It exited before it was ready.
    #[error("{name} exited ({status}) before it was ready; its log:\n{log}")]
    Exited {
        /// Which server.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// It was not ready in time.
    #[error("{name} was not ready within {timeout:?} ({why}); its log:\n{log}")]
    NotReady {
        /// Which server.
        name: String,
        /// The limit.
        timeout: Duration,
        /// What it was waiting for.
        why: String,
        /// The end of its log.
        log: String,
    },
    /// A signal caught by `sys::catch_interrupts` (Ctrl-C) came while it
    /// was starting; it was stopped.
    #[error("interrupted while starting {name}")]
    Interrupted {
        /// Which server.
        name: String,
    },
}

/// The address in a `… listening on http://ADDR …` log line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let addr = rest.split(|c: char| c.is_whitespace() || c == '/').next()?;
    addr.parse().ok()
}

/// A running server process; dropping it ends the process.
pub struct ServerProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
    listening_line: String,
    log: Arc<LogTail>,
    temp_files: Vec<PathBuf>,
    exited: Option<ExitStatus>,
    netns: Option<String>,
}

/// How to start a server and tell that it is ready.
pub struct Launch {
    /// Its name in messages (`engine (poll spin)`).
    pub name: String,
    /// The command (stdio is set by [`ServerProcess::start`]).
    pub command: Command,
    /// Files to remove with the guard (a config written for it).
    pub temp_files: Vec<PathBuf>,
    /// A path that must answer `GET` with 200 before the server counts as
    /// ready (`/healthz`), if any.
    pub health_path: Option<&'static str>,
    /// How long it may take.
    pub timeout: Duration,
    /// The network namespace it serves in (its clients connect from
    /// there), or `None` for this process's own.
    pub netns: Option<String>,
}

impl ServerProcess {
    /// Starts `launch.command` and waits until it is ready.
    pub fn start(launch: Launch) -> Result<Self, StartError> {
        let Launch {
            name,
            mut command,
            temp_files,
            health_path,
            timeout,
            netns,
        } = launch;
        let deadline = Instant::now() + timeout;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::kill_child_with_parent(&mut command);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(source) => {
                remove_files(&temp_files);
                return Err(StartError::Spawn { name, source });
            }
        };
        let log = Arc::new(LogTail::default());
        let (listening_tx, listening_rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            read_log(out, &log, listening_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            read_log(err, &log, listening_tx);
        }
        // From here on the guard owns the child: every error path below
        // drops it, which ends the process.
        let mut server = Self {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listening_line: String::new(),
            log,
            temp_files,
            exited: None,
            netns,
        };
        let (addr, line) = loop {
            match listening_rx.recv_timeout(Duration::from_millis(20)) {
                Ok(found) => break found,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both log pipes closed without the line: it is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            server.check_alive_for_start()?;
            server.check_interrupted_start()?;
            if Instant::now() >= deadline {
                return Err(server.not_ready(timeout, "no `listening on` line"));
            }
        };
        server.addr = addr;
        server.listening_line = line;
        if let Some(path) = health_path {
            server.wait_healthy(path, deadline, timeout)?;
        }
        Ok(server)
    }

    fn check_alive_for_start(&mut self) -> Result<(), StartError> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                // Give the log readers a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                Err(StartError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.render(),
                })
            }
            Ok(None) => Ok(()),
            Err(source) => Err(StartError::Spawn {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Gives up the start when Ctrl-C came (the flag of
    /// `sys::catch_interrupts`; never raised where no handler is
    /// installed): a start may wait up to the whole `--timeout`.
    fn check_interrupted_start(&self) -> Result<(), StartError> {
        if sys::interrupted() {
            return Err(StartError::Interrupted {
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    fn not_ready(&self, timeout: Duration, why: &str) -> StartError {
        StartError::NotReady {
            name: self.name.clone(),
            timeout,
            why: why.to_owned(),
            log: self.log.render(),
        }
    }

    fn wait_healthy(
        &mut self,
        path: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let request = build_request("GET", path, &self.addr.to_string(), b"");
        loop {
            let io_timeout = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            let last = match self
                .connect(io_timeout)
                .and_then(|mut c| c.round_trip(&request).map(|r| r.status))
            {
                Ok(200) => return Ok(()),
                Ok(status) => format!("GET {path} answered {status}"),
                Err(e) => format!("GET {path}: {e}"),
            };
            self.check_alive_for_start()?;
            self.check_interrupted_start()?;
            if Instant::now() >= deadline {
                return Err(self.not_ready(timeout, &last));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The network namespace it serves in (`None`: this process's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A keep-alive connection to it, made from its network namespace.
    pub fn connect(&self, timeout: Duration) -> Result<HttpClient, ClientError> {
        let mut clients = self.connect_many(1, timeout)?;
        Ok(clients
            .pop()
            .expect("connect_many returns one client per connection"))
    }

    /// `count` keep-alive connections to it, made one after another from
    /// its network namespace (one thread enters it for all of them).
    pub fn connect_many(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<HttpClient>, ClientError> {
        let addr = self.addr;
        let open = || {
            (0..count)
                .map(|_| HttpClient::connect(addr, timeout))
                .collect::<Result<Vec<_>, _>>()
        };
        match &self.netns {
            None => open(),
            Some(name) => {
                netns::run_in(name, open).map_err(|source| ClientError::Connect { addr, source })?
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The line it logged when it began listening.
    pub fn listening_line(&self) -> &str {
        &self.listening_line
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.log.render()
    }

    /// Its resident memory, MiB (0 if it is gone).
    pub fn rss_mib(&self) -> f64 {
        procfs::rss_mib(self.pid()).unwrap_or(0.0)
    }

    /// Its child processes (the engine's workers).
    pub fn children(&self) -> Vec<ChildProcess> {
        procfs::children_of(self.pid())
    }

    /// `Err` with its exit status and log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        match self.exited {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited unexpectedly ({status}); its log:\n{}",
                self.name,
                self.log.render()
            ),
        }
    }

    /// Freezes every thread of the process and waits until they are all
    /// stopped (at most `timeout`).
    pub fn pause(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.check_alive()?;
        sys::send_signal(self.pid(), Signal::Stop)?;
        let deadline = Instant::now() + timeout;
        while !all_threads_stopped(self.pid())? {
            self.check_alive()?;
            if Instant::now() >= deadline {
                anyhow::bail!("{} did not stop within {timeout:?} of SIGSTOP", self.name);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Thaws a paused process.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.check_alive()?;
        sys::send_signal(self.pid(), Signal::Continue)?;
        Ok(())
    }

    /// Ends the process: SIGCONT and SIGTERM, up to `grace` to exit, then
    /// SIGKILL. Returns how it ended.
    pub fn shutdown(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let pid = self.pid();
        // A stopped process keeps SIGTERM pending: thaw it first.
        let _ = sys::send_signal(pid, Signal::Continue);
        let _ = sys::send_signal(pid, Signal::Terminate);
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.shutdown(SHUTDOWN_GRACE).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        remove_files(&self.temp_files);
    }
}

fn remove_files(files: &[PathBuf]) {
    for file in files {
        let _ = std::fs::remove_file(file);
    }
}

/// Whether every thread of `pid` is stopped (`T`) or gone.
fn all_threads_stopped(pid: u32) -> io::Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            // A thread that exited meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let state = stat
            .rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next());
        if !matches!(state, Some("T" | "t" | "Z" | "X")) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads a log pipe line by line into `log` on its own thread, sending the
/// address of the first `listening on` line.
fn read_log(
    pipe: impl Read + Send + 'static,
    log: &Arc<LogTail>,
    listening: mpsc::Sender<(SocketAddr, String)>,
) {
    let tail = Arc::clone(log);
    let spawned = std::thread::Builder::new()
        .name("bench-server-log".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            let mut found = false;
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
                if !found {
                    if let Some(addr) = parse_listening_line(&line) {
                        found = true;
                        let _ = listening.send((addr, line.clone()));
                    }
                }
                tail.push(line);
            }
        });
    if let Err(e) = spawned {
        log.push(format!("(cannot read this server's log: {e})"));
    }
}

/// A fresh path in the temp directory for a file of this benchmark.
pub fn temp_path(stem: &str, extension: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a counter that only has to be unique within the process.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "nocturne-bench-{stem}-{}-{n}.{extension}",
        std::process::id()
    ))
}

/// Writes `text` to a fresh temp file; the caller removes it.
pub fn write_temp_file(stem: &str, extension: &str, text: &str) -> io::Result<PathBuf> {
    let path = temp_path(stem, extension);
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let engine =
            "nocturne: listening on http://127.0.0.1:43773 (1 core loop on cores [1], poll Spin)";
        assert_eq!(
            parse_listening_line(engine),
            Some("127.0.0.1:43773".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("nocturne: listening on http://[::1]:8080/"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("nocturne: listening on http://nowhere"),
            None
        );
        assert_eq!(parse_listening_line("worker echo ready"), None);
    }

    #[test]
    fn the_log_tail_is_bounded() {
        let log = LogTail::default();
        assert_eq!(log.render(), "    (nothing logged)");
        for i in 0..LOG_LINES + 5 {
            log.push(format!("line {i}"));
        }
        let text = log.render();
        assert_eq!(text.lines().count(), LOG_LINES);
        assert!(
            text.starts_with("    line 5\n") && text.ends_with("line 204"),
            "{text}"
        );
    }

    fn sh(script: &str, health: Option<&'static str>, timeout: Duration) -> Launch {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Launch {
            name: "test server".into(),
            command,
            temp_files: Vec::new(),
            health_path: health,
            timeout,
            netns: None,
        }
    }

    #[test]
    fn a_server_that_exits_early_reports_its_log() {
        let err = ServerProcess::start(sh(
            "echo 'config error: bad key' >&2; exit 3",
            None,
            Duration::from_secs(20),
        ))
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(matches!(err, StartError::Exited { .. }), "{text}");
        assert!(text.contains("config error: bad key"), "{text}");
    }

    #[test]
    fn a_silent_server_times_out_and_is_killed() {
        let start = Instant::now();
        let err = ServerProcess::start(sh(
            "echo starting; exec sleep 30",
            None,
            Duration::from_millis(300),
        ))
        .err()
        .unwrap();
        assert!(matches!(err, StartError::NotReady { .. }), "{err}");
        assert!(err.to_string().contains("starting"), "{err}");
        // The guard killed `sleep 30` instead of waiting for it.
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn an_unhealthy_server_is_not_ready() {
        // Claims to listen on a port where nothing answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let script = format!("echo 'nocturne: listening on http://{addr} (fake)'; exec sleep 30");
        let err = ServerProcess::start(sh(&script, Some("/healthz"), Duration::from_millis(300)))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("GET /healthz"), "{text}");
        assert!(text.contains("(fake)"), "{text}");
    }

    #[test]
    fn pause_resume_and_shutdown_a_running_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let file = write_temp_file("test", "txt", "x").unwrap();
        assert!(file.exists());
        let script = format!("echo 'listening on http://{addr}' >&2; exec sleep 30");
        let mut launch = sh(&script, None, Duration::from_secs(20));
        launch.temp_files.push(file.clone());
        let mut server = ServerProcess::start(launch).unwrap();
        assert_eq!(server.addr(), addr);
        assert!(server.listening_line().contains("listening on"));
        assert!(server.rss_mib() > 0.0);
        server.pause(Duration::from_secs(10)).unwrap();
        assert!(all_threads_stopped(server.pid()).unwrap());
        server.resume().unwrap();
        server.check_alive().unwrap();
        // SIGTERM ends `sleep` even though it was stopped before.
        server.pause(Duration::from_secs(10)).unwrap();
        let status = server.shutdown(Duration::from_secs(10)).unwrap();
        assert!(!status.success());
        assert!(server.check_alive().is_err());
        drop(server);
        assert!(!file.exists(), "the guard removes its temp files");
    }
}
