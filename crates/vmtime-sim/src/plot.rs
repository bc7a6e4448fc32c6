//! Small, deterministic SVG charts: lines, a shaded band, vertical event markers, linear or
//! log axes. Same input, same bytes.

use crate::scenario::Outcome;
use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 360.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 30.0;
const B: f64 = 45.0;

/// A line series.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    log_y: bool,
    series: Vec<Series<'a>>,
    /// A band from the bottom of the plot up to these points.
    band: Option<Series<'a>>,
    marks: Vec<(f64, String)>,
}

fn tr(v: f64, log: bool) -> f64 {
    if log {
        v.max(0.5).log10()
    } else {
        v
    }
}

impl Chart<'_> {
    fn render(&self) -> String {
        let all = self
            .series
            .iter()
            .chain(self.band.iter())
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            let (x, y) = (tr(x, self.log_x), tr(y, self.log_y));
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.log_y {
            y0 = y0.floor();
            y1 = y1.ceil().max(y0 + 1.0);
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-9);
            y0 -= pad;
            y1 += pad;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let px = |x: f64| L + (tr(x, self.log_x) - x0) / (x1 - x0) * (W - L - R);
        let py = |y: f64| T + (1.0 - (tr(y, self.log_y) - y0) / (y1 - y0)) * (H - T - B);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="{W}" height="{H}" fill="white"/><text x="{}" y="18" font-size="14" text-anchor="middle">{}</text>"#,
            W / 2.0,
            esc(self.title)
        );
        // Grid and ticks.
        let ticks = |lo: f64, hi: f64, log: bool| -> Vec<f64> {
            if log {
                (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
            } else {
                let step = nice((hi - lo) / 6.0);
                let mut v = Vec::new();
                let mut t = (lo / step).ceil() * step;
                while t <= hi + 1e-9 {
                    v.push(t);
                    t += step;
                }
                v
            }
        };
        for yt in ticks(y0, y1, self.log_y) {
            let y = py(yt);
            let _ = writeln!(
                s,
                r##"<line x1="{L}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - R,
                L - 5.0,
                y + 4.0,
                fmt_num(yt)
            );
        }
        for xt in ticks(x0, x1, self.log_x) {
            let x = px(xt);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{T}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                H - B,
                H - B + 16.0,
                fmt_num(xt)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 8.0,
            esc(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0,
            esc(self.y_label)
        );
        if let Some(b) = &self.band {
            let pts: Vec<String> = b
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y).max(T)))
                .collect();
            if let (Some(first), Some(last)) =
                (b.points.iter().find(|p| p.1.is_finite()), b.points.iter().rev().find(|p| p.1.is_finite()))
            {
                let _ = writeln!(
                    s,
                    r#"<polygon fill="{}" fill-opacity="0.18" stroke="none" points="{:.1},{:.1} {} {:.1},{:.1}"/>"#,
                    b.color,
                    px(first.0),
                    H - B,
                    pts.join(" "),
                    px(last.0),
                    H - B
                );
            }
        }
        for se in self.series.iter().chain(self.band.iter()) {
            let pts: Vec<String> = se
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y).clamp(T, H - B)))
                .collect();
            if !pts.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.3" points="{}"/>"#,
                    se.color,
                    pts.join(" ")
                );
            }
        }
        for (i, (x, label)) in self.marks.iter().enumerate() {
            let xx = px(*x);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{T}" y2="{:.1}" stroke="#b00" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#b00">{}</text>"##,
                H - B,
                xx + 3.0,
                T + 12.0 + 13.0 * (i % 3) as f64,
                esc(label)
            );
        }
        for (i, se) in self.series.iter().chain(self.band.iter()).enumerate() {
            let y = T + 10.0 + 15.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                W - R - 250.0,
                W - R - 230.0,
                se.color,
                W - R - 225.0,
                y + 4.0,
                esc(se.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn nice(x: f64) -> f64 {
    let e = 10f64.powf(x.abs().max(1e-12).log10().floor());
    let m = x / e;
    e * if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    let v = if v.abs() < 1e-9 { 0.0 } else { v };
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.0}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The three plots of a run: (file name, SVG).
pub fn plots(o: &Outcome) -> Vec<(&'static str, String)> {
    let rows = &o.rows;
    let abs = |f: fn(&crate::chain::Row) -> f64| rows.iter().map(|r| (r.t_s, f(r).abs())).collect::<Vec<_>>();
    let marks: Vec<(f64, String)> = o.events.iter().map(|(t, e)| (*t, e.clone())).collect();
    let offset = Chart {
        title: &format!("{}: offsets and the guest page's bound (log scale)", o.summary.scenario),
        x_label: "time, s",
        y_label: "|error|, ns",
        log_x: false,
        log_y: true,
        series: vec![
            Series {
                name: "|guest − host| (vmtime's part)",
                color: "#1f77b4",
                points: abs(|r| r.guest_ns - r.host_ns),
            },
            Series { name: "|guest − truth|", color: "#2ca02c", points: abs(|r| r.guest_ns) },
            Series { name: "|host − truth| (host NTP)", color: "#ff7f0e", points: abs(|r| r.host_ns) },
        ],
        band: Some(Series {
            name: "guest page maxerror (shaded)",
            color: "#9467bd",
            points: abs(|r| r.page_maxerror_ns),
        }),
        marks: marks.clone(),
    }
    .render();
    let freq = Chart {
        title: &format!("{}: kernel frequencies", o.summary.scenario),
        x_label: "time, s",
        y_label: "ppm",
        log_x: false,
        log_y: false,
        series: vec![
            Series {
                name: "host kernel",
                color: "#ff7f0e",
                points: rows.iter().map(|r| (r.t_s, r.host_freq_ppm)).collect(),
            },
            Series {
                name: "guest kernel",
                color: "#1f77b4",
                points: rows.iter().map(|r| (r.t_s, r.guest_freq_ppm)).collect(),
            },
        ],
        band: None,
        marks,
    }
    .render();
    let conv = o.summary.convergence_s.unwrap_or(f64::INFINITY);
    let cdf = |f: fn(&crate::chain::Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.t_s >= conv).map(|r| f(r).abs().max(0.1)).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        v.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / n)).collect::<Vec<_>>()
    };
    let cdf_chart = Chart {
        title: &format!("{}: CDF of |offset| after convergence", o.summary.scenario),
        x_label: "|offset|, ns (log)",
        y_label: "fraction",
        log_x: true,
        log_y: false,
        series: vec![
            Series { name: "|guest − host|", color: "#1f77b4", points: cdf(|r| r.guest_ns - r.host_ns) },
            Series { name: "|guest − truth|", color: "#2ca02c", points: cdf(|r| r.guest_ns) },
        ],
        band: None,
        marks: vec![],
    }
    .render();
    vec![("offset.svg", offset), ("frequency.svg", freq), ("cdf.svg", cdf_chart)]
}
