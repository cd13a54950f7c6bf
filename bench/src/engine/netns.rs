//! The private network namespace of `bench engine --net`: created with
//! `ip netns add`, given a TAP for the smoltcp engine, entered by single
//! threads with `setns(2)`, and deleted when its guard drops.
//!
//! The benchmark shells out to `ip` (iproute2) rather than calling netlink
//! itself, as an operator would; it needs root (`CAP_SYS_ADMIN` for the
//! namespace, `CAP_NET_ADMIN` for the TAP). Servers run in the namespace
//! as `ip netns exec NAME nocturne serve …` (`ip` sets the namespace up,
//! with a `/sys` of its own, and execs the server in place, so the child's
//! pid is the server's). Client sockets are created on a short-lived
//! thread that entered the namespace ([`run_in`]): a socket belongs to the
//! namespace it was created in, whichever thread uses it later, so the
//! benchmark's pinned client thread never changes namespace itself.
//!
//! Each namespace is named `nct-bench-<pid>-<n>`. The [`Netns`] guard
//! deletes it on drop, which covers every error path of the benchmark;
//! only a killed benchmark leaves one behind, and the next run names it
//! ([`stale`]).
#![allow(unsafe_code)] // setns(2)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where `ip netns add` puts a namespace's handle.
const NETNS_DIR: &str = "/var/run/netns";
/// The common prefix of every namespace the benchmark creates.
pub const NAME_PREFIX: &str = "nct-bench-";

/// Namespaces this process created so far (keeps names unique).
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run at all.
    #[error("cannot run `ip {args}` (is iproute2 installed?): {source}")]
    Spawn {
        /// Its arguments.
        args: String,
        /// The cause.
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Ip {
        /// Its arguments.
        args: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// A network namespace that exists until this guard is dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `nct-bench-<pid>-<n>` with its loopback up.
    pub fn create() -> Result<Self, NetnsError> {
        // Relaxed: a counter that only has to be unique within the process.
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        // From here on the guard deletes it, whatever fails next.
        let ns = Self { name };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns exec NAME`, [`run_in`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// A persistent TAP `tap` whose kernel side has `kernel_cidr`, up, with
    /// a transmit queue deep enough for a burst of connects (a frame the
    /// TAP drops costs smoltcp a 1 s retransmission).
    pub fn add_tap(&self, tap: &str, kernel_cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["addr", "add", kernel_cidr, "dev", tap])?;
        self.ip(&["link", "set", "dev", tap, "up", "txqueuelen", "4096"])
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`; `ip` execs it in place).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Interfaces inside go with it; sockets still open in it keep the
        // namespace itself alive (nameless) until they close.
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!(
                "nocturne bench engine: warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Whether a namespace called `name` exists.
pub fn exists(name: &str) -> bool {
    handle_path(name).exists()
}

/// Namespaces named like the benchmark's whose creator is no longer
/// running (a benchmark that was killed: its guard never ran).
pub fn stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            creator_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    found.sort();
    found
}

/// The pid in `nct-bench-<pid>-<n>`.
pub fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<usize>().ok()?;
    pid.parse().ok()
}

/// Runs `f` on a new thread that first enters the namespace `name`, and
/// returns what it returns; the calling thread stays where it is. A panic
/// in `f` is re-raised here.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter(name)?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The kernel's count of retransmitted TCP segments in the namespace
/// `name` (`RetransSegs` of its `/proc/net/snmp`): every kernel socket in
/// it, clients and a kernel-TCP server alike; a userspace stack's own
/// retransmissions are not in it.
pub fn tcp_retransmits(name: &str) -> io::Result<u64> {
    // `thread-self`: the namespace of the reading thread, which `run_in`
    // moved there (`/proc/self/net` follows the main thread's).
    let text = run_in(name, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })??;
    parse_snmp_counter(&text, "Tcp:", "RetransSegs").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no Tcp RetransSegs in /proc/net/snmp",
        )
    })
}

/// The counter `field` of the `/proc/net/snmp` section `section` (a line
/// of names followed by a line of values, both starting with `section`).
pub fn parse_snmp_counter(text: &str, section: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(section));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

