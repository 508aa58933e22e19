//! A small SVG line chart: round-numbered axes with gridlines, lines with optional shaded
//! bands, a legend. Non-finite values (and values <= 0 on a log axis) are gaps, never
//! errors, so a chart can always be drawn from whatever a run logged.

use std::fmt::Write;

/// Distinguishable on white and for the common forms of colour blindness (Okabe–Ito).
pub const PALETTE: [&str; 6] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
/// Room for the title and, under it, the legend's row.
const TOP: f64 = 66.0;
const BOTTOM: f64 = 52.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
/// Series with at most this many points also get a dot per point.
const MARKER_MAX: usize = 40;

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Shaded (x, lo, hi), e.g. a spread around the line.
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Any SVG colour, e.g. one of [`PALETTE`].
    pub color: String,
    /// Join the points with a line; false draws only a dot per point (a scatter).
    pub line: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: impl Into<String>) -> Series {
        Series { name: name.into(), points, band: None, color: color.into(), line: true }
    }
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub log_y: bool,
}

/// A round tick step: `mantissa` (1, 2 or 5) times 10^`exp`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    mantissa: i64,
    exp: i32,
}

impl Step {
    /// The smallest round step at least `raw` (> 0, finite).
    fn at_least(raw: f64) -> Step {
        let mut exp = raw.log10().floor() as i32;
        // log10 may land one off near powers of ten; settle it exactly.
        if pow10(exp) > raw {
            exp -= 1;
        }
        let f = raw / pow10(exp);
        match [1, 2, 5].into_iter().find(|&m| m as f64 >= f * (1.0 - 1e-12)) {
            Some(mantissa) => Step { mantissa, exp },
            None => Step { mantissa: 1, exp: exp + 1 },
        }
    }

    /// `k` steps, computed so that e.g. 3 * 0.2 comes out as the double nearest 0.6.
    fn times(self, k: i64) -> f64 {
        scaled(k * self.mantissa, self.exp)
    }

    fn decimals(self) -> usize {
        (-self.exp).max(0) as usize
    }
}

fn pow10(exp: i32) -> f64 {
    10f64.powi(exp)
}

/// `n` × 10^`exp`, correctly rounded: dividing by an exact power of ten beats multiplying
/// by an inexact one.
fn scaled(n: i64, exp: i32) -> f64 {
    if exp >= 0 {
        n as f64 * pow10(exp)
    } else {
        n as f64 / pow10(-exp)
    }
}

/// Round tick values spanning `lo..=hi` (finite, lo < hi): multiples of 1, 2 or 5 × 10^k,
/// about five intervals (three to seven ticks), the first at or below `lo` and the last at
/// or above `hi`.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    nice_linear(lo, hi).0
}

fn nice_linear(lo: f64, hi: f64) -> (Vec<f64>, Step) {
    let step = Step::at_least((hi - lo) / 5.0);
    let d = step.times(1);
    let first = (lo / d).floor() as i64;
    let last = (hi / d).ceil() as i64;
    ((first..=last).map(|k| step.times(k)).collect(), step)
}

/// Ticks for a log axis over `lo..=hi` (0 < lo < hi): the 1-2-5 values from the largest
/// one at or below `lo` to the smallest at or above `hi`, or over many decades only powers
/// of ten (every few decades over very many). Each comes with its 10^k for labelling.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, i32)> {
    let (k_lo, k_hi) = (lo.log10().floor() as i32 - 1, hi.log10().ceil() as i32 + 1);
    let all = |mantissas: &[i64]| -> Vec<(f64, i32)> {
        let cands: Vec<(f64, i32)> =
            (k_lo..=k_hi).flat_map(|k| mantissas.iter().map(move |&m| (scaled(m, k), k))).collect();
        let start = cands.iter().rposition(|c| c.0 <= lo).unwrap_or(0);
        let end = cands.iter().position(|c| c.0 >= hi).unwrap_or(cands.len() - 1);
        cands[start..=end].to_vec()
    };
    let ticks = all(&[1, 2, 5]);
    if ticks.len() <= 8 {
        return ticks;
    }
    let decades = all(&[1]);
    let every = decades.len().div_ceil(7);
    // Keep both ends, as they bound the axis.
    let last = decades.len() - 1;
    decades.into_iter().enumerate().filter(|(i, _)| i % every == 0 || *i == last).map(|(_, t)| t).collect()
}

