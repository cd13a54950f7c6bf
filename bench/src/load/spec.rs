//! The small languages of the command line: rates (`10k`, `1.5M`), rate
//! sweeps (`10k..200k/10k`, `1k,5k,20k`), durations (`10s`, `250ms`,
//! `100us`) and latency objectives (`p99=100us,p99.9=1ms`).
//!
//! Every parser returns a [`SpecError`] that quotes the offending text, so
//! a typo on the command line is answered with what was wrong, not with a
//! panic or a silently different run.

use std::fmt;
use std::time::Duration;

use nocturne_ipc::duration::{self, DurationError};

use crate::hist::LatencyHistogram;

/// Why a rate, duration or objective could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not a rate: a positive number with an optional `k`/`M` suffix.
    #[error("bad rate {0:?}: expected a positive number of requests/s such as 5000, 10k or 1.5M")]
    BadRate(String),
    /// A sweep whose bounds or step are wrong.
    #[error("bad rate sweep {0:?}: expected START..END/STEP with 0 < START <= END and STEP > 0")]
    BadSweep(String),
    /// A sweep of more rates than anyone means to run.
    #[error("rate sweep {0:?} has more than {MAX_SWEEP_RATES} rates")]
    SweepTooLong(String),
    /// Not a duration: the reason of serve's grammar, which quotes the text.
    #[error("bad duration: {0}")]
    BadDuration(#[from] DurationError),
    /// A duration longer than any run, which the clocks could not add.
    #[error("bad duration {0:?}: at most {MAX_DURATION_SECS}s (about 31 years)")]
    DurationTooLong(String),
    /// Not a latency objective.
    #[error("bad objective {0:?}: expected pNN=DURATION or max=DURATION, e.g. p99=100us")]
    BadSlo(String),
    /// A percentile outside (0, 100].
    #[error("bad percentile {0:?}: expected p50, p90, p99, p99.9, p99.99, … or max")]
    BadPercentile(String),
    /// An objective no run can meet.
    #[error("objective {0:?} can never be met: a latency is never 0")]
    ZeroLimit(String),
    /// The same percentile bounded twice.
    #[error("objectives {0:?} and {1:?} bound the same percentile: give it once")]
    DuplicateObjective(String, String),
    /// Two rates of a list that would be reported (and named) alike.
    #[error("rates {0:?} and {1:?} are the same rate as reported ({2}/s): give each rate once")]
    DuplicateRate(String, String, String),
}

/// Most rates one sweep may run.
pub const MAX_SWEEP_RATES: usize = 1_000;

/// Parses a rate in requests per second: `5000`, `10k`, `1.5M`, `1G`, `2.5`.
pub fn parse_rate(text: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::BadRate(text.to_owned());
    let t = text.trim();
    let (number, scale) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1e3),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1e6),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let rate = value * scale;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(bad())
    }
}

/// Parses `--rate`: one rate, a comma-separated list (`1k,5k,20k`) or a
/// sweep `START..END/STEP` (both ends included). Rates come back in the
/// order they are to be run.
pub fn parse_rates(text: &str) -> Result<Vec<f64>, SpecError> {
    let t = text.trim();
    if let Some((start, rest)) = t.split_once("..") {
        let bad = || SpecError::BadSweep(text.to_owned());
        let (end, step) = rest.split_once('/').ok_or_else(bad)?;
        let (start, end, step) = (
            parse_rate(start).map_err(|_| bad())?,
            parse_rate(end).map_err(|_| bad())?,
            parse_rate(step).map_err(|_| bad())?,
        );
        if start > end {
            return Err(bad());
        }
        // Counting steps instead of adding them avoids drift (0.1k steps).
        let steps = ((end - start) / step + 1e-9).floor();
        if steps + 1.0 > MAX_SWEEP_RATES as f64 {
            return Err(SpecError::SweepTooLong(text.to_owned()));
        }
        let rates: Vec<f64> = (0..=steps as usize)
            .map(|i| start + i as f64 * step)
            .collect();
        let items: Vec<String> = rates.iter().map(|r| r.to_string()).collect();
        return distinct(rates, &items);
    }
    let items: Vec<String> = t.split(',').map(|i| i.trim().to_owned()).collect();
    let rates = items
        .iter()
        .map(|item| parse_rate(item))
        .collect::<Result<Vec<_>, _>>()?;
    distinct(rates, &items)
}

/// `rates` (written as `items`) if no two are reported alike. Each rate
/// names its table row, report case and `.hgrm` file: two that print
/// alike would overwrite each other.
fn distinct(rates: Vec<f64>, items: &[String]) -> Result<Vec<f64>, SpecError> {
    for (i, a) in rates.iter().enumerate() {
        if let Some(j) = (0..i).find(|&j| format_rate(rates[j]) == format_rate(*a)) {
            return Err(SpecError::DuplicateRate(
                items[j].clone(),
                items[i].clone(),
                format_rate(*a),
            ));
        }
    }
    Ok(rates)
}

