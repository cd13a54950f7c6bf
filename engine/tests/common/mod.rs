//! End-to-end harness: the real `nocturne` binary, real sockets, real worker
//! processes.
//!
//! * [`EngineBuilder`] / [`Engine`] — start `nocturne serve` on port 0 with
//!   given flags, environment or config file; keep every log line; wait for
//!   `/healthz`; on drop (also when a test panics) stop it with SIGTERM (twice),
//!   SIGKILL, and check that no process it started is left behind.
//! * [`Client`] / [`Response`] — a small blocking HTTP/1.1 client with
//!   keep-alive, and raw-bytes helpers for pipelining and malformed input.
//! * `/proc` helpers — threads, their state and allowed CPUs, an engine's
//!   worker processes.
//! * [`for_each_poll`] — runs a test body under `--poll spin` and `--poll adaptive`.
//! * [`http_checks`] — HTTP checks shared by `e2e_transports` (every
//!   transport) and `e2e_http` (every poll mode).
//!
//! Every wait is bounded ([`LONG`] at most): a bug fails a test with the
//! engine's log instead of hanging it. No assertion depends on how fast
//! anything is.
// SIGTERM/SIGKILL to the engine and its workers go through libc::kill.
#![allow(unsafe_code)]
// Each e2e_*.rs binary uses a different part of the harness.
#![allow(dead_code)]

pub mod http_checks;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Upper bound on any wait for an event; reaching it is a failure, not a timing.
pub const LONG: Duration = Duration::from_secs(30);

/// How long the harness lets an engine drain after SIGTERM before it insists.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// How long a test-scoped client waits on a socket before failing.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that marks every process of one test engine: the
/// engine passes its environment on to its workers, so a leftover worker is
/// found by it even after it was re-parented.
const TAG_ENV: &str = "E2E_NOCTURNE_ENGINE_TAG";

/// Engines whose io loop never sleeps (`--poll spin`) are pinned to the same
/// core; two of them at once would starve each other on a 2-core machine.
/// Tests of one binary run on threads of one process, so a process-wide lock
/// serializes them (Cargo runs the test binaries one after another).
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// The `nocturne` binary under test.
pub fn nocturne_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nocturne"))
}

/// The example external function binary `wordcount`, next to `nocturne`.
/// Cargo builds a package's binaries for `cargo test` only when the package
/// has an integration test, so `cargo test --workspace` leaves it out unless
/// `nocturne-example-wordcount` has one (or it was built before).
pub fn wordcount_exe() -> PathBuf {
    let exe = nocturne_exe()
        .parent()
        .expect("the nocturne binary has a directory")
        .join("wordcount");
    assert!(
        exe.is_file(),
        "{} is missing: the external-function tests need the example binary; run \
         `cargo build -p nocturne-example-wordcount` with the same CARGO_TARGET_DIR and profile \
         (`cargo test --workspace` builds it only if that package has an integration test)",
        exe.display()
    );
    exe
}

// ---------------------------------------------------------------------------
// Scratch directories.

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Relaxed: only the uniqueness of the number matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nocturne-e2e-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// The engine's log.

/// Every line the engine wrote (stderr, and stdout prefixed `[stdout] `).
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// What the readers do next: a test can stall the engine's log output
    /// or close it, as a stuck or vanished log reader would.
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Gate {
    #[default]
    Read,
    /// Read nothing (the pipe fills up and the engine's writes block).
    Pause,
    /// Close the pipes after the next line (the engine's writes then fail).
    Close,
}

