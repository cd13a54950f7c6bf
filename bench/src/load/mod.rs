//! `nocturne bench load`: an open-loop HTTP load generator for µs-scale
//! services, with latencies corrected for coordinated omission.
//!
//! ```text
//!  LoadArgs ──▶ LoadSettings { LoadPlan, rates, SLOs, outputs }
//!                   │ for each rate (a sweep stops at the first that misses the SLO)
//!                   ▼
//!  run::run_rate ── probe (baseline) ──▶ client threads (client), each:
//!                   schedule ─▶ dispatch ─▶ keep-alive connections (mio + timerfd)
//!                   ◀── ThreadResult (HdrHistograms, counters) ──┘
//!                   ▼
//!  RateResult ──▶ output (table, docs/design.md §7 JSON, .hgrm) ──▶ plot (SVG)
//! ```
//!
//! Every request has an *intended* send time from a pure arrival schedule
//! ([`schedule`]: fixed or Poisson, split over the client threads). Its
//! latency is measured from that time, not from when it was actually
//! written, so a server stall is charged to every request that should have
//! been sent during it, as wrk2 does, but with nanosecond timers and
//! microsecond-resolution histograms (wrk2 resolves about 1 ms). The
//! service time from the actual send is recorded beside it. A request due
//! while all connections are busy waits for the first free one; the others
//! keep sending on schedule. See `docs/benchmarks.md` for how to read the
//! output.
//!
//! Modules: [`spec`] (rates, sweeps, durations, objectives), [`schedule`],
//! [`target`] (URLs, resolution, request bytes, `--mix` files), [`http`]
//! (response framing), `client` (the per-thread loop), [`run`] (one rate),
//! [`baseline`] (the probe and the ping-pong baseline), [`echo`] (a
//! trivial echo server to calibrate against), [`progress`] (the live line
//! on a terminal), [`output`], [`plot`].

pub mod baseline;
pub mod echo;
pub mod http;
pub mod interrupt;
pub mod output;
pub mod plot;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod target;

mod client;
mod sys;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use baseline::{pingpong, pingpong_until, PingPong, PingPongPlan, ProbeError};
pub use client::{LiveCounters, PollMode, SocketErrors};
pub use echo::{run_echo_server, EchoPoll, EchoServer, EchoServerArgs};
pub use interrupt::Phase;
pub use run::{probe, run_rate, KindResult, RateResult};
pub use schedule::{Arrival, ArrivalSchedule, KindPicker};
pub use spec::{Percentile, Slo, SpecError};
pub use target::{MixError, RequestSpec, TargetError, Targets, Url, UrlError};

use crate::pin::{CoreListError, PinError};
use crate::range::DurationRange;
use crate::report::{Machine, Report};

/// `nocturne bench load` options.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    nocturne bench load http://127.0.0.1:8080/function/echo --rate 20k --duration 10s\n  \
    nocturne bench load http://127.0.0.1:8080/function/foo --rate 10k..100k/10k --slo p99=200us --plot sweep.svg\n  \
    nocturne bench load http://127.0.0.1:8080/ --mix mix.toml --rate 5k --arrival poisson --json out.json")]
