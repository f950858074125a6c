//! Charts drawn as inline SVG on the server: no JavaScript and nothing fetched from elsewhere. Every string
//! that goes into the SVG is made here from numbers, so nothing from the data needs escaping.

use std::fmt::Write;

const W: f64 = 560.0;
const H: f64 = 200.0;
const PAD_L: f64 = 44.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 12.0;
const PAD_B: f64 = 30.0;

/// The smallest round number at or above `v`: the top of an axis. The steps are fine enough that a
/// budget of 512 draws to 600, not 1,000.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A tick or bin label: three significant digits at most, trailing zeros dropped (0.25, 0.0025, 12.5,
/// 600), thousands as "1.5k".
fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        return format!("{}k", fmt_num(v / 1000.0));
    }
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn frame(svg: &mut String, y_max: f64, title: &str) {
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">"#
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = H - PAD_B - (H - PAD_T - PAD_B) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - PAD_R,
            PAD_L - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
}

fn date_label(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:02}-{:02} {:02}:00", t.month() as u8, t.day(), t.hour())
}

/// Labels given so far, over time: a step line through the cumulative count at each hour that had labels.
/// `hourly` is (hour start in Unix ms, labels in that hour), oldest first.
pub fn cumulative_labels(hourly: &[(i64, i64)], budget: Option<i64>) -> String {
    let mut svg = String::new();
    let total: i64 = hourly.iter().map(|(_, n)| n).sum();
    let y_max = nice_max(total.max(budget.unwrap_or(0)).max(1) as f64);
    frame(&mut svg, y_max, "labels over time");
    let (Some(first), Some(last)) = (hourly.first(), hourly.last()) else {
        svg.push_str("</svg>");
        return svg;
    };
    let t0 = first.0;
    let t1 = (last.0 + 3_600_000).max(t0 + 3_600_000);
    let x = |t: i64| PAD_L + (W - PAD_L - PAD_R) * (t - t0) as f64 / (t1 - t0) as f64;
    let y = |v: i64| H - PAD_B - (H - PAD_T - PAD_B) * v as f64 / y_max;
    if let Some(b) = budget.filter(|b| *b > 0) {
        let _ = write!(
            svg,
            r#"<line class="budget" x1="{PAD_L}" x2="{}" y1="{:.1}" y2="{:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">budget</text>"#,
            W - PAD_R,
            y(b),
            y(b),
            W - PAD_R,
            y(b) - 4.0
        );
    }
    let mut path = format!("M{:.1},{:.1}", x(t0), y(0));
    let mut sum = 0;
    for (t, n) in hourly {
        sum += n;
        let _ = write!(path, " L{:.1},{:.1}", x(*t + 3_600_000), y(sum));
    }
    let _ = write!(svg, r#"<path class="line" d="{path}"/>"#);
    let _ = write!(
        svg,
        r#"<text class="tick" x="{PAD_L}" y="{}">{}</text><text class="tick" x="{}" y="{}" text-anchor="end">{}</text></svg>"#,
        H - 8.0,
        date_label(t0),
        W - PAD_R,
        H - 8.0,
        date_label(t1)
    );
    svg
}

/// A histogram of seconds per label in bins of a width chosen from the data (up to the 95th percentile;
/// slower answers go into the last bin, marked "+").
pub fn seconds_histogram(seconds: &[f64]) -> String {
    histogram(seconds, "seconds per label", "seconds")
}

/// A histogram of `values` ≥ 0 in 12 bins up to the 95th percentile, the rest in the last bin ("+").
pub fn histogram(values: &[f64], title: &str, unit: &str) -> String {
    let mut svg = String::new();
    if values.is_empty() {
        frame(&mut svg, 1.0, title);
        svg.push_str("</svg>");
        return svg;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let top = sorted[((sorted.len() - 1) as f64 * 0.95) as usize];
    let bins = 12usize;
    let width = nice_max(top.max(f64::EPSILON) / bins as f64);
    let mut counts = vec![0i64; bins];
    for s in &sorted {
        let i = ((s.max(0.0) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    // At least 4 so that the five grid lines fall on whole counts.
    let y_max = nice_max((*counts.iter().max().unwrap_or(&1)).max(4) as f64);
    frame(&mut svg, y_max, title);
    let bw = (W - PAD_L - PAD_R) / bins as f64;
    for (i, c) in counts.iter().enumerate() {
        let h = (H - PAD_T - PAD_B) * *c as f64 / y_max;
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>{}–{}{} {unit}: {c}</title></rect>"#,
            PAD_L + bw * i as f64 + 1.0,
            H - PAD_B - h,
            bw - 2.0,
            fmt_num(width * i as f64),
            fmt_num(width * (i + 1) as f64),
            if i == bins - 1 { "+" } else { "" },
        );
        if i % 2 == 0 {
            let _ = write!(
                svg,
                r#"<text class="tick" x="{:.1}" y="{}">{}</text>"#,
                PAD_L + bw * i as f64,
                H - 12.0,
                fmt_num(width * i as f64)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text class="tick" x="{}" y="{}" text-anchor="end">{unit}</text></svg>"#,
        W - PAD_R,
        H - 1.0
    );
    svg
}

/// A line through `points` (x, y), oldest first, with a dot at each; the y axis from 0 to `y_max` (or a
/// round number above the largest y). Negative ys are drawn at 0.
pub fn line_chart(points: &[(f64, f64)], y_max: Option<f64>, title: &str, x_unit: &str) -> String {
    line_chart_with(points, y_max, title, x_unit, None, &[])
}

/// A point of a win-rate chart: labels, win rate, and its 95% interval when known.
pub type WinPoint = (f64, f64, Option<(f64, f64)>);

/// Win rate against labels on a 0–1 axis, with the 0.5 line (no better than the reference) and each
/// point's 95% interval as a vertical bar.
pub fn win_rate_chart(points: &[WinPoint], title: &str) -> String {
    let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
    let bands: Vec<Option<(f64, f64)>> = points.iter().map(|p| p.2).collect();
    line_chart_with(&line, Some(1.0), title, "labels", Some(0.5), &bands)
}

/// `line_chart` with a dashed horizontal `guide` line and, per point, an interval bar (`bands[i]`).
fn line_chart_with(
    points: &[(f64, f64)],
    y_max: Option<f64>,
    title: &str,
    x_unit: &str,
    guide: Option<f64>,
    bands: &[Option<(f64, f64)>],
) -> String {
    let mut svg = String::new();
    let top = y_max.unwrap_or_else(|| nice_max(points.iter().map(|p| p.1).fold(0.0, f64::max)));
    frame(&mut svg, top, title);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        svg.push_str("</svg>");
        return svg;
    };
    let (x0, x1) = (first.0.min(0.0), last.0.max(first.0 + 1.0));
    let x = |v: f64| PAD_L + (W - PAD_L - PAD_R) * (v - x0) / (x1 - x0);
    let y = |v: f64| H - PAD_B - (H - PAD_T - PAD_B) * v.clamp(0.0, top) / top;
    if let Some(g) = guide {
        let _ = write!(
            svg,
            r#"<line class="guide" x1="{PAD_L}" x2="{}" y1="{:.1}" y2="{:.1}"><title>{g}</title></line>"#,
            W - PAD_R,
            y(g),
            y(g)
        );
    }
    for ((px, _), band) in points.iter().zip(bands) {
        if let Some((low, high)) = band {
            let _ = write!(
                svg,
                r#"<line class="interval" x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}"><title>95% interval {low:.2}–{high:.2}</title></line>"#,
                x(*px),
                x(*px),
                y(*low),
                y(*high)
            );
        }
    }
    let mut path = String::new();
    for (i, (px, py)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x(*px),
            y(*py)
        );
        let _ = write!(
            svg,
            r#"<circle class="dot" cx="{:.1}" cy="{:.1}" r="3"><title>{} {x_unit}: {:.3}</title></circle>"#,
            x(*px),
            y(*py),
            fmt_num(*px),
            py
        );
    }
    let _ = write!(svg, r#"<path class="line" d="{path}"/>"#);
    let _ = write!(
        svg,
        r#"<text class="tick" x="{PAD_L}" y="{}">{}</text><text class="tick" x="{}" y="{}" text-anchor="end">{} {x_unit}</text></svg>"#,
        H - 8.0,
        fmt_num(x0),
        W - PAD_R,
        H - 8.0,
        fmt_num(x1)
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_what_they_mean() {
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(0.75), "0.75");
        assert_eq!(fmt_num(0.0025), "0.0025");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(600.0), "600");
        assert_eq!(fmt_num(1500.0), "1.5k");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(nice_max(512.0), 600.0);
        assert_eq!(nice_max(0.9), 1.0);
        // A histogram of tiny scores has distinct bin labels.
        let svg = histogram(&[0.001, 0.002, 0.004, 0.011], "scores", "score");
        assert!(
            !svg.contains(">0–0<") && !svg.contains("0–0 score"),
            "{svg}"
        );
    }

    #[test]
    fn histogram_counts_every_label() {
        let svg = seconds_histogram(&[1.0, 2.0, 2.5, 30.0, 400.0]);
        let total: i64 = svg
            .match_indices("s: ")
            .map(|(i, _)| {
                svg[i + 3..]
                    .split('<')
                    .next()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 5);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn line_chart_has_a_dot_per_point() {
        let svg = line_chart(
            &[(32.0, 0.5), (64.0, 0.625), (96.0, 0.7)],
            Some(1.0),
            "win rate",
            "labels",
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("64 labels: 0.625"));
        assert_eq!(
            line_chart(&[], None, "x", "steps").matches("<path").count(),
            0
        );
    }

    #[test]
    fn win_rate_chart_draws_the_even_line_and_each_interval() {
        let svg = win_rate_chart(
            &[(32.0, 0.55, Some((0.43, 0.66))), (64.0, 0.6, None)],
            "win rate",
        );
        assert_eq!(svg.matches("class=\"guide\"").count(), 1);
        assert_eq!(svg.matches("class=\"interval\"").count(), 1);
        assert!(svg.contains("95% interval 0.43–0.66"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn cumulative_line_reaches_the_total() {
        let svg = cumulative_labels(&[(0, 3), (7_200_000, 2)], Some(10));
        assert!(svg.contains("class=\"line\""));
        assert!(svg.contains("budget"));
        assert_eq!(cumulative_labels(&[], None).matches("<path").count(), 0);
    }
}
