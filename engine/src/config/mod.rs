//! Engine configuration: `nocturne.toml`, its flag and environment
//! overrides, and the resolved, validated [`Config`] the engine runs with.
//!
//! ```text
//!  nocturne.toml ──file::parse──▶ FileConfig ─┐   (typed values, unknown keys
//!  (or the embedded default.toml)             │    refused with key + line:col)
//!  --flags / NOCTURNE_* ──cli──▶ Overrides ───┼──resolve──▶ Config
//!  sched_getaffinity ──cores::allowed_cores───┘   (defaults, cross-checks,
//!                                                  core placement rules)
//! ```
//!
//! Precedence, highest first: a command-line flag, its `NOCTURNE_*`
//! environment variable, the file, the built-in default. The schema is
//! documented key by key in `docs/configuration.md`.
//!
//! * [`units`] — `"10s"` durations and `"1MiB"` sizes.
//! * [`cores`] — `"0,2-3"` core sets and the allowed core set.
//! * [`error`] — [`ConfigError`] and source locations.
//! * `file` — the TOML schema as written.
//! * [`overrides`] — flag values and `--set FUNCTION.KEY=VALUE` patches.
//! * `resolve` — defaults and validation, file + overrides → [`Config`].

pub mod cores;
pub mod error;
mod file;
pub mod overrides;
mod resolve;
mod to_toml;
pub mod units;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use cores::{allowed_cores, CoreSet, CoreSetError};
pub(crate) use error::closest;
pub use error::{ConfigError, ConfigWarning, Location};
pub use file::parse_listen;
pub use overrides::{parse_set_list, FunctionOverride, OverrideSource, Overrides};
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// The embedded default configuration: the built-in example functions on
/// 127.0.0.1:8080. `nocturne config default` prints it.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default.toml");

/// Names of the functions built into the `nocturne` binary (run as
/// `nocturne worker NAME`), valid values of a function's `builtin` key.
pub const BUILTIN_FUNCTIONS: &[&str] = nocturne_functions::builtin::NAMES;

/// Environment variable names starting with this are reserved for the
/// engine–worker contract (`NOCTURNE_CONTROL_FD`, `NOCTURNE_FUNCTION`, …);
/// a function's `env` table may not set them.
pub const RESERVED_ENV_PREFIX: &str = "NOCTURNE_";

/// Built-in defaults of the top-level settings.
pub mod defaults {
    use super::*;

    pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
    pub const NET: NetBackend = NetBackend::Kernel;
    pub const POLL: PollMode = PollMode::Adaptive;
    /// `spin_us` of an adaptive loop with a core of its own (it spins).
    pub const SPIN_US: u64 = 50;
    /// `spin_us` of an adaptive loop whose core workers may share: it
    /// yields while it polls, so polling longer costs them nothing, and it
    /// saves the wake-up from epoll that a request arriving after a short
    /// budget pays. On the 2-core VM (client alone on core 0, io loop and
    /// workers on core 1, `bench compare`) the chain's p50 at 8 k requests/s
    /// went from 59.6 µs (p90 112) with 50 µs to 32–37 µs (p90 34–59) in
    /// three runs with 500 µs.
    pub const SPIN_US_YIELDING: u64 = 500;
    /// `spin_max_us`: an adaptive loop polls through gaps between arrivals
    /// up to this long instead of sleeping in epoll after `spin_us`. On the
    /// 2-core VM (`bench compare`'s placement, 1375 requests/s, gaps of
    /// 727 µs) the chain's p50 went from 97–134 µs without the stretch to
    /// 43–50 µs with it (docs/operations.md, "Low rates").
    pub const SPIN_MAX_US: u64 = 2_000;
    /// `worker_spin_us` of yielding workers (shared cores: yield briefly).
    pub const WORKER_SPIN_US: u64 = 50;
    /// `worker_spin_us` of spinning workers: each has a core of its own, so
    /// spinning costs nothing but power, while a park costs the engine a
    /// futex wake (a system call and an IPI, ≈ 1.5 µs of the io core per
    /// call, measured on a 16-core host) for every call that finds the worker
    /// asleep. With 8 workers sharing 80 k calls/s, each sees a call every
    /// ≈ 100 µs: a 50 µs budget parked them between nearly every call.
    pub const WORKER_SPIN_US_OWN_CORE: u64 = 2_000;
    /// `delegate_wakes`: yielding workers share their core loop's wake board.
    pub const DELEGATE_WAKES: bool = true;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_HEADER_BYTES: usize = 8 << 10;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

