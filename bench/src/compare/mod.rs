//! `nocturne bench compare`: the foo→bar chain on nocturne against what a
//! Rust team would otherwise build — two tokio + hyper RPC servers
//! (`rpc-hyper`), and the same with a tonic gRPC inner hop (`rpc-grpc`) —
//! loaded by the same open-loop client at the same rates.
//!
//! ```text
//!  start every system (separate processes, see systems) ─ check its chain ─ freeze it
//!  unloaded: ping-pong round trips on each ─▶ SLO = 10 × nocturne's unloaded p50
//!  S: rpc-hyper's saturation rate (sweep::SaturationSearch: double, then bisect)
//!  rounds: each system, in rotated order, runs the next rate of its sweep::SloLadder
//!          (0.25 S, 0.5 S, 0.75 S always; higher while the SLO holds), the others frozen;
//!          with --repeat N, N windows per rate, interleaved (window 1 of every
//!          system, then window 2, …), the median-p99 window standing for the rate
//!  ─▶ report (docs/design.md §7 JSON), Markdown table, SVG plot, target checks
//! ```
//!
//! Placement on the 2-core VM (the defaults): the load generator on core
//! 0; nocturne's io loop and its workers on core 1; each baseline process
//! on core 1 too (one tokio worker thread). Every system's servers get
//! exactly the cores the client does not use ([`cores`]: a client core
//! that a server also uses is refused unless `--allow-shared-cores`). Only
//! the system being measured runs: the others are frozen.
//!
//! Ctrl-C stops the run at its next check (see `driver`): the cases that
//! finished are printed and written to `--json`, marked as interrupted,
//! and the command fails.
//!
//! Modules: [`cores`] (the client apart from the servers), [`sweep`]
//! (saturation search and SLO ladder, pure), [`systems`]
//! (starting and freezing the systems), `driver` (the run), [`output`]
//! (report, table, checks), [`plot`] (SVG).

pub mod cores;
pub mod output;
pub mod plot;
pub mod sweep;
pub mod systems;

mod driver;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::load::spec::{format_duration, parse_duration, parse_rate};
use crate::load::PollMode;
use crate::pin::{allowed_cores, check_cores_against, parse_core_list};
use crate::range::DecimalRange;

pub use driver::{
    run_compare, CompareOutcome, ComparePhase, RateWindows, SearchRun, SystemResult, Window,
};
pub use sweep::{KeepUp, LadderMaxError, Saturation, SaturationSearch, SearchError, SloLadder};
pub use systems::{Placement, RunningSystem, System};

/// `nocturne bench compare` options.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    nocturne bench compare --out target/compare --json target/compare/compare.json\n  \
    nocturne bench compare --quick --out /tmp/cmp")]