impl Log {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        self.grew.notify_all();
    }

    fn lines(&self) -> MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole log as one string.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line satisfies `pred`; returns it, or `None` at `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut lines = self.lines();
        loop {
            if let Some(line) = lines[seen..].iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            seen = lines.len();
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops reading the engine's output until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.set_gate(Gate::Pause);
    }

    pub fn resume(&self) {
        self.set_gate(Gate::Read);
    }

    /// Closes the engine's output pipes once each has delivered one more
    /// line.
    pub fn close(&self) {
        self.set_gate(Gate::Close);
    }

    fn set_gate(&self, gate: Gate) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = gate;
        self.gate_changed.notify_all();
    }

    /// Waits while paused; whether to go on reading.
    fn may_read(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        while *gate == Gate::Pause {
            gate = self
                .gate_changed
                .wait(gate)
                .unwrap_or_else(|e| e.into_inner());
        }
        *gate == Gate::Read
    }

    fn follow(self: &Arc<Self>, stream: impl Read + Send + 'static, prefix: &'static str) {
        let log = self.clone();
        std::thread::Builder::new()
            .name("e2e-engine-log".into())
            .spawn(move || {
                // A small buffer: while paused, little sits read but unlogged.
                for line in BufReader::with_capacity(256, stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    log.push(format!("{prefix}{}", String::from_utf8_lossy(&line)));
                    if !log.may_read() {
                        break; // drops the pipe
                    }
                }
            })
            .expect("start a log reader thread");
    }
}

// ---------------------------------------------------------------------------
// Starting an engine.

/// How to start `nocturne serve`.
#[must_use]
pub struct EngineBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    listen_flag: bool,
    wait_healthy: bool,
    config: Option<String>,
    exclusive: bool,
    /// `(soft, hard)` RLIMIT_NOFILE of the engine process.
    open_files: Option<(u64, u64)>,
    stray_fd: Option<i32>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineBuilder {
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            listen_flag: true,
            wait_healthy: true,
            config: None,
            exclusive: false,
            open_files: None,
            stray_fd: None,
        }
    }

    /// Starts the engine holding descriptor `fd` (a copy of /dev/null)
    /// without close-on-exec, as a launcher that leaks one would.
    pub fn stray_fd(mut self, fd: i32) -> Self {
        self.stray_fd = Some(fd);
        self
    }

    /// Starts the engine with this open-files limit (`ulimit -Sn soft -Hn hard`).
    pub fn open_files_limit(mut self, soft: u64, hard: u64) -> Self {
        self.open_files = Some((soft, hard));
        self
    }

    /// Adds command-line arguments after `serve`.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn arg(self, arg: &str) -> Self {
        self.args([arg])
    }

    /// `--poll MODE`.
    pub fn poll(self, mode: &str) -> Self {
        self.args(["--poll", mode])
    }

    /// Sets an environment variable of the engine (`NOCTURNE_*` of the test
    /// process are never inherited).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Serves this TOML (written to a scratch file, passed with `--config`).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Leaves out the harness's `--listen 127.0.0.1:0` (the test gives the
    /// address another way, e.g. `NOCTURNE_LISTEN`).
    pub fn no_listen_flag(mut self) -> Self {
        self.listen_flag = false;
        self
    }

    /// Does not wait for `/healthz` to answer 200.
    pub fn no_health_wait(mut self) -> Self {
        self.wait_healthy = false;
        self
    }

    /// Runs while no other exclusive engine of this test binary runs (implied
    /// by `--poll spin`).
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    fn spins(&self) -> bool {
        let flag = self
            .args
            .windows(2)
            .any(|w| w[0] == "--poll" && w[1] == "spin")
            || self.args.iter().any(|a| a == "--poll=spin");
        let env = self
            .env
            .iter()
            .any(|(k, v)| k == "NOCTURNE_POLL" && v == "spin");
        let file = self
            .config
            .as_deref()
            .is_some_and(|c| c.contains("poll = \"spin\""));
        flag || env || file
    }

    fn command(&self, scratch: &Scratch) -> (Command, String) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Relaxed: only the uniqueness of the number matters.
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new(nocturne_exe());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NOCTURNE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env(TAG_ENV, &tag);
        cmd.env("RUST_BACKTRACE", "1");
        cmd.arg("serve");
        if self.listen_flag {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(toml) = &self.config {
            let file = scratch.write("nocturne.toml", toml);
            cmd.arg("--config").arg(file);
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            let set_limit = move || {
                // SAFETY: setrlimit is async-signal-safe and reads a live
                // rlimit captured by value.
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure makes one async-signal-safe system call.
            unsafe { cmd.pre_exec(set_limit) };
        }
        if let Some(fd) = self.stray_fd {
            use std::os::unix::process::CommandExt as _;
            let leak = move || {
                // SAFETY: dup2 is async-signal-safe; the copy it makes of
                // stdin (/dev/null) has close-on-exec clear, as a careless
                // launcher's descriptor would.
                if unsafe { libc::dup2(0, fd) } != fd {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure makes one async-signal-safe system call.
            unsafe { cmd.pre_exec(leak) };
        }
        (cmd, tag)
    }

    fn describe(&self) -> String {
        let mut s = format!("nocturne serve {}", self.args.join(" "));
        for (k, v) in &self.env {
            s.push_str(&format!(" [{k}={v}]"));
        }
        if self.config.is_some() {
            s.push_str(" [--config <scratch toml>]");
        }
        s
    }

    /// Starts the engine; waits until it listens and (unless told otherwise)
    /// until `/healthz` answers 200. Panics with the log on failure.
    pub fn start(self) -> Engine {
        let description = self.describe();
        self.launch(|cmd| cmd, "start the nocturne binary", description)
    }

    /// What [`start`](Self::start) and [`start_in_netns`](Self::start_in_netns)
    /// share: runs the builder's command as `wrap` returns it (as it is, or
    /// behind `ip netns exec`), follows its log, waits until it listens and
    /// (unless told otherwise) until `/healthz` answers 200. `spawn_what`
    /// completes the panic when it cannot be spawned; `description` is how
    /// failures name the engine.
    fn launch(
        self,
        wrap: impl FnOnce(Command) -> Command,
        spawn_what: &str,
        description: String,
    ) -> Engine {
        let guard = (self.exclusive || self.spins())
            .then(|| EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner()));
        let scratch = Scratch::new("engine");
        let (direct, tag) = self.command(&scratch);
        let mut cmd = wrap(direct);
        let mut child = cmd.spawn().expect(spawn_what);
        let log = Arc::new(Log::default());
        log.follow(child.stderr.take().expect("piped stderr"), "");
        log.follow(child.stdout.take().expect("piped stdout"), "[stdout] ");
        let pid = child.id() as i32;
        let mut engine = Engine {
            child,
            pid,
            addr: None,
            log,
            tag,
            description,
            exited: None,
            _scratch: scratch,
            _exclusive: guard,
        };
        let addr = engine.wait_listening();
        engine.addr = Some(addr);
        if self.wait_healthy {
            engine.wait_healthy();
        }
        engine
    }

    /// Runs an engine that is expected to refuse to start: returns its exit
    /// status and log once it exits (panics if it is still up after [`LONG`]).
    pub fn run_to_exit(self) -> (ExitStatus, String) {
        let scratch = Scratch::new("engine");
        let (mut cmd, _tag) = self.command(&scratch);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the nocturne binary");
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(_status) = child.try_wait().expect("wait for nocturne") {
                let out = child.wait_with_output().expect("collect nocturne's output");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                );
                return (out.status, text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{}` was expected to exit, but it ran for {LONG:?}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `body` with an engine poll mode: `"spin"`, then `"adaptive"`.
