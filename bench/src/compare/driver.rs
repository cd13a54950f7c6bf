//! The run of `bench compare`: start and freeze every system, time their
//! unloaded round trips, find S on rpc-hyper, then walk every system's
//! ladder in rotated rounds, one system thawed at a time.
//!
//! The systems are spawned from this (unpinned) thread before any client
//! thread pins itself: a child inherits its spawner's CPU mask, and each
//! server must see every core it was granted.
//!
//! Ctrl-C (SIGINT, SIGTERM, SIGHUP, caught by the command with
//! `engine::sys::catch_interrupts`) ends the run at the next check: what
//! finished is returned with the [`ComparePhase`] it stopped in, and the
//! systems are stopped as the run unwinds (their guards remove their
//! processes and config files). A window cut short is left out; so is,
//! with `--repeat`, every window of a ladder rate whose last window had
//! not ended (a rate is reported by the median of all its windows, or not
//! at all).
//!
//! The run log (every system started, every rate run) goes to stderr, so
//! that stdout carries the table alone; `--quiet` drops it.

use std::time::Duration;

use anyhow::Context as _;

use super::sweep::{median_window, KeepUp, Saturation, SaturationSearch, SloLadder};
use super::systems::{RunningSystem, System};
use super::CompareSettings;
use crate::engine::sys;
use crate::hist::LatencyHistogram;
use crate::load::baseline::{pingpong_until, PingPongPlan};
use crate::load::spec::{format_duration, format_rate, Percentile, Slo};
use crate::load::{run_rate, LoadError, LoadPlan, RateResult, RequestSpec, Targets, Url};

/// One rate of the saturation search.
#[derive(Debug, Clone)]
pub struct SearchRun {
    /// What the run measured.
    pub result: RateResult,
    /// Whether rpc-hyper kept up.
    pub kept_up: bool,
}

/// Everything measured on one system.
#[derive(Debug, Clone)]
pub struct SystemResult {
    /// Which system.
    pub system: System,
    /// Back-to-back round trips on one connection (no load).
    pub unloaded: LatencyHistogram,
    /// One result per ladder rate run, ascending by rate: with
    /// `--repeat`, the window with the median p99 of the rate's.
    pub runs: Vec<RateResult>,
    /// Per ladder rate run, ascending by rate, the p99 of each of its
    /// windows (one without `--repeat`).
    pub windows: Vec<RateWindows>,
    /// The highest rate meeting the SLO (p99, no errors).
    pub best: Option<f64>,
    /// Every ladder rate met the SLO: `best` is a lower bound.
    pub reached_top: bool,
    /// Resident memory of its processes after the run, MiB.
    pub rss_mib: f64,
    /// The lines its processes logged when they began listening.
    pub listening: Vec<String>,
}

impl SystemResult {
    /// The run at `rate`, if one ran.
    pub fn at(&self, rate: f64) -> Option<&RateResult> {
        self.runs.iter().find(|r| r.rate == rate)
    }

    /// The windows of the run at `rate`, if one ran.
    pub fn windows_at(&self, rate: f64) -> Option<&RateWindows> {
        self.windows.iter().find(|w| w.rate == rate)
    }
}

/// The windows one ladder rate of one system ran (`--repeat`), of which
/// one, the median by p99, stands for the rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateWindows {
    /// The rate.
    pub rate: f64,
    /// Each window's p99 in run order, µs (as the report's `p99_us`).
    pub p99_us: Vec<f64>,
    /// The index in `p99_us` of the window that stands for the rate.
    pub chosen: usize,
}

/// Which of a rate's `--repeat` windows, e.g. 2 of 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// From 1.
    pub number: u32,
    /// The rate's windows (`--repeat`).
    pub of: u32,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.number, self.of)
    }
}

impl Window {
    /// The phase while this window of `system`'s `rate` runs: as without
    /// `--repeat` when it is the only one.
    fn during(self, system: System, rate: f64) -> ComparePhase {
        if self.of == 1 {
            ComparePhase::Ladder(system, rate)
        } else {
            ComparePhase::LadderWindow(system, rate, self)
        }
    }

    /// The phase once this window has ended: the rate is reported after
    /// its last.
    fn after(self, system: System, rate: f64) -> ComparePhase {
        if self.number == self.of {
            ComparePhase::After(Some(system), rate)
        } else {
            ComparePhase::AfterWindow(system, rate, self)
        }
    }
}

