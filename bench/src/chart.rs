//! A small line chart written by hand as a self-contained SVG: the shared
//! drawing of `bench load --plot` ([`crate::load::plot`]) and
//! `bench compare` ([`crate::compare::plot`]).
//!
//! Hand-written because those plots need little (lines, circles and
//! `<text>` in a generic font family) and should cost nothing to make:
//! nothing on the machine that writes them, or builds nocturne, needs fonts
//! or a plotting library, and any browser renders the file.
//!
//! What it draws:
//!
//! * a plot area with a linear x axis from 0 (round ticks, about eight) and
//!   a log-10 y axis in whole decades, both sized to what is drawn, with a
//!   light grid, tick labels and axis titles;
//! * series: a polyline (solid or dashed) with a circle per point, each
//!   circle carrying a tooltip;
//! * reference lines: dashed horizontal lines (objectives), labelled to the
//!   right of the plot area;
//! * markers: vertical lines at an x value, labelled at the top;
//! * a legend to the right (a coloured line and a label per entry) and
//!   grey notes under it.
//!
//! Every piece of text is escaped; callers pass plain strings.

use std::fmt::Write as _;

/// Space left of the plot area (tick labels, the y axis title).
const LEFT: f64 = 80.0;
/// Space above the plot area (the title).
const TOP: f64 = 50.0;
/// Space below the plot area (tick labels, the x axis title).
const BOTTOM: f64 = 60.0;
/// Vertical distance between legend entries.
const LEGEND_STEP: f64 = 22.0;
/// About how many steps the x axis is cut into.
const X_TICKS: f64 = 8.0;
const GRID_COLOUR: &str = "#e0e0e0";
const REFERENCE_COLOUR: &str = "#555";

/// An axis: its title and how its tick values read.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Written along the axis.
    pub title: String,
    /// A tick value as text.
    pub tick_label: fn(f64) -> String,
}

impl Axis {
    /// An axis titled `title` whose ticks read `tick_label(value)`.
    pub fn new(title: impl Into<String>, tick_label: fn(f64) -> String) -> Axis {
        Axis {
            title: title.into(),
            tick_label,
        }
    }
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// x, in the x axis's unit (0 or more).
    pub x: f64,
    /// y, in the y axis's unit (more than 0: the axis is logarithmic).
    pub y: f64,
    /// The tooltip of the point's circle.
    pub tip: String,
}

#[derive(Debug, Clone)]
struct Series {
    label: String,
    colour: &'static str,
    dashed: bool,
    points: Vec<Point>,
}

#[derive(Debug, Clone)]
struct Marker {
    x: f64,
    label: String,
    colour: &'static str,
    dashed: bool,
}