pub struct LoadArgs {
    /// Target URLs, http://HOST[:PORT]/PATH: the port defaults to 80, and
    /// HOST is an IP ([::1] for IPv6) or a name, resolved before the run
    /// (within --connect-timeout). With several URLs,
    /// each request goes to one of them at random (equal weights). With
    /// --mix, give at most one: its host and port serve the mix's `path`
    /// entries, and its own path is ignored (a mix `path` is absolute;
    /// `url` entries name their own server).
    // This text is clap's help too, where `\[` would show its backslash:
    // rustdoc may not read `[:PORT]` and `[::1]` as links, here only.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// Offered rate in requests/s: 20000, 20k, 1.5M, a list 1k,5k,20k or a
    /// sweep START..END/STEP (e.g. 10k..200k/10k). Required, except with
    /// --pingpong N alone (the baseline without load). Each rate [range:
    /// 0.001..=1000000000].
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Measurement window per rate (e.g. 10s, 500ms) [default: 10s]
    /// [range: 1ms..=86400s].
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Warm-up before each window: sent on schedule, not recorded
    /// [default: 1s] [range: 0s..=86400s].
    #[arg(long, value_name = "DURATION")]
    pub warmup: Option<String>,
    /// Keep-alive connections in all, split over the client threads
    /// [default: 16, or threads × targets if more] [range: 1..=1000000].
    /// Each is an open file: the soft RLIMIT_NOFILE is raised to the hard
    /// limit if needed, and a run that would still not fit is refused.
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Client threads; each owns its connections and a share of the rate
    /// [default: 1] [range: 1..=1024].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Cores to pin the client threads to (thread i on the i-th, cycling), e.g. 0 or 2-3.
    #[arg(long, value_name = "CORES")]
    pub cores: Option<String>,
    /// Arrival process of the intended send times [default: fixed].
    #[arg(long, value_enum, value_name = "KIND")]
    pub arrival: Option<Arrival>,
    /// HTTP method.
    #[arg(long, default_value = "POST", value_name = "METHOD")]
    pub method: String,
    /// Request body (inline).
    #[arg(long, conflicts_with = "body_file", value_name = "TEXT")]
    pub body: Option<String>,
    /// Request body read from a file.
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Extra request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// A TOML file of weighted request kinds (see docs/benchmarks.md).
    #[arg(long, value_name = "PATH")]
    pub mix: Option<PathBuf>,
    /// Requests in flight per connection (HTTP pipelining); 1 = none
    /// [default: 1] [range: 1..=1024].
    #[arg(long, value_name = "N")]
    pub pipeline: Option<usize>,
    /// How client threads wait: spin (dedicated cores), adaptive (spin
    /// --spin-us around activity, then sleep) or block [default: adaptive].
    #[arg(long, value_enum, value_name = "MODE")]
    pub poll: Option<PollMode>,
    /// Spin budget of --poll adaptive, µs [default: 50] [range: 0..=1000000].
    #[arg(long, value_name = "US")]
    pub spin_us: Option<u64>,
    /// A request unanswered this long counts as a timeout, and so does an
    /// answer that comes later (also the probe's limit and the drain after
    /// the window) [range: 1ms..=3600s].
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub timeout: String,
    /// Limit for each connection attempt and for name resolution
    /// [range: 1ms..=3600s].
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub connect_timeout: String,
    /// Seed of the Poisson arrivals and the mix's choices (any 64-bit
    /// number) [default: 1].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Latency objectives, e.g. p99=100us or p50=20us,p99.9=1ms; a sweep
    /// reports the highest rate that meets them (with no errors), and the
    /// exit status is non-zero when none does.
    #[arg(long, value_name = "OBJECTIVES")]
    pub slo: Option<String>,
    /// Run every rate of a sweep, not stopping at the first that misses the SLO.
    #[arg(long)]
    pub keep_going: bool,
    /// Count non-2xx answers (of the window, the probe and the --pingpong
    /// baseline) without failing the run or missing the objectives.
    #[arg(long)]
    pub allow_errors: bool,
    /// Before the run, time N blocking back-to-back round trips on one
    /// connection (the baseline the generator's overhead is measured
    /// against); without --rate, only the baseline runs, and the options
    /// of open-loop load are refused [range: 0..=1000000000].
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub pingpong: u64,
    /// Write the HdrHistogram percentile spectrum (.hgrm); with several
    /// rates, one file per rate that ran (STEM.RATE.hgrm).
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,
    /// Write the report as JSON (schema: docs/design.md §7).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an SVG latency-vs-throughput plot of the rates run.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// No progress line (it goes to stderr, and only when that is a
    /// terminal). The results table goes to stdout once either way: whole
    /// at the end for one rate, a row as each rate finishes for several.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// The accepted ranges of `bench load`'s numeric options (the help states
/// each in the same words).
pub mod ranges {
    use std::time::Duration;

    use crate::range::{DecimalRange, DurationRange, IntRange};