/// What a whole comparison measured.
#[derive(Debug, Clone)]
pub struct CompareOutcome {
    /// S, requests/s; 0 when an interruption came before S was known.
    pub saturation: f64,
    /// How S was found (`None`: given with --saturation).
    pub search: Option<Saturation>,
    /// The runs of the search, in order.
    pub search_runs: Vec<SearchRun>,
    /// The keep-up verdict used by the search.
    pub keep_up: KeepUp,
    /// The SLO: p99 ≤ factor × the base system's unloaded p50 (a zero
    /// limit when an interruption came before that p50 was measured).
    pub slo: Slo,
    /// The system whose unloaded p50 set the SLO (nocturne when it ran).
    pub slo_base: System,
    /// The rates every system ran: 0.25, 0.5 and 0.75 × S.
    pub comparison_rates: Vec<f64>,
    /// Per system, in report order.
    pub systems: Vec<SystemResult>,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages at the start and the
    /// end of the run (other work on the machine).
    pub loadavg: (String, String),
    /// Where a signal (Ctrl-C) stopped the run; `None` for a whole run.
    pub interrupted: Option<ComparePhase>,
}

/// Where a signal stopped `bench compare`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComparePhase {
    /// Starting (or checking) a system: nothing of it was measured.
    Starting(System),
    /// A system's unloaded round trips, which are left out.
    Unloaded(System),
    /// The saturation search's window at this rate, which is left out.
    Search(f64),
    /// A system's ladder window at this rate, which is left out.
    Ladder(System, f64),
    /// One of a system's `--repeat` windows (N > 1) at this rate: the
    /// rate is left out with every window of it that had ended.
    LadderWindow(System, f64, Window),
    /// After one of a system's `--repeat` windows at this rate had ended,
    /// not its last: the rate's windows so far are left out.
    AfterWindow(System, f64, Window),
    /// After a window had finished (it is reported): the saturation
    /// search's at this rate, or a system's ladder rate.
    After(Option<System>, f64),
}

impl std::fmt::Display for ComparePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Starting(s) => write!(f, "while starting {}", s.name()),
            Self::Unloaded(s) => write!(f, "during {}'s unloaded round trips", s.name()),
            Self::Search(rate) => write!(
                f,
                "during the saturation search's {}/s window",
                format_rate(rate)
            ),
            Self::Ladder(s, rate) => {
                write!(f, "during {}'s {}/s window", s.name(), format_rate(rate))
            }
            Self::LadderWindow(s, rate, window) => write!(
                f,
                "during {}'s {}/s window {window}",
                s.name(),
                format_rate(rate)
            ),
            Self::AfterWindow(s, rate, window) => write!(
                f,
                "after {}'s {}/s window {window} had ended, before the rate's last",
                s.name(),
                format_rate(rate)
            ),
            Self::After(system, rate) => write!(
                f,
                "after {}'s {}/s window had ended",
                system.map_or("the saturation search", System::name),
                format_rate(rate)
            ),
        }
    }
}

/// The 1, 5 and 15 minute load averages (`?` where unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "?".into())
}

impl CompareOutcome {
    /// The result of `system`, if it ran.
    pub fn system(&self, system: System) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == system)
    }
}

/// The load plan against one system.
fn plan_for(
    settings: &CompareSettings,
    system: &RunningSystem,
    duration: Duration,
) -> anyhow::Result<LoadPlan> {
    let url = Url::parse(&format!("http://{}/function/foo", system.addr()))?;
    let spec = RequestSpec {
        name: Some(format!("{} foo", system.system().name())),
        url,
        method: "POST".into(),
        headers: Vec::new(),
        body: settings.payload.clone(),
        weight: 1,
    };
    let mut plan = LoadPlan::new(Targets::build(&[spec], settings.timeout)?);
    plan.duration = duration;
    plan.warmup = settings.warmup;
    plan.connections = settings.connections;
    plan.threads = settings.client_threads;
    plan.cores = settings.client_cores.clone();
    plan.poll = settings.client_poll;
    plan.timeout = settings.timeout;
    plan.connect_timeout = settings.timeout;
    // The command catches Ctrl-C: a window in progress ends at once.
    plan.stop_on_signal = true;
    plan.validate()?;
    Ok(plan)
}

