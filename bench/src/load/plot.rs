//! The latency-vs-throughput plot of a rate sweep, a self-contained SVG
//! drawn with [`crate::chart`] (no fonts or plotting library needed).
//!
//! x: achieved throughput (requests/s, linear from 0); y: latency from the
//! intended send time (µs, log scale, decades); one curve each for p50,
//! p99 and p99.9; a dashed line per latency objective; the best rate that
//! met them marked.

use std::time::Duration;

use super::run::RateResult;
use super::spec::{format_duration, format_rate, Slo};
use crate::chart::{Axis, Chart, Point};

/// The curves: label, quantile (1.0 = max), colour.
const SERIES: [(&str, f64, &str); 3] = [
    ("p50", 0.50, "#1f77b4"),
    ("p99", 0.99, "#ff7f0e"),
    ("p99.9", 0.999, "#d62728"),
];

/// One rate of the sweep, as plotted.
#[derive(Debug, Clone, Copy)]
struct SweepPoint {
    /// The rate asked for, requests/s.
    offered: f64,
    /// The rate answered, requests/s.
    achieved: f64,
    /// The latency (µs) at each of [`SERIES`]' quantiles.
    us: [f64; 3],
}

/// Renders the sweep's SVG. `best` is the rate (as asked for) that met the
/// objectives, if any.
pub fn render_svg(title: &str, results: &[RateResult], slos: &[Slo], best: Option<f64>) -> String {
    let points: Vec<SweepPoint> = results
        .iter()
        .map(|r| SweepPoint {
            offered: r.rate,
            achieved: r.achieved_per_s(),
            us: SERIES.map(|(_, q, _)| (r.latency.quantile_ns(q) as f64 / 1e3).max(0.001)),
        })
        .collect();
    chart(title, &points, slos, best).svg()
}

/// What the sweep's plot draws.
fn chart(title: &str, points: &[SweepPoint], slos: &[Slo], best: Option<f64>) -> Chart {
    let mut chart = Chart::new(
        title,
        (800.0, 500.0),
        150.0,
        Axis::new("achieved throughput (requests/s)", format_rate),
        Axis::new("latency from intended send (log scale)", |us| {
            format_duration(Duration::from_secs_f64(us / 1e6))
        }),
    );
    for slo in slos {
        chart.reference(slo.limit.as_secs_f64() * 1e6, format!("SLO {slo}"));
    }
    for (i, (label, _, colour)) in SERIES.into_iter().enumerate() {
        let curve = points
            .iter()
            .map(|p| Point {
                x: p.achieved,
                y: p.us[i],
                tip: format!(
                    "{label} {:.1} µs at {}/s offered, {}/s achieved",
                    p.us[i],
                    format_rate(p.offered),
                    format_rate(p.achieved)
                ),
            })
            .collect();
        chart
            .series(label, colour, false, curve)
            .legend(label, colour);
    }
    if let Some(p) = best.and_then(|best| points.iter().find(|p| p.offered == best)) {
        let label = format!("best {}/s", format_rate(p.offered));
        chart.marker(p.achieved, label, "#2ca02c", false);
    }
    chart
}

#[cfg(test)]
mod tests {
    use super::super::spec::Percentile;
    use super::*;
    use crate::chart::check;

    fn sweep() -> Vec<SweepPoint> {
        [
            (1000.0, 990.0, 20.0),
            (2000.0, 1980.0, 40.0),
            (4000.0, 3000.0, 900.0),
        ]
        .into_iter()
        .map(|(offered, achieved, p50)| SweepPoint {
            offered,
            achieved,
            us: [p50, p50 * 3.0, p50 * 10.0],
        })
        .collect()
    }

    #[test]
    fn draws_a_curve_per_quantile_the_objectives_and_the_best_rate() {
        let slos = [Slo {
            percentile: Percentile::Quantile(0.99),
            limit: Duration::from_micros(200),
        }];
        let svg = chart("sweep <echo>", &sweep(), &slos, Some(2000.0)).svg();
        check::well_formed(&svg);
        assert!(svg.contains(">sweep &lt;echo&gt;</text>"), "{svg}");
        for (label, _, colour) in SERIES {
            assert_eq!(check::polylines(&svg, label), 1, "{label}: {svg}");
            assert!(svg.contains(&format!(r#"stroke="{colour}" stroke-width="2"/><text"#)));
            assert!(svg.contains(&format!(">{label}</text>")), "legend {label}");
        }
        assert_eq!(svg.matches("<circle ").count(), 9);
        assert!(svg.contains("<title>p99.9 9000.0 µs at 4k/s offered, 3k/s achieved</title>"));
        assert!(svg.contains(">SLO p99&lt;=200us</text>"), "{svg}");
        assert!(svg.contains(">best 2k/s</text>"), "{svg}");
        for tick in [
            ">10us<",
            ">10ms<",
            ">3k<",
            "achieved throughput (requests/s)",
        ] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
    }

    #[test]
    fn no_best_no_marker_and_an_empty_sweep_still_renders() {
        let svg = chart("t", &sweep(), &[], None).svg();
        check::well_formed(&svg);
        assert!(!svg.contains(">best ") && !svg.contains(">SLO "));
        let svg = render_svg("t", &[], &[], Some(1000.0));
        check::well_formed(&svg);
        for (label, _, _) in SERIES {
            assert_eq!(check::polylines(&svg, label), 1, "{label}: {svg}");
        }
        assert!(!svg.contains("<circle") && !svg.contains(">best "));
    }
}
