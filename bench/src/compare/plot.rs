//! The comparison plot, a self-contained hand-written SVG (no fonts or
//! plotting library needed): latency from the intended send time (log
//! scale) against the offered rate, one colour per system, p99 solid and
//! p50 dashed, with the SLO and S marked.

use std::fmt::Write as _;

use super::driver::CompareOutcome;
use super::systems::System;
use crate::load::spec::format_rate;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn colour(system: System) -> &'static str {
    match system {
        System::RpcHyper => "#1f77b4",
        System::RpcGrpc => "#ff7f0e",
        System::Nocturne => "#2ca02c",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step that cuts `span` into about `parts` pieces.
fn nice_step(span: f64, parts: f64) -> f64 {
    let raw = (span / parts).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let m = raw / magnitude;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// One system's points: (rate, p50 µs, p99 µs).
type Series = (System, Vec<(f64, f64, f64)>);

/// Renders the plot of every system's ladder runs.
pub fn render_svg(outcome: &CompareOutcome) -> String {
    let slo_us = outcome.slo.limit.as_secs_f64() * 1e6;
    let series: Vec<Series> = outcome
        .systems
        .iter()
        .map(|s| {
            let points = s
                .runs
                .iter()
                .map(|r| {
                    let us = |q| (r.latency.quantile_ns(q) as f64 / 1e3).max(0.001);
                    (r.rate, us(0.5), us(0.99))
                })
                .collect();
            (s.system, points)
        })
        .collect();
    let x_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(outcome.saturation, f64::max)
        * 1.05;
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().flat_map(|p| [p.1, p.2]))
        .collect();
    ys.push(slo_us.max(0.001));
    let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let y_hi = ys.iter().copied().fold(0.0, f64::max);
    let y_lo = 10f64.powf(y_lo.log10().floor());
    let y_hi = 10f64.powf(y_hi.log10().ceil()).max(y_lo * 10.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| {
        let f = (y.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10());
        TOP + plot_h - f.clamp(0.0, 1.0) * plot_h
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="25" text-anchor="middle" font-size="15">foo→bar chain: latency vs. offered rate (S = {}/s)</text>"#,
        LEFT + plot_w / 2.0,
        format_rate(outcome.saturation)
    );
    let step = nice_step(x_max, 8.0);
    let mut x = 0.0;
    while x <= x_max {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            format_rate(x)
        );
        x += step;
    }
    let mut decade = y_lo;
    while decade <= y_hi * 1.000_001 {
        let py = sy(decade);
        let label = if decade >= 1e6 {
            format!("{} s", decade / 1e6)
        } else if decade >= 1000.0 {
            format!("{} ms", decade / 1000.0)
        } else {
            format!("{decade} µs")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0
        );
        decade *= 10.0;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered rate (requests/s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency from intended send (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    // SLO and S.
    let py = sy(slo_us.max(0.001));
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#555">SLO {}</text>"##,
        LEFT + plot_w,
        LEFT + plot_w + 6.0,
        py + 4.0,
        escape(&outcome.slo.to_string())
    );
    let px = sx(outcome.saturation);
    let _ = writeln!(
        svg,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" fill="#777">S</text>"##,
        TOP + plot_h,
        px + 4.0,
        TOP + 14.0
    );
    for (i, (system, points)) in series.iter().enumerate() {
        let c = colour(*system);
        for (label, dash, pick) in [
            ("p99", "", 2usize),
            ("p50", r#" stroke-dasharray="5 4""#, 1),
        ] {
            let coords: Vec<String> = points
                .iter()
                .map(|p| {
                    let y = if pick == 1 { p.1 } else { p.2 };
                    format!("{:.1},{:.1}", sx(p.0), sy(y))
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
                coords.join(" ")
            );
            for p in points {
                let y = if pick == 1 { p.1 } else { p.2 };
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{} {label} {y:.1} µs at {}/s</title></circle>"#,
                    sx(p.0),
                    sy(y),
                    system.name(),
                    format_rate(p.0)
                );
            }
        }
        let ly = TOP + 20.0 + i as f64 * 22.0;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            system.name()
        );
    }
    let ly = TOP + 20.0 + series.len() as f64 * 22.0 + 10.0;
    let lx = LEFT + plot_w + 12.0;
    let _ = writeln!(
        svg,
        r##"<text x="{lx:.1}" y="{ly:.1}" fill="#555">solid: p99</text><text x="{lx:.1}" y="{:.1}" fill="#555">dashed: p50</text>"##,
        ly + 16.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_escapes() {
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(180_000.0, 8.0), 50_000.0);
        assert_eq!(
            escape("p99<=1ms & \"x\""),
            "p99&lt;=1ms &amp; &quot;x&quot;"
        );
    }
}
