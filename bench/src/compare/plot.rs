//! The comparison plot, a self-contained SVG drawn with [`crate::chart`]
//! (no fonts or plotting library needed): latency from the intended send
//! time (log scale) against the offered rate, one colour per system, p99
//! solid and p50 dashed, with the SLO and S marked.

use std::time::Duration;

use super::driver::CompareOutcome;
use super::systems::System;
use crate::chart::{Axis, Chart, Point};
use crate::load::spec::{format_duration, format_rate, Slo};

fn colour(system: System) -> &'static str {
    match system {
        System::RpcHyper => "#1f77b4",
        System::RpcGrpc => "#ff7f0e",
        System::Nocturne => "#2ca02c",
    }
}

/// One system's ladder: (rate, [p99 µs, p50 µs]) per run.
type Ladder = (System, Vec<(f64, [f64; 2])>);

/// The two curves of each system, in the order of [`Ladder`]'s pairs:
/// label and dashed.
const CURVES: [(&str, bool); 2] = [("p99", false), ("p50", true)];

/// Renders the plot of every system's ladder runs.
pub fn render_svg(outcome: &CompareOutcome) -> String {
    let ladders: Vec<Ladder> = outcome
        .systems
        .iter()
        .map(|s| {
            let points = s
                .runs
                .iter()
                .map(|r| {
                    let us = |q| (r.latency.quantile_ns(q) as f64 / 1e3).max(0.001);
                    (r.rate, [us(0.99), us(0.5)])
                })
                .collect();
            (s.system, points)
        })
        .collect();
    chart(outcome.saturation, &outcome.slo, &ladders).svg()
}

/// What the comparison plot draws, S being `saturation`.
fn chart(saturation: f64, slo: &Slo, ladders: &[Ladder]) -> Chart {
    let mut chart = Chart::new(
        format!(
            "foo→bar chain: latency vs. offered rate (S = {}/s)",
            format_rate(saturation)
        ),
        (860.0, 520.0),
        190.0,
        Axis::new("offered rate (requests/s)", format_rate),
        Axis::new("latency from intended send (log scale)", |us| {
            format_duration(Duration::from_secs_f64(us / 1e6))
        }),
    );
    let slo_us = (slo.limit.as_secs_f64() * 1e6).max(0.001);
    chart
        .reference(slo_us, format!("SLO {slo}"))
        .marker(saturation, "S", "#999", true);
    for (system, points) in ladders {
        let c = colour(*system);
        for (i, (quantile, dashed)) in CURVES.into_iter().enumerate() {
            let label = format!("{} {quantile}", system.name());
            let curve = points
                .iter()
                .map(|&(rate, us)| Point {
                    x: rate,
                    y: us[i],
                    tip: format!("{label} {:.1} µs at {}/s", us[i], format_rate(rate)),
                })
                .collect();
            chart.series(label, c, dashed, curve);
        }
        chart.legend(system.name(), c);
    }
    chart.note("solid: p99").note("dashed: p50");
    chart
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::check;
    use crate::load::spec::Percentile;

    #[test]
    fn draws_p99_and_p50_per_system_with_the_slo_and_s() {
        let ladders: Vec<Ladder> = System::ALL
            .into_iter()
            .zip([60.0, 90.0, 10.0])
            .map(|(system, p50)| {
                let runs = [250.0, 500.0, 750.0].map(|rate| (rate, [p50 * 2.0, p50]));
                (system, runs.to_vec())
            })
            .collect();
        let slo = Slo {
            percentile: Percentile::Quantile(0.99),
            limit: Duration::from_micros(100),
        };
        let svg = chart(1000.0, &slo, &ladders).svg();
        check::well_formed(&svg);
        assert!(svg.contains("(S = 1k/s)</text>"), "{svg}");
        for system in System::ALL {
            for (quantile, _) in CURVES {
                let label = format!("{} {quantile}", system.name());
                assert_eq!(check::polylines(&svg, &label), 1, "{label}: {svg}");
            }
            let legend = format!(r#"stroke="{}" stroke-width="2"/><text"#, colour(system));
            assert!(svg.contains(&legend), "{legend}");
            assert!(svg.contains(&format!(">{}</text>", system.name())));
        }
        assert_eq!(
            svg.matches(r#"stroke-dasharray="5 4""#).count(),
            3,
            "p50 dashed"
        );
        assert_eq!(svg.matches("<circle ").count(), 18);
        assert!(svg.contains("<title>nocturne p99 20.0 µs at 500/s</title>"));
        assert!(svg.contains(">SLO p99&lt;=100us</text>"), "{svg}");
        assert!(svg.contains(">S</text>") && svg.contains(">dashed: p50</text>"));
        assert!(svg.contains(">1k<") && svg.contains(">100us<"), "{svg}");
    }
}