pub struct CompareArgs {
    /// Shorter windows and fewer round trips (every case still runs).
    #[arg(long)]
    pub quick: bool,
    /// Directory for the Markdown table (compare.md) and the plot (compare.svg).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write the report as JSON (schema: docs/design.md §7).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Systems to run, comma separated (rpc-hyper, rpc-grpc, nocturne);
    /// without rpc-hyper, give --saturation.
    #[arg(
        long,
        default_value = "rpc-hyper,rpc-grpc,nocturne",
        value_name = "SYSTEMS"
    )]
    pub systems: String,
    /// Cores of the load generator's threads (thread i on the i-th, cycling),
    /// e.g. 0 or 0-1; the unloaded round trips run on the first.
    #[arg(long, alias = "client-core", default_value = "0", value_name = "CORES")]
    pub client_cores: String,
    /// nocturne's io cores (`serve --io-cores`), e.g. 1 or 12-15.
    #[arg(long, alias = "io-core", default_value = "1", value_name = "CORES")]
    pub io_cores: String,
    /// nocturne's worker cores, e.g. 0 or 2-5; the baselines get these
    /// and the io cores [default: the io cores, so that every system's
    /// servers get exactly the cores the client does not use].
    #[arg(long, value_name = "CORES")]
    pub worker_cores: Option<String>,
    /// Let --client-cores share cores with --io-cores or --worker-cores
    /// (where the baselines run too): refused otherwise, as the client
    /// then competes with the servers it measures.
    #[arg(long)]
    pub allow_shared_cores: bool,
    /// tokio worker threads of each baseline process [default: one per server
    /// core] [range: 1..=1024].
    #[arg(long, value_name = "N")]
    pub server_threads: Option<usize>,
    /// nocturne's `serve --poll` (spin, adaptive, block).
    #[arg(long, default_value = "adaptive", value_name = "MODE")]
    pub nocturne_poll: String,
    /// An extra argument for `nocturne serve` (repeatable), e.g.
    /// --engine-arg=--worker-poll=park.
    #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
    pub engine_arg: Vec<String>,
    /// How the load generator waits (spin, adaptive, block).
    #[arg(long, value_enum, default_value_t = PollMode::Adaptive, value_name = "MODE")]
    pub client_poll: PollMode,
    /// Load generator threads (spread over --client-cores) [range: 1..=1024].
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub client_threads: usize,
    /// Keep-alive connections of the load generator [range: 1..=100000].
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub connections: usize,
    /// Request body bytes, as `bench engine` [range: 0..=524288] (512 KiB).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,
    /// Measurement window per rate, e.g. 5s, 500ms, 1m or 2.5 (seconds)
    /// [default: 5s, quick 1s] [range: 1ms..=3600s].
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Warm-up before each window [default: 1s, quick 200ms] [range: 0s..=3600s].
    #[arg(long, value_name = "DURATION")]
    pub warmup: Option<String>,
    /// Windows per ladder rate, interleaved across the systems; the one with
    /// the median p99 stands for the rate, so one stall of a noisy host does
    /// not decide the SLO [range: 1..=9].
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Window of each saturation-search rate [default: 2s, quick 500ms]
    /// [range: 1ms..=3600s].
    #[arg(long, value_name = "DURATION")]
    pub sweep_duration: Option<String>,
    /// First rate of the saturation search [range: 1..=1000000000].
    #[arg(long, default_value = "2k", value_name = "RATE")]
    pub sweep_start: String,
    /// Highest rate of the saturation search [range: 1..=1000000000].
    #[arg(long, default_value = "1M", value_name = "RATE")]
    pub sweep_max: String,
    /// Bisection steps after the doubling [default: 3, quick 1] [range: 0..=30].
    #[arg(long, value_name = "N")]
    pub refine: Option<u32>,
    /// Runs of a rate that must all miss before the search believes the
    /// miss (a shared host's stall can sink one window) [range: 1..=100].
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub miss_runs: u32,
    /// A run keeps up when it achieves this fraction of the offered rate
    /// [range: 0.01..=1]…
    #[arg(long, default_value_t = 0.95, value_name = "FRACTION")]
    pub keep_up_fraction: f64,
    /// …with no errors and a p50 under this (a median, so that the odd
    /// stall of a shared host does not count as saturation) [range: 1us..=3600s].
    #[arg(long, default_value = "2ms", value_name = "DURATION")]
    pub keep_up_p50: String,
    /// Skip the search: use this saturation rate S [range: 1..=1000000000].
    #[arg(long, value_name = "RATE")]
    pub saturation: Option<String>,
    /// Unloaded (ping-pong) round trips per system [default: 5000, quick 500]
    /// [range: 1..=1000000000].
    #[arg(long, value_name = "N")]
    pub pingpong: Option<u64>,
    /// The SLO is this many times nocturne's unloaded p50, at p99 [range:
    /// 1..=1000].
    #[arg(long, default_value_t = 10.0, value_name = "FACTOR")]
    pub slo_factor: f64,
    /// Highest multiple of S the SLO ladder climbs to: one of its rungs,
    /// 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6 or 8.
    #[arg(long, default_value_t = 8.0, value_name = "FACTOR")]
    pub ladder_max: f64,
    /// A request unanswered this long is an error; also each server's
    /// start-up limit (e.g. 10s; a bare number is seconds) [range: 1ms..=3600s].
    #[arg(
        long,
        alias = "timeout-s",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub timeout: String,
    /// No run log (it goes to stderr otherwise) and no progress line:
    /// stdout carries the table, the targets and the files written.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// Systems, in report order.
    pub systems: Vec<System>,
    /// Where the servers run.
    pub placement: Placement,
    /// The load generator's cores (its threads cycle over them).
    pub client_cores: Vec<usize>,
    /// Whether the client may share cores with the servers
    /// (`--allow-shared-cores`).
    pub allow_shared_cores: bool,
    /// How the load generator waits.
    pub client_poll: PollMode,
    /// Load generator threads.
    pub client_threads: usize,
    /// Load generator connections.
    pub connections: usize,
    /// Request body.
    pub payload: Vec<u8>,
    /// Window per ladder rate.
    pub duration: Duration,
    /// Warm-up before every window.
    pub warmup: Duration,
    /// Measurement windows per ladder rate (`--repeat`); the one with the
    /// median p99 stands for the rate.
    pub repeat: u32,
    /// Window per saturation-search rate.
    pub sweep_duration: Duration,
    /// First search rate.
    pub sweep_start: f64,
    /// Search cap.
    pub sweep_max: f64,
    /// Bisection steps.
    pub refine: u32,
    /// Runs a missed search rate needs.
    pub miss_runs: u32,
    /// The keep-up verdict of the search.
    pub keep_up: KeepUp,
    /// S given on the command line.
    pub saturation: Option<f64>,
    /// Ping-pong round trips per system.
    pub pingpong: u64,
    /// SLO = this × nocturne's unloaded p50.
    pub slo_factor: f64,
    /// Ladder cap, multiples of S.
    pub ladder_max: f64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// `--quick`.
    pub quick: bool,
    /// Show progress on stderr.
    pub progress: bool,
    /// No run log on stderr.
    pub quiet: bool,
    /// Output directory.
    pub out: Option<PathBuf>,
    /// JSON path.
    pub json: Option<PathBuf>,
}