/// A tick label with `decimals` places, switching to exponent form where that would be
/// long.
fn label(v: f64, decimals: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e6 || decimals > 5 {
        return format!("{v:e}");
    }
    format!("{v:.decimals$}")
}

/// The finite (min, max) of some values, None when there are none.
type Extent = Option<(f64, f64)>;

/// An axis: its domain and labelled ticks.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// An axis covering `extent` (the finite min and max of the data, if any).
    fn new(extent: Extent, log: bool) -> Axis {
        let (mut lo, mut hi) = extent.unwrap_or(if log { (1.0, 10.0) } else { (0.0, 1.0) });
        if lo == hi {
            // One value: centre it in a small span rather than divide by zero.
            if log {
                (lo, hi) = (lo / 2.0, hi * 2.0);
            } else {
                let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
                (lo, hi) = (lo - pad, hi + pad);
            }
        }
        if log {
            let ticks = log_ticks(lo, hi);
            let to_label = |&(v, k): &(f64, i32)| (v, label(v, (-k).max(0) as usize));
            let (first, last) = (ticks[0].0, ticks[ticks.len() - 1].0);
            Axis { lo: first, hi: last, log, ticks: ticks.iter().map(to_label).collect() }
        } else {
            let (ticks, step) = nice_linear(lo, hi);
            let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
            let ticks = ticks.into_iter().map(|v| (v, label(v, step.decimals()))).collect();
            Axis { lo: first, hi: last, log, ticks }
        }
    }

    /// Where `v` falls, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

