//! `nocturne bench engine`: the engine's own latencies and throughput,
//! measured from outside, against the floor of the path they take.
//!
//! The benchmark starts `nocturne serve` as a separate process (one per
//! poll mode), exactly as a user would, and a client of blocking `std::net`
//! sockets pinned to a core apart from the engine's io core:
//!
//! | case | measures |
//! |---|---|
//! | `internal-call/<mode>` | `ctx.invoke` of the empty function `nop` from `ping` in another worker process, timed inside the caller (the built-in `ping`); reports `caller_pid` and `callee_pid` |
//! | `external-call/<mode>` | `POST /function/echo` with a 64-byte body over one keep-alive connection |
//! | `chain/<mode>` | `POST /function/foo` (which calls `bar` through the engine) the same way |
//! | `tcp-echo-floor` | the same client against [`floor`]'s bare busy-polling server with a canned reply of the engine's reply size: the floor of the external path |
//! | `throughput/internal` | internal calls/s with `--connections` clients each calling `ping` (the first mode's engine) |
//! | `throughput/external` | `echo` requests/s over `--connections` keep-alive connections (the first mode's engine) |
//!
//! With `--net kernel,smoltcp` the run also creates a network namespace of
//! its own ([`netns`]) with a TAP in it, starts one more spinning engine
//! per network stack inside it, and measures them with the same blocking
//! client, its sockets made in that namespace ([`net`]):
//!
//! | case | measures |
//! |---|---|
//! | `external-call/<net>` | as `external-call/<mode>`, poll spin: `kernel` over the namespace's loopback, `smoltcp` (`--net smoltcp --tap`) through the TAP |
//! | `conns/<net>/<64\|1024>` | that many open keep-alive connections, `echo` requests round-robin over them at `--conns-rate` in all on an open-loop schedule, latency from each request's intended send time |
//!
//! Every server case reports the server's `rss_mb` (`VmRSS`); engine cases
//! add their workers' count and memory. The latency cases run interleaved:
//! R rounds, each giving every server a turn (the others frozen with
//! `SIGSTOP`, so nothing else spins on the io core) in which each of its
//! cases runs a warm-up and a chunk of timed samples; the order rotates
//! every round so noise hits all cases alike. The throughput cases run
//! after them (their extra workers would otherwise change the latency
//! cases' pools).
//!
//! Layers: [`http`] (the client), [`server`] (process guards, readiness,
//! pause/resume), [`procfs`] (memory and worker pids), [`memory`] (a
//! server's memory as a case's fields), [`floor`] (the floor
//! server, `nocturne bench engine-floor-server`), [`netns`] (the namespace
//! guard), [`net`] (the `--net` engines and the open-loop `conns` client),
//! `driver` (the rounds).
//!
//! Ctrl-C (SIGINT, SIGTERM, SIGHUP) is caught (`sys::catch_interrupts`)
//! and checked between chunks, windows and requests: the run stops,
//! reports the cases with samples so far ([`EngineRun`], marked
//! `interrupted`), and its guards stop every server and remove their
//! config files and the namespace.
//!
//! Run it with `cargo run --release -- bench engine` (`--quick` for a short
//! run of every case).

pub mod floor;
pub mod http;
pub mod memory;
pub mod net;
pub mod netns;
pub mod procfs;
pub mod server;

mod driver;
pub mod soak;
pub(crate) mod sys;

use std::path::PathBuf;
use std::time::Duration;

use crate::ipc::TargetCheck;
use crate::load::spec::SpecError;
use crate::pin::{parse_core_list, CoreListError};
use crate::report::Report;

pub use driver::{run_engine, EnginePhase, EngineRun};
pub use floor::{run_floor_server, FloorServerArgs};