/// The accepted ranges of `bench compare`'s numeric options (the help
/// states each in the same words).
pub mod ranges {
    use std::time::Duration;

    use crate::range::{DecimalRange, DurationRange, IntRange};

    /// `--server-threads`.
    pub const SERVER_THREADS: IntRange = IntRange::new("server-threads", 1, 1024);
    /// `--client-threads`.
    pub const CLIENT_THREADS: IntRange = IntRange::new("client-threads", 1, 1024);
    /// `--connections`.
    pub const CONNECTIONS: IntRange = IntRange::new("connections", 1, 100_000);
    /// `--payload`, `--duration` and `--timeout`: as `bench engine`'s.
    pub use crate::engine::ranges::{DURATION, PAYLOAD, TIMEOUT};
    /// `--refine`.
    pub const REFINE: IntRange = IntRange::new("refine", 0, 30);
    /// `--miss-runs`.
    pub const MISS_RUNS: IntRange = IntRange::new("miss-runs", 1, 100);
    /// `--pingpong`.
    pub const PINGPONG: IntRange = IntRange::new("pingpong", 1, 1_000_000_000);
    /// `--repeat`: each window adds a warm-up and a window per system and
    /// rate to the run; past 9 the run grows long for a median that more
    /// windows barely steady.
    pub const REPEAT: IntRange = IntRange::new("repeat", 1, 9);
    const HOUR: Duration = Duration::from_secs(3600);
    const MS: Duration = Duration::from_millis(1);
    /// `--warmup`.
    pub const WARMUP: DurationRange = DurationRange::new("warmup", Duration::ZERO, HOUR);
    /// `--sweep-duration`.
    pub const SWEEP_DURATION: DurationRange = DurationRange::new("sweep-duration", MS, HOUR);
    /// `--keep-up-p50`.
    pub const KEEP_UP_P50: DurationRange =
        DurationRange::new("keep-up-p50", Duration::from_micros(1), HOUR);
    /// Every integer range, for the help test.
    pub const INTS: [IntRange; 8] = [
        SERVER_THREADS,
        CLIENT_THREADS,
        CONNECTIONS,
        PAYLOAD,
        REFINE,
        MISS_RUNS,
        PINGPONG,
        REPEAT,
    ];
    /// Every duration range, for the help test.
    pub const DURATIONS: [DurationRange; 5] =
        [DURATION, WARMUP, SWEEP_DURATION, KEEP_UP_P50, TIMEOUT];
    /// The greatest of the rate options: one request per nanosecond, as
    /// `bench load`'s `--rate`. The least is 1: every system is offered a
    /// whole number of requests/s, at least 1 (`sweep::integer_rate`).
    const MAX_RATE: f64 = 1e9;
    /// `--sweep-start`.
    pub const SWEEP_START: DecimalRange = DecimalRange::new("sweep-start", 1.0, MAX_RATE);
    /// `--sweep-max`.
    pub const SWEEP_MAX: DecimalRange = DecimalRange::new("sweep-max", 1.0, MAX_RATE);
    /// `--saturation`.
    pub const SATURATION: DecimalRange = DecimalRange::new("saturation", 1.0, MAX_RATE);
    /// `--keep-up-fraction`: keeping up with less than a hundredth of the
    /// offered rate would say nothing.
    pub const KEEP_UP_FRACTION: DecimalRange = DecimalRange::new("keep-up-fraction", 0.01, 1.0);
    /// `--slo-factor`: below 1 the SLO (at p99) is under nocturne's own
    /// unloaded p50, which no rate meets.
    pub const SLO_FACTOR: DecimalRange = DecimalRange::new("slo-factor", 1.0, 1000.0);
    /// Every decimal range, for the help test.
    pub const DECIMALS: [DecimalRange; 5] = [
        SWEEP_START,
        SWEEP_MAX,
        SATURATION,
        KEEP_UP_FRACTION,
        SLO_FACTOR,
    ];
}

