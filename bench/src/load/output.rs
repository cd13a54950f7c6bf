//! What a load run prints and writes: the human table (one row per rate),
//! the detail lines under it (service time, errors by cause, status codes),
//! the docs/design.md §7 report, and `.hgrm` percentile spectra.
//!
//! Report cases: `"<rate>/s"` per rate (the corrected latency, every
//! counter as an extra field), `"<rate>/s <kind>"` per request kind of a
//! mix, and `"pingpong"` for the blocking baseline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::baseline::PingPong;
use super::run::RateResult;
use super::spec::{format_rate, rate_file_tag, Slo};
use crate::hist::LatencyHistogram;
use crate::report::CaseResult;

/// A latency in µs for the table.
fn us(ns: u64) -> String {
    let v = ns as f64 / 1e3;
    if v < 100.0 {
        format!("{v:.2}")
    } else if v < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The table: one row per rate, latencies from the intended send time.
pub fn table(results: &[RateResult], slos: &[Slo]) -> String {
    let mut headers = vec![
        "rate", "achieved", "p50", "p90", "p99", "p99.9", "p99.99", "max", "svc p50", "svc p99",
        "errors", "unsent",
    ];
    if !slos.is_empty() {
        headers.push("slo");
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let h = &r.latency;
            let mut row = vec![
                format!("{}/s", format_rate(r.rate)),
                format!("{}/s", format_rate(r.achieved_per_s())),
                us(h.quantile_ns(0.50)),
                us(h.quantile_ns(0.90)),
                us(h.quantile_ns(0.99)),
                us(h.quantile_ns(0.999)),
                us(h.quantile_ns(0.9999)),
                us(h.max_ns()),
                us(r.service.quantile_ns(0.50)),
                us(r.service.quantile_ns(0.99)),
                r.errors().to_string(),
                r.unsent.to_string(),
            ];
            if !slos.is_empty() {
                row.push(if r.meets(slos) { "met" } else { "MISSED" }.into());
            }
            row
        })
        .collect();
    // Fixed minimum widths keep the rows of a sweep, printed one at a
    // time ([`LiveTable`]), aligned in the usual cases: rates such as
    // `19.998k/s` take 10, latencies up to 100 s and counts 8.
    let mut widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| h.len().max(if i < 2 { 10 } else { 8 }))
        .collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let _ = if i == 0 {
                write!(text, "{cell:<w$}  ")
            } else {
                write!(text, "{cell:>w$}  ")
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in &rows {
        line(row);
    }
    out.push_str(TABLE_NOTE);
    out
}

/// The line under the table: what its numbers are.
const TABLE_NOTE: &str = "(µs; p50…max from each request's intended send time, coordinated \
                          omission corrected; svc = service time from the actual send)\n";

/// A sweep's table, printed a rate at a time as each finishes, so that a
/// long sweep shows its progress (on a terminal or in a log) and stdout
/// still holds the table once: the header comes before the first row and
/// the note after the last.
#[derive(Debug, Default)]
pub struct LiveTable {
    rows: usize,
}

impl LiveTable {
    /// The lines to print for `r`, the next rate that finished: its row,
    /// after the header if it is the first.
    pub fn row(&mut self, r: &RateResult, slos: &[Slo]) -> String {
        let table = table(std::slice::from_ref(r), slos);
        let mut lines = table.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        self.rows += 1;
        if self.rows == 1 {
            format!("{header}\n{row}\n")
        } else {
            format!("{row}\n")
        }
    }

    /// What ends the table: the note, once a row was printed.
    pub fn end(&self) -> &'static str {
        if self.rows > 0 {
            TABLE_NOTE
        } else {
            ""
        }
    }
}