    /// Each rate of `--rate`: the least one the reports tell apart from 0
    /// (they print rates to three decimals), up to one request per
    /// nanosecond (send times are whole nanoseconds).
    pub const RATE: DecimalRange = DecimalRange::new("rate", 0.001, 1e9);
    /// `--threads`.
    pub const THREADS: IntRange = IntRange::new("threads", 1, 1024);
    /// `--connections`.
    pub const CONNECTIONS: IntRange = IntRange::new("connections", 1, 1_000_000);
    /// `--pipeline`.
    pub const PIPELINE: IntRange = IntRange::new("pipeline", 1, 1024);
    /// `--spin-us`.
    pub const SPIN_US: IntRange = IntRange::new("spin-us", 0, 1_000_000);
    /// `--pingpong`.
    pub const PINGPONG: IntRange = IntRange::new("pingpong", 0, 1_000_000_000);
    /// `--duration`.
    pub const DURATION: DurationRange = DurationRange::new(
        "duration",
        Duration::from_millis(1),
        Duration::from_secs(86_400),
    );
    /// `--warmup`.
    pub const WARMUP: DurationRange =
        DurationRange::new("warmup", Duration::ZERO, Duration::from_secs(86_400));
    /// `--timeout`.
    pub const TIMEOUT: DurationRange = DurationRange::new(
        "timeout",
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    /// `--connect-timeout`.
    pub const CONNECT_TIMEOUT: DurationRange = DurationRange::new(
        "connect-timeout",
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    /// Every integer range, for the help test.
    pub const INTS: [IntRange; 5] = [THREADS, CONNECTIONS, PIPELINE, SPIN_US, PINGPONG];
    /// Every duration range, for the help test.
    pub const DURATIONS: [DurationRange; 4] = [DURATION, WARMUP, TIMEOUT, CONNECT_TIMEOUT];
    /// Every decimal range, for the help test.
    pub const DECIMALS: [DecimalRange; 1] = [RATE];
}

/// How to generate load, independent of the rate: everything a run at one
/// rate needs. Build one with [`LoadPlan::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// What to send where.
    pub targets: Targets,
    /// Measurement window.
    pub duration: Duration,
    /// Warm-up before the window (sent on schedule, not recorded).
    pub warmup: Duration,
    /// Connections in all.
    pub connections: usize,
    /// Client threads.
    pub threads: usize,
    /// Cores for the client threads (empty: not pinned).
    pub cores: Vec<usize>,
    /// Arrival process.
    pub arrival: Arrival,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// How client threads wait.
    pub poll: PollMode,
    /// Spin budget of [`PollMode::Adaptive`].
    pub spin: Duration,
    /// Per-request timeout, probe limit and drain.
    pub timeout: Duration,
    /// Connect (and resolve) limit.
    pub connect_timeout: Duration,
    /// Seed of Poisson arrivals and mix choices.
    pub seed: u64,
    /// Whether non-2xx answers are expected (the probe accepts them).
    pub allow_errors: bool,
    /// End the window in progress when a signal caught by
    /// `engine::sys::catch_interrupts` arrives (the command sets it; a
    /// library caller that did not install the handler leaves it off).
    pub stop_on_signal: bool,
}

impl LoadPlan {
    /// A plan with the command line's defaults: 1 s warm-up, 10 s window,
    /// one thread, 16 connections (at least one per endpoint), fixed
    /// arrivals, no pipelining, adaptive polling with 50 µs of spinning,
    /// 2 s timeouts.
    pub fn new(targets: Targets) -> Self {
        let connections = 16.max(targets.endpoints.len());
        Self {
            targets,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections,
            threads: 1,
            cores: Vec::new(),
            arrival: Arrival::Fixed,
            pipeline: 1,
            poll: PollMode::Adaptive,
            spin: Duration::from_micros(50),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            seed: 1,
            allow_errors: false,
            stop_on_signal: false,
        }
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |s: String| Err(LoadError::Invalid(s));
        if self.targets.kinds.is_empty() {
            return bad("no request kinds".into());
        }
        if self.threads == 0 {
            return bad("--threads must be at least 1".into());
        }
        let need = self.threads * self.targets.endpoints.len();
        if self.connections < need {
            return bad(format!(
                "--connections {} is too few: each of the {} threads needs one per target server ({} servers), so at least {need}",
                self.connections,
                self.threads,
                self.targets.endpoints.len()
            ));
        }
        if self.pipeline == 0 {
            return bad("--pipeline must be at least 1".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive".into());
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be positive".into());
        }
        Ok(())
    }
}

/// Everything `nocturne bench load` was asked to do, validated.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// How to generate load.
    pub plan: LoadPlan,
    /// The rates to run, in order.
    pub rates: Vec<f64>,
    /// Latency objectives.
    pub slo: Vec<Slo>,
    /// Run every rate even after one missed the objectives.
    pub keep_going: bool,
    /// Ping-pong baseline round trips (0: none).
    pub pingpong: u64,
    /// `.hgrm` output.
    pub hgrm: Option<PathBuf>,
    /// JSON report output.
    pub json: Option<PathBuf>,
    /// SVG plot output.
    pub plot: Option<PathBuf>,
    /// Show a progress line (on a terminal).
    pub progress: bool,
    /// What the command should warn about before it runs (options that
    /// are accepted but do less than they may seem to).
    pub warnings: Vec<String>,
}

/// Why the command line does not describe a run.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A rate, duration or objective does not parse.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A URL does not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The mix file is unusable.
    #[error(transparent)]
    Mix(#[from] MixError),
    /// A host does not resolve or a request cannot be built.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--cores` does not parse.
    #[error("--cores: {0}")]
    Cores(#[from] CoreListError),
    /// `--cores` names a core this process may not use.
    #[error("--cores: {0}")]
    Pin(#[from] PinError),
    /// The body file cannot be read.
    #[error("cannot read --body-file {path}: {source}")]
    BodyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A number outside its option's range.
    #[error(transparent)]
    Range(#[from] crate::range::RangeError),
    /// Options that contradict each other.
    #[error("{0}")]
    Invalid(String),
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The probe before the run failed: the target is unusable.
    #[error("target check for {kind:?} failed: {source}")]
    Probe {
        /// The request kind probed.
        kind: String,
        /// What went wrong.
        source: ProbeError,
    },
    /// The probe was answered with a non-2xx status.
    #[error("target check for {kind:?}: {addr} answered {status} (pass --allow-errors to load-test it anyway)")]
    ProbeStatus {
        /// The request kind probed.
        kind: String,
        /// The server.
        addr: SocketAddr,
        /// The status.
        status: u16,
    },
    /// A client connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Pinning a client thread failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// epoll, timerfd or a thread could not be created.
    #[error("setting up the client failed: {0}")]
    Setup(io::Error),
    /// The ping-pong baseline failed.
    #[error("ping-pong baseline: {source}")]
    Baseline {
        /// What went wrong.
        source: ProbeError,
    },
    /// The ping-pong baseline got a non-2xx answer.
    #[error("ping-pong baseline: the server answered {0}")]
    BaselineStatus(u16),
    /// A client thread panicked (a bug).
    #[error("a client thread panicked")]
    ThreadPanicked,
    /// A client thread was told to stop before the run (another failed).
    #[error("aborted because another client thread failed")]
    Aborted,
    /// A signal (Ctrl-C) stopped the run (only with
    /// [`LoadPlan::stop_on_signal`]).
    #[error("interrupted {0}")]
    Interrupted(Phase),
}

impl LoadSettings {
    /// Validates the command line: parses every value, reads the body and
    /// mix files, resolves the hosts, checks the cores.
    pub fn from_args(args: &LoadArgs) -> Result<Self, SettingsError> {
        let pingpong = ranges::PINGPONG.check(args.pingpong)?;
        let rates = match &args.rate {
            Some(text) => {
                let rates = spec::parse_rates(text)?;
                check_rates(text, &rates)?;
                rates
            }
            None if pingpong > 0 => {
                refuse_open_loop_options(args)?;
                Vec::new()
            }
            None => return Err(SettingsError::Invalid(
                "give --rate (e.g. --rate 20k), or --pingpong N for the ping-pong baseline alone"
                    .into(),
            )),
        };
        let duration_in = |range: DurationRange, text: &str| {
            let d = spec::parse_duration(text)?;
            Ok::<_, SettingsError>(range.check(d, text)?)
        };
        let duration = duration_in(ranges::DURATION, args.duration.as_deref().unwrap_or("10s"))?;
        let warmup = duration_in(ranges::WARMUP, args.warmup.as_deref().unwrap_or("1s"))?;
        let timeout = duration_in(ranges::TIMEOUT, &args.timeout)?;
        let connect_timeout = duration_in(ranges::CONNECT_TIMEOUT, &args.connect_timeout)?;
        let threads = ranges::THREADS.check_usize(args.threads.unwrap_or(1))?;
        let pipeline = ranges::PIPELINE.check_usize(args.pipeline.unwrap_or(1))?;
        let spin_us = ranges::SPIN_US.check(args.spin_us.unwrap_or(50))?;
        if let Some(n) = args.connections {
            ranges::CONNECTIONS.check_usize(n)?;
        }
        // A window shorter than one gap measures nothing (or one request,
        // reported as a wild rate): refuse it rather than report it.
        if let Some(&rate) = rates.iter().find(|&&r| r * duration.as_secs_f64() < 1.0) {
            return Err(SettingsError::Invalid(format!(
                "--rate {}/s with --duration {} offers less than one request per window: \
                 make the window at least {}",
                spec::format_rate(rate),
                spec::format_duration(duration),
                spec::format_duration(Duration::from_secs_f64(1.0 / rate).max(duration))
            )));
        }
        check_outputs_differ(&[
            ("--json", &args.json),
            ("--hgrm", &args.hgrm),
            ("--plot", &args.plot),
        ])?;
        let slo = match &args.slo {
            Some(s) => Slo::parse_list(s)?,
            None => Vec::new(),
        };
        let urls = args
            .urls
            .iter()
            .map(|u| Url::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match (&args.body, &args.body_file) {
            (Some(b), _) => b.clone().into_bytes(),
            (None, Some(path)) => {
                std::fs::read(path).map_err(|source| SettingsError::BodyFile {
                    path: path.clone(),
                    source,
                })?
            }
            (None, None) => Vec::new(),
        };
        let mut warnings = Vec::new();
        let specs = match &args.mix {
            Some(mix) => {
                if args.body.is_some() || args.body_file.is_some() {
                    return Err(SettingsError::Invalid(
                        "--body/--body-file and --mix exclude each other: give bodies in the mix"
                            .into(),
                    ));
                }
                if urls.len() > 1 {
                    return Err(SettingsError::Invalid(
                        "with --mix, give at most one URL (host and port for the mix's paths)"
                            .into(),
                    ));
                }
                if let Some(url) = urls.first().filter(|u| u.path != "/") {
                    warnings.push(format!(
                        "with --mix, the path of {} ({}) is ignored: only its host and port \
                         serve the mix's `path` entries, which are absolute",
                        args.urls[0], url.path
                    ));
                }
                target::read_mix(mix, urls.first(), &args.method, &args.headers)?
            }
            None => {
                if urls.is_empty() {
                    return Err(SettingsError::Invalid(
                        "give a target URL (e.g. http://127.0.0.1:8080/function/echo) or --mix"
                            .into(),
                    ));
                }
                urls.iter()
                    .map(|url| RequestSpec {
                        name: None,
                        url: url.clone(),
                        method: args.method.clone(),
                        headers: args.headers.clone(),
                        body: body.clone(),
                        weight: 1,
                    })
                    .collect()
            }
        };
        let targets = Targets::build(&specs, connect_timeout)?;
        let cores = match &args.cores {
            Some(list) => {
                let cores = crate::pin::parse_core_list(list)?;
                crate::pin::check_cores(&cores)?;
                cores
            }
            None => Vec::new(),
        };
        let need = threads * targets.endpoints.len();
        let connections = args.connections.unwrap_or(16.max(need));
        ensure_descriptors(connections, threads)?;
        let plan = LoadPlan {
            targets,
            duration,
            warmup,
            connections,
            threads,
            cores,
            arrival: args.arrival.unwrap_or(Arrival::Fixed),
            pipeline,
            poll: args.poll.unwrap_or(PollMode::Adaptive),
            spin: Duration::from_micros(spin_us),
            timeout,
            connect_timeout,
            seed: args.seed.unwrap_or(1),
            allow_errors: args.allow_errors,
            stop_on_signal: true,
        };
        plan.validate()
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        Ok(Self {
            plan,
            rates,
            slo,
            keep_going: args.keep_going,
            pingpong,
            hgrm: args.hgrm.clone(),
            json: args.json.clone(),
            plot: args.plot.clone(),
            progress: !args.quiet,
            warnings,
        })
    }
}

/// Descriptors a run holds besides its connections: stdio, the probe's and
/// the ping-pong baseline's connection, output files, and slack for what
/// the process opened before (a generous round number: running out in the
/// middle of a window would be far worse than asking a little too much).
const SPARE_DESCRIPTORS: u64 = 64;

/// Descriptors a run with `connections` over `threads` client threads
/// needs: one per connection, an epoll and a timerfd per thread, and
/// `SPARE_DESCRIPTORS` (64).
pub fn descriptors_needed(connections: usize, threads: usize) -> u64 {
    connections as u64 + 2 * threads as u64 + SPARE_DESCRIPTORS
}

/// Raises the open-file limit for the run, or refuses the run when even
/// the hard limit is too low: better now than `EMFILE` mid-window.
fn ensure_descriptors(connections: usize, threads: usize) -> Result<(), SettingsError> {
    let need = descriptors_needed(connections, threads);
    // The soft limit in force once raised as far as the hard one allows.
    let limit = nocturne_ipc::open_files::raise_open_files_limit(need)
        .map(|l| l.soft)
        .map_err(|e| {
            SettingsError::Invalid(format!("cannot read or raise the open-file limit: {e}"))
        })?;
    check_descriptors(connections, need, limit)
}

/// The refusal of [`ensure_descriptors`], given the limit in force.
fn check_descriptors(connections: usize, need: u64, limit: u64) -> Result<(), SettingsError> {
    if limit >= need {
        return Ok(());
    }
    Err(SettingsError::Invalid(format!(
        "--connections {connections} needs {need} open files (one per connection, plus the \
         client threads' and {SPARE_DESCRIPTORS} spare), but the open-file limit \
         (RLIMIT_NOFILE) is {limit}, already raised to its hard limit: raise the hard limit \
         (e.g. `ulimit -Hn`, or LimitNOFILE= for a service) or use fewer connections"
    )))
}

/// Every rate of `--rate` (`text`, parsed into `rates`) in
/// [`ranges::RATE`]. The error quotes a list's rate as it was typed, and a
/// sweep whole (its rates were computed).
fn check_rates(text: &str, rates: &[f64]) -> Result<(), crate::range::RangeError> {
    if text.contains("..") {
        for &rate in rates {
            ranges::RATE.check(rate, text)?;
        }
    } else {
        // `parse_rates` keeps a list's order.
        for (&rate, item) in rates.iter().zip(text.split(',')) {
            ranges::RATE.check(rate, item)?;
        }
    }
    Ok(())
}

/// With `--pingpong N` and no `--rate`, only the baseline runs: an option
/// of open-loop load would be silently ignored, so it is refused by name.
fn refuse_open_loop_options(args: &LoadArgs) -> Result<(), SettingsError> {
    let given = [
        ("--duration", args.duration.is_some()),
        ("--warmup", args.warmup.is_some()),
        ("--connections", args.connections.is_some()),
        ("--threads", args.threads.is_some()),
        ("--arrival", args.arrival.is_some()),
        ("--mix", args.mix.is_some()),
        ("--pipeline", args.pipeline.is_some()),
        ("--poll", args.poll.is_some()),
        ("--spin-us", args.spin_us.is_some()),
        ("--seed", args.seed.is_some()),
        ("--slo", args.slo.is_some()),
        ("--keep-going", args.keep_going),
        ("--hgrm", args.hgrm.is_some()),
        ("--plot", args.plot.is_some()),
    ];
    match given.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(SettingsError::Invalid(format!(
            "{flag} is an option of open-loop load, and --pingpong without --rate runs only \
             the ping-pong baseline: drop {flag}, or give --rate to run load after the baseline"
        ))),
        None => Ok(()),
    }
}

/// Refuses one path given for two outputs: the second write would
/// silently replace the first.
fn check_outputs_differ(outputs: &[(&str, &Option<PathBuf>)]) -> Result<(), SettingsError> {
    let outputs: Vec<(&str, Option<&std::path::Path>)> = outputs
        .iter()
        .map(|(name, path)| (*name, path.as_deref()))
        .collect();
    crate::report::check_distinct_outputs(&outputs)
        .map_err(|clash| SettingsError::Invalid(clash.to_string()))
}

/// What a sweep (or a single rate) produced.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    /// One result per rate run, in order.
    pub results: Vec<RateResult>,
    /// The highest rate that met the objectives (only with objectives).
    pub best: Option<f64>,
    /// The ping-pong baseline, if asked for and finished.
    pub pingpong: Option<PingPong>,
    /// Where a signal (Ctrl-C) stopped the sweep. A rate whose window was
    /// cut short is left out of `results`; one that had finished its
    /// window ([`Phase::AfterWindow`]) is in them.
    pub interrupted: Option<Phase>,
    /// A rate that failed after others had finished (or after the
    /// baseline): the sweep stopped there, and what finished is reported.
    pub stopped_early: Option<StoppedEarly>,
}

/// Where and why a sweep stopped before its last rate.
#[derive(Debug, Clone, PartialEq)]
pub struct StoppedEarly {
    /// The rate that failed.
    pub rate: f64,
    /// Why (the run's error).
    pub why: String,
}

/// Runs the baseline (if asked) and every rate; with objectives, stops
/// after the first rate that misses them unless `keep_going`. A rate that
/// fails after something finished ends the sweep with `stopped_early`;
/// one that fails first is the error. `on_rate`
/// sees each result as it comes. A signal (with
/// [`LoadPlan::stop_on_signal`]) ends the sweep where it comes, and what
/// had finished is returned, with the phase in `interrupted`.
pub fn run_sweep(
    settings: &LoadSettings,
    mut on_rate: impl FnMut(&RateResult),
) -> Result<SweepOutcome, LoadError> {
    let plan = &settings.plan;
    let stop = interrupt::stop_check(plan);
    let mut outcome = SweepOutcome {
        results: Vec::with_capacity(settings.rates.len()),
        best: None,
        pingpong: None,
        interrupted: None,
        stopped_early: None,
    };
    if settings.pingpong > 0 {
        let kind = &plan.targets.kinds[0];
        let pingpong_plan = PingPongPlan {
            addr: plan.targets.endpoints[kind.endpoint].addr,
            request: kind.wire.clone(),
            response_has_body: kind.response_has_body,
            count: settings.pingpong,
            warmup: (settings.pingpong / 10).max(100),
            core: plan.cores.first().copied(),
            timeout: plan.timeout,
            // The same rule as the window's: what the probe let through,
            // the baseline counts.
            allow_non_2xx: plan.allow_errors,
        };
        let baseline = probe(plan).and_then(|()| baseline::pingpong_until(&pingpong_plan, stop));
        match baseline {
            Ok(measured) => outcome.pingpong = Some(measured),
            Err(LoadError::Interrupted(phase)) => {
                outcome.interrupted = Some(phase);
                return Ok(outcome);
            }
            Err(e) => return Err(e),
        }
    }
    for &rate in &settings.rates {
        let r = match run_rate(plan, rate, settings.progress) {
            Ok(r) => r,
            Err(LoadError::Interrupted(phase)) => {
                outcome.interrupted = Some(phase);
                break;
            }
            // Nothing finished: the error is the whole answer.
            Err(e) if outcome.results.is_empty() && outcome.pingpong.is_none() => return Err(e),
            // Say what finished, then why the rest did not run.
            Err(e) => {
                outcome.stopped_early = Some(StoppedEarly {
                    rate,
                    why: e.to_string(),
                });
                break;
            }
        };
        on_rate(&r);
        let met = r.meets(&settings.slo);
        if !settings.slo.is_empty() && met {
            outcome.best = Some(outcome.best.map_or(rate, |b: f64| b.max(rate)));
        }
        outcome.results.push(r);
        // A signal during the drain, or after it: this rate is whole.
        if stop() {
            outcome.interrupted = Some(Phase::AfterWindow { rate });
            break;
        }
        if !settings.slo.is_empty() && !met && !settings.keep_going {
            break;
        }
    }
    Ok(outcome)
}

/// Builds the docs/design.md §7 report of a sweep.
pub fn build_report(settings: &LoadSettings, outcome: &SweepOutcome) -> Report {
    let mut core_map = BTreeMap::new();
    if !settings.plan.cores.is_empty() {
        core_map.insert("client".to_owned(), settings.plan.cores.clone());
    }
    let machine = Machine::probe(core_map, output::modes(settings, outcome));
    let mut cases = Vec::new();
    if let Some(pp) = &outcome.pingpong {
        cases.push(output::pingpong_case(&pp.round_trips, pp.non_2xx()));
    }
    for r in &outcome.results {
        cases.extend(output::cases(r, &settings.slo));
    }
    Report::new("load", machine, cases)
}

/// `nocturne bench load`: runs, prints the table, writes the outputs, and
/// fails when no rate met the objectives (with `--slo`), else on errors.
pub fn run_command(args: &LoadArgs) -> anyhow::Result<()> {
    let settings = LoadSettings::from_args(args)?;
    for path in [&settings.json, &settings.hgrm, &settings.plot]
        .into_iter()
        .flatten()
    {
        crate::report::prepare_output(path)?;
    }
    // Ctrl-C (or SIGTERM, SIGHUP) ends the sweep in whatever phase it is
    // (see `interrupt`), and what finished is still reported and written.
    crate::engine::sys::catch_interrupts()
        .map_err(|e| anyhow::anyhow!("cannot catch Ctrl-C: {e}"))?;
    for warning in &settings.warnings {
        eprintln!("nocturne: warning: {warning}");
    }
    let plan = &settings.plan;
    if plan.poll == PollMode::Spin && !plan.cores.is_empty() && plan.threads > plan.cores.len() {
        eprintln!(
            "nocturne: warning: {} spinning client threads on {} core(s): threads that share a \
             core take turns, and the waits show up in the latencies (give each its own core, \
             or use --poll adaptive)",
            plan.threads,
            plan.cores.len()
        );
    }
    if settings.rates.is_empty() {
        println!(
            "ping-pong baseline only: {} blocking round trips on one connection",
            settings.pingpong
        );
    } else {
        println!(
        "open-loop load: {} arrivals, {} thread(s), {} connection(s), pipeline {}, poll {}, warm-up {}, window {} per rate",
        plan.arrival.name(),
        plan.threads,
        plan.connections,
        plan.pipeline,
        plan.poll.name(),
        spec::format_duration(plan.warmup),
        spec::format_duration(plan.duration),
    );
    }
    for k in &plan.targets.kinds {
        println!(
            "  {} -> {} (weight {})",
            k.name, plan.targets.endpoints[k.endpoint].addr, k.weight
        );
    }
    // A sweep prints its table a row at a time, as each rate finishes;
    // a single rate's table comes whole at the end. Either way stdout
    // holds the table once, on a terminal, in a pipe or in a file.
    let sweep = settings.rates.len() > 1;
    let mut live = output::LiveTable::default();
    let outcome = run_sweep(&settings, |r| {
        if sweep {
            print!("{}", live.row(r, &settings.slo));
        }
    })?;
    print!("{}", live.end());
    if let (Some(phase), true, None) = (
        outcome.interrupted,
        outcome.results.is_empty(),
        &outcome.pingpong,
    ) {
        anyhow::bail!("interrupted {phase}: no rate finished, nothing to report");
    }
    println!();
    if !sweep && !outcome.results.is_empty() {
        print!("{}", output::table(&outcome.results, &settings.slo));
    }
    for r in &outcome.results {
        print!("{}", output::details(r));
    }
    if let Some(pingpong) = &outcome.pingpong {
        print!("{}", output::pingpong_lines(pingpong));
        if let Some(first) = outcome.results.first() {
            let p50 = first.latency.quantile_ns(0.5) as f64 / 1e3;
            println!(
                "generator overhead at p50 ({}/s): {:+.2} µs over the ping-pong client",
                spec::format_rate(first.rate),
                p50 - pingpong.round_trips.summary().p50_us
            );
        }
    }
    if !settings.slo.is_empty() && !outcome.results.is_empty() {
        let slo_text: Vec<String> = settings.slo.iter().map(|s| s.to_string()).collect();
        match outcome.best {
            Some(b) => println!(
                "highest rate meeting {}: {}/s",
                slo_text.join(", "),
                spec::format_rate(b)
            ),
            None => println!("no rate met {}", slo_text.join(", ")),
        }
    }
    if let Some(path) = &settings.hgrm {
        for p in output::write_hgrm(path, &outcome.results, settings.rates.len())? {
            println!("wrote {}", p.display());
        }
    }
    let report = build_report(&settings, &outcome);
    report.write_json_if_asked(settings.json.as_deref())?;
    if let Some(path) = &settings.plot {
        let title = format!(
            "{} — {} arrivals, {} connection(s)",
            plan.targets.kinds[0].name,
            plan.arrival.name(),
            plan.connections
        );
        let svg = plot::render_svg(&title, &outcome.results, &settings.slo, outcome.best);
        std::fs::write(path, svg)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(phase) = outcome.interrupted {
        anyhow::bail!("{}", interrupted_message(phase, outcome.results.len()));
    }
    if let Some(stopped) = &outcome.stopped_early {
        anyhow::bail!(
            "stopped early: {}/s failed: {}; the {} rate(s) before it are reported above",
            spec::format_rate(stopped.rate),
            stopped.why,
            outcome.results.len()
        );
    }
    // With objectives, they decide: met by some rate (a sweep goes on
    // until one misses, so its last rate may well have failed), or not.
    if !settings.slo.is_empty() {
        if outcome.best.is_none() {
            anyhow::bail!("no rate met the objectives");
        }
        return Ok(());
    }
    let errors: u64 = outcome.results.iter().map(RateResult::failures).sum();
    if errors > 0 {
        anyhow::bail!(
            "{errors} error{}{}",
            if errors == 1 { "" } else { "s" },
            output::error_cause(&outcome.results)
        );
    }
    Ok(())
}

/// The closing message of a run a signal stopped, after `finished` rates
/// were reported.
fn interrupted_message(phase: Phase, finished: usize) -> String {
    if phase.rate_finished() {
        return format!(
            "interrupted {phase}; the {finished} rate(s) that finished are reported above"
        );
    }
    let left_out = if matches!(phase, Phase::Window { .. }) {
        ", which is left out"
    } else {
        ""
    };
    if finished == 0 {
        return format!(
            "interrupted {phase}{left_out}: no rate finished (the ping-pong baseline is reported above)"
        );
    }
    format!("interrupted {phase}{left_out}; the {finished} rate(s) before it are reported above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn settings(extra: &[&str]) -> Result<LoadSettings, SettingsError> {
        let base = ["load", "http://127.0.0.1:9/", "--rate", "1k"];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).unwrap();
        LoadSettings::from_args(&cli.load)
    }

    #[test]
    fn every_range_is_stated_in_help_and_is_the_one_checked() {
        crate::range::check_ranges(
            &Cli::command(),
            &ranges::INTS,
            &ranges::DURATIONS,
            |flag, v| match settings(&[&format!("--{flag}={v}")]) {
                Err(SettingsError::Range(e)) => Err(e.to_string()),
                // Another check may refuse it (descriptors, say): not the range.
                _ => Ok(()),
            },
        );
        crate::range::check_decimal_ranges(&Cli::command(), &ranges::DECIMALS, |flag, v| {
            // Not `settings`, whose --rate would be given twice.
            let arg = format!("--{flag}={v}");
            let cli = Cli::try_parse_from(["load", "http://127.0.0.1:9/", &arg]).unwrap();
            match LoadSettings::from_args(&cli.load) {
                Err(SettingsError::Range(e)) => Err(e.to_string()),
                // Another check may refuse it (a rate too low for the
                // window, say): not the range.
                _ => Ok(()),
            }
        });
        assert_eq!(ranges::THREADS.text(), "1..=1024");
    }

    #[test]
    fn connections_raise_the_open_file_limit_or_are_refused_with_the_numbers() {
        let limits = || nocturne_ipc::open_files::raise_open_files_limit(0).unwrap();
        let (soft, hard) = (limits().soft, limits().hard);
        // What the hard limit allows is accepted, raising the soft limit
        // to it when needed.
        let fits = usize::try_from(hard.min(100_000) - descriptors_needed(0, 1)).unwrap();
        settings(&["--connections", &fits.to_string()]).unwrap();
        let raised = limits().soft;
        assert!(raised >= soft.max(descriptors_needed(fits, 1)), "{raised}");
        // Past the hard limit: refused, saying how many and the limit.
        if hard < 1_000_000 {
            let err = settings(&["--connections", "1000000"])
                .unwrap_err()
                .to_string();
            let need = descriptors_needed(1_000_000, 1);
            assert!(
                err.contains(&format!("needs {need} open files"))
                    && err.contains(&format!("(RLIMIT_NOFILE) is {hard}")),
                "{err}"
            );
        }
        // The message itself, whatever this machine's limits.
        let err = check_descriptors(5000, 5066, 1024).unwrap_err().to_string();
        assert!(
            err.starts_with("--connections 5000 needs 5066 open files") && err.contains("is 1024"),
            "{err}"
        );
        assert!(check_descriptors(10, 76, 76).is_ok());
    }

    #[test]
    fn pingpong_alone_needs_no_rate_and_refuses_open_loop_options() {
        let parse = |list: &[&str]| {
            let cli =
                Cli::try_parse_from(["load", "http://127.0.0.1:9/"].iter().chain(list)).unwrap();
            LoadSettings::from_args(&cli.load)
        };
        let alone = parse(&["--pingpong", "100", "--timeout", "1s", "--json", "x.json"]).unwrap();
        assert!(alone.rates.is_empty());
        assert_eq!(alone.pingpong, 100);
        let err = parse(&[]).unwrap_err().to_string();
        assert!(
            err.contains("give --rate") && err.contains("--pingpong N"),
            "{err}"
        );
        for (flag, value) in [
            ("--duration", Some("1s")),
            ("--warmup", Some("0s")),
            ("--connections", Some("4")),
            ("--threads", Some("2")),
            ("--arrival", Some("poisson")),
            ("--mix", Some("mix.toml")),
            ("--pipeline", Some("2")),
            ("--poll", Some("block")),
            ("--spin-us", Some("10")),
            ("--seed", Some("7")),
            ("--slo", Some("p99=1ms")),
            ("--keep-going", None),
            ("--hgrm", Some("x.hgrm")),
            ("--plot", Some("x.svg")),
        ] {
            let mut list = vec!["--pingpong", "10", flag];
            list.extend(value);
            let err = parse(&list).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{flag} is an option of open-loop load"))
                    && err.contains("--pingpong without --rate"),
                "{flag}: {err}"
            );
        }
        // With --rate, the baseline runs before the load, and they are fine.
        let both = parse(&["--pingpong", "10", "--rate", "1k", "--threads", "2"]).unwrap();
        assert_eq!((both.rates.len(), both.plan.threads), (1, 2));
    }
}