/// Why the run stopped early: a signal in the named phase, or a failure.
enum Stop {
    Interrupted(ComparePhase),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// The run log: lines on stderr, none with `--quiet`.
macro_rules! log {
    ($settings:expr, $($arg:tt)*) => {
        if !$settings.quiet {
            eprintln!($($arg)*);
        }
    };
}

/// Thaws `system`, runs `plan` at `rate`, freezes it again; a failure
/// names the system and carries its log if it died. A signal before or
/// during the window is `Stop::Interrupted(phase)`.
fn measure(
    system: &mut RunningSystem,
    plan: &LoadPlan,
    rate: f64,
    progress: bool,
    phase: ComparePhase,
) -> Result<RateResult, Stop> {
    system.resume()?;
    let result = run_rate(plan, rate, progress);
    let alive = system.check_alive();
    let paused = system.pause();
    let result = match result {
        Err(LoadError::Interrupted(_)) => return Err(Stop::Interrupted(phase)),
        other => other,
    };
    let result = result.with_context(|| {
        format!(
            "{} at {}/s{}",
            system.system().name(),
            format_rate(rate),
            alive.err().map(|e| format!(" ({e})")).unwrap_or_default()
        )
    })?;
    paused?;
    Ok(result)
}

/// `Stop::Interrupted(phase)` once a signal has come.
fn stop_if_interrupted(phase: ComparePhase) -> Result<(), Stop> {
    if sys::interrupted() {
        return Err(Stop::Interrupted(phase));
    }
    Ok(())
}

fn line(system: System, r: &RateResult, verdict: &str) -> String {
    format!(
        "  {:<9} {:>8}/s: achieved {:>8.0}/s  p50 {:>8.1}  p99 {:>9.1}  p99.9 {:>9.1} µs  errors {}  {verdict}",
        system.name(),
        format_rate(r.rate),
        r.achieved_per_s(),
        r.latency.quantile_ns(0.5) as f64 / 1e3,
        r.latency.quantile_ns(0.99) as f64 / 1e3,
        r.latency.quantile_ns(0.999) as f64 / 1e3,
        r.errors(),
    )
}

/// What the run has measured so far (all of it, once it ends).
struct Progress {
    running: Vec<RunningSystem>,
    /// Per running system, once its round trips finished.
    unloaded: Vec<Option<LatencyHistogram>>,
    slo: Option<(Slo, System)>,
    search_runs: Vec<SearchRun>,
    saturation: Option<(f64, Option<Saturation>)>,
    ladders: Vec<SloLadder>,
    /// Per running system, its ladder runs (the window standing for each
    /// rate).
    runs: Vec<Vec<RateResult>>,
    /// Per running system, the windows of each ladder run.
    windows: Vec<Vec<RateWindows>>,
    /// Where the run is (what an error there interrupted).
    phase: ComparePhase,
}

/// Runs the whole comparison; with a signal, as much of it as finished
/// (see [`CompareOutcome::interrupted`]).
pub fn run_compare(settings: &CompareSettings) -> anyhow::Result<CompareOutcome> {
    let loadavg_start = loadavg();
    let mut progress = Progress {
        running: Vec::with_capacity(settings.systems.len()),
        unloaded: Vec::new(),
        slo: None,
        search_runs: Vec::new(),
        saturation: None,
        ladders: Vec::new(),
        runs: Vec::new(),
        windows: Vec::new(),
        phase: ComparePhase::Starting(settings.systems[0]),
    };
    let interrupted = match run_phases(settings, &mut progress, &loadavg_start) {
        Ok(()) => None,
        Err(Stop::Interrupted(phase)) => Some(phase),
        // What stopped the run then (a read cut short, a server that took
        // the same Ctrl-C) was the interruption.
        Err(Stop::Failed(_)) if sys::interrupted() => Some(progress.phase),
        Err(Stop::Failed(e)) => return Err(e),
    };
    Ok(outcome(settings, progress, interrupted, loadavg_start))
}

fn run_phases(
    settings: &CompareSettings,
    progress: &mut Progress,
    loadavg_start: &str,
) -> Result<(), Stop> {
    let placement = &settings.placement;
    log!(
        settings,
        "bench compare: client on cores {:?}, nocturne io cores {:?} + worker cores {:?} (poll {}), \
         baselines {} tokio threads on cores {:?}; load average {loadavg_start}",
        settings.client_cores,
        placement.io_cores,
        placement.worker_cores,
        placement.nocturne_poll,
        placement.server_threads,
        placement.server_cores,
    );
    // Start everything before any client thread exists; freeze each.
    for &system in &settings.systems {
        progress.phase = ComparePhase::Starting(system);
        stop_if_interrupted(progress.phase)?;
        let mut started = RunningSystem::start(system, placement)?;
        started.check_chain(&settings.payload, settings.timeout)?;
        log!(
            settings,
            "  {} ready: pids {:?}, foo on http://{}",
            system.name(),
            started.pids(),
            started.addr()
        );
        started.pause()?;
        progress.running.push(started);
        progress.unloaded.push(None);
        progress.runs.push(Vec::new());
        progress.windows.push(Vec::new());
    }

    // Unloaded round trips.
    for i in 0..progress.running.len() {
        let system = &mut progress.running[i];
        let name = system.system().name();
        progress.phase = ComparePhase::Unloaded(system.system());
        let plan = plan_for(settings, system, settings.duration)?;
        let kind = &plan.targets.kinds[0];
        system.resume()?;
        let pingpong_plan = PingPongPlan {
            addr: system.addr(),
            request: kind.wire.clone(),
            response_has_body: true,
            count: settings.pingpong,
            warmup: (settings.pingpong / 10).max(50),
            core: Some(settings.client_cores[0]),
            timeout: settings.timeout,
            // Every system answered the chain's check: a non-2xx now is a
            // broken system, not a number.
            allow_non_2xx: false,
        };
        let hist = pingpong_until(&pingpong_plan, sys::interrupted).map(|pp| pp.round_trips);
        system.pause()?;
        let hist = match hist {
            Err(LoadError::Interrupted(_)) => return Err(Stop::Interrupted(progress.phase)),
            other => other.with_context(|| format!("{name}: unloaded round trips"))?,
        };
        log!(
            settings,
            "  {:<9} unloaded: p50 {:.1} p99 {:.1} p99.9 {:.1} µs ({} round trips)",
            name,
            hist.quantile_ns(0.5) as f64 / 1e3,
            hist.quantile_ns(0.99) as f64 / 1e3,
            hist.quantile_ns(0.999) as f64 / 1e3,
            hist.len()
        );
        progress.unloaded[i] = Some(hist);
    }
    let slo_base_index = progress
        .running
        .iter()
        .position(|s| s.system() == System::Nocturne)
        .unwrap_or(0);
    let slo_base = progress.running[slo_base_index].system();
    let base_p50_ns = progress.unloaded[slo_base_index]
        .as_ref()
        .map_or(1, |h| h.quantile_ns(0.5).max(1));
    let slo = Slo {
        percentile: Percentile::Quantile(0.99),
        limit: Duration::from_nanos((base_p50_ns as f64 * settings.slo_factor).round() as u64),
    };
    log!(
        settings,
        "  SLO: {slo} ({} × {}'s unloaded p50 of {:.1} µs)",
        settings.slo_factor,
        slo_base.name(),
        base_p50_ns as f64 / 1e3
    );
    progress.slo = Some((slo, slo_base));

    // S.
    let saturation = match settings.saturation {
        Some(s) => {
            log!(settings, "  S = {}/s (given)", format_rate(s));
            progress.saturation = Some((s, None));
            s
        }
        None => {
            let found = search_saturation(settings, progress)?;
            progress.saturation = Some((found.rate(), Some(found)));
            found.rate()
        }
    };

    // The ladders, one rate per system per round, rotated.
    progress.ladders = progress
        .running
        .iter()
        .map(|_| SloLadder::new(saturation, settings.ladder_max))
        .collect();
    let comparison_rates = progress.ladders[0].comparison_rates();
    log!(
        settings,
        "  loading every system at {} (0.25, 0.5, 0.75 × S), then higher while {slo} holds:",
        comparison_rates
            .iter()
            .map(|r| format!("{}/s", format_rate(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let plans = progress
        .running
        .iter()
        .map(|s| plan_for(settings, s, settings.duration))
        .collect::<anyhow::Result<Vec<_>>>()?;
    run_ladders(settings, progress, &slo, &plans)
}

/// The ladders, one rate per system per round, the systems in rotated
/// order from round to round, so that drift on the machine hits all
/// alike. Each rate runs `--repeat` windows, interleaved: window 1 of
/// every system's rate, then window 2 of every system's, …, so that a
/// phase of host stalls lands on every system alike rather than on the
/// one whose windows it caught back to back.
fn run_ladders(
    settings: &CompareSettings,
    progress: &mut Progress,
    slo: &Slo,
    plans: &[LoadPlan],
) -> Result<(), Stop> {
    let n = progress.running.len();
    for round in 0.. {
        // (system index, rate) in this round's order; a ladder moves only
        // once its rate has settled, after the round's last window.
        let turns: Vec<(usize, f64)> = (0..n)
            .map(|k| (k + round) % n)
            .filter_map(|i| progress.ladders[i].next_rate().map(|rate| (i, rate)))
            .collect();
        if turns.is_empty() {
            return Ok(());
        }
        // Per turn, its windows that have ended, in run order.
        let mut ended: Vec<Vec<RateResult>> = turns.iter().map(|_| Vec::new()).collect();
        for (window, turn) in interleaved(turns.len(), settings.repeat) {
            let (i, rate) = turns[turn];
            let system = progress.running[i].system();
            progress.phase = window.during(system, rate);
            let result = measure(
                &mut progress.running[i],
                &plans[i],
                rate,
                settings.progress,
                progress.phase,
            )?;
            log!(settings, "{}", window_line(system, &result, slo, window));
            ended[turn].push(result);
            if window.number == window.of {
                settle(settings, progress, i, std::mem::take(&mut ended[turn]), slo);
            }
            stop_if_interrupted(window.after(system, rate))?;
        }
    }
    Ok(())
}

/// The order of a round's windows: window 1 of each of its `turns` (in
/// the round's order), then window 2 of each, … up to `repeat`.
fn interleaved(turns: usize, repeat: u32) -> impl Iterator<Item = (Window, usize)> {
    (1..=repeat)
        .flat_map(move |number| (0..turns).map(move |turn| (Window { number, of: repeat }, turn)))
}

/// The run log's line for one ladder window: its numbers and whether it
/// met the SLO, and which window it is when a rate runs several.
fn window_line(system: System, result: &RateResult, slo: &Slo, window: Window) -> String {
    let met = result.meets(std::slice::from_ref(slo));
    let verdict = if met { "SLO met" } else { "SLO MISSED" };
    if window.of == 1 {
        line(system, result, verdict)
    } else {
        line(system, result, &format!("window {window}, {verdict}"))
    }
}

/// Settles system `i`'s rate once all its `windows` (in run order) have
/// ended: the window with the median p99 stands for the rate — its
/// verdict moves the ladder, and it is the rate's run in every table,
/// plot and ratio — and every window's p99 is kept for the report.
fn settle(
    settings: &CompareSettings,
    progress: &mut Progress,
    i: usize,
    windows: Vec<RateResult>,
    slo: &Slo,
) {
    let p99_ns: Vec<u64> = windows
        .iter()
        .map(|r| r.latency.quantile_ns(0.99))
        .collect();
    let chosen = median_window(&p99_ns).expect("every rate runs at least one window");
    // As the report's `p99_us` is written, so that the chosen window's
    // entry is that number exactly.
    let p99_us: Vec<f64> = windows.iter().map(|r| r.latency.summary().p99_us).collect();
    let result = windows
        .into_iter()
        .nth(chosen)
        .expect("the median is one of the windows");
    let met = result.meets(std::slice::from_ref(slo));
    let (system, rate) = (progress.running[i].system(), result.rate);
    if p99_us.len() > 1 {
        log!(
            settings,
            "  {:<9} {:>8}/s: p99 of windows {} µs; window {}/{}, the median, stands for the rate: {}",
            system.name(),
            format_rate(rate),
            p99_us
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            chosen + 1,
            p99_us.len(),
            if met { "SLO met" } else { "SLO MISSED" }
        );
    }
    progress.ladders[i].record(rate, met);
    progress.runs[i].push(result);
    progress.windows[i].push(RateWindows {
        rate,
        p99_us,
        chosen,
    });
}

/// rpc-hyper's saturation rate S (see [`SaturationSearch`]).
fn search_saturation(
    settings: &CompareSettings,
    progress: &mut Progress,
) -> Result<Saturation, Stop> {
    let hyper = progress
        .running
        .iter_mut()
        .find(|s| s.system() == System::RpcHyper)
        .context("the saturation search needs rpc-hyper")?;
    let plan = plan_for(settings, hyper, settings.sweep_duration)?;
    let mut search =
        SaturationSearch::new(settings.sweep_start, settings.sweep_max, settings.refine)?
            .with_miss_runs(settings.miss_runs);
    log!(
        settings,
        "  saturation search on rpc-hyper ({} windows; kept up = no errors, achieved >= {} of offered, p50 <= {}):",
        format_duration(settings.sweep_duration),
        settings.keep_up.min_achieved,
        format_duration(settings.keep_up.max_p50)
    );
    while let Some(rate) = search.next_rate() {
        progress.phase = ComparePhase::Search(rate);
        let result = measure(hyper, &plan, rate, settings.progress, progress.phase)?;
        let p50 = Duration::from_nanos(result.latency.quantile_ns(0.5));
        let kept_up = settings
            .keep_up
            .kept_up(rate, result.achieved_per_s(), p50, result.errors());
        log!(
            settings,
            "{}",
            line(
                System::RpcHyper,
                &result,
                if kept_up { "kept up" } else { "saturated" }
            )
        );
        search.record(rate, kept_up);
        progress.search_runs.push(SearchRun { result, kept_up });
        stop_if_interrupted(ComparePhase::After(None, rate))?;
    }
    let found = search.saturation()?;
    match found {
        Saturation::Found { rate, missed } => log!(
            settings,
            "  S = {}/s (rpc-hyper kept up there, not at {}/s)",
            format_rate(rate),
            format_rate(missed)
        ),
        Saturation::Capped { rate } => log!(
            settings,
            "  S = {}/s: rpc-hyper kept up with every rate up to the cap (--sweep-max)",
            format_rate(rate)
        ),
    }
    Ok(found)
}

/// The outcome of what `progress` holds (every system that was started,
/// with what finished of it); stops nothing (the caller drops `progress`,
/// which stops the systems, after reading their memory here).
fn outcome(
    settings: &CompareSettings,
    progress: Progress,
    interrupted: Option<ComparePhase>,
    loadavg_start: String,
) -> CompareOutcome {
    let Progress {
        running,
        unloaded,
        slo,
        search_runs,
        saturation,
        ladders,
        runs,
        windows,
        ..
    } = progress;
    let (saturation, search) = saturation.unwrap_or((0.0, None));
    let (slo, slo_base) = slo.unwrap_or((
        Slo {
            percentile: Percentile::Quantile(0.99),
            limit: Duration::ZERO,
        },
        System::Nocturne,
    ));
    let comparison_rates = ladders
        .first()
        .map(SloLadder::comparison_rates)
        .unwrap_or_default();
    let systems = running
        .iter()
        .zip(unloaded)
        .zip(runs)
        .zip(windows)
        .enumerate()
        .map(|(i, (((system, unloaded), mut runs), mut windows))| {
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            windows.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let ladder = ladders.get(i);
            SystemResult {
                system: system.system(),
                unloaded: unloaded.unwrap_or_default(),
                runs,
                windows,
                best: ladder.and_then(SloLadder::best),
                reached_top: ladder.is_some_and(SloLadder::reached_top),
                rss_mib: system.rss_mib(),
                listening: system.listening_lines(),
            }
        })
        .collect();
    drop(running);
    CompareOutcome {
        saturation,
        search,
        search_runs,
        keep_up: settings.keep_up,
        slo,
        slo_base,
        comparison_rates,
        systems,
        loadavg: (loadavg_start, loadavg()),
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_windows_are_interleaved_across_its_systems() {
        let order: Vec<(u32, usize)> = interleaved(3, 2).map(|(w, t)| (w.number, t)).collect();
        assert_eq!(order, [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]);
        assert!(interleaved(3, 2).all(|(w, _)| w.of == 2));
        // One window each: the round as before --repeat.
        let order: Vec<(u32, usize)> = interleaved(2, 1).map(|(w, t)| (w.number, t)).collect();
        assert_eq!(order, [(1, 0), (1, 1)]);
        assert_eq!(interleaved(0, 3).count(), 0);
    }

    #[test]
    fn a_window_names_its_phase_as_before_when_it_is_the_only_one() {
        let only = Window { number: 1, of: 1 };
        assert_eq!(
            only.during(System::Nocturne, 100.0).to_string(),
            "during nocturne's 100/s window"
        );
        assert_eq!(
            only.after(System::Nocturne, 100.0),
            ComparePhase::After(Some(System::Nocturne), 100.0)
        );
        let second = Window { number: 2, of: 3 };
        assert_eq!(
            second.during(System::RpcHyper, 2000.0).to_string(),
            "during rpc-hyper's 2k/s window 2/3"
        );
        assert_eq!(
            second.after(System::RpcHyper, 2000.0).to_string(),
            "after rpc-hyper's 2k/s window 2/3 had ended, before the rate's last"
        );
        // After a rate's last window, the rate is reported.
        assert_eq!(
            Window { number: 3, of: 3 }.after(System::RpcGrpc, 2000.0),
            ComparePhase::After(Some(System::RpcGrpc), 2000.0)
        );
    }
}