/// A rate as part of a file name: the exact number (up to three decimals,
/// no unit), e.g. `1000`, `1000.4`, `0.5`. Distinct for rates that
/// [`format_rate`] tells apart, which [`parse_rates`] ensures.
pub fn rate_file_tag(rate: f64) -> String {
    let text = format!("{rate:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Longest duration any bench takes: `Instant + Duration` panics past what
/// the clock holds, and no run is meant to last longer anyway.
pub const MAX_DURATION_SECS: u64 = 1_000_000_000;

/// Parses a duration the way `nocturne serve` does ([`nocturne_ipc::duration`]:
/// a number and a unit `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`, or
/// several from the largest unit down, e.g. `1m30s`), and also a bare
/// number, which means seconds (`2.5`), as every bench has always taken.
pub fn parse_duration(text: &str) -> Result<Duration, SpecError> {
    let t = text.trim();
    let bare_seconds = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let duration = if bare_seconds {
        // The error names what was typed, not the `s` added to it.
        duration::parse_duration(&format!("{t}s")).map_err(|e| match e {
            DurationError::TooPrecise(_) => DurationError::TooPrecise(t.to_owned()),
            DurationError::Overflow(_) => DurationError::Overflow(t.to_owned()),
            _ => DurationError::Malformed(t.to_owned()),
        })
    } else {
        duration::parse_duration(t)
    }?;
    if duration > Duration::from_secs(MAX_DURATION_SECS) {
        return Err(SpecError::DurationTooLong(t.to_owned()));
    }
    Ok(duration)
}

/// Which point of a latency distribution an objective bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Percentile {
    /// The value at quantile `q` (0 < q < 1): p99 is `Quantile(0.99)`.
    Quantile(f64),
    /// The largest value.
    Max,
}

impl Percentile {
    /// Parses `p50`, `p99.9`, `p99.99`, `p999` (= p99.9), `max`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadPercentile(text.to_owned());
        let t = text.trim().to_ascii_lowercase();
        if t == "max" || t == "p100" {
            return Ok(Self::Max);
        }
        let digits = t.strip_prefix('p').ok_or_else(bad)?;
        // `p999` and `p9999` are the report's field names for p99.9, p99.99.
        let percent = match digits {
            "999" => "99.9",
            "9999" => "99.99",
            "99999" => "99.999",
            d => d,
        };
        let q: f64 = percent_to_quantile_text(percent)
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        // A q that rounds to 1 (more nines than an f64 holds) would be
        // the max under another name: refused.
        if q > 0.0 && q < 1.0 {
            Ok(Self::Quantile(q))
        } else {
            Err(bad())
        }
    }

    /// The value of this percentile in `hist`, in nanoseconds.
    pub fn of_ns(&self, hist: &LatencyHistogram) -> u64 {
        match *self {
            Self::Quantile(q) => hist.quantile_ns(q),
            Self::Max => hist.max_ns(),
        }
    }
}

impl fmt::Display for Percentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Max => f.write_str("max"),
            Self::Quantile(q) => write!(f, "p{}", quantile_to_percent_text(q)),
        }
    }
}

/// The decimal text of the quantile `percent`/100 (`99.9` → `0.999`,
/// `5` → `0.05`): the decimal point moved in the text, so that parsing it
/// gives the f64 nearest the exact quantile, with none of the rounding
/// error of dividing by 100. `None` unless `percent` is digits with at
/// most one decimal point.
fn percent_to_quantile_text(percent: &str) -> Option<String> {
    let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let whole = format!("{whole:0>2}");
    let (hundreds, below_100) = whole.split_at(whole.len() - 2);
    Some(format!("0{hundreds}.{below_100}{fraction}"))
}

/// The percent of quantile `q` as text (`0.999` → `99.9`): the shortest
/// decimal that reads back as `q` (Rust's `{}` of an f64, never in
/// exponent form), with the decimal point moved two places in the text.
/// So every digit given is shown (`p99.99999999` is not rounded up to
/// `p100`), and no binary noise of `q * 100` (`99.89999999999999`) is.
fn quantile_to_percent_text(q: f64) -> String {
    let text = q.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let fraction = format!("{fraction:0<2}");
    let (to_whole, rest) = fraction.split_at(2);
    let whole = format!("{whole}{to_whole}");
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    if rest.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{rest}")
    }
}

/// One latency objective: `percentile <= limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// The bounded point of the distribution.
    pub percentile: Percentile,
    /// The bound.
    pub limit: Duration,
}

