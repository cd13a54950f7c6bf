//! The run of `bench compare`: start and freeze every system, time their
//! unloaded round trips, find S on rpc-hyper, then walk every system's
//! ladder in rotated rounds, one system thawed at a time.
//!
//! The systems are spawned from this (unpinned) thread before any client
//! thread pins itself: a child inherits its spawner's CPU mask, and each
//! server must see every core it was granted.

use std::time::Duration;

use anyhow::Context as _;

use super::sweep::{KeepUp, Saturation, SaturationSearch, SloLadder};
use super::systems::{RunningSystem, System};
use super::CompareSettings;
use crate::hist::LatencyHistogram;
use crate::load::spec::{format_duration, format_rate, Percentile, Slo};
use crate::load::{pingpong, run_rate, LoadPlan, RateResult, RequestSpec, Targets, Url};

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
    /// One result per ladder rate run, ascending by rate.
    pub runs: Vec<RateResult>,
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
}

/// What a whole comparison measured.
#[derive(Debug, Clone)]
pub struct CompareOutcome {
    /// S, requests/s.
    pub saturation: f64,
    /// How S was found (`None`: given with --saturation).
    pub search: Option<Saturation>,
    /// The runs of the search, in order.
    pub search_runs: Vec<SearchRun>,
    /// The keep-up verdict used by the search.
    pub keep_up: KeepUp,
    /// The SLO: p99 ≤ factor × the base system's unloaded p50.
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
    plan.validate()?;
    Ok(plan)
}