/// Lines under the table for one rate: counts, errors by cause, statuses,
/// per-kind percentiles.
pub fn details(r: &RateResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/s: offered {} ({:.1}/s), sent {}, completed {}, achieved {:.1}/s, unsent {}, \
         send lag p50 {} p99 {} µs, client cpu {:.2} µs/request",
        format_rate(r.rate),
        r.offered,
        r.offered_per_s(),
        r.sent,
        r.completed,
        r.achieved_per_s(),
        r.unsent,
        us(r.send_lag.quantile_ns(0.5)),
        us(r.send_lag.quantile_ns(0.99)),
        r.client_cpu_us_per_request(),
    );
    if r.reconnects > 0 {
        // A keep-alive run should need none: each one is a connection the
        // server (or a failure) closed, and a connect inside the latency.
        let _ = writeln!(
            out,
            "  reconnects: {} (connections closed during the run and opened again)",
            r.reconnects
        );
    }
    if r.errors() > 0 {
        let s = &r.socket_errors;
        let _ = writeln!(
            out,
            "  errors: non-2xx {}, timeouts {}, socket: connect {}, read {}, write {}, closed {}, protocol {}, unsolicited {}",
            r.non_2xx, r.timeouts, s.connect, s.read, s.write, s.closed, s.protocol, s.unsolicited
        );
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "  first error: {e}");
        }
    }
    if r.statuses.keys().any(|s| !(200..300).contains(s)) || r.statuses.len() > 1 {
        let codes: Vec<String> = r
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let _ = writeln!(out, "  status codes: {}", codes.join(", "));
    }
    for k in &r.per_kind {
        let h = &k.latency;
        let _ = writeln!(
            out,
            "  {}: offered {}, completed {}, achieved {:.1}/s, errors {} (non-2xx {}, timeouts {}, lost {}), unsent {}, p50 {} p99 {} p99.9 {} max {} µs",
            k.name,
            k.offered,
            k.completed,
            k.achieved_per_s(r.window),
            k.errors(),
            k.non_2xx,
            k.timeouts,
            k.lost,
            k.unsent,
            us(h.quantile_ns(0.5)),
            us(h.quantile_ns(0.99)),
            us(h.quantile_ns(0.999)),
            us(h.max_ns()),
        );
    }
    out
}

/// What the closing error line says about the cause: the first error a
/// client met, or, when only status codes failed, which ones.
pub fn error_cause(results: &[RateResult]) -> String {
    if let Some(e) = results.iter().find_map(|r| r.first_error.as_deref()) {
        return format!(" (first: {e})");
    }
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for r in results.iter().filter(|r| !r.allow_non_2xx) {
        for (&status, &n) in &r.statuses {
            if !(200..300).contains(&status) {
                *statuses.entry(status).or_default() += n;
            }
        }
    }
    if statuses.is_empty() {
        return String::new();
    }
    let codes: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    format!(" (non-2xx answers {})", codes.join(", "))
}

/// The case name of a rate.
pub fn case_name(rate: f64) -> String {
    format!("{}/s", format_rate(rate))
}

/// The report cases of one rate: the rate itself, then one per kind.
pub fn cases(r: &RateResult, slos: &[Slo]) -> Vec<CaseResult> {
    let s = r.latency.summary();
    let svc = r.service.summary();
    let mut case = CaseResult::from_summary(case_name(r.rate), &s, r.achieved_per_s(), r.errors());
    let lag = r.send_lag.summary();
    let measurements: [(&str, f64); 15] = [
        ("rate", r.rate),
        ("offered_per_s", r.offered_per_s()),
        ("p9999_us", s.p9999_us),
        ("mean_us", s.mean_us),
        ("service_p50_us", svc.p50_us),
        ("service_p90_us", svc.p90_us),
        ("service_p99_us", svc.p99_us),
        ("service_p999_us", svc.p999_us),
        ("service_p9999_us", svc.p9999_us),
        ("service_max_us", svc.max_us),
        ("send_lag_p50_us", lag.p50_us),
        ("send_lag_p99_us", lag.p99_us),
        ("send_lag_max_us", lag.max_us),
        ("window_s", r.window.as_secs_f64()),
        ("client_cpu_us_per_req", r.client_cpu_us_per_request()),
    ];
    for (k, v) in measurements {
        case = case.with_extra(k, v);
    }
    // Whole numbers, written as JSON integers (docs/design.md §7's `samples` and
    // `errors` are): a reader that checks a count for equality, or types
    // it, must not find `1000.0`.
    let counts: [(&str, u64); 11] = [
        ("offered", r.offered),
        ("sent", r.sent),
        ("completed", r.completed),
        ("unsent", r.unsent),
        ("timeouts", r.timeouts),
        ("non_2xx", r.non_2xx),
        ("socket_errors", r.socket_errors.total()),
        ("connect_errors", r.socket_errors.connect),
        ("unsolicited", r.socket_errors.unsolicited),
        ("reconnects", r.reconnects),
        ("requests_total", r.requests_total),
    ];
    for (k, n) in counts {
        case = case.with_count(k, n);
    }
    if !slos.is_empty() {
        case = case.with_flag("slo_met", r.meets(slos));
    }
    let mut out = vec![case];
    for k in &r.per_kind {
        // The kind's own numbers, as its rate's case has them: its
        // achieved rate, its errors, its counts.
        let ks = k.latency.summary();
        out.push(
            CaseResult::from_summary(
                format!("{} {}", case_name(r.rate), k.name),
                &ks,
                k.achieved_per_s(r.window),
                k.errors(),
            )
            .with_extra("p9999_us", ks.p9999_us)
            .with_count("offered", k.offered)
            .with_count("completed", k.completed)
            .with_count("unsent", k.unsent)
            .with_count("timeouts", k.timeouts)
            .with_count("non_2xx", k.non_2xx)
            .with_count("lost", k.lost),
        );
    }
    out
}

