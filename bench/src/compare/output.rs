//! What `bench compare` writes: the docs/design.md §7 report, the Markdown table
//! pasted into `docs/benchmarks.md`, and the target checks.
//!
//! Report cases: `compare/<system>/<rate>` for every ladder rate a system
//! ran (the load generator's fields, plus `fraction_of_s`, and the booleans `slo_met` and
//! `comparison_rate`; with `--repeat` N > 1, the numbers of the window with
//! the median p99, the count `windows` = N and every window's p99 in run
//! order as `p99_window_1_us` … `p99_window_N_us`),
//! `compare/<system>/unloaded` for its ping-pong round trips, and
//! `saturation/rpc-hyper/<rate>` for the runs of the saturation search
//! (with the boolean `kept_up`; a rate run again to confirm a miss adds `/run2`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::driver::{CompareOutcome, RateWindows, SystemResult};
use super::systems::System;
use super::CompareSettings;
use crate::ipc::TargetCheck;
use crate::load::output as load_output;
use crate::load::spec::{format_duration, format_rate};
use crate::pin::format_core_list;
use crate::report::{CaseResult, Machine, Report};

/// The case name of `system` at `rate`.
pub fn case_name(system: System, rate: f64) -> String {
    format!("compare/{}/{}", system.name(), rate.round() as u64)
}

/// The case name of `system`'s unloaded round trips.
pub fn unloaded_case_name(system: System) -> String {
    format!("compare/{}/unloaded", system.name())
}

/// The comparison rate closest to 0.5 S (the targets' rate).
pub fn half_rate(outcome: &CompareOutcome) -> Option<f64> {
    let half = (outcome.saturation * 0.5).round().max(1.0);
    outcome
        .comparison_rates
        .iter()
        .copied()
        .find(|&r| r == half)
}

/// The targets, as far as the systems they compare ran.
pub fn check_targets(outcome: &CompareOutcome) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    // A run cut short has no comparison to check (a system may be missing
    // its rates): a MISSED there would be the signal's, not the system's.
    if outcome.interrupted.is_some() {
        return checks;
    }
    let (hyper, grpc, noc) = (
        outcome.system(System::RpcHyper),
        outcome.system(System::RpcGrpc),
        outcome.system(System::Nocturne),
    );
    let Some(noc) = noc else {
        return checks;
    };
    let q = |s: &SystemResult, rate: f64, q: f64| {
        s.at(rate)
            .map(|r| r.latency.quantile_ns(q) as f64)
            .filter(|&v| v > 0.0)
    };
    if let Some(half) = half_rate(outcome) {
        let rate = format_rate(half);
        if let Some(h) = hyper {
            if let (Some(a), Some(b)) = (q(h, half, 0.99), q(noc, half, 0.99)) {
                checks.push(TargetCheck {
                    what: format!("rpc-hyper p99 / nocturne p99 at 0.5 S ({rate}/s)"),
                    measured: a / b,
                    limit: 3.0,
                    at_least: true,
                });
            }
        }
        if let Some(g) = grpc {
            if let (Some(a), Some(b)) = (q(g, half, 0.5), q(noc, half, 0.5)) {
                checks.push(TargetCheck {
                    what: format!("rpc-grpc p50 / nocturne p50 at 0.5 S ({rate}/s)"),
                    measured: a / b,
                    limit: 2.0,
                    at_least: true,
                });
            }
        }
    }
    if let Some(h) = hyper {
        let (measured, note) = match (noc.best, h.best) {
            (Some(n), Some(b)) => (n / b, String::new()),
            // rpc-hyper's highest rate is below the lowest it ran.
            (Some(n), None) => {
                let lowest = h.runs.first().map_or(n, |r| r.rate);
                (
                    n / lowest,
                    format!(
                        "; at least: rpc-hyper met it at no rate down to {}/s",
                        format_rate(lowest)
                    ),
                )
            }
            (None, _) => (0.0, "; nocturne met it at no rate".into()),
        };
        checks.push(TargetCheck {
            what: format!(
                "nocturne / rpc-hyper highest rate with {} (10 × nocturne's unloaded p50{note})",
                outcome.slo
            ),
            measured,
            limit: 2.0,
            at_least: true,
        });
    }
    checks
}

fn with_extras(mut case: CaseResult, extras: &[(&str, f64)]) -> CaseResult {
    for &(k, v) in extras {
        case = case.with_extra(k, v);
    }
    case
}