/// A chart being put together; [`Chart::svg`] writes it.
#[derive(Debug, Clone)]
pub struct Chart {
    title: String,
    width: f64,
    height: f64,
    legend_width: f64,
    x_axis: Axis,
    y_axis: Axis,
    series: Vec<Series>,
    references: Vec<(f64, String)>,
    markers: Vec<Marker>,
    legend: Vec<(String, &'static str)>,
    notes: Vec<String>,
}

impl Chart {
    /// An empty chart of `width` × `height` pixels, `legend_width` of them
    /// right of the plot area for the legend and reference labels.
    pub fn new(
        title: impl Into<String>,
        (width, height): (f64, f64),
        legend_width: f64,
        x_axis: Axis,
        y_axis: Axis,
    ) -> Chart {
        Chart {
            title: title.into(),
            width,
            height,
            legend_width,
            x_axis,
            y_axis,
            series: Vec::new(),
            references: Vec::new(),
            markers: Vec::new(),
            legend: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a series: a polyline through `points` in their order (dashed or
    /// solid) and a circle per point. `label` names it in the file (not in
    /// the legend: see [`Chart::legend`]).
    pub fn series(
        &mut self,
        label: impl Into<String>,
        colour: &'static str,
        dashed: bool,
        points: Vec<Point>,
    ) -> &mut Chart {
        self.series.push(Series {
            label: label.into(),
            colour,
            dashed,
            points,
        });
        self
    }

    /// Adds a dashed horizontal line at `y`, `label` to the right of it.
    pub fn reference(&mut self, y: f64, label: impl Into<String>) -> &mut Chart {
        self.references.push((y, label.into()));
        self
    }

    /// Adds a vertical line at `x` (dotted or solid), `label` at its top.
    pub fn marker(
        &mut self,
        x: f64,
        label: impl Into<String>,
        colour: &'static str,
        dashed: bool,
    ) -> &mut Chart {
        self.markers.push(Marker {
            x,
            label: label.into(),
            colour,
            dashed,
        });
        self
    }

    /// Adds a legend entry: a line in `colour` and `label`.
    pub fn legend(&mut self, label: impl Into<String>, colour: &'static str) -> &mut Chart {
        self.legend.push((label.into(), colour));
        self
    }

    /// Adds a grey line of text under the legend.
    pub fn note(&mut self, text: impl Into<String>) -> &mut Chart {
        self.notes.push(text.into());
        self
    }

    /// The plot area and scales fitted to everything drawn.
    fn frame(&self) -> Frame {
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x));
        let x_max = xs
            .chain(self.markers.iter().map(|m| m.x))
            .fold(1.0, f64::max)
            * 1.05;
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.y));
        let (y_lo, y_hi) = decade_range(ys.chain(self.references.iter().map(|r| r.0)));
        Frame {
            x_max,
            y_lo,
            y_hi,
            w: self.width - LEFT - self.legend_width,
            h: self.height - TOP - BOTTOM,
        }
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let f = self.frame();
        let (right, bottom) = (LEFT + f.w, TOP + f.h);
        let (width, height) = (self.width, self.height);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="25" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + f.w / 2.0,
            escape(&self.title)
        );
        for x in linear_ticks(f.x_max, X_TICKS) {
            let px = f.sx(x);
            let _ = writeln!(
                svg,
                r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{bottom:.1}" stroke="{GRID_COLOUR}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bottom + 18.0,
                escape(&(self.x_axis.tick_label)(x))
            );
        }
        for y in decade_ticks(f.y_lo, f.y_hi) {
            let py = f.sy(y);
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="{GRID_COLOUR}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                py + 4.0,
                escape(&(self.y_axis.tick_label)(y))
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
            f.w, f.h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + f.w / 2.0,
            height - 15.0,
            escape(&self.x_axis.title)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + f.h / 2.0,
            escape(&self.y_axis.title)
        );
        for (y, label) in &self.references {
            let py = f.sy(*y);
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="{REFERENCE_COLOUR}" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="{REFERENCE_COLOUR}">{}</text>"#,
                right + 6.0,
                py + 4.0,
                escape(label)
            );
        }
        for m in &self.markers {
            let px = f.sx(m.x);
            let dash = if m.dashed {
                r#" stroke-dasharray="2 3""#
            } else {
                ""
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{bottom:.1}" stroke="{}" stroke-width="1.5"{dash}/><text x="{:.1}" y="{:.1}" fill="{}">{}</text>"#,
                m.colour,
                px + 4.0,
                TOP + 14.0,
                m.colour,
                escape(&m.label)
            );
        }
        for s in &self.series {
            s.write(&mut svg, &f);
        }
        let lx = right + 12.0;
        let mut ly = TOP + 20.0;
        for (label, colour) in &self.legend {
            let _ = writeln!(
                svg,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                escape(label)
            );
            ly += LEGEND_STEP;
        }
        ly += 10.0;
        for note in &self.notes {
            let _ = writeln!(
                svg,
                r#"<text x="{lx:.1}" y="{ly:.1}" fill="{REFERENCE_COLOUR}">{}</text>"#,
                escape(note)
            );
            ly += 16.0;
        }
        svg.push_str("</svg>\n");
        svg
    }
}

impl Series {
    /// The polyline, then a circle with a tooltip per point.
    fn write(&self, svg: &mut String, f: &Frame) {
        let colour = self.colour;
        let coords: Vec<String> = self
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", f.sx(p.x), f.sy(p.y)))
            .collect();
        let dash = if self.dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}><title>{}</title></polyline>"#,
            coords.join(" "),
            escape(&self.label)
        );
        for p in &self.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{}</title></circle>"#,
                f.sx(p.x),
                f.sy(p.y),
                escape(&p.tip)
            );
        }
    }
}