pub fn for_each_poll(mut body: impl FnMut(&str)) {
    for mode in ["spin", "adaptive"] {
        eprintln!("--- --poll {mode}");
        body(mode);
    }
}

/// A running `nocturne serve`. Dropping it stops it and checks that nothing it
/// started is left.
pub struct Engine {
    child: Child,
    pid: i32,
    addr: Option<SocketAddr>,
    log: Arc<Log>,
    tag: String,
    description: String,
    exited: Option<ExitStatus>,
    _scratch: Scratch,
    _exclusive: Option<MutexGuard<'static, ()>>,
}

impl Engine {
    /// Starts an engine with these flags (plus `--listen 127.0.0.1:0`).
    pub fn start(args: &[&str]) -> Engine {
        EngineBuilder::new().args(args).start()
    }

    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// The engine process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the engine listens")
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Panics with `what` and the engine's log.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- `{}` log:\n{}\n---",
            self.description,
            self.log_text()
        )
    }

    fn wait_listening(&mut self) -> SocketAddr {
        const MARK: &str = "nocturne: listening on http://";
        let deadline = Instant::now() + LONG;
        loop {
            let found = self
                .log
                .wait_for(Duration::from_millis(50), |l| l.starts_with(MARK));
            if let Some(line) = found {
                let rest = &line[MARK.len()..];
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches('/');
                return addr.parse().unwrap_or_else(|_| {
                    self.fail(&format!("cannot parse the address in {line:?}"))
                });
            }
            if let Some(status) = self.child.try_wait().expect("wait for nocturne") {
                self.exited = Some(status);
                std::thread::sleep(Duration::from_millis(50)); // let the log readers finish
                self.fail(&format!("the engine exited ({status}) before it listened"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("the engine did not log {MARK:?} within {LONG:?}"));
            }
        }
    }

    /// Waits until `GET /healthz` answers 200.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + LONG;
        loop {
            let last = match Client::try_connect(self.addr())
                .and_then(|mut c| c.try_request("GET", "/healthz", &[], b""))
            {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.child.try_wait().expect("wait for nocturne") {
                self.exited = Some(status);
                self.fail(&format!(
                    "the engine exited ({status}) before it was healthy"
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "/healthz did not answer 200 within {LONG:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new keep-alive connection.
    pub fn client(&self) -> Client {
        Client::try_connect(self.addr())
            .unwrap_or_else(|e| self.fail(&format!("cannot connect: {e}")))
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let mut c = self.client();
        c.try_request(method, path, &[], body)
            .unwrap_or_else(|e| self.fail(&format!("{method} {path}: {e}")))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        self.request("POST", path, body)
    }

    /// `GET /system/functions`, parsed.
    pub fn functions_status(&self) -> Vec<serde_json::Value> {
        let r = self.get("/system/functions");
        assert_eq!(r.status, 200, "/system/functions: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            self.fail(&format!(
                "/system/functions is not JSON ({e}): {}",
                r.text()
            ))
        });
        v.as_array()
            .cloned()
            .unwrap_or_else(|| self.fail("/system/functions is not an array"))
    }

    /// Live (not zombie) child processes of the engine that serve `function`.
    pub fn workers(&self, function: &str) -> Vec<i32> {
        self.all_workers()
            .into_iter()
            .filter(|(_, f)| f == function)
            .map(|(p, _)| p)
            .collect()
    }

    /// Live child processes of the engine with the function each serves
    /// (its `NOCTURNE_FUNCTION`).
    pub fn all_workers(&self) -> Vec<(i32, String)> {
        children(self.pid)
            .into_iter()
            .filter(|&p| process_state(p).is_some_and(|s| s != 'Z'))
            .filter_map(|p| Some((p, environ_var(p, "NOCTURNE_FUNCTION")?)))
            .collect()
    }

    /// Waits until `function` has exactly `n` live worker processes; returns them.
    pub fn wait_workers(&self, function: &str, n: usize, timeout: Duration) -> Vec<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.workers(function);
            if pids.len() == n {
                return pids;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{function} has workers {pids:?}, not {n}, after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The engine's io-loop threads: `(tid, name)` of every `nocturne-io-*` thread.
    pub fn io_threads(&self) -> Vec<(i32, String)> {
        threads(self.pid)
            .into_iter()
            .filter(|(_, name)| name.starts_with("nocturne-io-"))
            .collect()
    }

    /// The one io thread (panics if there are several).
    pub fn io_thread(&self) -> i32 {
        match self.io_threads().as_slice() {
            [(tid, _)] => *tid,
            other => self.fail(&format!("expected one io thread, found {other:?}")),
        }
    }

    /// Sends SIGTERM and waits for the engine to exit; returns its status.
    /// Checks that no process it started is left.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.terminate();
        self.check_no_leftovers();
        status
    }

    /// Sends `signal` to the engine process.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Waits up to `timeout` for the engine to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for nocturne") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (a graceful drain); a second SIGTERM after [`DRAIN_WAIT`] (the
    /// engine then stops at once, failing what is still in flight); SIGKILL if
    /// it is still up [`DRAIN_WAIT`] after that.
    fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        for (sig, name) in [
            (libc::SIGTERM, "SIGTERM"),
            (libc::SIGTERM, "a second SIGTERM"),
        ] {
            signal(self.pid, sig);
            if let Some(status) = self.wait_exit(DRAIN_WAIT) {
                return status;
            }
            eprintln!(
                "e2e: {} still runs {DRAIN_WAIT:?} after {name}",
                self.description
            );
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap nocturne");
        self.exited = Some(status);
        status
    }

    /// Live processes carrying this engine's tag: the engine itself and every
    /// process it started (what the drop check looks for).
    pub fn tagged_processes(&self) -> Vec<i32> {
        tagged_processes(&self.tag)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// Processes started by this engine (found by the tag every one of them
    /// inherits) that are still alive, waiting up to [`LONG`] / 3 for them to go.
    fn leftovers(&self) -> Vec<(i32, String)> {
        let deadline = Instant::now() + LONG / 3;
        loop {
            let left = tagged_processes(&self.tag);
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_no_leftovers(&self) {
        let left = self.leftovers();
        if !left.is_empty() {
            for (pid, _) in &left {
                signal(*pid, libc::SIGKILL);
            }
            self.fail(&format!(
                "processes of the engine outlived it (now killed): {left:?}"
            ));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let status = self.terminate();
        if std::thread::panicking() {
            // Clean up without a second panic; the first one says what failed.
            for (pid, _) in tagged_processes(&self.tag) {
                signal(pid, libc::SIGKILL);
            }
            eprintln!(
                "e2e: engine exited with {status}; its log:\n{}",
                self.log_text()
            );
            return;
        }
        self.check_no_leftovers();
    }
}

/// Sends signal `sig` to process `pid`.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and has no memory effects on this
    // process; a pid that is gone gives ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

// ---------------------------------------------------------------------------
// /proc.

fn read_proc(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Fields of a `stat` file after the command name (`(comm)` may hold spaces
/// and parentheses, so split after its last `)`): index 0 is the state.
fn stat_fields(stat: &str) -> Option<Vec<String>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The state letter of a process (R, S, D, Z, …), `None` if it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = read_proc(format!("/proc/{pid}/stat"))?;
    stat_fields(&stat)?.first()?.chars().next()
}

/// The parent pid of a process.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = read_proc(format!("/proc/{pid}/stat"))?;
    stat_fields(&stat)?.get(1)?.parse().ok()
}

/// The children of `pid` (zombies included).
pub fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| parent_pid(p) == Some(pid))
        .collect()
}

/// A process's command line.
pub fn cmdline(pid: i32) -> Vec<String> {
    read_proc(format!("/proc/{pid}/cmdline"))
        .map(|s| {
            s.split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One variable of a process's environment (as it was at exec).
pub fn environ_var(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// Live processes carrying the engine tag `tag`, with their command lines.
fn tagged_processes(tag: &str) -> Vec<(i32, String)> {
    all_pids()
        .into_iter()
        .filter(|&p| p != std::process::id() as i32)
        .filter(|&p| environ_var(p, TAG_ENV).as_deref() == Some(tag))
        .filter(|&p| process_state(p).is_some_and(|s| s != 'Z'))
        .map(|p| (p, cmdline(p).join(" ")))
        .collect()
}

/// `(tid, comm)` of every thread of `pid`.
pub fn threads(pid: i32) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let tid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = read_proc(format!("/proc/{pid}/task/{tid}/comm"))?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The state letter of thread `tid` of `pid`.
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = read_proc(format!("/proc/{pid}/task/{tid}/stat"))?;
    stat_fields(&stat)?.first()?.chars().next()
}

/// `Cpus_allowed_list` of thread `tid` of `pid` (e.g. `"0-1"`).
/// The number in `text` right after `before`, up to `until` (how the
/// engine's messages state a count or a wait).
pub fn number_between(text: &str, before: &str, until: &str) -> Option<u64> {
    text.split(before).nth(1)?.split(until).next()?.parse().ok()
}

/// A process's soft and hard open-files limits (`/proc/PID/limits`).
pub fn open_files_limit(pid: i32) -> (u64, u64) {
    let limits = read_proc(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

pub fn cpus_allowed_list(pid: i32, tid: i32) -> String {
    let status = read_proc(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_else(|| panic!("thread {tid} of {pid} is gone"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in /proc/{pid}/task/{tid}/status"))
}

/// Parses a kernel CPU list such as `0-2,5`.
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cores = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.parse().expect("a CPU number"),
                    b.parse().expect("a CPU number"),
                );
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().expect("a CPU number")),
        }
    }
    cores
}

/// The cores this test process may run on (the engine inherits them).
pub fn allowed_cores() -> Vec<usize> {
    let me = std::process::id() as i32;
    parse_cpu_list(&cpus_allowed_list(me, me))
}

/// The first and last allowed cores, or `None` on a single-core machine
/// (core-placement tests need two).
pub fn two_cores() -> Option<(usize, usize)> {
    let cores = allowed_cores();
    match (cores.first(), cores.last()) {
        (Some(&a), Some(&b)) if a != b => Some((a, b)),
        _ => {
            // Nothing skips silently: only an explicit opt-out lets it pass.
            assert!(
                std::env::var_os("NOCTURNE_SKIP_MULTICORE").is_some(),
                "needs two allowed cores, has {cores:?} \
                 (set NOCTURNE_SKIP_MULTICORE=1 to skip the tests that need two cores)"
            );
            eprintln!("skipped (NOCTURNE_SKIP_MULTICORE): needs two allowed cores, has {cores:?}");
            None
        }
    }
}

/// How often a thread was seen in each state over `window`.
#[derive(Debug, Default, Clone)]
pub struct StateSamples {
    pub counts: BTreeMap<char, usize>,
    pub total: usize,
}

impl StateSamples {
    /// Samples in state `R` (running or runnable).
    pub fn running(&self) -> usize {
        self.counts.get(&'R').copied().unwrap_or(0)
    }

    /// Samples in an interruptible or uninterruptible sleep (`S`, `D`).
    pub fn sleeping(&self) -> usize {
        self.counts.get(&'S').copied().unwrap_or(0) + self.counts.get(&'D').copied().unwrap_or(0)
    }

    /// Whether more than `share` of the samples were `R`.
    pub fn mostly_running(&self, share: f64) -> bool {
        self.total > 0 && self.running() as f64 > share * self.total as f64
    }

    /// Whether more than `share` of the samples were asleep.
    pub fn mostly_sleeping(&self, share: f64) -> bool {
        self.total > 0 && self.sleeping() as f64 > share * self.total as f64
    }
}

/// Samples the state of thread `tid` of `pid` every ~2 ms for `window`.
pub fn sample_thread_state(pid: i32, tid: i32, window: Duration) -> StateSamples {
    let mut samples = StateSamples::default();
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Some(state) = thread_state(pid, tid) {
            *samples.counts.entry(state).or_default() += 1;
            samples.total += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    samples
}

// ---------------------------------------------------------------------------
// HTTP.

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `metric`'s duration in `Server-Timing`, in ms; panics without one.
    pub fn timing_ms(&self, metric: &str) -> f64 {
        let timing = self
            .header("server-timing")
            .expect("a Server-Timing header");
        let value = timing
            .split(',')
            .map(str::trim)
            .find_map(|m| m.strip_prefix(&format!("{metric};dur=")))
            .unwrap_or_else(|| panic!("no {metric} in {timing:?}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("{metric} is not a number: {timing:?}"))
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// The bytes of one HTTP/1.1 request. POSTs (and any request with a body)
/// carry `Content-Length`.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: e2e\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (method != "GET" || !body.is_empty()) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A blocking HTTP/1.1 keep-alive connection with timeouts on every read and write.
pub struct Client {
    stream: TcpStream,
    /// Bytes read past the end of the last response (pipelined answers).
    buf: Vec<u8>,
}

impl Client {
    /// Connects with [`SOCKET_TIMEOUT`] on connect, reads and writes.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Changes the read timeout (e.g. to probe whether anything arrives).
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set the read timeout");
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes one request (without reading).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        self.write_raw(&request_bytes(method, path, headers, body))
    }

    /// Writes one request and reads its response.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(method, path, headers, body)?;
        self.try_read_response()
    }

    /// [`try_request`](Self::try_request), panicking on an I/O error.
    #[track_caller]
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Response {
        self.try_request(method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, b"")
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> Response {
        self.request("POST", path, body)
    }

    /// A `HEAD` request: its response has headers only, whatever they say.
    #[track_caller]
    pub fn head(&mut self, path: &str) -> Response {
        self.send("HEAD", path, &[], b"")
            .and_then(|()| self.read_one(true))
            .unwrap_or_else(|e| panic!("HEAD {path}: {e}"))
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn fill_or_eof(&mut self, what: &str) -> io::Result<()> {
        if self.fill()? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed {what} ({} bytes buffered: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        Ok(())
    }

    /// Reads one final response (interim 1xx responses are skipped).
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        loop {
            let response = self.read_one(false)?;
            if !(100..200).contains(&response.status) {
                return Ok(response);
            }
        }
    }

    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("read a response: {e}"))
    }

    /// One response; `bodiless` for the answer to a `HEAD`.
    fn read_one(&mut self, bodiless: bool) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill_or_eof("before a response head")?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("not an HTTP/1 status line: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if bodiless || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
            while self.buf.len() < len {
                self.fill_or_eof("inside a response body")?;
            }
            response.body = self.buf.drain(..len).collect();
        } else {
            // Delimited by the end of the connection.
            while self.fill()? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill_or_eof("inside a chunk size")?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {line:?}"),
                    )
                })?;
            if size == 0 {
                // Trailers end at an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        self.fill_or_eof("inside trailers")?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill_or_eof("inside a chunk")?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Whether the peer has closed the connection (EOF or reset) within
    /// `timeout`; data that arrives meanwhile is kept for the next read.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.set_read_timeout(timeout);
        let closed = match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        self.set_read_timeout(SOCKET_TIMEOUT);
        closed
    }

    /// Reads until the peer closes; returns what came (buffered bytes first).
    /// A reset counts as a close.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the peer did not close within {SOCKET_TIMEOUT:?}")
                }
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Fault tests (engine/tests/fault_*.rs).

/// The misbehaving worker binary `misbehave` (functions/examples/misbehave),
/// next to `nocturne`; built by `cargo test --workspace` (its package has an
/// integration test) or `cargo build -p nocturne-example-misbehave`.
pub fn misbehave_exe() -> PathBuf {
    let exe = nocturne_exe()
        .parent()
        .expect("the nocturne binary has a directory")
        .join("misbehave");
    assert!(
        exe.is_file(),
        "{} is missing: the fault tests need the misbehaving worker; run \
         `cargo build -p nocturne-example-misbehave` with the same CARGO_TARGET_DIR and profile",
        exe.display()
    );
    exe
}

/// Resident memory of a process (`VmRSS` in /proc/PID/status), KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    read_proc(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Children of `pid` that have exited and are not reaped yet.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|&p| process_state(p) == Some('Z'))
        .collect()
}

/// Waits until `/system/functions` shows `pred` true for `function`; returns
/// that entry (fails with the log after [`LONG`]).
pub fn wait_function_status(
    engine: &Engine,
    function: &str,
    what: &str,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + LONG;
    loop {
        let status = engine.functions_status();
        let entry = status
            .iter()
            .find(|f| f["name"] == function)
            .cloned()
            .unwrap_or_else(|| engine.fail(&format!("{function} is not in /system/functions")));
        if pred(&entry) {
            return entry;
        }
        if Instant::now() > deadline {
            engine.fail(&format!("{function} never got {what}: {entry}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `function` has exactly one live worker, not `old`, and the
/// engine has logged it ready (a process exists before its handshake ends).
pub fn wait_replaced_worker(engine: &Engine, function: &str, old: i32) -> i32 {
    let deadline = Instant::now() + LONG;
    loop {
        if let [pid] = engine.workers(function)[..] {
            let ready = format!("worker {function} pid {pid} ready");
            if pid != old && engine.log_text().contains(&ready) {
                return pid;
            }
        }
        if Instant::now() > deadline {
            engine.fail(&format!(
                "{function} worker {old} was not replaced: {:?}",
                engine.all_workers()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until worker `pid` is inside the `sleep` built-in's handler, i.e.
/// blocked in `nanosleep`/`clock_nanosleep` (its `/proc/PID/syscall`).
///
/// "In flight" in `/system/functions` only says the engine sent the call; a
/// worker killed before it took the call from its ring is handed back to
/// another worker (and answers 200), so a test of a kill *mid-call* must wait
/// for the handler itself.
pub fn wait_in_sleep_handler(engine: &Engine, pid: i32) {
    let sleeping = [libc::SYS_nanosleep, libc::SYS_clock_nanosleep];
    let deadline = Instant::now() + LONG;
    loop {
        let nr = read_proc(format!("/proc/{pid}/syscall"))
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok());
        if nr.is_some_and(|nr| sleeping.contains(&nr)) {
            return;
        }
        if Instant::now() > deadline {
            engine.fail(&format!(
                "worker {pid} never entered its sleep handler (syscall {nr:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills the `sleep` worker `victim` in the middle of a 2 s call sent on
/// `c` (once the call is in flight and the worker is inside its handler)
/// and checks the answer to that call: a 502 naming the function and the
/// signal. Returns the answer's text for further checks.
pub fn kill_sleep_worker_mid_call(engine: &Engine, c: &mut Client, victim: i32) -> String {
    c.send("POST", "/function/sleep?us=2000000", &[], b"")
        .unwrap();
    wait_function_status(engine, "sleep", "a call in flight", |f| {
        f["in_flight"].as_u64() == Some(1)
    });
    wait_in_sleep_handler(engine, victim);
    signal(victim, libc::SIGKILL);

    let r = c
        .try_read_response()
        .unwrap_or_else(|e| engine.fail(&format!("no answer after the crash: {e}")));
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.text();
    assert!(msg.contains("sleep"), "names the function: {msg}");
    assert!(
        msg.contains("SIGKILL") || msg.contains("signal 9"),
        "names the signal: {msg}"
    );
    msg
}

/// The one live worker of `function` (fails if there are none or several).
pub fn only_worker(engine: &Engine, function: &str) -> i32 {
    match engine.workers(function)[..] {
        [pid] => pid,
        ref other => engine.fail(&format!(
            "expected one {function} worker, found {other:?}: {:?}",
            engine.all_workers()
        )),
    }
}

// ---------------------------------------------------------------------------
// Engines inside a network namespace (engine/tests/e2e_transports.rs).

impl EngineBuilder {
    /// Starts the engine inside the network namespace `netns`, under
    /// `ip netns exec` (which execs it: the child's pid is the engine's, and
    /// it sees the namespace's `/sys`). The address comes from the engine's
    /// `listening on` line, so give `--listen` yourself (with
    /// [`no_listen_flag`](Self::no_listen_flag)). Health is checked from the
    /// calling thread, which must be inside `netns` too (e.g. in
    /// `Netns::run`); so must every thread that uses the [`Engine`]'s
    /// connecting methods.
    pub fn start_in_netns(self, netns: &str) -> Engine {
        let description = format!("ip netns exec {netns} {}", self.describe());
        let wrap = |direct: Command| {
            // The same program, arguments and environment, behind `ip netns exec`.
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns])
                .arg(direct.get_program())
                .args(direct.get_args());
            for (key, value) in direct.get_envs() {
                match value {
                    Some(value) => cmd.env(key, value),
                    None => cmd.env_remove(key),
                };
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd
        };
        self.launch(wrap, "start ip netns exec nocturne", description)
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssShmem`, …), KiB.
pub fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    let prefix = format!("{field}:");
    read_proc(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// `bench load`'s own echo server, for the load generator's tests.

/// `nocturne bench load-echo-server` on a free port, killed on drop.
pub struct EchoProcess {
    child: Child,
    /// `IP:PORT` it listens on.
    pub addr: String,
}

impl EchoProcess {
    pub fn start() -> Self {
        let mut child = Command::new(nocturne_exe())
            .args(["bench", "load-echo-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the echo server");
        let mut line = String::new();
        BufReader::new(child.stderr.take().expect("piped stderr"))
            .read_line(&mut line)
            .expect("the echo server's first line");
        let addr = line
            .trim()
            .strip_prefix("nocturne: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    /// `http://IP:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Sampling a thread's state (running or sleeping) for the poll-mode tests.

/// How long a thread's state is sampled.
pub const SAMPLE: Duration = Duration::from_millis(300);
/// Attempts at seeing the expected state before failing (a sample window can
/// be unlucky on a loaded 2-core machine; the expectation is a majority).
pub const ATTEMPTS: usize = 3;

/// Runs `poke`, then samples thread `tid` of `pid`, until `want` holds for
/// the samples (at most [`ATTEMPTS`] times). Fails with every sample seen.
pub fn expect_state(
    engine: &Engine,
    what: &str,
    pid: i32,
    tid: i32,
    mut poke: impl FnMut(),
    want: impl Fn(&StateSamples) -> bool,
) {
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        poke();
        let samples = sample_thread_state(pid, tid, SAMPLE);
        if want(&samples) {
            return;
        }
        seen.push(samples.counts);
    }
    engine.fail(&format!("{what}: thread {tid} of {pid} sampled {seen:?}"));
}

pub fn mostly_running(s: &StateSamples) -> bool {
    s.mostly_running(0.5)
}

pub fn mostly_sleeping(s: &StateSamples) -> bool {
    s.mostly_sleeping(0.5)
}