/// Thaws `system`, runs `plan` at `rate`, freezes it again; a failure
/// names the system and carries its log if it died.
fn measure(
    system: &mut RunningSystem,
    plan: &LoadPlan,
    rate: f64,
    progress: bool,
) -> anyhow::Result<RateResult> {
    system.resume()?;
    let result = run_rate(plan, rate, progress);
    let alive = system.check_alive();
    let paused = system.pause();
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

/// Runs the whole comparison.
pub fn run_compare(settings: &CompareSettings) -> anyhow::Result<CompareOutcome> {
    let placement = &settings.placement;
    let loadavg_start = loadavg();
    println!(
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
    let mut running = Vec::with_capacity(settings.systems.len());
    for &system in &settings.systems {
        let mut started = RunningSystem::start(system, placement)?;
        started.check_chain(&settings.payload, settings.timeout)?;
        println!(
            "  {} ready: pids {:?}, foo on http://{}",
            system.name(),
            started.pids(),
            started.addr()
        );
        started.pause()?;
        running.push(started);
    }

    // Unloaded round trips.
    let mut unloaded = Vec::with_capacity(running.len());
    for system in &mut running {
        let plan = plan_for(settings, system, settings.duration)?;
        let kind = &plan.targets.kinds[0];
        system.resume()?;
        let hist = pingpong(
            system.addr(),
            &kind.wire,
            true,
            settings.pingpong,
            (settings.pingpong / 10).max(50),
            Some(settings.client_cores[0]),
            settings.timeout,
        )
        .with_context(|| format!("{}: unloaded round trips", system.system().name()));
        system.pause()?;
        let hist = hist?;
        println!(
            "  {:<9} unloaded: p50 {:.1} p99 {:.1} p99.9 {:.1} µs ({} round trips)",
            system.system().name(),
            hist.quantile_ns(0.5) as f64 / 1e3,
            hist.quantile_ns(0.99) as f64 / 1e3,
            hist.quantile_ns(0.999) as f64 / 1e3,
            hist.len()
        );
        unloaded.push(hist);
    }
    let slo_base_index = running
        .iter()
        .position(|s| s.system() == System::Nocturne)
        .unwrap_or(0);
    let slo_base = running[slo_base_index].system();
    let base_p50_ns = unloaded[slo_base_index].quantile_ns(0.5).max(1);
    let slo = Slo {
        percentile: Percentile::Quantile(0.99),
        limit: Duration::from_nanos((base_p50_ns as f64 * settings.slo_factor).round() as u64),
    };
    println!(
        "  SLO: {slo} ({} × {}'s unloaded p50 of {:.1} µs)",
        settings.slo_factor,
        slo_base.name(),
        base_p50_ns as f64 / 1e3
    );

    // S.
    let mut search_runs = Vec::new();
    let (saturation, search) = match settings.saturation {
        Some(s) => {
            println!("  S = {}/s (given)", format_rate(s));
            (s, None)
        }
        None => {
            let hyper = running
                .iter_mut()
                .find(|s| s.system() == System::RpcHyper)
                .context("the saturation search needs rpc-hyper")?;
            let plan = plan_for(settings, hyper, settings.sweep_duration)?;
            let mut search =
                SaturationSearch::new(settings.sweep_start, settings.sweep_max, settings.refine)?
                    .with_miss_runs(settings.miss_runs);
            println!(
                "  saturation search on rpc-hyper ({} windows; kept up = no errors, achieved >= {} of offered, p50 <= {}):",
                format_duration(settings.sweep_duration),
                settings.keep_up.min_achieved,
                format_duration(settings.keep_up.max_p50)
            );
            while let Some(rate) = search.next_rate() {
                let result = measure(hyper, &plan, rate, settings.progress)?;
                let p50 = Duration::from_nanos(result.latency.quantile_ns(0.5));
                let kept_up =
                    settings
                        .keep_up
                        .kept_up(rate, result.achieved_per_s(), p50, result.errors());
                println!(
                    "{}",
                    line(
                        System::RpcHyper,
                        &result,
                        if kept_up { "kept up" } else { "saturated" }
                    )
                );
                search.record(rate, kept_up);
                search_runs.push(SearchRun { result, kept_up });
            }
            let found = search.saturation()?;
            match found {
                Saturation::Found { rate, missed } => println!(
                    "  S = {}/s (rpc-hyper kept up there, not at {}/s)",
                    format_rate(rate),
                    format_rate(missed)
                ),
                Saturation::Capped { rate } => println!(
                    "  S = {}/s: rpc-hyper kept up with every rate up to the cap (--sweep-max)",
                    format_rate(rate)
                ),
            }
            (found.rate(), Some(found))
        }
    };

    // The ladders, one rate per system per round, rotated.
    let mut ladders: Vec<SloLadder> = running
        .iter()
        .map(|_| SloLadder::new(saturation, settings.ladder_max))
        .collect();
    let comparison_rates = ladders[0].comparison_rates();
    println!(
        "  loading every system at {} (0.25, 0.5, 0.75 × S), then higher while {slo} holds:",
        comparison_rates
            .iter()
            .map(|r| format!("{}/s", format_rate(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let plans = running
        .iter()
        .map(|s| plan_for(settings, s, settings.duration))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut runs: Vec<Vec<RateResult>> = running.iter().map(|_| Vec::new()).collect();
    let n = running.len();
    for round in 0.. {
        let mut any = false;
        for k in 0..n {
            let i = (k + round) % n;
            let Some(rate) = ladders[i].next_rate() else {
                continue;
            };
            any = true;
            let result = measure(&mut running[i], &plans[i], rate, settings.progress)?;
            let met = result.meets(std::slice::from_ref(&slo));
            println!(
                "{}",
                line(
                    running[i].system(),
                    &result,
                    if met { "SLO met" } else { "SLO MISSED" }
                )
            );
            ladders[i].record(rate, met);
            runs[i].push(result);
        }
        if !any {
            break;
        }
    }

    let systems = running
        .iter()
        .zip(unloaded)
        .zip(runs)
        .zip(&ladders)
        .map(|(((system, unloaded), mut runs), ladder)| {
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            SystemResult {
                system: system.system(),
                unloaded,
                runs,
                best: ladder.best(),
                reached_top: ladder.reached_top(),
                rss_mib: system.rss_mib(),
                listening: system.listening_lines(),
            }
        })
        .collect();
    Ok(CompareOutcome {
        saturation,
        search,
        search_runs,
        keep_up: settings.keep_up,
        slo,
        slo_base,
        comparison_rates,
        systems,
        loadavg: (loadavg_start, loadavg()),
    })
}
