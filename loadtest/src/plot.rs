//! The SVG plot, written by hand: latency by percentile (log–log, one curve per table row)
//! and throughput over time (one line per phase).

use std::fmt::Write as _;
use std::path::Path;

use crate::report::Report;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
const PANEL_W: f64 = 520.0;
const PANEL_H: f64 = 340.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_T: f64 = 50.0;
const GAP: f64 = 110.0;

/// A plotting area: maps data coordinates (already transformed) to pixels.
struct Area {
    left: f64,
    top: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Area {
    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * PANEL_W
    }
    fn py(&self, y: f64) -> f64 {
        self.top + PANEL_H - (y - self.y.0) / (self.y.1 - self.y.0) * PANEL_H
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn frame(svg: &mut String, a: &Area, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##,
        a.left, a.top
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        a.left + PANEL_W / 2.0,
        a.top - 14.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        a.left + PANEL_W / 2.0,
        a.top + PANEL_H + 38.0,
        escape(xlabel)
    );
    let (lx, ly) = (a.left - 52.0, a.top + PANEL_H / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">{}</text>"#,
        escape(ylabel)
    );
}

fn xtick(svg: &mut String, a: &Area, x: f64, label: &str) {
    let px = a.px(x);
    let _ = writeln!(
        svg,
        r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
        a.top,
        a.top + PANEL_H,
        a.top + PANEL_H + 16.0
    );
}

fn ytick(svg: &mut String, a: &Area, y: f64, label: &str) {
    let py = a.py(y);
    let _ = writeln!(
        svg,
        r##"<line x1="{}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
        a.left,
        a.left + PANEL_W,
        a.left - 6.0,
        py + 4.0
    );
}

fn polyline(svg: &mut String, points: &[(f64, f64)], color: &str) {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
        pts.join(" ")
    );
}

fn legend(svg: &mut String, a: &Area, entries: &[(String, &str)]) {
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = a.top + 16.0 + 16.0 * i as f64;
        let x = a.left + 10.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            y - 4.0,
            x + 18.0,
            y - 4.0,
            x + 24.0,
            y,
            escape(label)
        );
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Renders the report as SVG text.
pub fn render(report: &Report) -> String {
    let rows: Vec<_> = report.rows.iter().filter(|r| r.requests > 0).collect();
    let two = !report.timelines.is_empty();
    let width = MARGIN_L + PANEL_W + 30.0 + if two { GAP + PANEL_W } else { 0.0 };
    let height = MARGIN_T + PANEL_H + 60.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r##"<text x="10" y="18" font-size="12" fill="#555">latch-load {} — {}</text>"##,
        escape(&report.scenario),
        escape(&report.timestamp)
    );

    // Panel 1: latency by percentile. x = log10(1 / (1 - q)), y = log10(µs).
    let max_count = rows.iter().map(|r| r.requests).max().unwrap_or(1).max(10);
    let x_max = (max_count as f64).log10().floor().clamp(1.0, 5.0);
    let lo = rows.iter().map(|r| r.hist.min()).min().unwrap_or(1).max(1) as f64;
    let hi = rows
        .iter()
        .map(|r| r.hist.max())
        .max()
        .unwrap_or(10)
        .max(10) as f64;
    let (y0, y1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let a = Area {
        left: MARGIN_L,
        top: MARGIN_T,
        x: (0.0, x_max),
        y: (y0, y1),
    };
    frame(
        &mut svg,
        &a,
        "Latency by percentile",
        "percentile",
        "latency (µs, log scale)",
    );
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (d, label) in labels.iter().enumerate().take(x_max as usize + 1) {
        xtick(&mut svg, &a, d as f64, label);
    }
    for e in y0 as i32..=y1 as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            let y = v.log10();
            if y >= y0 && y <= y1 {
                ytick(&mut svg, &a, y, &human(v));
            }
        }
    }
    let mut entries = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let steps = 200;
        let points: Vec<(f64, f64)> = (0..=steps)
            .map(|k| {
                let x = x_max * k as f64 / steps as f64;
                let q = 1.0 - 10f64.powf(-x);
                let v = r.hist.value_at_quantile(q).max(1) as f64;
                (a.px(x), a.py(v.log10().clamp(y0, y1)))
            })
            .collect();
        polyline(&mut svg, &points, color);
        entries.push((format!("{} ({})", r.label, r.target), color));
    }
    legend(&mut svg, &a, &entries);

    // Panel 2: throughput over time.
    if two {
        let t_max = report
            .timelines
            .iter()
            .map(|t| t.per_second.len() as f64 * t.bucket_s)
            .fold(0.0, f64::max)
            .max(0.1);
        let r_max = report
            .timelines
            .iter()
            .flat_map(|t| t.per_second.iter().copied())
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let b = Area {
            left: MARGIN_L + PANEL_W + GAP,
            top: MARGIN_T,
            x: (0.0, t_max),
            y: (0.0, r_max),
        };
        frame(
            &mut svg,
            &b,
            "Throughput over time",
            "seconds into the measured window",
            "successful req/s",
        );
        for k in 0..=5 {
            let t = t_max * k as f64 / 5.0;
            xtick(&mut svg, &b, t, &format!("{t:.1}"));
            let r = r_max * k as f64 / 5.0;
            ytick(&mut svg, &b, r, &human(r));
        }
        let mut entries = Vec::new();
        for (i, t) in report.timelines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = t
                .per_second
                .iter()
                .enumerate()
                .map(|(k, v)| (b.px((k as f64 + 0.5) * t.bucket_s), b.py(*v)))
                .collect();
            polyline(&mut svg, &points, color);
            entries.push((t.label.clone(), color));
        }
        legend(&mut svg, &b, &entries);
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn write(report: &Report, path: &Path) -> Result<(), String> {
    std::fs::write(path, render(report)).map_err(|e| format!("{}: {e}", path.display()))
}