/// The plot area in pixels and the ranges it shows.
struct Frame {
    x_max: f64,
    y_lo: f64,
    y_hi: f64,
    w: f64,
    h: f64,
}

impl Frame {
    /// x in pixels: 0 at the left edge, `x_max` at the right.
    fn sx(&self, x: f64) -> f64 {
        LEFT + x / self.x_max * self.w
    }

    /// y in pixels, logarithmic; values outside the range (0 or less
    /// included) stay on the edge.
    fn sy(&self, y: f64) -> f64 {
        let f = (y.log10() - self.y_lo.log10()) / (self.y_hi.log10() - self.y_lo.log10());
        let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
        TOP + self.h - f * self.h
    }
}

/// Escapes text for an SVG text node or attribute value.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step (1, 2 or 5 × a power of ten) that cuts `0..max` into
/// about `parts` pieces.
pub fn nice_step(max: f64, parts: f64) -> f64 {
    let raw = (max / parts).max(f64::MIN_POSITIVE);
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

/// The ticks of a linear axis over `0..=max`: multiples of
/// [`nice_step`]`(max, parts)`.
pub fn linear_ticks(max: f64, parts: f64) -> Vec<f64> {
    let step = nice_step(max, parts);
    (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|x| *x <= max + step * 1e-9)
        .collect()
}

/// The whole decades around the positive, finite `values`: from the power
/// of ten at or below the least to the one at or above the greatest, one
/// decade at least; 1 to 1000 when there are none.
pub fn decade_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi == 0.0 {
        return (1.0, 1000.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// The powers of ten from `lo` to `hi` (both powers of ten).
pub fn decade_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (first, last) = (lo.log10().round() as i32, hi.log10().round() as i32);
    (first..=last).map(|e| 10f64.powi(e)).collect()
}

/// Checks for the plots' tests: the shape of an SVG this module wrote.
#[cfg(test)]
pub(crate) mod check {
    /// Panics unless `svg` is XML-ish: it starts with `<svg` and ends with
    /// `</svg>`, every tag is closed in order (or closes itself), attribute
    /// quotes pair up, and every `&` starts one of the entities [`escape`]
    /// writes.
    ///
    /// [`escape`]: super::escape
    pub fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            entities(&rest[..start]);
            let len = rest[start..].find('>').expect("a tag is never closed");
            let tag = &rest[start + 1..start + len];
            assert_eq!(tag.matches('"').count() % 2, 0, "quotes in <{tag}>");
            assert!(!tag.contains('<'), "a `<` inside <{tag}>");
            entities(tag);
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong tag");
                if open.is_empty() {
                    let after = &rest[start + len + 1..];
                    assert!(after.trim().is_empty(), "after the root: {after}");
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("a tag without a name");
                assert!(
                    !open.is_empty() || name == "svg",
                    "<{name}> outside the root"
                );
                open.push(name);
            }
            rest = &rest[start + len + 1..];
        }
        entities(rest);
        assert!(open.is_empty(), "never closed: {open:?}");
    }

    /// Panics on a `&` that starts no entity [`super::escape`] writes.
    fn entities(text: &str) {
        for (i, _) in text.match_indices('&') {
            let after = &text[i + 1..];
            assert!(
                ["amp;", "lt;", "gt;", "quot;"]
                    .iter()
                    .any(|e| after.starts_with(e)),
                "a bare `&` in {text}"
            );
        }
    }

    /// How many polylines `svg` has whose tooltip is exactly `label`.
    pub fn polylines(svg: &str, label: &str) -> usize {
        let title = format!("><title>{}</title></polyline>", super::escape(label));
        svg.lines()
            .filter(|l| l.starts_with("<polyline ") && l.ends_with(&title))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        let mut chart = Chart::new(
            "a <title> & \"quotes\"",
            (800.0, 500.0),
            150.0,
            Axis::new("x", |x| format!("{x}")),
            Axis::new("y", |y| format!("{y}y")),
        );
        let points = |ys: [f64; 3]| {
            ys.iter()
                .enumerate()
                .map(|(i, &y)| Point {
                    x: 100.0 * (i + 1) as f64,
                    y,
                    tip: format!("tip {i} <{y}>"),
                })
                .collect()
        };
        chart
            .series("low", "#111111", false, points([3.0, 4.0, 5.0]))
            .series(
                "high & mighty",
                "#222222",
                true,
                points([30.0, 40.0, 250.0]),
            )
            .reference(20.0, "limit<=20")
            .marker(200.0, "here", "#333333", true)
            .legend("low", "#111111")
            .legend("high & mighty", "#222222")
            .note("a note");
        chart
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(180_000.0, 8.0), 50_000.0);
        assert_eq!(nice_step(7.0, 8.0), 1.0);
        assert_eq!(nice_step(1.5, 8.0), 0.2);
        assert_eq!(linear_ticks(10.0, 5.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(linear_ticks(315.0, 8.0).last(), Some(&300.0));
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(
            escape("p99<=1ms & \"x\""),
            "p99&lt;=1ms &amp; &quot;x&quot;"
        );
        assert_eq!(escape("plain µs"), "plain µs");
    }

    #[test]
    fn log_ticks() {
        assert_eq!(decade_range([3.0, 250.0]), (1.0, 1000.0));
        assert_eq!(decade_range([100.0]), (100.0, 1000.0));
        assert_eq!(decade_range([0.0, f64::NAN, 50.0]), (10.0, 100.0));
        assert_eq!(decade_range(std::iter::empty()), (1.0, 1000.0));
        assert_eq!(decade_ticks(1.0, 1000.0), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(decade_ticks(0.01, 0.1), [0.01, 0.1]);
    }

    #[test]
    fn scales_fit_what_is_drawn() {
        let f = chart().frame();
        assert_eq!((f.y_lo, f.y_hi), (1.0, 1000.0), "3 to 250, and 20");
        assert!((f.x_max - 315.0).abs() < 1e-9, "300 × 1.05");
        assert_eq!((f.w, f.h), (800.0 - 80.0 - 150.0, 500.0 - 50.0 - 60.0));
        assert_eq!(f.sx(0.0), LEFT);
        assert_eq!(f.sy(1.0), TOP + f.h, "the lowest decade at the bottom");
        assert_eq!(f.sy(1000.0), TOP);
        assert!((f.sy(10.0) - (TOP + f.h * 2.0 / 3.0)).abs() < 1e-9);
        assert_eq!(f.sy(0.0), TOP + f.h, "0 stays on the bottom edge");
        assert_eq!(f.sy(1e9), TOP, "and too much on the top");
    }

    #[test]
    fn svg_draws_everything_escaped() {
        let svg = chart().svg();
        check::well_formed(&svg);
        assert!(svg.contains(">a &lt;title&gt; &amp; &quot;quotes&quot;</text>"));
        assert_eq!(check::polylines(&svg, "low"), 1);
        assert_eq!(check::polylines(&svg, "high & mighty"), 1);
        assert_eq!(svg.matches("<circle ").count(), 6);
        assert_eq!(svg.matches(r#"stroke-dasharray="5 4""#).count(), 1);
        assert!(svg.contains("<title>tip 2 &lt;250&gt;</title>"));
        assert!(svg.contains(r#"stroke-dasharray="6 4""#) && svg.contains(">limit&lt;=20</text>"));
        assert!(svg.contains(r#"stroke-dasharray="2 3""#) && svg.contains(">here</text>"));
        assert!(svg.contains(">high &amp; mighty</text>") && svg.contains(">a note</text>"));
        for tick in ["1y", "10y", "100y", "1000y", ">0<", ">300<"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
        assert!(!svg.contains("10000y"));
    }

    #[test]
    fn an_empty_chart_is_still_a_chart() {
        let mut chart = chart();
        chart.series.clear();
        chart.references.clear();
        chart.markers.clear();
        let svg = chart.svg();
        check::well_formed(&svg);
        assert!(svg.contains(">1y<") && svg.contains(">1000y<"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    #[should_panic(expected = "closes the wrong tag")]
    fn the_check_finds_unbalanced_tags() {
        check::well_formed("<svg a=\"b\"><g><text></g></text></svg>\n");
    }

    #[test]
    #[should_panic(expected = "bare `&`")]
    fn the_check_finds_bare_ampersands() {
        check::well_formed("<svg a=\"b\"><text>a & b</text></svg>\n");
    }
}