impl Slo {
    /// Parses a comma-separated list: `p99=100us`, `p50=20us,p99.9=1ms`.
    pub fn parse_list(text: &str) -> Result<Vec<Slo>, SpecError> {
        let items: Vec<&str> = text.split(',').collect();
        let slos = items
            .iter()
            .map(|item| {
                let (p, limit) = item
                    .split_once('=')
                    .ok_or_else(|| SpecError::BadSlo((*item).to_owned()))?;
                let slo = Slo {
                    percentile: Percentile::parse(p)?,
                    limit: parse_duration(limit)
                        .map_err(|_| SpecError::BadSlo((*item).to_owned()))?,
                };
                if slo.limit.is_zero() {
                    return Err(SpecError::ZeroLimit((*item).to_owned()));
                }
                Ok(slo)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in slos.iter().enumerate() {
            if let Some(j) = (0..i).find(|&j| slos[j].percentile == a.percentile) {
                return Err(SpecError::DuplicateObjective(
                    items[j].to_owned(),
                    items[i].to_owned(),
                ));
            }
        }
        Ok(slos)
    }

    /// True when `hist` keeps this objective.
    pub fn is_met_by(&self, hist: &LatencyHistogram) -> bool {
        u128::from(self.percentile.of_ns(hist)) <= self.limit.as_nanos()
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}<={}", self.percentile, format_duration(self.limit))
    }
}

/// A duration the way the parser reads it back (`100us`, `2.5ms`, `10s`).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let (value, unit) = if ns < 1_000 {
        (ns as f64, "ns")
    } else if ns < 1_000_000 {
        (ns as f64 / 1e3, "us")
    } else if ns < 1_000_000_000 {
        (ns as f64 / 1e6, "ms")
    } else {
        (ns as f64 / 1e9, "s")
    };
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

