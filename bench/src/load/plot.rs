//! The latency-vs-throughput plot of a rate sweep, as a self-contained SVG
//! written by hand: polylines, circles and `<text>` in a generic font
//! family, so nothing on the machine that writes it (or builds it) needs
//! fonts or a plotting library; any browser renders it.
//!
//! x: achieved throughput (requests/s, linear from 0); y: latency from the
//! intended send time (µs, log scale, decades); one curve each for p50,
//! p99 and p99.9; a dashed line per latency objective; the best rate that
//! met them marked.

use std::fmt::Write as _;

use super::run::RateResult;
use super::spec::{format_duration, format_rate, Slo};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// The curves: label, quantile (1.0 = max), colour.
const SERIES: [(&str, f64, &str); 3] = [
    ("p50", 0.50, "#1f77b4"),
    ("p99", 0.99, "#ff7f0e"),
    ("p99.9", 0.999, "#d62728"),
];

/// Escapes text for an SVG text node or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step for about `target` ticks over `0..max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Renders the sweep's SVG. `best` is the rate (as asked for) that met the
/// objectives, if any.
pub fn render_svg(title: &str, results: &[RateResult], slos: &[Slo], best: Option<f64>) -> String {
    let points: Vec<(f64, [f64; 3], f64)> = results
        .iter()
        .map(|r| {
            let lat = SERIES.map(|(_, q, _)| (r.latency.quantile_ns(q) as f64 / 1e3).max(0.001));
            (r.achieved_per_s(), lat, r.rate)
        })
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let mut y_values: Vec<f64> = points.iter().flat_map(|p| p.1).collect();
    y_values.extend(slos.iter().map(|s| s.limit.as_secs_f64() * 1e6));
    let y_lo = y_values.iter().copied().fold(f64::INFINITY, f64::min);
    let y_hi = y_values.iter().copied().fold(0.0, f64::max);
    let (y_lo, y_hi) = if y_lo.is_finite() && y_hi > 0.0 {
        (
            10f64.powf(y_lo.max(0.001).log10().floor()),
            10f64.powf(y_hi.log10().ceil()),
        )
    } else {
        (1.0, 1000.0)
    };
    let y_hi = if y_hi <= y_lo { y_lo * 10.0 } else { y_hi };
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
        r#"<text x="{}" y="25" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    let step = nice_step(x_max, 8.0);
    let mut x = 0.0;
    while x <= x_max + step * 1e-9 {
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
        let label = format_duration(std::time::Duration::from_secs_f64(decade / 1e6));
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
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">achieved throughput (requests/s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency from intended send (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    // Objectives.
    for slo in slos {
        let py = sy(slo.limit.as_secs_f64() * 1e6);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#555">SLO {}</text>"##,
            LEFT + plot_w,
            LEFT + plot_w + 6.0,
            py + 4.0,
            escape(&slo.to_string())
        );
    }
    // Curves.
    for (i, (label, _, colour)) in SERIES.iter().enumerate() {
        let coords: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1[i])))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            coords.join(" ")
        );
        for p in &points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{label} {:.1} µs at {}/s offered, {}/s achieved</title></circle>"#,
                sx(p.0),
                sy(p.1[i]),
                p.1[i],
                format_rate(p.2),
                format_rate(p.0)
            );
        }
        let ly = TOP + 20.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    if let Some(best) = best {
        if let Some(p) = points.iter().find(|p| p.2 == best) {
            let px = sx(p.0);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#2ca02c" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" fill="#2ca02c">best {}/s</text>"##,
                TOP + plot_h,
                px + 4.0,
                TOP + 14.0,
                format_rate(best)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(180_000.0, 8.0), 50_000.0);
        assert_eq!(nice_step(7.0, 8.0), 1.0);
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