impl CompareSettings {
    /// Validates the command line (cores against this process's mask).
    pub fn from_args(args: &CompareArgs) -> anyhow::Result<Self> {
        // Name the one flag that is wrong, not every flag that could be.
        let in_range = |range: crate::range::DurationRange, text: &str| {
            let d = parse_duration(text).with_context(|| format!("--{}", range.flag))?;
            anyhow::Ok(range.check(d, text)?)
        };
        let pick = |given: &Option<String>, full: &str, quick: &str, range| {
            let text = given
                .clone()
                .unwrap_or_else(|| if args.quick { quick } else { full }.to_owned());
            in_range(range, &text)
        };
        let duration = pick(&args.duration, "5s", "1s", ranges::DURATION)?;
        let warmup = pick(&args.warmup, "1s", "200ms", ranges::WARMUP)?;
        let sweep_duration = pick(&args.sweep_duration, "2s", "500ms", ranges::SWEEP_DURATION)?;
        let timeout = in_range(ranges::TIMEOUT, &args.timeout)?;
        let keep_up_p50 = in_range(ranges::KEEP_UP_P50, &args.keep_up_p50)?;
        ranges::CLIENT_THREADS.check_usize(args.client_threads)?;
        ranges::CONNECTIONS.check_usize(args.connections)?;
        // Checked before the body is allocated and filled.
        ranges::PAYLOAD.check_usize(args.payload)?;
        ranges::MISS_RUNS.check(u64::from(args.miss_runs))?;
        ranges::REPEAT.check(u64::from(args.repeat))?;
        if let Some(n) = args.refine {
            ranges::REFINE.check(u64::from(n))?;
        }
        if let Some(n) = args.pingpong {
            ranges::PINGPONG.check(n)?;
        }
        if let Some(n) = args.server_threads {
            ranges::SERVER_THREADS.check_usize(n)?;
        }
        let mut systems = Vec::new();
        for name in args.systems.split(',') {
            let system = System::parse(name).with_context(|| {
                format!("--systems: unknown system {name:?} (rpc-hyper, rpc-grpc, nocturne)")
            })?;
            if !systems.contains(&system) {
                systems.push(system);
            }
        }
        systems.sort();
        let rate_in = |range: DecimalRange, text: &str| -> anyhow::Result<f64> {
            let rate = parse_rate(text).with_context(|| format!("--{}", range.flag))?;
            Ok(range.check(rate, text)?)
        };
        let saturation = args
            .saturation
            .as_deref()
            .map(|text| rate_in(ranges::SATURATION, text))
            .transpose()?
            .map(sweep::integer_rate);
        if saturation.is_none() && !systems.contains(&System::RpcHyper) {
            anyhow::bail!("without rpc-hyper in --systems, give --saturation RATE");
        }
        let sweep_start = rate_in(ranges::SWEEP_START, &args.sweep_start)?;
        let sweep_max = rate_in(ranges::SWEEP_MAX, &args.sweep_max)?;
        SaturationSearch::new(sweep_start, sweep_max, 0)?;
        let keep_up_fraction = ranges::KEEP_UP_FRACTION
            .check(args.keep_up_fraction, &args.keep_up_fraction.to_string())?;
        let slo_factor = ranges::SLO_FACTOR.check(args.slo_factor, &args.slo_factor.to_string())?;
        let ladder_max = sweep::check_ladder_max(args.ladder_max)?;
        if args.connections < args.client_threads {
            anyhow::bail!(
                "--connections {} is too few for --client-threads {}: each thread needs one",
                args.connections,
                args.client_threads
            );
        }
        if !matches!(args.nocturne_poll.as_str(), "spin" | "adaptive" | "block") {
            anyhow::bail!("--nocturne-poll: expected spin, adaptive or block");
        }
        let worker_cores = parse_core_list(args.worker_cores.as_ref().unwrap_or(&args.io_cores))
            .context("--worker-cores")?;
        let allowed = allowed_cores()?;
        let client_cores = parse_core_list(&args.client_cores).context("--client-cores")?;
        let io_cores = parse_core_list(&args.io_cores).context("--io-cores")?;
        let mut all = client_cores.clone();
        all.extend(&io_cores);
        all.extend(&worker_cores);
        check_cores_against(&all, &allowed)
            .context("--client-cores / --io-cores / --worker-cores")?;
        if args.nocturne_poll == "spin" && worker_cores.iter().any(|c| io_cores.contains(c)) {
            anyhow::bail!(
                "--nocturne-poll spin needs --worker-cores apart from --io-cores \
                 (a spinning io core starves workers beside it; the default \
                 --worker-cores is the io cores)"
            );
        }
        if !args.allow_shared_cores {
            cores::check_client_apart(&client_cores, &io_cores, &worker_cores)?;
        }
        let mut server_cores = worker_cores.clone();
        server_cores.extend(&io_cores);
        server_cores.sort_unstable();
        server_cores.dedup();
        let server_threads = match args.server_threads {
            Some(n) => n,
            None => server_cores.len(),
        };
        let exe = std::env::current_exe().context("cannot locate the nocturne binary")?;
        Ok(Self {
            systems,
            placement: Placement {
                exe,
                io_cores,
                worker_cores,
                server_cores,
                server_threads,
                nocturne_poll: args.nocturne_poll.clone(),
                engine_args: args.engine_arg.clone(),
                timeout,
            },
            client_cores,
            allow_shared_cores: args.allow_shared_cores,
            client_poll: args.client_poll,
            client_threads: args.client_threads,
            connections: args.connections,
            payload: vec![b'p'; args.payload],
            duration,
            warmup,
            repeat: args.repeat,
            sweep_duration,
            sweep_start,
            sweep_max,
            refine: args.refine.unwrap_or(if args.quick { 1 } else { 3 }),
            miss_runs: args.miss_runs,
            keep_up: KeepUp {
                min_achieved: keep_up_fraction,
                max_p50: keep_up_p50,
            },
            saturation,
            pingpong: args.pingpong.unwrap_or(if args.quick { 500 } else { 5000 }),
            slo_factor,
            ladder_max,
            timeout,
            quick: args.quick,
            progress: !args.quiet,
            quiet: args.quiet,
            out: args.out.clone(),
            json: args.json.clone(),
        })
    }