/// `nocturne bench engine` options.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Core of the latency client (and of every client thread unless
    /// --client-cores says otherwise).
    #[arg(long, default_value_t = 0, value_name = "CORE")]
    pub client_core: usize,
    /// Cores of the throughput cases' client threads (thread i on the i-th,
    /// cycling), e.g. 0-3 [default: --client-core].
    #[arg(long, value_name = "CORES")]
    pub client_cores: Option<String>,
    /// The engine's io core (`serve --io-cores`); the floor server runs there too.
    #[arg(long, default_value_t = 1, value_name = "CORE")]
    pub io_core: usize,
    /// Cores of the engine's workers (`serve --worker-cores`), e.g. 0 or 2-5.
    #[arg(long, default_value = "0", value_name = "CORES")]
    pub worker_cores: String,
    /// The engine's poll modes to measure, comma separated (spin, adaptive, block).
    #[arg(long, default_value = "spin,adaptive", value_name = "MODES")]
    pub modes: String,
    /// Fewer samples and shorter throughput runs (every case still runs).
    #[arg(long)]
    pub quick: bool,
    /// Rounds (every latency case runs once per round) [default: 10, quick 5]
    /// [range: 1..=1000000].
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Timed round trips per latency case per round [default: 10000, quick
    /// 2000] [range: 1..=1000000000].
    #[arg(long, value_name = "N")]
    pub samples: Option<u64>,
    /// Untimed warm-up round trips per latency case per round [default: 500,
    /// quick 200] [range: 0..=1000000000].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Measuring time of each throughput case, e.g. 3s, 500ms, 1m or 2.5
    /// (seconds) [default: 3s, quick 1s] [range: 1ms..=3600s].
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Client connections of the throughput cases [range: 1..=1024].
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub connections: usize,
    /// Request body bytes of the external cases [range: 0..=524288] (512 KiB).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,
    /// Also measure engines on these network stacks (kernel, smoltcp;
    /// comma separated), spinning, inside a network namespace the run
    /// creates and removes (needs root and iproute2).
    #[arg(long, value_name = "NETS")]
    pub net: Option<String>,
    /// Requests per second, over all connections, of the `conns` cases
    /// (run only with --net) [range: 1..=100000].
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub conns_rate: u64,
    /// Measuring time of each `conns` case (run only with --net), spread
    /// over the rounds, e.g. 10s [default: 10s, quick 1s] [range: 1ms..=3600s].
    #[arg(long, value_name = "DURATION")]
    pub conns_duration: Option<String>,
    /// Requests of the soak case; memory is compared after a tenth and after
    /// all of them [default: 1000000, quick 200000] [range: 10..=1000000000].
    #[arg(long, value_name = "N")]
    pub soak_requests: Option<u64>,
    /// An extra argument for every `nocturne serve` (repeatable), e.g.
    /// --engine-arg=--worker-poll=park.
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    pub engine_arg: Vec<String>,
    /// Give up on a request (and on a server's start) after this long,
    /// e.g. 20s or 500ms (a bare number is seconds, as the old --timeout-s
    /// took) [range: 1ms..=3600s].
    #[arg(
        long,
        alias = "timeout-s",
        default_value = "20s",
        value_name = "DURATION"
    )]
    pub timeout: String,
    /// Write the report as JSON (schema: docs/design.md §7) to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// An engine poll mode (`serve --poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PollMode {
    /// The io loop never sleeps.
    Spin,
    /// The io loop spins, then sleeps in epoll.
    Adaptive,
    /// The io loop sleeps in epoll at once.
    Block,
}

impl PollMode {
    /// The name `serve --poll` takes, also the case-name suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            PollMode::Spin => "spin",
            PollMode::Adaptive => "adaptive",
            PollMode::Block => "block",
        }
    }
}

/// A network stack an engine serves HTTP on (`serve --net`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetStack {
    /// Kernel TCP sockets.
    Kernel,
    /// smoltcp, a userspace TCP/IP stack, over a TAP.
    Smoltcp,
}

impl NetStack {
    /// The name `serve --net` takes, also the case-name part.
    pub fn as_str(self) -> &'static str {
        match self {
            NetStack::Kernel => "kernel",
            NetStack::Smoltcp => "smoltcp",
        }
    }
}

