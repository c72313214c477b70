//! Line charts as inline SVG.

use super::escape;
use std::fmt::Write as _;

/// One line: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Its colour's index; `None`: its position in the chart. Charts that compare the same
    /// runs give each run one colour, whichever of them a chart holds.
    pub color: Option<usize>,
}

impl Series {
    /// A series coloured by its position in the chart.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points, color: None }
    }
}

/// Distinguishable line colours (Tableau 10).
const COLORS: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

/// The line colour of index `i` (they repeat after ten).
pub fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// "Nice" tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / count as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step =
        [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= count as f64).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..).map(|i| first + i as f64 * step).take_while(|v| *v <= hi + step * 1e-9).collect()
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// An SVG line chart, `width`×`height` pixels, with axes, ticks, a title and a legend.
/// Series without points are skipped; an empty chart says so.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], width: u32, height: u32) -> String {
    let (w, h) = (width as f64, height as f64);
    let (left, right, top, bottom) = (58.0, 12.0, 28.0, 40.0 + 16.0 * series.len().div_ceil(3) as f64);
    let points: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{}" y="17" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    if points.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text></svg>"##,
            w / 2.0,
            h / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = y0.abs().max(1.0) * 0.05;
        y0 -= pad;
        y1 += pad;
    }
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| top + plot_h - (y - y0) / (y1 - y0) * plot_h;
    for t in ticks(y0, y1, 5) {
        let y = sy(t);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 4.0,
            y + 4.0,
            label(t)
        );
    }
    for t in ticks(x0, x1, 6) {
        let x = sx(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#f0f0f0"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 14.0,
            label(t)
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        left + plot_w / 2.0,
        top + plot_h + 28.0,
        escape(x_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = color(s.color.unwrap_or(i));
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if pts.len() == 1 {
            let _ = write!(svg, r#"<circle cx="{}" r="3" fill="{color}"/>"#, pts[0].replace(',', r#"" cy=""#));
        } else if !pts.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let (lx, ly) = (left + (i % 3) as f64 * plot_w / 3.0, top + plot_h + 44.0 + 16.0 * (i / 3) as f64);
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="14" height="3" fill="{color}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        // Span 0.56: a step of 0.1 would give 6 ticks, so 0.2.
        let t = ticks(0.13, 0.69, 5);
        assert_eq!(t.len(), 3);
        for (a, b) in t.iter().zip([0.2, 0.4, 0.6]) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        assert_eq!(label(0.6000000000000001), "0.6");
        assert_eq!(label(2.5e-4), "2.5e-4");
        assert_eq!(label(0.0025), "0.0025");
        assert_eq!(label(1e-6), "1.0e-6");
    }

    #[test]
    fn chart_draws_lines_and_legend() {
        let s = [Series::new("loss <main>", vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)])];
        let svg = line_chart("Losses", "iteration", &s, 400, 240);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("loss &lt;main&gt;"));
        let empty = line_chart("Nothing", "iteration", &[], 400, 240);
        assert!(empty.contains("no data"));
        // A run's colour is its own, not its position's: here the third colour, first line.
        let only = [Series { name: "AdvEnt".into(), points: vec![(0.0, 1.0), (1.0, 2.0)], color: Some(2) }];
        let svg = line_chart("Adversarial loss", "iteration", &only, 400, 240);
        assert!(svg.contains(r##"stroke="#e15759""##) && !svg.contains("#4e79a7"), "{svg}");
    }
}
