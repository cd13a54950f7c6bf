//! Network-namespace test harness: a private namespace per test, TAP and
//! veth interfaces inside it, and threads or child processes that run in it.
//!
//! Depends on `std` and `libc` only, so any crate's tests can use it:
//!
//! ```ignore
//! #[path = "../../net/tests/netns/mod.rs"]
//! mod netns;
//!
//! let Some(ns) = netns::Netns::for_test() else { return };   // skipped only with NOCTURNE_SKIP_NETNS=1
//! ns.add_tap("nct0", "192.0.2.1/24");
//! let server = ns.spawn("server", move || { /* open the TAP, serve */ });
//! let answer = ns.run(|| std::net::TcpStream::connect("192.0.2.2:8080").is_ok());
//! let out = ns.command("curl").args(["-s", "http://192.0.2.2:8080/"]).output();
//! ```
//!
//! * [`Netns::for_test`] creates `nct-<pid>-<n>` with `ip netns add` and
//!   brings its loopback up. A test that cannot create its namespace fails;
//!   it is skipped only when `NOCTURNE_SKIP_NETNS=1` is set.
//! * Dropping the [`Netns`] deletes the namespace (`ip netns del`), also
//!   when the test panics; interfaces inside it go with it. Threads that
//!   entered it keep it alive until they exit.
//! * Code runs inside either on a thread that called `setns(2)` (it alone
//!   changes namespace: [`Netns::spawn`], [`Netns::run`]) or as a child
//!   process under `ip netns exec` ([`Netns::command`]). The calling
//!   thread never changes namespace (libtest may run tests on the main
//!   thread).
#![allow(dead_code)] // each test binary uses a different part
#![allow(unsafe_code)] // setns(2), setrlimit(2)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Set to `1` to skip namespace tests (where creating one is impossible);
/// never set in CI.
pub const SKIP_ENV: &str = "NOCTURNE_SKIP_NETNS";

/// Namespaces created by this process so far (names stay unique even when
/// tests run in parallel).
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that exists until this value is dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace for one test, or `None` (with a note on stderr)
    /// when [`SKIP_ENV`] is `1`. Panics — failing the test — when the
    /// namespace cannot be created.
    pub fn for_test() -> Option<Self> {
        if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("{SKIP_ENV}=1: skipping a test that needs a network namespace");
            return None;
        }
        match Self::create() {
            Ok(ns) => Some(ns),
            Err(e) => panic!(
                "cannot create a network namespace ({e}); this test needs root and \
                 iproute2 (set {SKIP_ENV}=1 to skip it where that is impossible)"
            ),
        }
    }

    /// Creates `nct-<pid>-<n>` and brings its loopback up.
    pub fn create() -> io::Result<Self> {
        let n = CREATED.fetch_add(1, Ordering::Relaxed); // a counter only: no ordering needed
        let name = format!("nct-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args…`.
    pub fn try_ip(&self, args: &[&str]) -> io::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Runs `ip -n NAME args…`; panics with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        if let Err(e) = self.try_ip(args) {
            panic!("ip -n {} {}: {e}", self.name, args.join(" "));
        }
    }

    /// A TAP interface `name` whose kernel side has `kernel_cidr` (e.g.
    /// `192.0.2.1/24`), up, with a transmit queue deep enough for a burst
    /// of a thousand SYNs. A userspace stack opens it by name.
    pub fn add_tap(&self, name: &str, kernel_cidr: &str) {
        self.add_tap_with(name, kernel_cidr, false);
    }

    /// Like [`add_tap`](Self::add_tap), optionally multi-queue (one queue
    /// per core loop).
    pub fn add_tap_with(&self, name: &str, kernel_cidr: &str, multi_queue: bool) {
        let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args);
        self.ip(&["link", "set", "dev", name, "txqueuelen", "4096"]);
        self.ip(&["addr", "add", kernel_cidr, "dev", name]);
        self.ip(&["link", "set", "dev", name, "up"]);
    }

    /// A veth pair: `kernel_end` gets `kernel_cidr`, `raw_end` no address
    /// (a packet socket on it carries the userspace stack); both up.
    pub fn add_veth(&self, kernel_end: &str, raw_end: &str, kernel_cidr: &str) {
        self.ip(&[
            "link", "add", kernel_end, "type", "veth", "peer", "name", raw_end,
        ]);
        self.ip(&["addr", "add", kernel_cidr, "dev", kernel_end]);
        self.ip(&["link", "set", "dev", kernel_end, "up"]);
        self.ip(&["link", "set", "dev", raw_end, "up"]);
    }

    /// Moves the calling thread into the namespace. Only for threads the
    /// caller owns (see [`spawn`](Self::spawn)).
    pub fn enter_current_thread(&self) -> io::Result<()> {
        enter(&self.name)
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.name.clone();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                enter(&ns).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
                f()
            })
            .expect("spawn a thread")
    }

    /// Runs `f` inside the namespace and waits for it; a panic in `f` is
    /// re-raised here.
    pub fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.enter_current_thread()
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Whether `name` exists in the namespace.
    pub fn has_interface(&self, name: &str) -> bool {
        self.try_ip(&["link", "show", "dev", name]).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Whether the namespace `name` exists (for tests of the harness itself).
pub fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/var/run/netns/{name}")).exists()
}

/// Moves the calling thread into the namespace `name`.
fn enter(name: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET changes only the
    // calling thread's network namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out: Output = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Raises this process's open-file limit to its hard limit (a thousand
/// concurrent client sockets exceed the usual soft limit of 1024).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