    // Per function.
    pub const MIN_WORKERS: usize = 1;
    /// `max_workers` defaults to this, or to `min_workers` when that is more.
    pub const MAX_WORKERS: usize = 4;
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_PAYLOAD: usize = 1 << 20;
    pub const ALLOW_GET: bool = false;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_QUEUE: usize = 1024;
    pub const MAX_CALL_DEPTH: u32 = 16;
    pub const CONCURRENCY_COEF: f64 = 1.0;
}

/// Upper bounds that catch unit mistakes and keep values representable.
pub mod limits {
    use std::time::Duration;

    /// `spin_us`, `worker_spin_us`: one second of spinning is never a good idea.
    pub const MAX_SPIN_US: u64 = 1_000_000;
    pub const MIN_HEADER_BYTES: usize = 1 << 10;
    pub const MAX_HEADER_BYTES: usize = 1 << 20;
    pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const MAX_FUNCTION_NAME: usize = 64;
    pub const MAX_WORKERS: usize = 1024;
    /// Core loops are numbered in a call id's top byte.
    pub const MAX_IO_CORES: usize = 256;
    /// A call's deadline travels as 32-bit microseconds in the IPC header:
    /// a shorter one would reach the worker as 0.
    pub const MIN_TIMEOUT: Duration = Duration::from_micros(1);
    /// A call's deadline travels as 32-bit microseconds in the IPC header.
    pub const MAX_TIMEOUT: Duration = Duration::from_micros(u32::MAX as u64);
    /// A payload and its query string (up to `MAX_HEADER_BYTES`) share a
    /// worker's arena of at most 1 GiB (`nocturne_ipc`'s `MAX_ARENA_BYTES`).
    pub const MAX_PAYLOAD: usize = (1 << 30) - 2 * MAX_HEADER_BYTES;
    pub const MAX_QUEUE: usize = 1 << 20;
    pub const MAX_CALL_DEPTH: u32 = 1024;
    pub const MAX_CONCURRENCY_COEF: f64 = 1000.0;
}

/// The network stack that carries HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    /// Kernel TCP sockets (mio, SO_REUSEPORT listener per io core).
    Kernel,
    /// smoltcp, a userspace TCP stack, over a TAP device or an AF_PACKET raw
    /// socket (`--tap`/`--raw`, `--ip`).
    Smoltcp,
}

/// Where the smoltcp backend gets its frames and which address it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmoltcpConfig {
    /// A TAP device (created if missing) or an existing interface for an
    /// AF_PACKET raw socket.
    pub device: nocturne_net::DeviceSpec,
    /// The engine's own address and subnet, e.g. 192.0.2.2/24.
    pub address: nocturne_net::Ipv4Cidr,
    /// Next hop for clients outside the subnet.
    pub gateway: Option<Ipv4Addr>,
}

/// How an io core loop waits when it has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Never sleep; needs io cores of their own.
    Spin,
    /// Spin for --spin-us (up to --spin-max-us while requests come closer), then sleep in epoll on sockets and ring doorbells.
    Adaptive,
    /// Sleep in epoll at once (Nightcore-like; lowest CPU, highest latency).
    Block,
}

/// How a worker process waits for its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPoll {
    /// Spin for --worker-spin-us, then park; needs a core per worker.
    Spin,
    /// sched_yield for --worker-spin-us, then park; right on shared cores.
    Yield,
    /// Park on a futex at once.
    Park,
}

impl NetBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NetBackend::Kernel => "kernel",
            NetBackend::Smoltcp => "smoltcp",
        }
    }
}

impl PollMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PollMode::Spin => "spin",
            PollMode::Adaptive => "adaptive",
            PollMode::Block => "block",
        }
    }
}