    /// The settings that shape the numbers, for the report.
    pub fn modes(&self) -> Vec<(&'static str, String)> {
        let p = &self.placement;
        vec![
            ("quick", self.quick.to_string()),
            ("systems", {
                let names: Vec<&str> = self.systems.iter().map(|s| s.name()).collect();
                names.join(",")
            }),
            ("nocturne_poll", p.nocturne_poll.clone()),
            ("engine_args", p.engine_args.join(" ")),
            ("server_threads", p.server_threads.to_string()),
            ("client_poll", self.client_poll.name().into()),
            ("client_threads", self.client_threads.to_string()),
            ("allow_shared_cores", self.allow_shared_cores.to_string()),
            ("connections", self.connections.to_string()),
            ("payload_bytes", self.payload.len().to_string()),
            ("arrival", "fixed".into()),
            ("duration", format_duration(self.duration)),
            ("warmup", format_duration(self.warmup)),
            ("repeat", self.repeat.to_string()),
            ("sweep_duration", format_duration(self.sweep_duration)),
            ("refine", self.refine.to_string()),
            ("miss_runs", self.miss_runs.to_string()),
            (
                "keep_up",
                format!(
                    "achieved>={} of offered, p50<={}, no errors",
                    self.keep_up.min_achieved,
                    format_duration(self.keep_up.max_p50)
                ),
            ),
            ("slo_factor", self.slo_factor.to_string()),
            ("ladder_max", self.ladder_max.to_string()),
            ("timeout", format_duration(self.timeout)),
        ]
    }
}