/// Validated settings of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Core of the latency client.
    pub client_core: usize,
    /// Cores of the throughput client threads (thread i on the i-th, cycling).
    pub client_cores: Vec<usize>,
    /// The engine's (and the floor server's) io core.
    pub io_core: usize,
    /// The workers' cores.
    pub worker_cores: Vec<usize>,
    /// Poll modes, in the order given; the first runs the throughput cases.
    pub modes: Vec<PollMode>,
    /// Whether `--quick` chose the defaults.
    pub quick: bool,
    /// Rounds.
    pub rounds: u32,
    /// Timed samples per latency case per round.
    pub samples: u64,
    /// Warm-up round trips per latency case per round.
    pub warmup: u64,
    /// Measuring time of each throughput case.
    pub duration: Duration,
    /// Untimed run-in before each throughput case's measuring time.
    pub throughput_warmup: Duration,
    /// Connections of the throughput cases.
    pub connections: usize,
    /// Body bytes of the external requests.
    pub payload: usize,
    /// Network stacks measured in the namespace (empty: no namespace).
    pub nets: Vec<NetStack>,
    /// Requests per second of each `conns` case.
    pub conns_rate: u64,
    /// Measuring time of each `conns` case (all rounds together).
    pub conns_duration: Duration,
    /// Requests of the soak case.
    pub soak_requests: u64,
    /// Extra `serve` arguments.
    pub engine_args: Vec<String>,
    /// Request and start-up timeout.
    pub timeout: Duration,
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A core list does not parse.
    #[error("--{flag}: {error}")]
    Cores {
        /// Which flag.
        flag: &'static str,
        /// Why.
        error: CoreListError,
    },
    /// The client would share the io core.
    #[error(
        "{flag} and --io-core must differ (both have core {core}): the client must not take the io core"
    )]
    ClientOnIoCore {
        /// The client's flag that names the io core (`--client-core` or
        /// `--client-cores`).
        flag: &'static str,
        /// The io core.
        core: usize,
    },
    /// Workers would share the io core.
    #[error("--worker-cores must not include the io core {0}")]
    WorkersOnIoCore(usize),
    /// `--modes` names an unknown mode.
    #[error("--modes: unknown poll mode {0:?} (expected spin, adaptive or block)")]
    UnknownMode(String),
    /// `--modes` names a mode twice.
    #[error("--modes: {0} is listed twice")]
    DuplicateMode(&'static str),
    /// `--modes` is empty.
    #[error("--modes: name at least one poll mode")]
    NoModes,
    /// `--net` names an unknown stack.
    #[error("--net: unknown network stack {0:?} (expected kernel or smoltcp)")]
    UnknownNet(String),
    /// `--net` names a stack twice.
    #[error("--net: {0} is listed twice")]
    DuplicateNet(&'static str),
    /// `--net` is empty.
    #[error("--net: name at least one network stack (kernel, smoltcp)")]
    NoNets,
    /// A duration flag does not parse.
    #[error("--{flag}: {reason}")]
    BadDuration {
        /// Which flag.
        flag: &'static str,
        /// Why (it quotes the text).
        reason: SpecError,
    },
    /// A number outside its option's range ([`ranges`]).
    #[error(transparent)]
    Range(#[from] crate::range::RangeError),
}

/// Most connections of a throughput case.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest `--payload`.
pub const MAX_PAYLOAD: usize = 512 * 1024;
/// Largest `--conns-rate`: one blocking client cannot keep a faster
/// schedule anyway.
pub const MAX_CONNS_RATE: u64 = 100_000;
/// Fewest `--soak-requests`: the memory is compared after a tenth.
pub const MIN_SOAK_REQUESTS: u64 = 10;
/// The accepted ranges of `bench engine`'s numeric options (the help
/// states each in the same words).
pub mod ranges {
    use std::time::Duration;

    use super::{MAX_CONNECTIONS, MAX_CONNS_RATE, MAX_PAYLOAD, MIN_SOAK_REQUESTS};
    use crate::range::{DurationRange, IntRange};

    /// `--rounds`.
    pub const ROUNDS: IntRange = IntRange::new("rounds", 1, 1_000_000);
    /// `--samples`.
    pub const SAMPLES: IntRange = IntRange::new("samples", 1, 1_000_000_000);
    /// `--warmup`.
    pub const WARMUP: IntRange = IntRange::new("warmup", 0, 1_000_000_000);
    /// `--connections`.
    pub const CONNECTIONS: IntRange = IntRange::new("connections", 1, MAX_CONNECTIONS as u64);
    /// `--payload`.
    pub const PAYLOAD: IntRange = IntRange::new("payload", 0, MAX_PAYLOAD as u64);
    /// `--conns-rate`.
    pub const CONNS_RATE: IntRange = IntRange::new("conns-rate", 1, MAX_CONNS_RATE);
    /// `--soak-requests`.
    pub const SOAK_REQUESTS: IntRange =
        IntRange::new("soak-requests", MIN_SOAK_REQUESTS, 1_000_000_000);
    const MS: Duration = Duration::from_millis(1);
    const HOUR: Duration = Duration::from_secs(3600);
    /// `--duration`.
    pub const DURATION: DurationRange = DurationRange::new("duration", MS, HOUR);
    /// `--conns-duration`.
    pub const CONNS_DURATION: DurationRange = DurationRange::new("conns-duration", MS, HOUR);
    /// `--timeout`.
    pub const TIMEOUT: DurationRange = DurationRange::new("timeout", MS, HOUR);
    /// Every integer range, for the help test.
    pub const INTS: [IntRange; 7] = [
        ROUNDS,
        SAMPLES,
        WARMUP,
        CONNECTIONS,
        PAYLOAD,
        CONNS_RATE,
        SOAK_REQUESTS,
    ];
    /// Every duration range, for the help test.
    pub const DURATIONS: [DurationRange; 3] = [DURATION, CONNS_DURATION, TIMEOUT];
}

/// Open connections of the `conns/<net>/<N>` cases.
pub const CONNS_COUNTS: [usize; 2] = [64, 1024];

impl EngineSettings {
    /// Validates `args` and fills in the defaults.
    pub fn from_args(args: &EngineArgs) -> Result<Self, ArgsError> {
        let mut worker_cores =
            parse_core_list(&args.worker_cores).map_err(|error| ArgsError::Cores {
                flag: "worker-cores",
                error,
            })?;
        worker_cores.sort_unstable();
        let client_cores = match &args.client_cores {
            Some(text) => parse_core_list(text).map_err(|error| ArgsError::Cores {
                flag: "client-cores",
                error,
            })?,
            None => vec![args.client_core],
        };
        // Name the flag that put the client there: --client-cores may
        // clash while --client-core does not.
        let clash = if args.client_core == args.io_core {
            Some("--client-core")
        } else if client_cores.contains(&args.io_core) {
            Some("--client-cores")
        } else {
            None
        };
        if let Some(flag) = clash {
            return Err(ArgsError::ClientOnIoCore {
                flag,
                core: args.io_core,
            });
        }
        if worker_cores.contains(&args.io_core) {
            return Err(ArgsError::WorkersOnIoCore(args.io_core));
        }
        let (rounds, samples, warmup, duration, conns_duration) = if args.quick {
            (
                5,
                2_000,
                200,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
        } else {
            (
                10,
                10_000,
                500,
                Duration::from_secs(3),
                Duration::from_secs(10),
            )
        };
        let in_range = |range: crate::range::DurationRange, text: &str| {
            let d = parse_duration(range.flag, text)?;
            Ok::<_, ArgsError>(range.check(d, text)?)
        };
        let duration = match &args.duration {
            Some(text) => in_range(ranges::DURATION, text)?,
            None => duration,
        };
        let conns_duration = match &args.conns_duration {
            Some(text) => in_range(ranges::CONNS_DURATION, text)?,
            None => conns_duration,
        };
        let timeout = in_range(ranges::TIMEOUT, &args.timeout)?;
        // The memory checkpoint is a tenth of the requests: at least 10.
        let soak_requests =
            ranges::SOAK_REQUESTS.check(args.soak_requests.unwrap_or(if args.quick {
                200_000
            } else {
                1_000_000
            }))?;
        let nets = match &args.net {
            Some(text) => parse_nets(text)?,
            None => Vec::new(),
        };
        let settings = Self {
            client_core: args.client_core,
            client_cores,
            io_core: args.io_core,
            worker_cores,
            modes: parse_modes(&args.modes)?,
            quick: args.quick,
            rounds: args.rounds.unwrap_or(rounds),
            samples: args.samples.unwrap_or(samples),
            warmup: args.warmup.unwrap_or(warmup),
            duration,
            throughput_warmup: (duration / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            connections: args.connections,
            payload: args.payload,
            nets,
            conns_rate: args.conns_rate,
            conns_duration,
            soak_requests,
            engine_args: args.engine_arg.clone(),
            timeout,
        };
        for (range, value) in [
            (ranges::ROUNDS, u64::from(settings.rounds)),
            (ranges::SAMPLES, settings.samples),
            (ranges::WARMUP, settings.warmup),
            (ranges::CONNECTIONS, settings.connections as u64),
            (ranges::PAYLOAD, settings.payload as u64),
            (ranges::CONNS_RATE, settings.conns_rate),
        ] {
            range.check(value)?;
        }
        Ok(settings)
    }

    /// Every case name of this run, in report order.
    pub fn case_names(&self) -> Vec<String> {
        let mut names = vec![TCP_ECHO_FLOOR.to_owned()];
        for mode in &self.modes {
            for kind in [EXTERNAL_CALL, CHAIN, INTERNAL_CALL] {
                names.push(format!("{kind}/{}", mode.as_str()));
            }
        }
        names.push(THROUGHPUT_INTERNAL.to_owned());
        names.push(THROUGHPUT_EXTERNAL.to_owned());
        names.push(soak::OVERLOAD.to_owned());
        names.push(soak::SOAK.to_owned());
        for net in &self.nets {
            names.push(format!("{EXTERNAL_CALL}/{}", net.as_str()));
        }
        for net in &self.nets {
            for count in CONNS_COUNTS {
                names.push(conns_case_name(*net, count));
            }
        }
        names
    }
}

/// The p50 of the first external-call case in the report (the engine the
/// soak and overload cases ran on).
fn settings_free_first_external(report: &Report) -> Option<f64> {
    report
        .cases
        .iter()
        .find(|c| c.name.starts_with("external-call/"))
        .map(|c| c.p50_us)
        .filter(|&v| v > 0.0)
}

/// Case-name prefix of the internal calls.
pub const INTERNAL_CALL: &str = "internal-call";
/// Case-name prefix of the external calls.
pub const EXTERNAL_CALL: &str = "external-call";
/// Case-name prefix of the foo→bar chain.
pub const CHAIN: &str = "chain";
/// The floor case.
pub const TCP_ECHO_FLOOR: &str = "tcp-echo-floor";
/// Case-name prefix of the many-connections cases.
pub const CONNS: &str = "conns";
/// Internal calls/s under load.
pub const THROUGHPUT_INTERNAL: &str = "throughput/internal";
/// External requests/s under load.
pub const THROUGHPUT_EXTERNAL: &str = "throughput/external";

/// Parses `--modes`: comma-separated poll modes, each once.
pub fn parse_modes(text: &str) -> Result<Vec<PollMode>, ArgsError> {
    parse_each_once(
        text,
        |item| match item {
            "spin" => Ok(PollMode::Spin),
            "adaptive" => Ok(PollMode::Adaptive),
            "block" => Ok(PollMode::Block),
            other => Err(ArgsError::UnknownMode(other.to_owned())),
        },
        |mode| ArgsError::DuplicateMode(mode.as_str()),
        ArgsError::NoModes,
    )
}

/// `conns/<net>/<count>`.
pub fn conns_case_name(net: NetStack, count: usize) -> String {
    format!("{CONNS}/{}/{count}", net.as_str())
}

/// Parses `--net`: comma-separated network stacks, each once.
pub fn parse_nets(text: &str) -> Result<Vec<NetStack>, ArgsError> {
    parse_each_once(
        text,
        |item| match item {
            "kernel" => Ok(NetStack::Kernel),
            "smoltcp" => Ok(NetStack::Smoltcp),
            other => Err(ArgsError::UnknownNet(other.to_owned())),
        },
        |net| ArgsError::DuplicateNet(net.as_str()),
        ArgsError::NoNets,
    )
}

/// What `--modes` and `--net` share: a comma-separated list (blanks around
/// items and empty items ignored) of at least one item, each `parse`d and
/// given once; `duplicate` is the error for an item given twice, `none` the
/// one for an empty list.
fn parse_each_once<T: PartialEq>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, ArgsError>,
    duplicate: impl Fn(&T) -> ArgsError,
    none: ArgsError,
) -> Result<Vec<T>, ArgsError> {
    let mut items = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = parse(item)?;
        if items.contains(&item) {
            return Err(duplicate(&item));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(none);
    }
    Ok(items)
}

/// Parses the duration given to `--flag`, in the forms every bench takes
/// (`load::spec::parse_duration`: `500us`, `20ms`, `3s`, `1m30s`, `1h`, or
/// a bare number of seconds).
pub fn parse_duration(flag: &'static str, text: &str) -> Result<Duration, ArgsError> {
    crate::load::spec::parse_duration(text)
        .map_err(|reason| ArgsError::BadDuration { flag, reason })
}

/// The targets that `report` has the cases for:
/// `external-call/spin` within 2 µs of the floor at p50, `chain/spin` within
/// 6 µs, `internal-call/spin` at most half of `external-call/spin`;
/// with `--net`, `external-call/smoltcp` no slower than
/// `external-call/kernel` at p50, and `conns/smoltcp/1024` at most twice
/// `conns/smoltcp/64` at p99.9.
pub fn check_targets(report: &Report) -> Vec<TargetCheck> {
    let p50 = |name: &str| report.case(name).map(|c| c.p50_us).filter(|&v| v > 0.0);
    let p999 = |name: &str| report.case(name).map(|c| c.p999_us).filter(|&v| v > 0.0);
    let floor = p50(TCP_ECHO_FLOOR);
    let external = p50("external-call/spin");
    let mut checks = Vec::new();
    for (case, limit) in [("external-call/spin", 2.0), ("chain/spin", 6.0)] {
        if let (Some(c), Some(f)) = (p50(case), floor) {
            checks.push(TargetCheck {
                what: format!("{case} p50 - {TCP_ECHO_FLOOR} p50 (µs)"),
                measured: c - f,
                limit,
                at_least: false,
            });
        }
    }
    if let (Some(i), Some(e)) = (p50("internal-call/spin"), external) {
        checks.push(TargetCheck {
            what: "internal-call/spin p50 / external-call/spin p50".into(),
            measured: i / e,
            limit: 0.5,
            at_least: false,
        });
    }
    // A refusal under overload costs less than ten normal calls.
    let normal = settings_free_first_external(report);
    if let (Some(o), Some(n)) = (p50(soak::OVERLOAD), normal) {
        checks.push(TargetCheck {
            what: format!("{} p50 / external-call p50", soak::OVERLOAD),
            measured: o / n,
            limit: 10.0,
            at_least: false,
        });
    }
    if let Some(soak) = report.case(soak::SOAK) {
        if let Some(&growth) = soak.extra.get("rss_growth_pct") {
            checks.push(TargetCheck {
                what: "soak rss_growth_pct".into(),
                measured: growth,
                limit: 10.0,
                at_least: false,
            });
        }
    }
    let (kernel, smoltcp) = ("external-call/kernel", "external-call/smoltcp");
    if let (Some(s), Some(k)) = (p50(smoltcp), p50(kernel)) {
        checks.push(TargetCheck {
            what: format!("{smoltcp} p50 / {kernel} p50"),
            measured: s / k,
            limit: 1.0,
            at_least: false,
        });
    }
    let [few, many] = CONNS_COUNTS.map(|n| conns_case_name(NetStack::Smoltcp, n));
    if let (Some(m), Some(f)) = (p999(&many), p999(&few)) {
        checks.push(TargetCheck {
            what: format!("{many} p99.9 / {few} p99.9"),
            measured: m / f,
            limit: 2.0,
            at_least: false,
        });
    }
    checks
}

/// `nocturne bench engine`: runs, prints the table and the targets, writes
/// the JSON, and fails when any case counted errors. Ctrl-C (SIGINT,
/// SIGTERM, SIGHUP) stops it at the next check: the cases measured so far
/// are printed and written, marked `interrupted`, every server is stopped
/// (and the namespace removed), and it fails.
pub fn run_command(args: &EngineArgs) -> anyhow::Result<()> {
    let settings = EngineSettings::from_args(args)?;
    if let Some(path) = &args.json {
        crate::report::prepare_output(path)?;
    }
    sys::catch_interrupts()?;
    let EngineRun {
        report,
        interrupted,
    } = run_engine(&settings)?;
    print!("{}", report.table());
    for (key, path) in &report.machine.modes {
        if let Some(net) = key.strip_prefix(net::PATH_KEY_PREFIX) {
            println!("net {net}: {path}");
        }
    }
    // The targets compare cases of a whole run: none for a partial one.
    if interrupted.is_none() {
        for check in check_targets(&report) {
            println!("target: {check}");
        }
    }
    report.write_json_if_asked(args.json.as_deref())?;
    if let Some(phase) = interrupted {
        anyhow::bail!(
            "interrupted {phase}: the {} case(s) measured so far are reported above; \
             the servers{} were removed",
            report.cases.len(),
            if settings.nets.is_empty() {
                ""
            } else {
                " and the namespace"
            }
        );
    }
    report.fail_on_errors()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CaseResult, Machine};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EngineArgs,
    }

    fn settings(argv: &[&str]) -> Result<EngineSettings, ArgsError> {
        let cli =
            Cli::try_parse_from(std::iter::once("engine").chain(argv.iter().copied())).unwrap();
        EngineSettings::from_args(&cli.args)
    }

    /// Whether `result` is a range error of `--flag`.
    fn out_of_range(result: Result<EngineSettings, ArgsError>, flag: &str) -> bool {
        matches!(result, Err(ArgsError::Range(e)) if e.flag == flag)
    }

    #[test]
    fn every_range_is_stated_in_help_and_is_the_one_checked() {
        crate::range::check_ranges(
            &<Cli as clap::CommandFactory>::command(),
            &ranges::INTS,
            &ranges::DURATIONS,
            |flag, v| {
                settings(&[&format!("--{flag}={v}")])
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        // The cap reads the same in the help and in the error: 3600s.
        let err = settings(&["--duration=2h"]).unwrap_err().to_string();
        assert_eq!(err, "--duration 2h is out of range: it takes 1ms..=3600s");
        assert_eq!(ranges::PAYLOAD.max, MAX_PAYLOAD as u64);
    }

    #[test]
    fn defaults_fit_two_cores_and_quick_shortens() {
        let full = settings(&[]).unwrap();
        assert_eq!((full.client_core, full.io_core), (0, 1));
        assert_eq!(full.worker_cores, vec![0]);
        assert_eq!(full.modes, vec![PollMode::Spin, PollMode::Adaptive]);
        assert_eq!((full.rounds, full.samples, full.warmup), (10, 10_000, 500));
        assert_eq!(full.duration, Duration::from_secs(3));
        let quick = settings(&["--quick", "--samples", "200", "--duration", "250ms"]).unwrap();
        assert_eq!((quick.rounds, quick.samples, quick.warmup), (5, 200, 200));
        assert_eq!(quick.duration, Duration::from_millis(250));
        assert_eq!(quick.throughput_warmup, Duration::from_millis(100));
        let moved = settings(&[
            "--client-core=2",
            "--io-core=3",
            "--worker-cores=5,0-1",
            "--modes=adaptive",
            "--engine-arg=--worker-poll=park",
            "--engine-arg",
            "--spin-us=5",
        ])
        .unwrap();
        assert_eq!(moved.worker_cores, vec![0, 1, 5]);
        assert_eq!(
            moved.client_cores,
            vec![2],
            "throughput clients follow --client-core"
        );
        assert_eq!(moved.modes, vec![PollMode::Adaptive]);
        let spread = settings(&["--client-cores=0,2-3", "--io-core=1"]).unwrap();
        assert_eq!(
            (spread.client_core, spread.client_cores),
            (0, vec![0, 2, 3])
        );
        assert_eq!(moved.engine_args, ["--worker-poll=park", "--spin-us=5"]);
    }

    #[test]
    fn every_case_is_named_once() {
        let names = settings(&[]).unwrap().case_names();
        assert_eq!(
            names,
            [
                "tcp-echo-floor",
                "external-call/spin",
                "chain/spin",
                "internal-call/spin",
                "external-call/adaptive",
                "chain/adaptive",
                "internal-call/adaptive",
                "throughput/internal",
                "throughput/external",
                "overload/503",
                "soak",
            ]
        );
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        assert_eq!(
            settings(&["--client-core=1"]),
            Err(ArgsError::ClientOnIoCore {
                flag: "--client-core",
                core: 1
            })
        );
        // --client-core is 0: the clash is --client-cores'.
        let err = settings(&["--client-cores=0-1"]).unwrap_err();
        assert_eq!(
            err,
            ArgsError::ClientOnIoCore {
                flag: "--client-cores",
                core: 1
            }
        );
        assert!(
            err.to_string().starts_with("--client-cores and --io-core"),
            "{err}"
        );
        assert_eq!(
            settings(&["--soak-requests=9"]).unwrap_err().to_string(),
            "--soak-requests 9 is out of range: it takes 10..=1000000000"
        );
        assert_eq!(
            settings(&["--worker-cores=0-1"]),
            Err(ArgsError::WorkersOnIoCore(1))
        );
        for (arg, name) in [
            ("--worker-cores=x", "worker-cores"),
            ("--client-cores=0-", "client-cores"),
        ] {
            assert!(
                matches!(settings(&[arg]), Err(ArgsError::Cores { flag, .. }) if flag == name),
                "{arg}"
            );
        }
        assert_eq!(
            settings(&["--modes=spin,fast"]),
            Err(ArgsError::UnknownMode("fast".into()))
        );
        assert_eq!(
            settings(&["--modes=spin,spin"]),
            Err(ArgsError::DuplicateMode("spin"))
        );
        assert_eq!(settings(&["--modes=,"]), Err(ArgsError::NoModes));
        for (arg, flag) in [
            ("--samples=0", "samples"),
            ("--rounds=0", "rounds"),
            ("--connections=0", "connections"),
            ("--connections=5000", "connections"),
            ("--payload=99999999", "payload"),
            ("--duration=0s", "duration"),
            ("--timeout=0", "timeout"),
        ] {
            assert!(out_of_range(settings(&[arg]), flag), "{arg}");
        }
        assert_eq!(
            settings(&["--duration=soon"]),
            Err(ArgsError::BadDuration {
                flag: "duration",
                reason: crate::load::spec::parse_duration("soon").unwrap_err()
            })
        );
    }

    #[test]
    fn net_adds_its_cases_after_the_others() {
        let plain = settings(&[]).unwrap();
        assert!(plain.nets.is_empty());
        assert_eq!(plain.conns_rate, 2000);
        assert_eq!(plain.conns_duration, Duration::from_secs(10));
        let quick = settings(&["--quick", "--net", "kernel,smoltcp"]).unwrap();
        assert_eq!(quick.nets, [NetStack::Kernel, NetStack::Smoltcp]);
        assert_eq!(quick.conns_duration, Duration::from_secs(1));
        let names = quick.case_names();
        assert_eq!(
            names[names.len() - 6..],
            [
                "external-call/kernel",
                "external-call/smoltcp",
                "conns/kernel/64",
                "conns/kernel/1024",
                "conns/smoltcp/64",
                "conns/smoltcp/1024",
            ]
        );
        assert_eq!(names[..11], settings(&[]).unwrap().case_names()[..]);
        let only = settings(&["--net=smoltcp", "--conns-rate=500", "--conns-duration=2s"]).unwrap();
        assert_eq!(only.nets, [NetStack::Smoltcp]);
        assert_eq!(
            (only.conns_rate, only.conns_duration),
            (500, Duration::from_secs(2))
        );
        assert!(!only.case_names().iter().any(|n| n.contains("kernel")));
    }

    #[test]
    fn bad_net_arguments_are_typed_errors() {
        assert_eq!(
            settings(&["--net=kernel,dpdk"]),
            Err(ArgsError::UnknownNet("dpdk".into()))
        );
        assert_eq!(
            settings(&["--net=smoltcp,kernel,smoltcp"]),
            Err(ArgsError::DuplicateNet("smoltcp"))
        );
        assert_eq!(settings(&["--net= , "]), Err(ArgsError::NoNets));
        assert!(out_of_range(
            settings(&["--net=kernel", "--conns-rate=0"]),
            "conns-rate"
        ));
        assert!(out_of_range(
            settings(&["--conns-rate=1000001"]),
            "conns-rate"
        ));
        assert!(out_of_range(
            settings(&["--conns-duration=0"]),
            "conns-duration"
        ));
        assert_eq!(
            settings(&["--conns-duration=later"]),
            Err(ArgsError::BadDuration {
                flag: "conns-duration",
                reason: crate::load::spec::parse_duration("later").unwrap_err()
            })
        );
    }

    #[test]
    fn parses_durations_as_every_bench_does() {
        let parse = |text| parse_duration("duration", text);
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 2 s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "s", "-1s", "1d", "nan", "inf", "1e400"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // `bench compare` takes the same forms.
        for text in ["3s", "500ms", "250us", "1m", "1.5", "1m30s"] {
            assert_eq!(
                parse(text).ok(),
                crate::load::spec::parse_duration(text).ok(),
                "{text}"
            );
        }
        // The timeout, in the new spelling and the old one (bare seconds).
        assert_eq!(
            settings(&["--timeout=500ms"]).unwrap().timeout,
            Duration::from_millis(500)
        );
        assert_eq!(
            settings(&["--timeout-s=7"]).unwrap().timeout,
            Duration::from_secs(7)
        );
        assert_eq!(settings(&[]).unwrap().timeout, Duration::from_secs(20));
    }

    fn case(name: &str, p50_us: f64) -> CaseResult {
        let mut c = CaseResult::from_summary(name, &Default::default(), 0.0, 0);
        c.p50_us = p50_us;
        c
    }

    #[test]
    fn targets_compare_within_one_report() {
        let report = Report::new(
            "engine",
            Machine::default(),
            vec![
                case("tcp-echo-floor", 10.0),
                case("external-call/spin", 11.5),
                case("chain/spin", 17.0),
                case("internal-call/spin", 5.0),
            ],
        );
        let checks = check_targets(&report);
        assert_eq!(checks.len(), 3);
        assert!(checks[0].met() && (checks[0].measured - 1.5).abs() < 1e-9);
        assert!(!checks[1].met(), "7 µs over the floor misses 6");
        assert!(checks[2].met() && (checks[2].measured - 5.0 / 11.5).abs() < 1e-9);
        // Missing or empty cases give no check rather than a bogus one.
        let partial = Report::new(
            "engine",
            Machine::default(),
            vec![
                case("external-call/spin", 11.5),
                case("tcp-echo-floor", 0.0),
            ],
        );
        assert!(check_targets(&partial).is_empty());
    }

    fn case_p999(name: &str, p50_us: f64, p999_us: f64) -> CaseResult {
        let mut c = case(name, p50_us);
        c.p999_us = p999_us;
        c
    }

    #[test]
    fn net_targets_compare_smoltcp_with_kernel_and_with_itself() {
        let report = Report::new(
            "engine",
            Machine::default(),
            vec![
                case("external-call/kernel", 20.0),
                case("external-call/smoltcp", 18.0),
                case_p999("conns/smoltcp/64", 30.0, 100.0),
                case_p999("conns/smoltcp/1024", 31.0, 250.0),
            ],
        );
        let checks = check_targets(&report);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert_eq!(
            checks[0].what,
            "external-call/smoltcp p50 / external-call/kernel p50"
        );
        assert!(checks[0].met() && (checks[0].measured - 0.9).abs() < 1e-9);
        assert_eq!(
            checks[1].what,
            "conns/smoltcp/1024 p99.9 / conns/smoltcp/64 p99.9"
        );
        assert!(!checks[1].met(), "2.5 times misses 2");
        assert!((checks[1].measured - 2.5).abs() < 1e-9);
    }
}
