//! Report plots with plotters, each written as SVG (embedded in `report.html`) and PNG.
//!
//! * [`metric_bars`]: each system's mean per measure, with 95% CI error bars;
//! * [`difference_intervals`]: B − A per measure with its confidence interval and a zero line;
//! * [`per_query_differences`]: one measure's per-query B − A, sorted, as bars;
//! * [`training_curve`]: loss (and validation loss) against step.
//!
//! Files are never overwritten: an existing target is an error before anything is drawn.
//!
//! ```
//! use tunelab::report::plots::per_query_differences;
//! let dir = tempfile::tempdir().unwrap();
//! let fig = per_query_differences(dir.path(), "diff", "P.5", ["bm25", "hybrid"], &[0.2, -0.2, 0.0]).unwrap();
//! assert!(fig.svg.exists() && fig.png.exists() && fig.svg_text.starts_with("<svg"));
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{AbReportInput, ComparisonRow, LossPoint, ReportData, ReportError};

/// Baseline (A) and candidate (B) colours; green/red for B better/worse.
const COLOR_A: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);
const COLOR_B: RGBColor = RGBColor(0x25, 0x63, 0xeb);
const COLOR_WIN: RGBColor = RGBColor(0x16, 0xa3, 0x4a);
const COLOR_LOSS: RGBColor = RGBColor(0xdc, 0x26, 0x26);
const COLOR_TIE: RGBColor = RGBColor(0x9c, 0xa3, 0xaf);
const FONT: &str = super::fonts::FAMILY;

/// A rendered plot.
#[derive(Clone, Debug)]
pub struct Figure {
    /// File stem under `plots/`.
    pub name: String,
    pub title: String,
    /// One sentence saying how to read it.
    pub caption: String,
    pub svg: PathBuf,
    pub png: PathBuf,
    /// The SVG document, for inlining.
    pub svg_text: String,
}

/// One measure's bars: means and CI bounds of systems A and B.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricBar {
    pub measure: String,
    pub mean: [f64; 2],
    pub ci: [(f64, f64); 2],
}

type DrawResult = Result<(), Box<dyn Error>>;