impl WorkerPoll {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPoll::Spin => "spin",
            WorkerPoll::Yield => "yield",
            WorkerPoll::Park => "park",
        }
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// The embedded `default.toml`.
    Embedded,
    /// A file, as the user named it.
    File(PathBuf),
}

impl ConfigOrigin {
    /// How errors and summaries name it.
    pub fn name(&self) -> String {
        match self {
            ConfigOrigin::Embedded => "<embedded default>".to_owned(),
            ConfigOrigin::File(path) => path.display().to_string(),
        }
    }
}

/// A fully resolved and validated engine configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub origin: ConfigOrigin,
    /// The cores this process may run on (`sched_getaffinity` at start).
    /// Ascending.
    pub allowed_cores: Vec<usize>,
    /// HTTP listen address.
    pub listen: SocketAddr,
    pub net: NetBackend,
    /// Present exactly when `net` is `smoltcp`.
    pub smoltcp: Option<SmoltcpConfig>,
    /// One core loop per core, pinned; ascending, non-empty, distinct.
    /// Default: the last allowed core.
    pub io_cores: Vec<usize>,
    /// Cores worker processes are pinned to; `None`: not pinned (they
    /// inherit `allowed_cores`). With `poll = spin` and no explicit set this
    /// is the allowed cores minus the io cores. Ascending, non-empty.
    pub worker_cores: Option<Vec<usize>>,
    pub poll: PollMode,
    /// `adaptive`: how long an idle io loop spins before it sleeps in epoll.
    pub spin_us: u64,
    /// `adaptive`: the longest the loop stretches `spin_us` to while
    /// requests arrive closer than that (at or below `spin_us`: never).
    pub spin_max_us: u64,
    /// Resolved: `spin` only when every worker has a core of its own (see
    /// [`Config::worker_cores_reserved`]), else `yield`, unless given.
    pub worker_poll: WorkerPoll,
    /// `spin`/`yield`: how long an idle worker spins or yields before parking.
    pub worker_spin_us: u64,
    /// Whether yielding workers of a core loop share a wake board, so that a
    /// wake-up of a sleeping worker is done by a worker awake on its core
    /// instead of across cores by the engine (docs/architecture.md,
    /// "Delegated wakes on a shared core"). Only yielding workers that
    /// share one core are seated ([`Config::delegates_wakes`]); off, every
    /// wake is the engine's own.
    pub delegate_wakes: bool,
    /// Open connections across all io cores; more are answered 503. The
    /// engine lowers it at start where the open-files limit cannot hold it
    /// (`fd_limit`).
    pub max_connections: usize,
    /// Request line + headers; more is answered 431.
    pub max_header_bytes: usize,
    /// On shutdown, how long in-flight calls get to finish.
    pub drain_timeout: Duration,
    /// A connection must deliver a whole request head within this (slow
    /// clients get 408 and are closed).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// In file order; names are unique.
    pub functions: Vec<FunctionConfig>,
    /// Settings that are accepted but have no effect or may not do what
    /// they seem to; printed by `serve` and the `config` tools.
    pub warnings: Vec<ConfigWarning>,
}

/// One function, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    /// `[a-z0-9_-]+`, unique; the route is `/function/NAME`.
    pub name: String,
    pub source: FunctionSource,
    /// Workers kept running even when idle, per engine.
    pub min_workers: usize,
    /// Most workers at once, per engine; the concurrency limit is clamped
    /// to `[min_workers, max_workers]`.
    pub max_workers: usize,
    /// Deadline of one call, from arrival to completion (504 past it).
    pub timeout: Duration,
    /// Largest request body (413 above it).
    pub max_payload: usize,
    /// Whether `GET /function/NAME` is served (else 405).
    pub allow_get: bool,
    /// Extra environment of the worker processes.
    pub env: BTreeMap<String, String>,
    /// An idle worker above `min_workers` exits after this long.
    pub idle_timeout: Duration,
    /// Calls waiting for a worker; past it calls are answered 503.
    pub max_queue: usize,
    /// Longest chain of internal calls through this function.
    pub max_call_depth: u32,
    /// Little's law coefficient: limit = coef × service time × arrival rate.
    pub concurrency_coef: f64,
}