/// The ping-pong baseline as a report case: its round-trip times, and
/// `errors` its non-2xx answers (counted, as a rate's are, when
/// `--allow-errors` let them through).
pub fn pingpong_case(round_trips: &LatencyHistogram, errors: u64) -> CaseResult {
    let s = round_trips.summary();
    let rate = if s.mean_us > 0.0 {
        1e6 / s.mean_us
    } else {
        0.0
    };
    CaseResult::from_summary("pingpong", &s, rate, errors).with_extra("p9999_us", s.p9999_us)
}

/// The lines the command prints about the ping-pong baseline: its
/// percentiles, and the status codes when any answer was not 2xx.
pub fn pingpong_lines(pingpong: &PingPong) -> String {
    let s = pingpong.round_trips.summary();
    let mut out = format!(
        "ping-pong baseline (blocking, 1 connection, {} round trips): p50 {:.2} p99 {:.2} p99.9 {:.2} µs\n",
        s.samples, s.p50_us, s.p99_us, s.p999_us
    );
    if pingpong.non_2xx() > 0 {
        let codes: Vec<String> = pingpong
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  non-2xx {} (allowed), status codes: {}",
            pingpong.non_2xx(),
            codes.join(", ")
        );
    }
    out
}

/// The `.hgrm` file of each rate: `path` itself when one rate was asked
/// for, else `STEM.RATE.EXT` beside it (RATE as [`rate_file_tag`] writes
/// it), however many of the rates ran: a script finds a sweep's files by
/// name whether or not the sweep stopped early.
pub fn hgrm_paths(path: &Path, results: &[RateResult], rates_requested: usize) -> Vec<PathBuf> {
    if rates_requested <= 1 {
        return results.iter().map(|_| path.to_owned()).collect();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "latency".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hgrm".into());
    results
        .iter()
        .map(|r| path.with_file_name(format!("{stem}.{}.{ext}", rate_file_tag(r.rate))))
        .collect()
}

/// Writes the corrected latency spectrum of every rate (see [`hgrm_paths`]).
pub fn write_hgrm(
    path: &Path,
    results: &[RateResult],
    rates_requested: usize,
) -> io::Result<Vec<PathBuf>> {
    let paths = hgrm_paths(path, results, rates_requested);
    for (p, r) in paths.iter().zip(results) {
        let mut out = Vec::new();
        r.latency.write_hgrm(&mut out)?;
        std::fs::write(p, out)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", p.display())))?;
    }
    Ok(paths)
}

/// The report's `modes`: every setting that shapes the numbers, the rates
/// that ran (`rates`; `rates_requested` too when a sweep stopped early)
/// and, when a signal stopped the run, where (`interrupted`).
pub fn modes(
    settings: &super::LoadSettings,
    outcome: &super::SweepOutcome,
) -> BTreeMap<String, String> {
    let p = &settings.plan;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    put("arrival", p.arrival.name().into());
    put("poll", p.poll.name().into());
    put("spin_us", p.spin.as_micros().to_string());
    put("threads", p.threads.to_string());
    put("connections", p.connections.to_string());
    put("pipeline", p.pipeline.to_string());
    put("duration_s", format!("{}", p.duration.as_secs_f64()));
    put("warmup_s", format!("{}", p.warmup.as_secs_f64()));
    put("timeout_s", format!("{}", p.timeout.as_secs_f64()));
    put("seed", p.seed.to_string());
    let list =
        |rates: &mut dyn Iterator<Item = f64>| rates.map(format_rate).collect::<Vec<_>>().join(",");
    let ran = list(&mut outcome.results.iter().map(|r| r.rate));
    let requested = list(&mut settings.rates.iter().copied());
    if ran != requested {
        put("rates_requested", requested);
    }
    put("rates", ran);
    if let Some(phase) = outcome.interrupted {
        put("interrupted", phase.to_string());
    }
    if let Some(stopped) = &outcome.stopped_early {
        put(
            "stopped_early",
            format!("{}/s: {}", format_rate(stopped.rate), stopped.why),
        );
    }
    put(
        "kinds",
        p.targets
            .kinds
            .iter()
            .map(|k| {
                format!(
                    "{}@{}x{}",
                    k.name, p.targets.endpoints[k.endpoint].addr, k.weight
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    if !settings.slo.is_empty() {
        put(
            "slo",
            settings
                .slo
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        put(
            "best_rate",
            outcome
                .best
                .map(|b| format!("{b}"))
                .unwrap_or_else(|| "none".into()),
        );
    }
    m
}