/// The files a run writes: the table and the plot in `--out`, the JSON.
fn outputs(settings: &CompareSettings) -> Vec<(&'static str, PathBuf)> {
    let mut outputs = Vec::new();
    if let Some(dir) = &settings.out {
        outputs.push(("--out (compare.md)", dir.join(MARKDOWN_FILE)));
        outputs.push(("--out (compare.svg)", dir.join(PLOT_FILE)));
    }
    if let Some(json) = &settings.json {
        outputs.push(("--json", json.clone()));
    }
    outputs
}

/// The Markdown table's file name in `--out`.
pub const MARKDOWN_FILE: &str = "compare.md";
/// The plot's file name in `--out`.
pub const PLOT_FILE: &str = "compare.svg";

/// `nocturne bench compare`: runs, prints the table and the targets,
/// writes the outputs, and fails when a comparison case counted errors or
/// a signal cut the run short (what finished is still printed and written
/// to `--json`, marked `interrupted`).
pub fn run_command(args: &CompareArgs) -> anyhow::Result<()> {
    let settings = CompareSettings::from_args(args)?;
    // The comparison takes minutes: find out now if its results cannot be
    // kept, or one would overwrite another.
    let outputs = outputs(&settings);
    let named: Vec<(&str, Option<&std::path::Path>)> = outputs
        .iter()
        .map(|(name, path)| (*name, Some(path.as_path())))
        .collect();
    crate::report::check_distinct_outputs(&named)?;
    for (_, path) in &outputs {
        crate::report::prepare_output(path)?;
    }
    // Ctrl-C (or SIGTERM, SIGHUP) ends the run at its next check; the
    // systems are stopped as it unwinds.
    crate::engine::sys::catch_interrupts().context("cannot catch Ctrl-C")?;
    let outcome = run_compare(&settings)?;
    let report = output::build_report(&settings, &outcome);
    if let Some(phase) = outcome.interrupted {
        return finish_interrupted(&settings, &report, phase);
    }
    println!();
    print!("{}", output::markdown_table(&settings, &outcome));
    for check in output::check_targets(&outcome) {
        println!("target: {check}");
    }
    if let Some(dir) = &settings.out {
        let md = dir.join(MARKDOWN_FILE);
        std::fs::write(&md, output::markdown(&settings, &outcome))
            .with_context(|| format!("cannot write {}", md.display()))?;
        println!("wrote {}", md.display());
        let svg = dir.join(PLOT_FILE);
        std::fs::write(&svg, plot::render_svg(&outcome))
            .with_context(|| format!("cannot write {}", svg.display()))?;
        println!("wrote {}", svg.display());
    }
    report.write_json_if_asked(settings.json.as_deref())?;
    let errors = output::comparison_errors(&report);
    if errors > 0 {
        anyhow::bail!("{errors} errors in the comparison runs (see the errors column)");
    }
    Ok(())
}