/// The report field of window `number` (from 1)'s p99.
pub fn p99_window_field(number: usize) -> String {
    format!("p99_window_{number}_us")
}

/// A rate's case with its `--repeat` windows beside its own numbers (the
/// median window's): the count `windows` and each window's p99 as a float
/// field of its own, in run order. Fields, not one string: a report's
/// extra fields are numbers or booleans (`crate::report`), and a reader
/// compares a window's p99 with `p99_us` as the number it is. Nothing is
/// added for a rate that ran one window.
fn with_windows(mut case: CaseResult, windows: Option<&RateWindows>) -> CaseResult {
    let Some(w) = windows.filter(|w| w.p99_us.len() > 1) else {
        return case;
    };
    case = case.with_count("windows", w.p99_us.len() as u64);
    for (i, &p99) in w.p99_us.iter().enumerate() {
        case = case.with_extra(p99_window_field(i + 1), p99);
    }
    case
}

/// The docs/design.md §7 report.
pub fn build_report(settings: &CompareSettings, outcome: &CompareOutcome) -> Report {
    let p = &settings.placement;
    let mut core_map = BTreeMap::new();
    core_map.insert("client".to_owned(), settings.client_cores.clone());
    core_map.insert("nocturne_io".to_owned(), p.io_cores.clone());
    core_map.insert("nocturne_workers".to_owned(), p.worker_cores.clone());
    core_map.insert("baseline_servers".to_owned(), p.server_cores.clone());
    let mut modes: BTreeMap<String, String> = settings
        .modes()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if let Some(phase) = outcome.interrupted {
        modes.insert("interrupted".into(), phase.to_string());
    }
    // An interrupted run may have stopped before S or the SLO was known.
    if outcome.saturation > 0.0 {
        modes.insert("saturation_rate".into(), outcome.saturation.to_string());
        modes.insert(
            "saturation_from".into(),
            match outcome.search {
                Some(_) => "search on rpc-hyper".into(),
                None => "--saturation".into(),
            },
        );
    }
    if !outcome.slo.limit.is_zero() {
        modes.insert("slo".into(), outcome.slo.to_string());
    }
    modes.insert("loadavg_start".into(), outcome.loadavg.0.clone());
    modes.insert("loadavg_end".into(), outcome.loadavg.1.clone());
    modes.insert("slo_base".into(), outcome.slo_base.name().into());
    modes.insert(
        "comparison_rates".into(),
        outcome
            .comparison_rates
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    for s in &outcome.systems {
        modes.insert(
            format!("best_rate_{}", s.system.name()),
            s.best
                .map(|b| format!("{b}{}", if s.reached_top { "+" } else { "" }))
                .unwrap_or_else(|| "none".into()),
        );
    }
    for check in check_targets(outcome) {
        modes.insert(format!("target: {}", check.what), check.to_string());
    }
    let machine = Machine::probe(core_map, modes);

    let mut cases = Vec::new();
    for s in &outcome.systems {
        // Empty only when a signal came before its round trips finished.
        if !s.unloaded.is_empty() {
            let mut unloaded = load_output::pingpong_case(&s.unloaded, 0);
            unloaded.name = unloaded_case_name(s.system);
            cases.push(with_extras(unloaded, &[("rss_mb", s.rss_mib)]));
        }
        for r in &s.runs {
            let mut case = load_output::cases(r, std::slice::from_ref(&outcome.slo))
                .into_iter()
                .next()
                .expect("a rate has its own case");
            case.name = case_name(s.system, r.rate);
            let comparison = outcome.comparison_rates.contains(&r.rate);
            let case = with_extras(
                case,
                &[
                    ("fraction_of_s", r.rate / outcome.saturation),
                    ("rss_mb", s.rss_mib),
                ],
            );
            cases.push(
                with_windows(case, s.windows_at(r.rate)).with_flag("comparison_rate", comparison),
            );
        }
    }
    for (i, run) in outcome.search_runs.iter().enumerate() {
        let mut case = load_output::cases(&run.result, &[])
            .into_iter()
            .next()
            .expect("a rate has its own case");
        // A confirmation run of a missed rate gets its own name.
        let earlier = outcome.search_runs[..i]
            .iter()
            .filter(|r| r.result.rate == run.result.rate)
            .count();
        case.name = format!("saturation/rpc-hyper/{}", run.result.rate.round() as u64);
        if earlier > 0 {
            case.name.push_str(&format!("/run{}", earlier + 1));
        }
        cases.push(case.with_flag("kept_up", run.kept_up));
    }
    Report::new("compare", machine, cases)
}

/// Errors counted by the comparison cases (the search's overload runs
/// excluded: overload is what it looks for).
pub fn comparison_errors(report: &Report) -> u64 {
    report
        .cases
        .iter()
        .filter(|c| c.name.starts_with("compare/"))
        .map(|c| c.errors)
        .sum()
}

fn us(ns: u64) -> String {
    let v = ns as f64 / 1e3;
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The Markdown section written to `compare.md`: [`markdown_table`] and
/// the target checks.
pub fn markdown(settings: &CompareSettings, outcome: &CompareOutcome) -> String {
    let mut md = markdown_table(settings, outcome);
    let checks = check_targets(outcome);
    if !checks.is_empty() {
        let _ = writeln!(md, "\nTargets:\n");
        for c in checks {
            let _ = writeln!(md, "- {c}");
        }
    }
    md
}

/// The Markdown section without the target checks (the command prints
/// those once, as `target:` lines like every bench): setup, the table by
/// rate, the highest rates under the SLO.
pub fn markdown_table(settings: &CompareSettings, outcome: &CompareOutcome) -> String {
    let mut md = String::new();
    let p = &settings.placement;
    let _ = writeln!(md, "### foo→bar chain: nocturne vs. plain RPC servers\n");
    let _ = writeln!(
        md,
        "Load average (1, 5, 15 min) at the start: {}; at the end: {} — other work on the \
         machine shows up in every system's tail.\n",
        outcome.loadavg.0, outcome.loadavg.1
    );
    let _ = writeln!(
        md,
        "Client: `bench load` engine, {} × fixed-rate open loop, {} keep-alive connection(s), \
         {}-byte bodies, cores {}; {} warm-up + {} window per rate{}. nocturne: io cores {}, \
         workers on {:?}, `--poll {}`{}. Baselines: {} tokio worker thread(s) per process on \
         cores {:?}. Latency from each request's intended send time, µs.\n",
        settings.client_threads,
        settings.connections,
        settings.payload.len(),
        format_core_list(&settings.client_cores),
        format_duration(settings.warmup),
        format_duration(settings.duration),
        repeat_method(settings.repeat),
        format_core_list(&p.io_cores),
        p.worker_cores,
        p.nocturne_poll,
        if p.engine_args.is_empty() {
            String::new()
        } else {
            format!(" `{}`", p.engine_args.join(" "))
        },
        p.server_threads,
        p.server_cores,
    );
    match outcome.search {
        Some(_) => {
            let trail: Vec<String> = outcome
                .search_runs
                .iter()
                .map(|r| {
                    format!(
                        "{}/s {}",
                        format_rate(r.result.rate),
                        if r.kept_up { "✓" } else { "✗" }
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "S = **{}/s**, rpc-hyper's saturation rate (search: {}; kept up = no errors, \
                 achieved ≥ {} of offered, p50 ≤ {}).\n",
                format_rate(outcome.saturation),
                trail.join(", "),
                outcome.keep_up.min_achieved,
                format_duration(outcome.keep_up.max_p50),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "S = **{}/s** (given with --saturation).\n",
                format_rate(outcome.saturation)
            );
        }
    }
    let base = outcome.system(outcome.slo_base);
    let _ = writeln!(
        md,
        "SLO: **{}** = {} × {}'s unloaded p50 ({} µs).\n",
        outcome.slo,
        settings.slo_factor,
        outcome.slo_base.name(),
        base.map(|b| us(b.unloaded.quantile_ns(0.5)))
            .unwrap_or_else(|| "?".into())
    );
    // The windows' column only where a rate ran several: the table of a
    // run without --repeat reads as it always has.
    let repeated = settings.repeat > 1;
    let (windows_head, windows_rule, no_windows) = if repeated {
        (format!(" {WINDOWS_COLUMN} |"), "---|", " |")
    } else {
        (String::new(), "", "")
    };
    let _ = writeln!(
        md,
        "| rate | system | achieved/s | p50 | p90 | p99 | p99.9 | max | errors | SLO |{windows_head}"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|{windows_rule}"
    );
    for s in &outcome.systems {
        let h = &s.unloaded;
        let _ = writeln!(
            md,
            "| unloaded (ping-pong) | {} | – | {} | {} | {} | {} | {} | 0 | |{no_windows}",
            s.system.name(),
            us(h.quantile_ns(0.5)),
            us(h.quantile_ns(0.9)),
            us(h.quantile_ns(0.99)),
            us(h.quantile_ns(0.999)),
            us(h.max_ns()),
        );
    }
    let mut rates: Vec<f64> = outcome
        .systems
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.rate))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    for rate in rates {
        for s in &outcome.systems {
            let Some(r) = s.at(rate) else { continue };
            let h = &r.latency;
            let label = format!(
                "{}/s ({} S){}",
                rate.round() as u64,
                trim_fraction(rate / outcome.saturation),
                if outcome.comparison_rates.contains(&rate) {
                    ""
                } else {
                    " ‡"
                }
            );
            let windows = if repeated {
                format!(" {} |", windows_cell(s.windows_at(rate)))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |{windows}",
                s.system.name(),
                r.achieved_per_s(),
                us(h.quantile_ns(0.5)),
                us(h.quantile_ns(0.9)),
                us(h.quantile_ns(0.99)),
                us(h.quantile_ns(0.999)),
                us(h.max_ns()),
                r.errors(),
                if r.meets(std::slice::from_ref(&outcome.slo)) {
                    "met"
                } else {
                    "missed"
                }
            );
        }
    }
    let _ = writeln!(
        md,
        "\n‡ not a comparison rate: above them, run only while the system met the SLO at \
         every rate below; below them, only after it missed at 0.25 S.\n"
    );
    let _ = writeln!(md, "| system | highest rate with {} |", outcome.slo);
    let _ = writeln!(md, "|---|---:|");
    for s in &outcome.systems {
        let best = match s.best {
            Some(b) if s.reached_top => format!("≥ {}/s (top of the ladder)", b.round() as u64),
            Some(b) => format!("{}/s", b.round() as u64),
            None => "none".into(),
        };
        let _ = writeln!(md, "| {} | {best} |", s.system.name());
    }
    md
}

/// The Markdown column of every window's p99 (`--repeat` above 1).
pub const WINDOWS_COLUMN: &str = "p99 of windows";

/// What the table's setup line adds about `--repeat`: nothing for one
/// window per rate.
fn repeat_method(repeat: u32) -> String {
    if repeat <= 1 {
        return String::new();
    }
    format!(
        ", {repeat} windows per rate interleaved across the systems; each row is the window \
         with the median p99 (its own numbers, which decide the SLO), `{WINDOWS_COLUMN}` \
         lists every window's p99 in run order, the median's in bold"
    )
}

/// Every window's p99 in run order, µs, the one standing for the rate in
/// bold.
fn windows_cell(windows: Option<&RateWindows>) -> String {
    let Some(w) = windows else {
        return String::new();
    };
    w.p99_us
        .iter()
        .enumerate()
        .map(|(i, &p99)| {
            let text = us((p99 * 1e3).round() as u64);
            if i == w.chosen {
                format!("**{text}**")
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn trim_fraction(f: f64) -> String {
    let text = format!("{f:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::LatencyHistogram;
    use crate::load::spec::{Percentile, Slo};
    use crate::load::{RateResult, SocketErrors};
    use std::time::Duration;

    fn rate_result(rate: f64, p_us: u64) -> RateResult {
        let mut latency = LatencyHistogram::new();
        for _ in 0..100 {
            latency.record_ns(p_us * 1000);
        }
        RateResult {
            rate,
            window: Duration::from_secs(1),
            offered: rate as u64,
            sent: rate as u64,
            completed: rate as u64,
            unsent: 0,
            timeouts: 0,
            non_2xx: 0,
            socket_errors: SocketErrors::default(),
            statuses: BTreeMap::new(),
            responses_in_window: rate as u64,
            latency: latency.clone(),
            service: latency.clone(),
            send_lag: latency,
            per_kind: Vec::new(),
            reconnects: 0,
            client_cpu: Duration::ZERO,
            requests_total: rate as u64,
            first_error: None,
            allow_non_2xx: false,
        }
    }

    fn system(system: System, p_us: u64, best: Option<f64>) -> SystemResult {
        let mut unloaded = LatencyHistogram::new();
        unloaded.record_ns(p_us * 500);
        SystemResult {
            system,
            unloaded,
            runs: [250.0, 500.0, 750.0]
                .iter()
                .map(|&r| rate_result(r, p_us))
                .collect(),
            windows: [250.0, 500.0, 750.0]
                .iter()
                .map(|&rate| RateWindows {
                    rate,
                    p99_us: vec![p_us as f64],
                    chosen: 0,
                })
                .collect(),
            best,
            reached_top: false,
            rss_mib: 1.0,
            listening: Vec::new(),
        }
    }

    fn outcome() -> CompareOutcome {
        CompareOutcome {
            saturation: 1000.0,
            search: None,
            search_runs: Vec::new(),
            keep_up: super::super::KeepUp {
                min_achieved: 0.95,
                max_p50: Duration::from_millis(2),
            },
            slo: Slo {
                percentile: Percentile::Quantile(0.99),
                limit: Duration::from_micros(100),
            },
            slo_base: System::Nocturne,
            comparison_rates: vec![250.0, 500.0, 750.0],
            loadavg: ("0.1 0.2 0.3".into(), "0.4 0.5 0.6".into()),
            interrupted: None,
            systems: vec![
                system(System::RpcHyper, 60, Some(1000.0)),
                system(System::RpcGrpc, 90, None),
                system(System::Nocturne, 10, Some(4000.0)),
            ],
        }
    }

    #[test]
    fn targets_compare_at_half_s() {
        let checks = check_targets(&outcome());
        assert_eq!(checks.len(), 3, "{checks:?}");
        assert!(checks[0]
            .what
            .contains("rpc-hyper p99 / nocturne p99 at 0.5 S (500/s)"));
        assert!((checks[0].measured - 6.0).abs() < 0.1, "{:?}", checks[0]);
        assert!(checks[0].met());
        assert!((checks[1].measured - 9.0).abs() < 0.1, "{:?}", checks[1]);
        assert_eq!(checks[2].measured, 4.0);
        let mut o = outcome();
        o.systems[0].best = None;
        let bound = &check_targets(&o)[2];
        assert_eq!(
            bound.measured, 16.0,
            "4000 over rpc-hyper's lowest rate, 250"
        );
        assert!(bound.what.contains("down to 250/s"), "{bound:?}");
        o.systems[2].best = None;
        assert_eq!(check_targets(&o)[2].measured, 0.0);
        assert!(!check_targets(&o)[2].met());
        o.systems.pop();
        assert!(
            check_targets(&o).is_empty(),
            "no nocturne, nothing to check"
        );
    }

    #[test]
    fn names_and_markdown() {
        assert_eq!(
            case_name(System::RpcGrpc, 12000.0),
            "compare/rpc-grpc/12000"
        );
        assert_eq!(
            unloaded_case_name(System::Nocturne),
            "compare/nocturne/unloaded"
        );
        assert_eq!(trim_fraction(0.25), "0.25");
        assert_eq!(trim_fraction(2.0), "2");
        let o = outcome();
        let args = <super::super::CompareArgs as clap::FromArgMatches>::from_arg_matches(
            &<super::super::CompareArgs as clap::Args>::augment_args(clap::Command::new("t"))
                .get_matches_from(["t", "--saturation", "1000"]),
        )
        .unwrap();
        let settings = CompareSettings::from_args(&args).unwrap();
        let md = markdown(&settings, &o);
        assert!(md.contains("| 500/s (0.5 S) | nocturne |"), "{md}");
        assert!(md.contains("| nocturne | 4000/s |"), "{md}");
        assert!(md.contains("| rpc-grpc | none |"), "{md}");
        assert!(md.contains("Targets:"), "{md}");
        let report = build_report(&settings, &o);
        for s in System::ALL {
            assert!(report.case(&unloaded_case_name(s)).is_some());
            for r in [250.0, 500.0, 750.0] {
                let c = report.case(&case_name(s, r)).unwrap();
                assert_eq!(c.flag("comparison_rate"), Some(true));
            }
        }
        // In the JSON the flags are booleans, not 1.0/0.0.
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let first = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case_name(System::Nocturne, 250.0))
            .unwrap();
        assert_eq!(first["comparison_rate"], serde_json::Value::Bool(true));
        assert!(first["slo_met"].is_boolean(), "{first}");
        assert_eq!(comparison_errors(&report), 0);
        let mut o2 = outcome();
        o2.search_runs = [(2000.0, false), (2000.0, true)]
            .into_iter()
            .map(|(rate, kept_up)| super::super::SearchRun {
                result: rate_result(rate, 50),
                kept_up,
            })
            .collect();
        // Read back from the JSON, so the booleans survive the round trip.
        let report2 = Report::from_json(&build_report(&settings, &o2).to_json()).unwrap();
        assert_eq!(
            report2
                .case("saturation/rpc-hyper/2000")
                .unwrap()
                .flag("kept_up"),
            Some(false)
        );
        assert_eq!(
            report2
                .case("saturation/rpc-hyper/2000/run2")
                .unwrap()
                .flag("kept_up"),
            Some(true)
        );
        assert_eq!(report.machine.modes["best_rate_nocturne"], "4000");
        let svg = super::super::plot::render_svg(&o);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        for s in System::ALL {
            assert!(svg.contains(s.name()), "{svg}");
        }
    }

    fn parse_args(argv: &[&str]) -> anyhow::Result<CompareSettings> {
        let args = <super::super::CompareArgs as clap::FromArgMatches>::from_arg_matches(
            &<super::super::CompareArgs as clap::Args>::augment_args(clap::Command::new("t"))
                .try_get_matches_from(std::iter::once("t").chain(argv.iter().copied()))?,
        )?;
        CompareSettings::from_args(&args)
    }

    #[test]
    fn bad_values_are_refused_before_anything_is_allocated_or_started() {
        let refused = |argv: &[&str], needle: &str| {
            let mut all = vec!["--saturation=1000"];
            all.extend_from_slice(argv);
            let err = format!("{:#}", parse_args(&all).unwrap_err());
            assert!(err.contains(needle), "{argv:?}: {err}");
        };
        // Checked before `vec![b'p'; payload]`: no capacity overflow.
        refused(
            &["--payload=18446744073709551615"],
            "--payload 18446744073709551615 is out of range: it takes 0..=524288",
        );
        refused(&["--payload=524289"], "--payload 524289 is out of range");
        assert_eq!(
            parse_args(&["--saturation=1000", "--payload=524288"])
                .unwrap()
                .payload
                .len(),
            524288
        );
        refused(&["--ladder-max=0.5"], "--ladder-max 0.5");
        refused(&["--ladder-max=3.3"], "one of 0.75, 1, 1.25");
        assert_eq!(
            parse_args(&["--saturation=1000", "--ladder-max=3"])
                .unwrap()
                .ladder_max,
            3.0
        );
        refused(
            &["--miss-runs=0"],
            "--miss-runs 0 is out of range: it takes 1..=100",
        );
        refused(
            &["--pingpong=0"],
            "--pingpong 0 is out of range: it takes 1..=1000000000",
        );
        // Durations in the forms `bench engine` takes; the timeout under
        // either name.
        let sets = parse_args(&["--saturation=1000", "--duration=1m", "--timeout-s=7"]).unwrap();
        assert_eq!(sets.duration, Duration::from_secs(60));
        assert_eq!(sets.timeout, Duration::from_secs(7));
        let sets = parse_args(&["--saturation=1000", "--warmup=250us", "--timeout=500ms"]).unwrap();
        assert_eq!(sets.warmup, Duration::from_micros(250));
        assert_eq!(sets.timeout, Duration::from_millis(500));
    }

    #[test]
    fn an_interrupted_run_reports_what_finished_and_checks_no_target() {
        let settings = parse_args(&["--saturation=1000"]).unwrap();
        // Stopped during the search: no S, no SLO, no ladder; nocturne's
        // round trips never ran.
        let mut o = outcome();
        o.interrupted = Some(super::super::ComparePhase::Search(4000.0));
        o.saturation = 0.0;
        o.slo.limit = Duration::ZERO;
        o.comparison_rates.clear();
        for s in &mut o.systems {
            s.runs.clear();
            s.best = None;
        }
        o.systems[2].unloaded = LatencyHistogram::new();
        o.search_runs = vec![super::super::SearchRun {
            result: rate_result(2000.0, 50),
            kept_up: true,
        }];
        assert!(check_targets(&o).is_empty());
        let report = build_report(&settings, &o);
        let modes = &report.machine.modes;
        assert_eq!(
            modes["interrupted"],
            "during the saturation search's 4k/s window"
        );
        assert!(!modes.contains_key("saturation_rate") && !modes.contains_key("slo"));
        assert!(!modes.keys().any(|k| k.starts_with("target: ")));
        let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "compare/rpc-hyper/unloaded",
                "compare/rpc-grpc/unloaded",
                "saturation/rpc-hyper/2000"
            ]
        );
        for c in &report.cases {
            assert!(c.extra.values().all(|v| v.is_finite()), "{c:?}");
        }
        // The table printed for a whole run carries no target bullets:
        // the command prints them once, as `target:` lines.
        let whole = outcome();
        assert!(!markdown_table(&settings, &whole).contains("Targets:"));
        assert!(markdown(&settings, &whole).contains("Targets:"));
    }

    /// Every rate of `o` as if it ran three windows whose p99s were 3, 1
    /// and ½ × its run's: the middle one (the run itself) has the median.
    fn with_three_windows(mut o: CompareOutcome) -> CompareOutcome {
        for s in &mut o.systems {
            s.windows = s
                .runs
                .iter()
                .map(|r| {
                    let p99 = r.latency.summary().p99_us;
                    RateWindows {
                        rate: r.rate,
                        p99_us: vec![3.0 * p99, p99, 0.5 * p99],
                        chosen: 1,
                    }
                })
                .collect();
        }
        o
    }

    #[test]
    fn a_repeated_rate_reports_its_median_window_and_lists_every_window() {
        let settings = parse_args(&["--saturation=1000", "--repeat=3"]).unwrap();
        assert_eq!(settings.repeat, 3);
        let o = with_three_windows(outcome());
        // Read back from the JSON: the fields survive as numbers, the
        // count as an integer.
        let report = Report::from_json(&build_report(&settings, &o).to_json()).unwrap();
        assert_eq!(report.machine.modes["repeat"], "3");
        for s in System::ALL {
            for rate in [250.0, 500.0, 750.0] {
                let c = report.case(&case_name(s, rate)).unwrap();
                assert_eq!(c.counts.get("windows"), Some(&3), "{c:?}");
                let p99s: Vec<f64> = (1..=3).map(|n| c.extra[&p99_window_field(n)]).collect();
                // The case's own numbers are the median window's.
                assert_eq!(p99s[1], c.p99_us, "{c:?}");
                assert_eq!(p99s, [3.0 * c.p99_us, c.p99_us, 0.5 * c.p99_us]);
            }
            assert!(!report
                .case(&unloaded_case_name(s))
                .unwrap()
                .counts
                .contains_key("windows"));
        }
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let case = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case_name(System::Nocturne, 500.0))
            .unwrap();
        assert!(case["windows"].is_u64(), "a JSON integer: {case}");
        let md = markdown(&settings, &o);
        assert!(
            md.contains("| errors | SLO | p99 of windows |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"),
            "{md}"
        );
        assert!(md.contains("3 windows per rate interleaved"), "{md}");
        // nocturne's p99 is 10 µs: windows 30, 10 (the median, bold), 5.
        let row = md
            .lines()
            .find(|l| l.starts_with("| 500/s (0.5 S) | nocturne |"))
            .unwrap();
        assert!(row.ends_with("| met | 30.0, **10.0**, 5.0 |"), "{row}");
        let unloaded = md
            .lines()
            .find(|l| l.starts_with("| unloaded (ping-pong) | nocturne |"))
            .unwrap();
        assert_eq!(unloaded.matches('|').count(), 12, "{unloaded}");
    }

    #[test]
    fn one_window_per_rate_keeps_the_report_and_the_table_as_they_were() {
        let settings = parse_args(&["--saturation=1000"]).unwrap();
        assert_eq!(settings.repeat, 1);
        let o = outcome();
        let report = build_report(&settings, &o);
        assert_eq!(report.machine.modes["repeat"], "1");
        for c in &report.cases {
            assert!(!c.counts.contains_key("windows"), "{c:?}");
            assert!(
                !c.extra.keys().any(|k| k.starts_with("p99_window_")),
                "{c:?}"
            );
        }
        let md = markdown(&settings, &o);
        assert!(
            !md.contains(WINDOWS_COLUMN) && !md.contains("windows per rate"),
            "{md}"
        );
        assert!(md.contains(
            "| rate | system | achieved/s | p50 | p90 | p99 | p99.9 | max | errors | SLO |\n"
        ));
    }

    #[test]
    fn repeat_out_of_range_is_refused_naming_it() {
        for bad in ["0", "10"] {
            let err = format!(
                "{:#}",
                parse_args(&["--saturation=1000", "--repeat", bad]).unwrap_err()
            );
            assert_eq!(
                err,
                format!("--repeat {bad} is out of range: it takes 1..=9")
            );
        }
        assert_eq!(
            parse_args(&["--saturation=1000", "--repeat=9"])
                .unwrap()
                .repeat,
            9
        );
    }

    #[test]
    fn a_client_on_a_server_core_is_refused_naming_the_cores() {
        let refused = |argv: &[&str], needles: &[&str]| {
            let mut all = vec!["--saturation=1000"];
            all.extend_from_slice(argv);
            let err = format!("{:#}", parse_args(&all).unwrap_err());
            for needle in needles {
                assert!(err.contains(needle), "{argv:?}: {needle:?} not in {err}");
            }
        };
        // On nocturne's io core (and so on the baselines' cores).
        refused(
            &["--client-cores=1"],
            &["--client-cores 1", "core 1", "--io-cores", "baselines"],
        );
        refused(
            &["--client-cores=0-1", "--client-threads=2"],
            &["core 1", "--io-cores"],
        );
        // On nocturne's workers' core (where the baselines run too).
        refused(
            &["--worker-cores=0"],
            &[
                "--client-cores 0",
                "core 0",
                "--worker-cores",
                "--allow-shared-cores",
            ],
        );
        // The default placement keeps them apart, on two cores.
        assert!(parse_args(&["--saturation=1000"]).is_ok());
    }

    #[test]
    fn client_and_io_core_sets_reach_the_placement_and_the_report() {
        let parse = |argv: &[&str]| {
            let args = <super::super::CompareArgs as clap::FromArgMatches>::from_arg_matches(
                &<super::super::CompareArgs as clap::Args>::augment_args(clap::Command::new("t"))
                    .get_matches_from(std::iter::once("t").chain(argv.iter().copied())),
            )
            .unwrap();
            CompareSettings::from_args(&args)
        };
        // Every core for the client and every core for the servers: shared
        // on purpose, so asked for.
        let sets = parse(&[
            "--saturation=1000",
            "--client-cores=0-1",
            "--client-threads=2",
            "--io-cores=1",
            "--worker-cores=0",
            "--allow-shared-cores",
        ])
        .unwrap();
        assert!(sets.allow_shared_cores);
        assert_eq!(sets.client_cores, vec![0, 1]);
        assert_eq!(sets.placement.io_cores, vec![1]);
        assert_eq!(sets.placement.server_cores, vec![0, 1]);
        let md = markdown(&sets, &outcome());
        assert!(md.contains("2 × fixed-rate open loop"), "{md}");
        assert!(md.contains("cores 0-1;"), "{md}");
        assert!(md.contains("nocturne: io cores 1,"), "{md}");
        let report = build_report(&sets, &outcome());
        assert_eq!(report.machine.core_map["client"], vec![0, 1]);
        assert_eq!(report.machine.core_map["nocturne_io"], vec![1]);
        assert_eq!(report.machine.modes["allow_shared_cores"], "true");
        // By default nocturne's workers share its io cores, and the
        // baselines get the same cores: the client has its own.
        let default = parse(&["--saturation=1000"]).unwrap();
        assert_eq!(default.client_cores, vec![0]);
        assert_eq!(default.placement.io_cores, vec![1]);
        assert_eq!(default.placement.worker_cores, vec![1]);
        assert_eq!(default.placement.server_cores, vec![1]);
        let err = parse(&["--saturation=1000", "--nocturne-poll=spin"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("apart from --io-cores"),
            "{err:#}"
        );
        // On two cores, spinning io apart from the workers puts the
        // workers on the client's core: refused unless asked for.
        let err = parse(&[
            "--saturation=1000",
            "--nocturne-poll=spin",
            "--worker-cores=0",
        ])
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("--allow-shared-cores"),
            "{err:#}"
        );
        assert!(parse(&[
            "--saturation=1000",
            "--nocturne-poll=spin",
            "--worker-cores=0",
            "--allow-shared-cores",
        ])
        .is_ok());
        // The single-core spellings of earlier releases still work.
        let old = parse(&["--saturation=1000", "--client-core=0", "--io-core=1"]).unwrap();
        assert_eq!(
            (old.client_cores, old.placement.io_cores),
            (vec![0], vec![1])
        );
        // A core this process may not use is refused, naming the flags.
        let err = parse(&["--saturation=1000", "--io-cores=1-4096"]).unwrap_err();
        assert!(format!("{err:#}").contains("--io-cores"), "{err:#}");
    }
}