impl FunctionConfig {
    /// The HTTP methods `/function/NAME` serves, as the summary and the
    /// start-up log say them.
    pub fn methods(&self) -> &'static str {
        if self.allow_get {
            "POST, GET, HEAD"
        } else {
            "POST"
        }
    }
}

/// What runs a function's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionSource {
    /// A function built into `nocturne` (one of [`BUILTIN_FUNCTIONS`]),
    /// run as `nocturne worker NAME`.
    Builtin(String),
    /// An argv, run without a shell. A program path containing `/` is
    /// resolved against the config file's directory (the working directory
    /// for `--set`); a bare name is checked in `PATH` at load and looked
    /// up again when spawned.
    Command(Vec<String>),
}

impl Config {
    /// Loads `path` (or the embedded default), applies `overrides` and
    /// resolves against `allowed_cores` (see [`allowed_cores()`]).
    pub fn load(
        path: Option<&Path>,
        overrides: &Overrides,
        allowed_cores: &[usize],
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
                    path: path.to_owned(),
                    err,
                })?;
                Config::from_toml(
                    &text,
                    ConfigOrigin::File(path.to_owned()),
                    overrides,
                    allowed_cores,
                )
            }
            None => Config::from_toml(
                DEFAULT_CONFIG_TOML,
                ConfigOrigin::Embedded,
                overrides,
                allowed_cores,
            ),
        }
    }

    /// Parses `text`, applies `overrides` and resolves against
    /// `allowed_cores`. Relative command paths are resolved against the
    /// directory of a [`ConfigOrigin::File`], else the working directory.
    pub fn from_toml(
        text: &str,
        origin: ConfigOrigin,
        overrides: &Overrides,
        allowed_cores: &[usize],
    ) -> Result<Config, ConfigError> {
        let file = file::parse(&origin.name(), text)?;
        resolve::resolve(file, text, origin, overrides, allowed_cores)
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionConfig> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The most worker processes that can run at once: Σ `max_workers`.
    pub fn total_max_workers(&self) -> usize {
        self.functions.iter().map(|f| f.max_workers).sum()
    }

    /// `Ok` when every worker can have a core of its own, the condition for
    /// `worker_poll = spin`: worker cores are set, disjoint from the io
    /// cores, and at least Σ `max_workers` of them. Otherwise why not.
    pub fn worker_cores_reserved(&self) -> Result<(), String> {
        resolve::workers_have_own_cores(
            &self.io_cores,
            self.worker_cores.as_deref(),
            self.total_max_workers(),
        )
    }

    /// Whether worker processes may run on an io core: their core set
    /// overlaps the io cores, or they are not pinned at all. An adaptive
    /// core loop then yields the core while it polls instead of spinning, so
    /// that a worker scheduled beside it runs at once instead of after the
    /// loop's time slice.
    pub fn io_shares_workers(&self) -> bool {
        resolve::io_shares_workers(&self.io_cores, self.worker_cores.as_deref())
    }

    /// How the summary says `spin_max_us`: empty when it never stretches
    /// the budget.
    fn spin_stretch(&self) -> String {
        if self.spin_max_us > self.spin_us {
            format!(", up to {}us while requests come closer", self.spin_max_us)
        } else {
            String::new()
        }
    }

    /// Whether the core loops seat their workers on wake boards: with
    /// `delegate_wakes`, for yielding workers that share one core
    /// (`worker_cores` of one core). A board is for consumers of one core:
    /// a poller on another core would wake across cores, as the engine
    /// does, and a worker parked beside it would have polled its call up
    /// itself (measured only with one core: docs/benchmarks.md).
    pub fn delegates_wakes(&self) -> bool {
        self.delegate_wakes
            && resolve::wake_board_applies(self.worker_poll, self.worker_cores.as_deref())
    }

    /// The io cores whose loops run function `f`'s workers, when that is
    /// not every loop: `max_workers` is split over the loops, the first
    /// taking the remainder, so with fewer workers than loops only the
    /// first `max_workers` loops have any (the others forward its calls).
    pub fn worker_loops(&self, f: usize) -> Option<&[usize]> {
        let max = self.functions[f].max_workers;
        (max < self.io_cores.len()).then(|| &self.io_cores[..max])
    }

    /// A human summary: where it came from, listen address, cores and poll
    /// modes, and one line per function.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "config        {}", self.origin.name())?;
        writeln!(
            out,
            "listen        {} ({} sockets)",
            self.listen,
            self.net.as_str()
        )?;
        writeln!(
            out,
            "cores         allowed {}; io {}; workers {}",
            CoreSet::format(&self.allowed_cores),
            CoreSet::format(&self.io_cores),
            match &self.worker_cores {
                Some(cores) => CoreSet::format(cores),
                None => format!("not pinned ({})", CoreSet::format(&self.allowed_cores)),
            }
        )?;
        let io_wait = match self.poll {
            PollMode::Spin => "never sleeps".to_owned(),
            PollMode::Adaptive if self.io_shares_workers() => format!(
                "polls {}us yielding to the workers on its cores{}, then epoll",
                self.spin_us,
                self.spin_stretch()
            ),
            PollMode::Adaptive => format!(
                "spins {}us{}, then epoll",
                self.spin_us,
                self.spin_stretch()
            ),
            PollMode::Block => "sleeps in epoll".to_owned(),
        };
        writeln!(out, "poll          {} ({io_wait})", self.poll.as_str())?;
        let worker_wait = match self.worker_poll {
            WorkerPoll::Spin => format!("spins {}us, then parks", self.worker_spin_us),
            WorkerPoll::Yield => format!(
                "yields {}us, then parks{}",
                self.worker_spin_us,
                if self.delegates_wakes() {
                    ", wakes delegated on the shared core"
                } else {
                    ""
                }
            ),
            WorkerPoll::Park => "parks at once".to_owned(),
        };
        let placement = match self.worker_cores_reserved() {
            Ok(()) => "every worker has a core of its own".to_owned(),
            Err(why) => why,
        };
        writeln!(
            out,
            "worker poll   {} ({worker_wait}; {placement})",
            self.worker_poll.as_str()
        )?;
        writeln!(
            out,
            "limits        max_connections {}, max_header_bytes {}, drain_timeout {}",
            self.max_connections,
            format_size(self.max_header_bytes as u64),
            format_duration(self.drain_timeout)
        )?;
        writeln!(
            out,
            "timeouts      header_timeout {}, keepalive_timeout {}",
            format_duration(self.header_timeout),
            format_duration(self.keepalive_timeout)
        )?;
        writeln!(out, "functions     {}", self.functions.len())?;
        let width = self
            .functions
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0);
        for (i, f) in self.functions.iter().enumerate() {
            let source = match &f.source {
                FunctionSource::Builtin(name) => format!("builtin {name}"),
                FunctionSource::Command(argv) => format!("command {argv:?}"),
            };
            let placement = match self.worker_loops(i) {
                Some(cores) => format!(" on the loops of io cores {cores:?} (the others forward)"),
                None => String::new(),
            };
            write!(
                out,
                "  {:width$}  {source}; workers {}..{}{placement}; timeout {}; max_payload {}; {}",
                f.name,
                f.min_workers,
                f.max_workers,
                format_duration(f.timeout),
                format_size(f.max_payload as u64),
                f.methods(),
            )?;
            if !f.env.is_empty() {
                // Escaped: a name is any string, control characters included.
                let keys: Vec<String> =
                    f.env.keys().map(|k| k.escape_debug().to_string()).collect();
                write!(out, "; env {}", keys.join(", "))?;
            }
            writeln!(out)?;
            writeln!(
                out,
                "  {:width$}  idle_timeout {}; max_queue {}; max_call_depth {}; concurrency_coef {}",
                "",
                format_duration(f.idle_timeout),
                f.max_queue,
                f.max_call_depth,
                f.concurrency_coef,
            )?;
        }
        Ok(())
    }
}