trait Plot {
    fn size(&self) -> (u32, u32) {
        (860, 440)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Draw `plot` into `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
fn render(
    dir: &Path,
    stem: &str,
    title: &str,
    caption: String,
    plot: &impl Plot,
) -> Result<Figure, ReportError> {
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    for p in [&svg, &png] {
        if p.exists() {
            return Err(ReportError::Exists(p.clone()));
        }
    }
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |e: Box<dyn Error>| ReportError::Plot { path, message: e.to_string() }
    };
    let mut svg_text = String::new();
    {
        super::fonts::register();
        let root = SVGBackend::with_string(&mut svg_text, plot.size()).into_drawing_area();
        plot.draw(&root).map_err(fail(&svg))?;
        root.present().map_err(|e| fail(&svg)(Box::new(e)))?;
    }
    super::write_new(&svg, svg_text.as_bytes())?;
    // The bitmap backend writes to a path itself: draw into a temporary name, then move it.
    // (The image encoder picks the format from the extension, so the name ends in `.png`.)
    let tmp = dir.join(format!(".{stem}.{}.tmp.png", std::process::id()));
    let drawn = (|| -> DrawResult {
        let root = BitMapBackend::new(&tmp, plot.size()).into_drawing_area();
        plot.draw(&root)?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(&png)(e));
    }
    if png.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReportError::Exists(png));
    }
    std::fs::rename(&tmp, &png).map_err(ReportError::io(&png))?;
    Ok(Figure { name: stem.to_string(), title: title.to_string(), caption, svg, png, svg_text })
}

fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - span * frac, hi + span * frac)
}

/// Axis tick text: at most 3 decimals, trailing zeros dropped, never `-0`.
fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn caption_style() -> TextStyle<'static> {
    (FONT, 20).into_font().style(FontStyle::Bold).color(&BLACK)
}

struct Bars<'a> {
    names: [&'a str; 2],
    bars: &'a [MetricBar],
}

impl Plot for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let n = self.bars.len();
        let top = self
            .bars
            .iter()
            .flat_map(|b| [b.mean[0], b.mean[1], b.ci[0].1, b.ci[1].1])
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let ymax = if top > 0.0 { top * 1.22 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption("Mean per measure (95% CI)", caption_style())
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, 0.0..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&tick)
            .y_desc("mean over queries")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        for (s, color) in [(0usize, COLOR_A), (1, COLOR_B)] {
            let (x0, x1) = if s == 0 { (0.10, 0.48) } else { (0.52, 0.90) };
            chart
                .draw_series(self.bars.iter().enumerate().map(|(i, b)| {
                    Rectangle::new(
                        [(i as f64 + x0, 0.0), (i as f64 + x1, b.mean[s])],
                        color.filled(),
                    )
                }))?
                .label(self.names[s])
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            let mid = (x0 + x1) / 2.0;
            for (i, b) in self.bars.iter().enumerate() {
                let x = i as f64 + mid;
                let (lo, hi) = b.ci[s];
                if lo.is_finite() && hi.is_finite() {
                    let cap = 0.05;
                    let stroke = BLACK.stroke_width(2);
                    chart.draw_series([
                        PathElement::new(vec![(x, lo), (x, hi)], stroke),
                        PathElement::new(vec![(x - cap, lo), (x + cap, lo)], stroke),
                        PathElement::new(vec![(x - cap, hi), (x + cap, hi)], stroke),
                    ])?;
                }
                let above = if hi.is_finite() { hi.max(b.mean[s]) } else { b.mean[s] };
                let style = TextStyle::from((FONT, 13).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                chart.draw_series([Text::new(
                    format!("{:.4}", b.mean[s]),
                    (x, above + ymax * 0.012),
                    style,
                )])?;
            }
        }
        // Category labels under each group (plotters' key-point axes cannot take a formatter).
        for (i, b) in self.bars.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style =
                TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(b.measure.clone(), (px, py + 8), style))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.2))
            .draw()?;
        Ok(())
    }
}

/// Grouped bars of both systems' means per measure, with confidence-interval error bars.
pub fn metric_bars(
    dir: &Path,
    stem: &str,
    names: [&str; 2],
    bars: &[MetricBar],
) -> Result<Figure, ReportError> {
    let caption = format!(
        "Bars: mean of each measure over queries for {} and {}; whiskers: 95% percentile-bootstrap interval of each mean.",
        names[0], names[1]
    );
    render(dir, stem, "Mean per measure", caption, &Bars { names, bars })
}

struct Diffs<'a> {
    names: [&'a str; 2],
    rows: &'a [ComparisonRow],
}

impl Plot for Diffs<'_> {
    fn size(&self) -> (u32, u32) {
        (860, (120 + 46 * self.rows.len() as u32).max(220))
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let n = self.rows.len();
        let (lo, hi) = self
            .rows
            .iter()
            .flat_map(|r| [r.ci_low, r.ci_high, r.diff])
            .filter(|v| v.is_finite())
            .fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = padded(lo, hi, 0.12);
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Difference {} − {} (95% CI)", self.names[1], self.names[0]),
                caption_style(),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(120)
            .build_cartesian_2d(lo..hi, 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&tick)
            .x_desc(format!(
                "← {} better    difference of means    {} better →",
                self.names[0], self.names[1]
            ))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        chart.draw_series([PathElement::new(
            vec![(0.0, 0.0), (0.0, n as f64)],
            BLACK.mix(0.6).stroke_width(1),
        )])?;
        // Measures listed top to bottom in table order.
        for (i, r) in self.rows.iter().enumerate() {
            let y = (n - 1 - i) as f64 + 0.5;
            let (px, py) = chart.backend_coord(&(lo, y));
            let style =
                TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(r.measure.clone(), (px - 10, py), style))?;
            let color = if r.p_holm < 0.05 {
                if r.diff > 0.0 { COLOR_WIN } else { COLOR_LOSS }
            } else {
                COLOR_TIE
            };
            let stroke = color.stroke_width(3);
            if r.ci_low.is_finite() && r.ci_high.is_finite() {
                chart.draw_series([
                    PathElement::new(vec![(r.ci_low, y), (r.ci_high, y)], stroke),
                    PathElement::new(vec![(r.ci_low, y - 0.12), (r.ci_low, y + 0.12)], stroke),
                    PathElement::new(vec![(r.ci_high, y - 0.12), (r.ci_high, y + 0.12)], stroke),
                ])?;
            }
            chart.draw_series([Circle::new((r.diff, y), 6, color.filled())])?;
            let style =
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series([Text::new(format!("{:+.4}", r.diff), (r.diff, y + 0.22), style)])?;
        }
        Ok(())
    }
}

/// Each measure's difference of means (B − A) as a point with its confidence interval; green or
/// red where the Holm-corrected p-value is below 0.05, grey otherwise.
pub fn difference_intervals(
    dir: &Path,
    stem: &str,
    names: [&str; 2],
    rows: &[ComparisonRow],
) -> Result<Figure, ReportError> {
    let caption = format!(
        "Points: mean of {b} minus mean of {a}; lines: 95% bootstrap interval of the difference. \
         Coloured where the Holm-corrected p < 0.05 (green: {b} better, red: {a} better).",
        a = names[0],
        b = names[1]
    );
    render(dir, stem, "Differences with confidence intervals", caption, &Diffs { names, rows })
}

/// Most bars a per-query chart draws (see [`per_query_differences`]).
pub const MAX_BARS: usize = 800;

struct PerQuery<'a> {
    measure: &'a str,
    names: [&'a str; 2],
    diffs: Vec<f64>,
}

impl Plot for PerQuery<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        // Beyond MAX_BARS queries a bar would be thinner than a pixel: draw evenly spaced
        // quantiles of the sorted differences instead (same shape, bounded SVG size).
        let shown: Vec<f64> = if self.diffs.len() > MAX_BARS {
            (0..MAX_BARS).map(|j| self.diffs[j * (self.diffs.len() - 1) / (MAX_BARS - 1)]).collect()
        } else {
            self.diffs.clone()
        };
        let n = shown.len().max(1);
        let m = shown.iter().filter(|d| d.is_finite()).fold(0.0f64, |a, d| a.max(d.abs()));
        let m = if m > 0.0 { m * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: per-query {} − {}", self.measure, self.names[1], self.names[0]),
                caption_style(),
            )
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, -m..m)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc(format!("{} queries, sorted by difference", self.diffs.len()))
            .y_label_formatter(&tick)
            .y_desc("difference")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        // Leave a gap between bars only when they are wide enough to see it.
        let gap = if n <= 100 { 0.15 } else { 0.0 };
        chart.draw_series(shown.iter().enumerate().map(|(i, &d)| {
            let color = if d > 0.0 {
                COLOR_WIN
            } else if d < 0.0 {
                COLOR_LOSS
            } else {
                COLOR_TIE
            };
            // A tie gets a sliver around zero so "all equal" does not look like "no data".
            let (lo, hi) = if d == 0.0 { (-m * 0.012, m * 0.012) } else { (0.0, d) };
            Rectangle::new([(i as f64 + gap, lo), (i as f64 + 1.0 - gap, hi)], color.filled())
        }))?;
        chart.draw_series([PathElement::new(
            vec![(0.0, 0.0), (n as f64, 0.0)],
            BLACK.mix(0.6).stroke_width(1),
        )])?;
        Ok(())
    }
}

/// One measure's per-query differences (B − A), sorted ascending, as bars: green where B is
/// better, red where A is, grey for ties. Above [`MAX_BARS`] queries, evenly spaced quantiles of
/// the sorted differences are drawn (including the minimum and maximum).
pub fn per_query_differences(
    dir: &Path,
    stem: &str,
    measure: &str,
    names: [&str; 2],
    diffs: &[f64],
) -> Result<Figure, ReportError> {
    let mut diffs = diffs.to_vec();
    diffs.sort_by(f64::total_cmp);
    let (w, l) =
        (diffs.iter().filter(|d| **d > 0.0).count(), diffs.iter().filter(|d| **d < 0.0).count());
    let caption = format!(
        "Each bar is one query's {measure} under {b} minus under {a}, sorted: {w} queries better with {b}, \
         {l} better with {a}, {t} equal.",
        a = names[0],
        b = names[1],
        t = diffs.len() - w - l
    );
    let title = format!("Per-query differences: {measure}");
    render(dir, stem, &title, caption, &PerQuery { measure, names, diffs })
}

struct Curve<'a> {
    points: &'a [LossPoint],
}

impl Plot for Curve<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let train: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|p| p.loss.is_finite())
            .map(|p| (p.step as f64, p.loss))
            .collect();
        let valid: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter_map(|p| p.valid_loss.filter(|v| v.is_finite()).map(|v| (p.step as f64, v)))
            .collect();
        let all = train.iter().chain(&valid);
        let (x0, x1) = all
            .clone()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) =
            all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (x0, x1) = if x1 > x0 { (x0, x1) } else { padded(x0, x1, 0.5) };
        let (y0, y1) = padded(y0, y1, 0.06);
        let mut chart = ChartBuilder::on(root)
            .caption("Training curve", caption_style())
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&tick)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .draw()?;
        chart
            .draw_series(LineSeries::new(train, COLOR_B.stroke_width(2)))?
            .label("train loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], COLOR_B.stroke_width(2)));
        if !valid.is_empty() {
            let orange = RGBColor(0xea, 0x58, 0x0c);
            chart
                .draw_series(LineSeries::new(valid.clone(), orange.stroke_width(2)))?
                .label("validation loss")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], orange.stroke_width(2))
                });
            chart.draw_series(valid.into_iter().map(|p| Circle::new(p, 4, orange.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.2))
            .draw()?;
        Ok(())
    }
}

/// Loss (and validation loss, where logged) against training step.
pub fn training_curve(dir: &Path, stem: &str, points: &[LossPoint]) -> Result<Figure, ReportError> {
    let caption = format!(
        "Training loss over {} logged steps (validation loss where it was computed).",
        points.len()
    );
    render(dir, stem, "Training curve", caption, &Curve { points })
}

/// `ndcg_cut.10` → `ndcg_cut_10`: a file-name-safe stem.
fn file_stem(measure: &str) -> String {
    measure
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect()
}

/// Every plot of an A/B report, in the order the report shows them.
pub(crate) fn render_all(
    dir: &Path,
    input: &AbReportInput,
    data: &ReportData,
) -> Result<Vec<Figure>, ReportError> {
    let names = [input.system_a.as_str(), input.system_b.as_str()];
    let bars: Vec<MetricBar> = input
        .comparison
        .iter()
        .zip(&data.bar_ci)
        .map(|(r, ci)| MetricBar {
            measure: r.measure.clone(),
            mean: [r.mean_a, r.mean_b],
            ci: *ci,
        })
        .collect();
    let mut figures = vec![
        metric_bars(dir, "metric_bars", names, &bars)?,
        difference_intervals(dir, "metric_differences", names, &input.comparison)?,
    ];
    let mut used = std::collections::HashSet::new();
    for (row, pairs) in input.comparison.iter().zip(&data.paired) {
        let mut stem = format!("per_query_{}", file_stem(&row.measure));
        while !used.insert(stem.clone()) {
            stem.push('_');
        }
        let diffs: Vec<f64> = pairs.iter().map(|(_, a, b)| b - a).collect();
        figures.push(per_query_differences(dir, &stem, &row.measure, names, &diffs)?);
    }
    if let Some(log) = input.loss_log.as_ref().filter(|l| !l.is_empty()) {
        figures.push(training_curve(dir, "training_curve", log)?);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let bars = [MetricBar {
            measure: "ndcg_cut.10".into(),
            mean: [0.25, 0.5],
            ci: [(0.2, 0.3), (0.4, 0.6)],
        }];
        let fig = metric_bars(dir.path(), "bars", ["a", "b"], &bars).unwrap();
        let svg = std::fs::read_to_string(&fig.svg).unwrap();
        assert_eq!(svg, fig.svg_text);
        // The measure name and both value labels are drawn as SVG text.
        assert!(
            svg.contains("ndcg_cut.10") && svg.contains("0.2500") && svg.contains("0.5000"),
            "{svg}"
        );
        let png = std::fs::read(&fig.png).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(matches!(
            metric_bars(dir.path(), "bars", ["a", "b"], &bars),
            Err(ReportError::Exists(_))
        ));
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn per_query_caption_counts_wins_ties_losses() {
        let dir = tempfile::tempdir().unwrap();
        let fig =
            per_query_differences(dir.path(), "pq", "map", ["A", "B"], &[0.1, -0.2, 0.0, 0.3])
                .unwrap();
        assert!(
            fig.caption.contains("2 queries better with B, 1 better with A, 1 equal"),
            "{}",
            fig.caption
        );
    }

    #[test]
    fn training_curve_handles_single_point_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let one = [LossPoint { step: 5, loss: 1.0, valid_loss: Some(1.2) }];
        training_curve(dir.path(), "one", &one).unwrap();
        // Many queries: the SVG stays bounded (MAX_BARS rectangles plus axes).
        let many: Vec<f64> = (0..20_000).map(|i| ((i % 7) as f64 - 3.0) / 10.0).collect();
        let fig = per_query_differences(dir.path(), "many", "map", ["A", "B"], &many).unwrap();
        assert!(fig.svg_text.matches("<rect").count() < MAX_BARS + 50);
        assert_eq!(file_stem("ndcg_cut.10"), "ndcg_cut_10");
        assert_eq!(
            [tick(&-0.0), tick(&0.25), tick(&1.0), tick(&-0.1), tick(&0.1234)],
            ["0", "0.25", "1", "-0.1", "0.123"]
        );
    }
}