fn handle_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Moves the calling thread (only it) into the namespace `name`.
fn enter(name: &str) -> io::Result<()> {
    let path = handle_path(name);
    let file = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open network namespace {}: {e}", path.display()),
        )
    })?;
    // SAFETY: setns(2) on a namespace fd we hold open; CLONE_NEWNET moves
    // only the calling thread, a thread `run_in` owns and ends after `f`.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns into network namespace {name}: {e}"),
        ));
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> Result<(), NetnsError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: joined,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pids_parse_only_from_the_benchmarks_names() {
        assert_eq!(creator_pid("nct-bench-1234-0"), Some(1234));
        assert_eq!(creator_pid("nct-bench-1234-17"), Some(1234));
        for other in [
            "nct-1234-0",
            "nct-bench-1234",
            "nct-bench-x-0",
            "nct-bench-1234-y",
            "nct-bench--0",
            "nocturne",
        ] {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }

    /// Like every namespace test of the workspace: fails where the
    /// namespace cannot be made, unless `NOCTURNE_SKIP_NETNS=1`.
    fn create_for_test() -> Option<Netns> {
        if std::env::var("NOCTURNE_SKIP_NETNS").is_ok_and(|v| v == "1") {
            eprintln!("NOCTURNE_SKIP_NETNS=1: skipping a test that needs a network namespace");
            return None;
        }
        match Netns::create() {
            Ok(ns) => Some(ns),
            Err(e) => panic!(
                "{e}: this test needs root and iproute2 \
                 (set NOCTURNE_SKIP_NETNS=1 to skip it where that is impossible)"
            ),
        }
    }

    #[test]
    fn a_namespace_with_a_tap_is_entered_by_one_thread_and_removed_on_drop() {
        let Some(ns) = create_for_test() else {
            return;
        };
        let name = ns.name().to_owned();
        assert!(name.starts_with(&format!("{NAME_PREFIX}{}-", std::process::id())));
        assert!(exists(&name));
        assert!(!stale().contains(&name), "its creator is alive");
        ns.add_tap("nct0", "192.0.2.1/24").unwrap();
        // The TAP's kernel side is an address of the namespace only.
        let bound = run_in(&name, || {
            std::net::TcpListener::bind("192.0.2.1:0").map(|l| l.local_addr().unwrap())
        })
        .unwrap();
        assert!(bound.is_ok(), "{bound:?}");
        assert!(std::net::TcpListener::bind("192.0.2.1:0").is_err());
        // A second TAP of the same name is a typed error, not a panic.
        let err = ns.add_tap("nct0", "192.0.2.1/24").unwrap_err();
        assert!(matches!(err, NetnsError::Ip { .. }), "{err}");
        assert!(err.to_string().contains("tuntap add"), "{err}");
        // A program run through `command` sees the namespace's interfaces.
        let out = ns
            .command(Path::new("ip"))
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("nct0"));
        // A fresh namespace has retransmitted nothing.
        assert_eq!(tcp_retransmits(&name).unwrap(), 0);
        drop(ns);
        assert!(!exists(&name));
        assert!(run_in(&name, || ()).is_err(), "a deleted namespace");
    }

    #[test]
    fn snmp_counters_parse_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RetransSegs InErrs\n\
                    Tcp: 1 200 222 0\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_snmp_counter(text, "Tcp:", "RetransSegs"), Some(222));
        assert_eq!(parse_snmp_counter(text, "Tcp:", "RtoMin"), Some(200));
        assert_eq!(parse_snmp_counter(text, "Tcp:", "Nope"), None);
        assert_eq!(parse_snmp_counter(text, "Icmp:", "InMsgs"), None);
        assert_eq!(
            parse_snmp_counter("Tcp: RetransSegs\n", "Tcp:", "RetransSegs"),
            None
        );
        assert_eq!(
            parse_snmp_counter("Tcp: RetransSegs\nTcp: x\n", "Tcp:", "RetransSegs"),
            None
        );
    }

    #[test]
    fn a_panic_inside_the_namespace_reaches_the_caller() {
        let Some(ns) = create_for_test() else {
            return;
        };
        let name = ns.name().to_owned();
        let caught = std::panic::catch_unwind(|| run_in(&name, || panic!("inside")));
        assert!(caught.is_err());
        drop(ns);
        assert!(!exists(&name));
    }
}