/// The maximal runs of consecutive items that pass `keep`.
fn runs<T: Copy>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<Vec<T>> {
    let (mut out, mut run) = (Vec::new(), Vec::new());
    for item in items {
        if keep(item) {
            run.push(*item);
        } else if !run.is_empty() {
            out.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

/// Escapes text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

impl Chart {
    /// Whether (x, y) can be drawn: finite, and positive on a log y axis.
    fn drawable(&self, x: f64, y: f64) -> bool {
        x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// The finite extents of x and y over all points and bands.
    fn extents(&self) -> (Extent, Extent) {
        let grow = |e: &mut Extent, v: f64| {
            *e = Some(e.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
        };
        let (mut xe, mut ye) = (None, None);
        for s in &self.series {
            for &(x, y) in &s.points {
                if self.drawable(x, y) {
                    grow(&mut xe, x);
                    grow(&mut ye, y);
                }
            }
            for &(x, lo, hi) in s.band.iter().flatten() {
                if self.drawable(x, lo) && self.drawable(x, hi) {
                    grow(&mut xe, x);
                    grow(&mut ye, lo);
                    grow(&mut ye, hi);
                }
            }
        }
        (xe, ye)
    }

    /// The chart as a standalone SVG document, 720 × 400.
    pub fn to_svg(&self) -> String {
        let (xe, ye) = self.extents();
        let (xa, ya) = (Axis::new(xe, false), Axis::new(ye, self.log_y));
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |x: f64| LEFT + xa.frac(x) * pw;
        let py = |y: f64| TOP + (1.0 - ya.frac(y)) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"{FONT}\" font-size=\"12\" fill=\"#333\">\n\
             <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\"/>\n"
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"600\">{}</text>",
            LEFT + pw / 2.0,
            esc(&self.title)
        );
        // Gridlines and tick labels.
        s.push_str("<g stroke=\"#e6e6e6\" stroke-width=\"1\">\n");
        for (v, _) in &xa.ticks {
            let x = px(*v);
            let _ = writeln!(s, "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>", TOP + ph);
        }
        for (v, _) in &ya.ticks {
            let y = py(*v);
            let _ = writeln!(s, "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>", LEFT + pw);
        }
        s.push_str("</g>\n<g fill=\"#555\">\n");
        for (v, text) in &xa.ticks {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                px(*v),
                TOP + ph + 18.0,
                esc(text)
            );
        }
        for (v, text) in &ya.ticks {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" dy=\"0.32em\" text-anchor=\"end\">{}</text>",
                LEFT - 8.0,
                py(*v),
                esc(text)
            );
        }
        s.push_str("</g>\n");
        let _ = writeln!(
            s,
            "<path d=\"M{LEFT} {TOP}V{:.1}H{:.1}\" fill=\"none\" stroke=\"#888\" stroke-width=\"1\"/>",
            TOP + ph,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
            LEFT + pw / 2.0,
            HEIGHT - 12.0,
            esc(&self.x_label)
        );
        let (lx, ly) = (18.0, TOP + ph / 2.0);
        let _ = writeln!(
            s,
            "<text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"middle\" font-size=\"13\" \
             transform=\"rotate(-90 {lx} {ly:.1})\">{}</text>",
            esc(&self.y_label)
        );
        if xe.is_none() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#999\">no data</text>",
                LEFT + pw / 2.0,
                TOP + ph / 2.0
            );
        }
        // Bands first, so every line is drawn over every band. A value that cannot be drawn
        // breaks a band or line rather than being bridged.
        for series in &self.series {
            let band = series.band.as_deref().unwrap_or_default();
            for run in runs(band, |&(x, lo, hi)| self.drawable(x, lo) && self.drawable(x, hi)) {
                if run.len() < 2 {
                    continue;
                }
                let upper = run.iter().map(|&(x, _, hi)| format!("{:.1},{:.1}", px(x), py(hi)));
                let lower = run.iter().rev().map(|&(x, lo, _)| format!("{:.1},{:.1}", px(x), py(lo)));
                let pts: Vec<String> = upper.chain(lower).collect();
                let _ = writeln!(
                    s,
                    "<polygon points=\"{}\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>",
                    pts.join(" "),
                    esc(&series.color)
                );
            }
        }
        for series in &self.series {
            let color = esc(&series.color);
            let runs: Vec<Vec<(f64, f64)>> = runs(&series.points, |&(x, y)| self.drawable(x, y))
                .into_iter()
                .map(|r| r.into_iter().map(|(x, y)| (px(x), py(y))).collect())
                .collect();
            let dots = series.points.len() <= MARKER_MAX;
            for run in &runs {
                if run.len() > 1 && series.line {
                    let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                    let _ = writeln!(
                        s,
                        "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" \
                         stroke-linejoin=\"round\" stroke-linecap=\"round\"/>",
                        pts.join(" ")
                    );
                }
                if dots || run.len() == 1 || !series.line {
                    for (x, y) in run {
                        let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
                    }
                }
            }
        }
        self.legend(&mut s, LEFT + pw);
        s.push_str("</svg>\n");
        s
    }

    /// The legend: one row between the title and the plot, so that it never hides data.
    fn legend(&self, s: &mut String, right: f64) {
        // No text metrics without a renderer: 7px per character is generous at 12px.
        let widths: Vec<f64> =
            self.series.iter().map(|x| x.name.chars().count() as f64 * 7.0 + 44.0).collect();
        let mut x = (right - widths.iter().sum::<f64>()).max(LEFT);
        let y = TOP - 18.0;
        for (series, w) in self.series.iter().zip(widths) {
            let color = esc(&series.color);
            let swatch = if series.line {
                format!(
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" \
                     stroke-width=\"3\" stroke-linecap=\"round\"/>",
                    x + 4.0,
                    x + 22.0
                )
            } else {
                // A square, so that circles are data points only.
                format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{color}\"/>",
                    x + 9.5,
                    y - 3.5
                )
            };
            let _ = writeln!(
                s,
                "{swatch}\n<text x=\"{:.1}\" y=\"{y:.1}\" dy=\"0.32em\">{}</text>",
                x + 30.0,
                esc(&series.name)
            );
            x += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order, and returns the element names opened.
    fn balanced(svg: &str) -> Vec<String> {
        let (mut stack, mut names) = (Vec::<String>::new(), Vec::new());
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unclosed '<'") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let name = tag.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
                if !tag.ends_with('/') {
                    stack.push(name.clone());
                }
                names.push(name);
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        names
    }

    fn chart(series: Vec<Series>, log_y: bool) -> Chart {
        Chart { title: "T".into(), x_label: "step".into(), y_label: "loss".into(), series, log_y }
    }

    fn is_round(t: f64, step: f64) -> bool {
        let k = t / step;
        (k - k.round()).abs() < 1e-9
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        for (lo, hi) in [
            (0.0, 1.0),
            (0.0, 999.0),
            (1.37, 4.21),
            (-3.2, 17.9),
            (0.0012, 0.0047),
            (1e6, 1.3e6),
            (-5.0, -4.9),
            (2.0, 2.05),
            (0.0, 3.0e-7),
        ] {
            let t = nice_ticks(lo, hi);
            assert!((3..=7).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(t[0] <= lo && *t.last().unwrap() >= hi, "{lo}..{hi}: {t:?}");
            let step = t[1] - t[0];
            let m = step / pow10(step.log10().floor() as i32);
            assert!([1.0, 2.0, 5.0, 10.0].iter().any(|r| (m - r).abs() < 1e-9), "{lo}..{hi}: step {step}");
            for w in t.windows(2) {
                assert!(((w[1] - w[0]) - step).abs() < step * 1e-9, "{t:?}");
            }
            assert!(t.iter().all(|&v| is_round(v, step)), "{lo}..{hi}: {t:?}");
        }
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(1.37, 4.21), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(nice_ticks(0.0, 999.0), [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
    }

    #[test]
    fn log_ticks_are_one_two_five_or_decades() {
        let vals = |lo, hi| log_ticks(lo, hi).into_iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(vals(1.5, 3.5), [1.0, 2.0, 5.0]);
        assert_eq!(vals(0.03, 0.9), [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        assert_eq!(vals(0.5, 2000.0), [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]);
        let wide = vals(1e-30, 1e30);
        assert!(wide.len() <= 9 && wide[0] <= 1e-30 && *wide.last().unwrap() >= 1e30, "{wide:?}");
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(0.6000000000000001, 1), "0.6");
        assert_eq!(label(-0.0, 2), "0");
        assert_eq!(label(1000.0, 0), "1000");
        assert_eq!(label(2e6, 0), "2e6");
        assert_eq!(label(3e-7, 7), "3e-7");
    }

    #[test]
    fn svg_is_well_formed_and_names_every_series() {
        let mut a = Series::new(
            "train <loss> & co",
            (0..50).map(|i| (i as f64, 3.0 / (1.0 + i as f64))).collect(),
            PALETTE[0],
        );
        a.band = Some((0..50).map(|i| (i as f64, 2.0 / (1.0 + i as f64), 4.0 / (1.0 + i as f64))).collect());
        let b = Series::new("val", vec![(10.0, 0.5), (20.0, 0.3)], PALETTE[1]);
        for log_y in [false, true] {
            let svg = chart(vec![a.clone(), b.clone()], log_y).to_svg();
            let names = balanced(&svg);
            assert_eq!(names[0], "svg");
            assert!(names.contains(&"polygon".to_string()) && names.contains(&"polyline".to_string()));
            assert!(svg.contains("train &lt;loss&gt; &amp; co") && svg.contains(">val<"), "{svg}");
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn bad_points_are_gaps_and_degenerate_data_draws() {
        let pts =
            vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0), (f64::INFINITY, 1.0), (5.0, -1.0)];
        let svg = chart(vec![Series::new("s", pts.clone(), "red")], false).to_svg();
        balanced(&svg);
        // (0, 1) stands alone, (2, 2)-(3, 3) is a line, (5, -1) alone again.
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // On a log axis -1 cannot be drawn either.
        let svg = chart(vec![Series::new("s", pts, "red")], true).to_svg();
        assert_eq!(svg.matches("<circle").count(), 3);
        for points in
            [vec![(3.0, 2.5)], vec![(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)], vec![(1.0, 7.0), (1.0, 7.0)], vec![]]
        {
            for log_y in [false, true] {
                let svg = chart(vec![Series::new("s", points.clone(), "red")], log_y).to_svg();
                balanced(&svg);
                assert!(!svg.contains("NaN") && !svg.contains("inf"), "{points:?}: {svg}");
            }
        }
        // A band with a hole is two shaded pieces.
        let mut banded = Series::new("b", vec![(0.0, 1.0), (4.0, 2.0)], "blue");
        banded.band = Some(vec![
            (0.0, 0.5, 1.5),
            (1.0, 0.5, 1.5),
            (2.0, f64::NAN, 1.0),
            (3.0, 1.0, 3.0),
            (4.0, 1.0, 3.0),
        ]);
        let svg = chart(vec![banded], false).to_svg();
        assert_eq!(svg.matches("<polygon").count(), 2);
        let empty = chart(vec![], false).to_svg();
        balanced(&empty);
        assert!(empty.contains("no data"));
    }
}