/// The end of a run a signal stopped: the cases that finished as the
/// generic table and in the JSON (`machine.modes.interrupted` says
/// where); no `compare.md` or `compare.svg`, which would present an
/// incomplete comparison as a result.
fn finish_interrupted(
    settings: &CompareSettings,
    report: &crate::report::Report,
    phase: ComparePhase,
) -> anyhow::Result<()> {
    println!();
    print!("{}", report.table());
    if let Some(path) = &settings.json {
        report.write_json(path)?;
        println!("wrote {} (interrupted)", path.display());
    }
    let skipped = if settings.out.is_some() {
        format!("; no {MARKDOWN_FILE} or {PLOT_FILE} written")
    } else {
        String::new()
    };
    anyhow::bail!(
        "interrupted {phase}: the {} case(s) that finished are reported above{skipped}; \
         the systems were stopped",
        report.cases.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn settings(argv: &[&str]) -> anyhow::Result<CompareSettings> {
        let cli =
            Cli::try_parse_from(std::iter::once("compare").chain(argv.iter().copied())).unwrap();
        CompareSettings::from_args(&cli.args)
    }

    #[test]
    fn every_range_is_stated_in_help_and_is_the_one_checked() {
        let run = |flag: &str, v: &str| {
            let arg = format!("--{flag}={v}");
            // Core options a two-core machine can take, whatever the defaults.
            let mut argv = vec![
                "--allow-shared-cores",
                "--client-cores=0",
                "--io-cores=0",
                &arg,
            ];
            match flag {
                // More connections than threads, whatever the thread count.
                "client-threads" => argv.push("--connections=100000"),
                // The search's first rate may not pass its cap.
                "sweep-start" => argv.push("--sweep-max=1000000000"),
                "sweep-max" => argv.push("--sweep-start=1"),
                _ => {}
            }
            settings(&argv).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        let command = <Cli as clap::CommandFactory>::command();
        crate::range::check_ranges(&command, &ranges::INTS, &ranges::DURATIONS, run);
        crate::range::check_decimal_ranges(&command, &ranges::DECIMALS, run);
        // The old spelling of --timeout is still --timeout.
        let error = settings(&["--timeout-s", "0"]).unwrap_err().to_string();
        assert_eq!(error, "--timeout 0 is out of range: it takes 1ms..=3600s");
        let error = settings(&["--connections=2", "--client-threads=3"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("too few for --client-threads 3"), "{error}");
    }
}