/// A rate for names and tables: `500`, `12.5k`, `1.2M`, `2G`.
pub fn format_rate(rate: f64) -> String {
    let (value, unit) = if rate >= 1e9 {
        (rate / 1e9, "G")
    } else if rate >= 1e6 {
        (rate / 1e6, "M")
    } else if rate >= 1e3 {
        (rate / 1e3, "k")
    } else {
        (rate, "")
    };
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_suffixes() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("10k"), Ok(10_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_rate(" 2.5 "), Ok(2.5));
        for bad in ["", "0", "-5", "k", "1e400", "ten", "5x", "nan"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sweeps_and_lists() {
        assert_eq!(
            parse_rates("10k..50k/10k").unwrap(),
            vec![10e3, 20e3, 30e3, 40e3, 50e3]
        );
        // The end is included only when a step lands on it.
        assert_eq!(parse_rates("1k..2.5k/1k").unwrap(), vec![1e3, 2e3]);
        assert_eq!(parse_rates("1k..1k/1").unwrap(), vec![1e3]);
        let fine = parse_rates("0.1k..1k/0.1k").unwrap();
        assert_eq!(fine.len(), 10);
        assert!((fine[9] - 1000.0).abs() < 1e-6);
        assert_eq!(parse_rates("1k,5k,20k").unwrap(), vec![1e3, 5e3, 20e3]);
        assert_eq!(parse_rates("777").unwrap(), vec![777.0]);
        for bad in ["5k..1k/1k", "1k..5k", "1k..5k/0", "a..b/c", "1k..5k/-1"] {
            assert!(
                matches!(parse_rates(bad), Err(SpecError::BadSweep(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_rates("1..1M/1"),
            Err(SpecError::SweepTooLong(_))
        ));
        assert!(matches!(parse_rates("1k,,2k"), Err(SpecError::BadRate(_))));
        // Rates reported alike are refused: they would overwrite each
        // other's files and report cases.
        for dup in ["1k,1k", "1k,1000", "1000,1000.4", "5k,1k,5000"] {
            assert!(
                matches!(parse_rates(dup), Err(SpecError::DuplicateRate(..))),
                "{dup}"
            );
        }
        assert!(matches!(
            parse_rates("1k..1.0004k/0.0001k"),
            Err(SpecError::DuplicateRate(..))
        ));
        assert_eq!(rate_file_tag(1000.0), "1000");
        assert_eq!(rate_file_tag(1000.4), "1000.4");
        assert_eq!(rate_file_tag(0.5), "0.5");
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "10 parsecs",
            "-1s",
            "1e3s",
            "ms10",
            "1.2.3s",
            "nan",
            "inf",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_what_serve_takes() {
        // Compound values, from the largest unit down, as `serve` reads them.
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 5m"), Ok(Duration::from_secs(3900)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        // Bare numbers are seconds, fractions included, exactly.
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("0.000001"), Ok(Duration::from_micros(1)));
        // serve's reasons, and the text as typed.
        let message = |text| parse_duration(text).unwrap_err().to_string();
        assert!(
            message("1s1m").contains("the largest first"),
            "{}",
            message("1s1m")
        );
        assert!(message("1.5ns").contains("finer than one nanosecond"));
        assert!(message("1.2.3").contains("`1.2.3`"), "{}", message("1.2.3"));
        // The units the error lists are the units accepted, `h` included.
        let unknown = message("5d");
        assert!(unknown.contains("ns, us, µs, ms, s, m, h"), "{unknown}");
        assert_eq!(
            parse_duration("1000000001"),
            Err(SpecError::DurationTooLong("1000000001".into()))
        );
        assert_eq!(
            parse_duration("1000000000"),
            Ok(Duration::from_secs(MAX_DURATION_SECS))
        );
    }

    #[test]
    fn objectives() {
        let slos = Slo::parse_list("p99=100us,p99.9=1ms,max=5ms,p99.99=2ms").unwrap();
        assert_eq!(slos[0].percentile, Percentile::Quantile(0.99));
        assert_eq!(slos[0].limit, Duration::from_micros(100));
        assert_eq!(slos[1].percentile, Percentile::Quantile(0.999));
        assert_eq!(slos[2].percentile, Percentile::Max);
        assert_eq!(slos[3].percentile, Percentile::Quantile(0.9999));
        // `p999` is p99.9.
        assert_eq!(
            Slo::parse_list("p999=2ms").unwrap()[0].percentile,
            Percentile::Quantile(0.999)
        );
        assert_eq!(slos[0].to_string(), "p99<=100us");
        assert_eq!(slos[1].to_string(), "p99.9<=1ms");
        assert_eq!(slos[2].to_string(), "max<=5ms");
        for bad in ["p99", "p99=", "q99=1ms", "p100.5=1ms", "p0=1ms", "p99=fast"] {
            assert!(Slo::parse_list(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Slo::parse_list("p99=0s"),
            Err(SpecError::ZeroLimit(_))
        ));
        assert!(matches!(
            Slo::parse_list("p99=1ms,p50=1us,p99=2ms"),
            Err(SpecError::DuplicateObjective(a, b)) if a == "p99=1ms" && b == "p99=2ms"
        ));
        assert!(matches!(
            Slo::parse_list("max=1ms,p100=2ms"),
            Err(SpecError::DuplicateObjective(..))
        ));
    }

    #[test]
    fn percentiles_display_as_given() {
        for text in [
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "p5",
            "p0.1",
            "p12.5",
            "p99.9999999",
            "p99.99999999",
        ] {
            let p = Percentile::parse(text).unwrap();
            assert_eq!(p.to_string(), text, "{p:?}");
            assert_eq!(Percentile::parse(&p.to_string()).unwrap(), p, "{text}");
        }
        // The report's field names read as the percentiles they name.
        assert_eq!(Percentile::parse("p999").unwrap().to_string(), "p99.9");
        assert_eq!(Percentile::parse("p9999").unwrap().to_string(), "p99.99");
        assert_eq!(Percentile::Quantile(0.99).to_string(), "p99");
        assert_eq!(Percentile::Quantile(0.999).to_string(), "p99.9");
        // Close to 100 is not 100: not rounded up to the max in labels.
        let near_max = Percentile::parse("p99.99999999").unwrap();
        assert!(
            matches!(near_max, Percentile::Quantile(q) if q < 1.0),
            "{near_max:?}"
        );
        let slo = Slo::parse_list("p99.99999999=1ms").unwrap()[0];
        assert_eq!(slo.to_string(), "p99.99999999<=1ms");
        // More nines than a quantile can tell from 1 are refused, not
        // taken for the max.
        assert!(Percentile::parse("p99.99999999999999999").is_err());
        assert_eq!(Percentile::parse("p.5").unwrap().to_string(), "p0.5");
        for bad in ["p", "p.", "p9.9.9", "p1e1", "p-5", "p100.0", "p0"] {
            assert!(Percentile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objectives_against_a_histogram() {
        let mut h = LatencyHistogram::new();
        h.record_ns_n(10_000, 990); // 10 µs
        h.record_ns_n(500_000, 10); // 500 µs
        let p99 = Slo::parse_list("p99=20us").unwrap()[0];
        let p999 = Slo::parse_list("p99.9=100us").unwrap()[0];
        assert!(p99.is_met_by(&h));
        assert!(!p999.is_met_by(&h));
    }

    #[test]
    fn formatting_reads_back() {
        for d in ["100us", "2.5ms", "10s", "750ns"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_rate(500.0), "500");
        assert_eq!(format_rate(12_500.0), "12.5k");
        assert_eq!(format_rate(1_200_000.0), "1.2M");
        assert_eq!(format_rate(1e9), "1G");
        assert_eq!(format_rate(2.5e12), "2500G");
        assert_eq!(parse_rate("1G"), Ok(1e9));
        assert_eq!(parse_rate(&format_rate(1.5e9)), Ok(1.5e9));
    }
}
