//! Rich display in evcxr notebooks (the Jupyter kernel `rust`, set up by `scripts/setup-notebooks.sh`).
//!
//! How evcxr 0.22 shows things, and what that means here:
//!
//! * When a cell's last expression has a method `evcxr_display(&self)`, evcxr calls it. The method
//!   prints blocks `EVCXR_BEGIN_CONTENT <mime>` … `EVCXR_END_CONTENT` to stdout. [`Html`] and
//!   [`Progress`] have it, and the [`EvcxrDisplay`] trait gives polars `DataFrame`s one, so after
//!   `use tunelab::notebook::*;` a frame at the end of a cell shows as an HTML table.
//! * evcxr gathers those blocks **by mime type into one result at the end of the cell**: a second
//!   `text/html` block in the same cell replaces the first, and there are no display ids
//!   (`update_display_data`), so nothing rich can update while a cell runs. One rich output per
//!   cell, then: compose it with [`Html`]'s builder methods. Live progress is plain stdout, which
//!   evcxr streams line by line while the cell runs: [`Progress`] prints one compact line every
//!   N steps and shows its loss curve when the cell ends.
//! * A panic or a `?` error inside a cell is reported to Jupyter as a *successful* cell (the
//!   message goes to stderr), so `nbconvert --execute` would carry on. Only compile errors and a
//!   dying evaluation process fail the cell. [`init`] therefore installs a panic hook that ends the
//!   evaluation process after printing the panic, and [`OrFail::or_fail`] turns an `Err` into
//!   exactly that: a headless run stops at the failing cell with its message.
//! * If the last expression has no `evcxr_display`, evcxr first tries to compile the call, then
//!   falls back to `{:?}`: that costs a second compilation, so end other cells with `;`.
//!
//! ```
//! use polars::prelude::*;
//! use tunelab::notebook::{html_table, Html};
//!
//! let df = df!("qid" => ["q1", "q2"], "recip_rank" => [1.0, 0.5]).unwrap();
//! let out = Html::new().heading(3, "Per-query <metrics>").push(html_table(&df));
//! assert!(out.as_str().contains("<td>0.5000</td>"));
//! assert!(out.as_str().contains("Per-query &lt;metrics&gt;"));
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use polars::prelude::{AnyValue, DataFrame};

pub mod batch;

/// Why something could not be displayed.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an SVG document (no <svg element)")]
    NotSvg { path: PathBuf },
    #[error("drawing {what}: {message}")]
    Plot { what: String, message: String },
}

/// The environment variable evcxr sets in the process that runs cells.
const EVCXR_RUNTIME_VAR: &str = "EVCXR_IS_RUNTIME";
/// Set to `1` to keep evcxr's own panic handling (variables survive, the cell still "succeeds").
pub const KEEP_GOING_VAR: &str = "TUNELAB_NOTEBOOK_KEEP_GOING";

/// Whether this code runs inside an evcxr kernel (REPL or Jupyter).
pub fn in_evcxr() -> bool {
    std::env::var_os(EVCXR_RUNTIME_VAR).is_some()
}

/// Call once in a notebook's first code cell. Makes panics fail the cell (see the module notes)
/// unless `TUNELAB_NOTEBOOK_KEEP_GOING=1`; outside evcxr it does nothing.
pub fn init() {
    if in_evcxr() && std::env::var(KEEP_GOING_VAR).as_deref() != Ok("1") {
        fail_fast();
    }
}

/// Install a panic hook that prints the panic as usual, then exits the process with status 101.
/// In evcxr this marks the cell as failed (the evaluation process restarts; variables are lost).
pub fn fail_fast() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        exit_with(101);
    }));
}

/// Flush both streams and give evcxr's output reader a moment, then exit: the message printed
/// just before reaches the notebook ahead of the "subprocess terminated" error.
fn exit_with(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::thread::sleep(Duration::from_millis(200));
    std::process::exit(code)
}

/// Fail the notebook cell on an error: `let corpus = read_corpus(&path).or_fail("reading the corpus");`
/// prints `error: <context>: <error>` and ends the evaluation process (status 1), which Jupyter
/// reports as a failed cell. Prefer it to `?` at the top level of a cell (see the module notes).
pub trait OrFail<T> {
    fn or_fail(self, context: &str) -> T;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, context: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => {
                // `{:#}` prints anyhow's whole context chain; other errors ignore the flag.
                let msg = format!("error: {context}: {e:#}");
                eprintln!("{msg}");
                println!("{msg}");
                exit_with(1)
            }
        }
    }
}

impl<T> OrFail<T> for Option<T> {
    fn or_fail(self, context: &str) -> T {
        match self {
            Some(v) => v,
            None => {
                let msg = format!("error: {context}: missing");
                eprintln!("{msg}");
                println!("{msg}");
                exit_with(1)
            }
        }
    }
}

/// Print one evcxr content block. The whole block is written under one stdout lock so that no other
/// output lands inside it.
pub fn emit(mime: &str, content: &str) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
    let _ = out.flush();
}

/// Escape text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// A piece of HTML shown as one `text/html` output. Builder methods escape text; [`Html::raw`]
/// and [`Html::svg`] take trusted markup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Html {
    markup: String,
}

impl Html {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusted markup, inserted as is.
    pub fn raw(markup: impl Into<String>) -> Self {
        Html { markup: markup.into() }
    }

    /// `<h{level}>text</h{level}>` (level clamped to 1..=6).
    pub fn heading(mut self, level: u8, text: &str) -> Self {
        let l = level.clamp(1, 6);
        self.markup.push_str(&format!("<h{l}>{}</h{l}>\n", escape(text)));
        self
    }

    /// A paragraph of plain text.
    pub fn text(mut self, text: &str) -> Self {
        self.markup.push_str(&format!("<p>{}</p>\n", escape(text)));
        self
    }

    /// Preformatted text (logs, trec_eval output).
    pub fn pre(mut self, text: &str) -> Self {
        self.markup.push_str(&format!("<pre>{}</pre>\n", escape(text)));
        self
    }

    /// A DataFrame as a table, truncated with [`TableOptions::default`].
    pub fn table(self, df: &DataFrame) -> Self {
        self.push(html_table(df))
    }

    /// Inline SVG markup (an XML declaration or doctype before `<svg` is dropped).
    pub fn svg(mut self, svg: &str) -> Self {
        let start = svg.find("<svg").unwrap_or(0);
        self.markup.push_str("<div class=\"tunelab-plot\">");
        self.markup.push_str(&svg[start..]);
        self.markup.push_str("</div>\n");
        self
    }

    /// Append another piece.
    pub fn push(mut self, other: Html) -> Self {
        self.markup.push_str(&other.markup);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.markup
    }

    pub fn into_string(self) -> String {
        self.markup
    }

    /// Show now, without being the cell's last expression (still one `text/html` per cell).
    pub fn show(&self) {
        self.evcxr_display();
    }

    /// evcxr's display hook.
    pub fn evcxr_display(&self) {
        emit("text/html", &self.markup);
    }
}

impl fmt::Display for Html {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.markup)
    }
}

/// How much of a frame [`html_table_with`] shows.
#[derive(Clone, Debug, PartialEq)]
pub struct TableOptions {
    /// Rows shown at most: the first `max_rows / 2` and the last ones, with an ellipsis row between.
    pub max_rows: usize,
    /// Columns shown at most (the first ones).
    pub max_cols: usize,
    /// Strings longer than this are cut, with `…`.
    pub max_chars: usize,
    /// Digits after the decimal point for floats (metrics read best at 4, as trec_eval prints).
    pub float_digits: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions { max_rows: 20, max_cols: 20, max_chars: 80, float_digits: 4 }
    }
}

/// A DataFrame as an HTML table with the default truncation.
pub fn html_table(df: &DataFrame) -> Html {
    html_table_with(df, &TableOptions::default())
}

/// A DataFrame as an HTML table: header with dtypes, at most `max_rows` rows (head and tail),
/// a caption with the full shape.
pub fn html_table_with(df: &DataFrame, opts: &TableOptions) -> Html {
    let (height, width) = df.shape();
    let cols = &df.columns()[..width.min(opts.max_cols)];
    let rows: Vec<Option<usize>> = if height <= opts.max_rows {
        (0..height).map(Some).collect()
    } else {
        let head = opts.max_rows.div_ceil(2);
        let tail = opts.max_rows - head;
        (0..head).map(Some).chain(std::iter::once(None)).chain((height - tail..height).map(Some)).collect()
    };
    let mut h = String::from("<table class=\"tunelab-frame\">\n");
    h.push_str(&format!("<caption>{height} rows × {width} columns</caption>\n<thead><tr>"));
    for c in cols {
        h.push_str(&format!("<th>{}<br><small>{}</small></th>", escape(c.name()), escape(&c.dtype().to_string())));
    }
    if width > cols.len() {
        h.push_str("<th>…</th>");
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        h.push_str("<tr>");
        match row {
            None => {
                for _ in 0..cols.len() + usize::from(width > cols.len()) {
                    h.push_str("<td>⋮</td>");
                }
            }
            Some(i) => {
                for c in cols {
                    let cell = c.get(i).map(|v| format_value(&v, opts)).unwrap_or_else(|e| format!("<{e}>"));
                    h.push_str(&format!("<td>{}</td>", escape(&cell)));
                }
                if width > cols.len() {
                    h.push_str("<td>…</td>");
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    Html::raw(h)
}

fn format_value(v: &AnyValue<'_>, opts: &TableOptions) -> String {
    let s = match v {
        AnyValue::Float64(x) => format!("{x:.*}", opts.float_digits),
        AnyValue::Float32(x) => format!("{x:.*}", opts.float_digits),
        other => other.str_value().into_owned(),
    };
    if s.chars().count() > opts.max_chars {
        let cut: String = s.chars().take(opts.max_chars.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Display for types defined elsewhere (polars `DataFrame`): bring the trait into scope with
/// `use tunelab::notebook::*;` and a frame at the end of a cell shows as an HTML table.
pub trait EvcxrDisplay {
    fn evcxr_display(&self);
}

impl EvcxrDisplay for DataFrame {
    fn evcxr_display(&self) {
        html_table(self).evcxr_display();
    }
}

/// An SVG file (a plot written by the report module), inline.
pub fn show_svg(path: impl AsRef<Path>) -> Result<Html, NotebookError> {
    let path = path.as_ref();
    let svg = std::fs::read_to_string(path).map_err(|source| NotebookError::Io { path: path.into(), source })?;
    if !svg.contains("<svg") {
        return Err(NotebookError::NotSvg { path: path.into() });
    }
    Ok(Html::new().svg(&svg))
}

/// Links to a run report: `report.html` and `report.md` of a run directory (or a report file
/// itself), with the run directory's absolute path. Links are relative to the notebook's working
/// directory (the notebook's folder), which is where Jupyter and nbconvert resolve them.
pub fn show_report_link(path: impl AsRef<Path>) -> Html {
    let path = path.as_ref();
    let (dir, files): (PathBuf, Vec<PathBuf>) = if path.is_dir() {
        let files = ["report.html", "report.md", "manifest.json"].iter().map(|f| path.join(f)).filter(|p| p.exists()).collect();
        (path.to_path_buf(), files)
    } else {
        (path.parent().map(Path::to_path_buf).unwrap_or_default(), vec![path.to_path_buf()])
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut h = String::from("<p class=\"tunelab-report\">Report: ");
    if files.is_empty() {
        h.push_str(&format!("<em>no report files in {}</em>", escape(&dir.display().to_string())));
    }
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            h.push_str(" · ");
        }
        let href = relative_to(f, &cwd);
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.push_str(&format!("<a href=\"{}\" target=\"_blank\">{}</a>", escape(&href), escape(&name)));
    }
    let abs = std::fs::canonicalize(&dir).unwrap_or(dir);
    h.push_str(&format!(" <small>({})</small></p>\n", escape(&abs.display().to_string())));
    Html::raw(h)
}

/// `path` relative to `base` when both resolve (shared prefix, then `..`), else `path` as given.
fn relative_to(path: &Path, base: &Path) -> String {
    let (Ok(p), Ok(b)) = (std::fs::canonicalize(path), std::fs::canonicalize(base)) else {
        return path.display().to_string();
    };
    let pc: Vec<_> = p.components().collect();
    let bc: Vec<_> = b.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..bc.len() {
        rel.push("..");
    }
    for c in &pc[common..] {
        rel.push(c);
    }
    rel.display().to_string()
}

/// Training progress for notebooks: one text line every `every` steps (streamed while the cell
/// runs), and at the end, as the cell's output, a summary with the curves of every logged value.
///
/// ```
/// use tunelab::notebook::Progress;
/// let mut p = Progress::new("contrastive", 4).every(2).quiet();
/// for step in 1..=4 {
///     p.update(step, &[("loss", 1.0 / step as f64)]);
/// }
/// assert_eq!(p.history("loss").len(), 4);
/// assert_eq!(p.lines_printed(), 2); // steps 2 and 4
/// ```
#[derive(Clone, Debug)]
pub struct Progress {
    label: String,
    total: usize,
    every: usize,
    quiet: bool,
    start: Instant,
    last_step: usize,
    printed: usize,
    /// (name, [(step, value)]) in first-seen order.
    series: Vec<(String, Vec<(usize, f64)>)>,
}

impl Progress {
    /// `total` steps; prints about 20 lines over the run unless [`Progress::every`] says otherwise.
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Progress {
            label: label.into(),
            total,
            every: (total / 20).max(1),
            quiet: false,
            start: Instant::now(),
            last_step: 0,
            printed: 0,
            series: Vec::new(),
        }
    }

    /// Print a line every `n` steps (and at the last step).
    pub fn every(mut self, n: usize) -> Self {
        self.every = n.max(1);
        self
    }

    /// Record without printing (tests, nested loops); the line count is still kept.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Record `values` at `step` (1-based) and print a line when due.
    pub fn update(&mut self, step: usize, values: &[(&str, f64)]) {
        for (name, v) in values {
            match self.series.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => s.push((step, *v)),
                None => self.series.push((name.to_string(), vec![(step, *v)])),
            }
        }
        self.last_step = step;
        if step % self.every == 0 || step == self.total {
            self.printed += 1;
            if !self.quiet {
                println!("{}", self.line(values));
            }
        }
    }

    /// The progress line for the current step.
    pub fn line(&self, values: &[(&str, f64)]) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = self.last_step as f64 / elapsed.max(1e-9);
        let pct = 100.0 * self.last_step as f64 / self.total.max(1) as f64;
        let mut s = format!("{} {:>w$}/{} ({pct:3.0}%)", self.label, self.last_step, self.total, w = self.total.to_string().len());
        for (name, v) in values {
            s.push_str(&format!("  {name} {}", fmt_num(*v)));
        }
        let eta = (self.total.saturating_sub(self.last_step)) as f64 / rate.max(1e-9);
        s.push_str(&format!("  {rate:.2} it/s  elapsed {}  eta {}", fmt_secs(elapsed), fmt_secs(eta)));
        s
    }

    /// The recorded values of one series, `(step, value)`.
    pub fn history(&self, name: &str) -> &[(usize, f64)] {
        self.series.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice()).unwrap_or(&[])
    }

    /// How many progress lines were due so far.
    pub fn lines_printed(&self) -> usize {
        self.printed
    }

    /// One SVG line chart per recorded series.
    pub fn chart_svg(&self) -> Result<String, NotebookError> {
        let mut svg = String::new();
        for (name, points) in &self.series {
            svg.push_str(&line_chart_svg(&format!("{} — {name}", self.label), name, points)?);
        }
        Ok(svg)
    }

    /// The end-of-cell summary: last values, rate, and the curves.
    pub fn summary(&self) -> Html {
        let elapsed = self.start.elapsed().as_secs_f64();
        let last: Vec<String> = self
            .series
            .iter()
            .filter_map(|(n, s)| s.last().map(|(_, v)| format!("{n} {}", fmt_num(*v))))
            .collect();
        let text = format!(
            "{}: {}/{} steps in {} ({:.2} it/s); last: {}",
            self.label,
            self.last_step,
            self.total,
            fmt_secs(elapsed),
            self.last_step as f64 / elapsed.max(1e-9),
            last.join(", ")
        );
        let h = Html::new().text(&text);
        match self.chart_svg() {
            Ok(svg) => h.svg(&svg),
            Err(e) => h.text(&format!("(no chart: {e})")),
        }
    }

    pub fn evcxr_display(&self) {
        self.summary().evcxr_display();
    }
}

fn fmt_num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) { format!("{v:.3e}") } else { format!("{v:.4}") }
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.round() as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

/// A small line chart (step against value) as an SVG string.
fn line_chart_svg(title: &str, y_label: &str, points: &[(usize, f64)]) -> Result<String, NotebookError> {
    let err = |e: &dyn fmt::Display| NotebookError::Plot { what: title.to_string(), message: e.to_string() };
    let finite: Vec<(f64, f64)> = points.iter().filter(|(_, v)| v.is_finite()).map(|(s, v)| (*s as f64, *v)).collect();
    let (x0, x1) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    if finite.is_empty() {
        return Ok(String::new());
    }
    // Pad degenerate ranges so plotters gets a non-empty axis.
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x1 + 1.0) };
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1.0) * 0.05 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err(&e))?;
        chart.draw_series(LineSeries::new(finite, &RGBColor(0x25, 0x63, 0xeb))).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn table_truncates_rows_head_and_tail() {
        // 25 rows, max 6: rows 0,1,2 then an ellipsis row then 22,23,24 (by hand: 6/2 = 3 each side).
        let df = df!("i" => (0..25i64).collect::<Vec<_>>()).unwrap();
        let opts = TableOptions { max_rows: 6, ..TableOptions::default() };
        let h = html_table_with(&df, &opts).into_string();
        let cells: Vec<&str> = h.split("<td>").skip(1).map(|c| c.split("</td>").next().unwrap()).collect();
        assert_eq!(cells, ["0", "1", "2", "⋮", "22", "23", "24"]);
        assert!(h.contains("25 rows × 1 columns"));
    }

    #[test]
    fn table_escapes_and_cuts_strings_and_rounds_floats() {
        let df = df!("text" => ["<b>&", "abcdefghij"], "v" => [0.123456, 2.0]).unwrap();
        let opts = TableOptions { max_chars: 5, float_digits: 2, ..TableOptions::default() };
        let h = html_table_with(&df, &opts).into_string();
        assert!(h.contains("<td>&lt;b&gt;&amp;</td>"), "{h}");
        assert!(h.contains("<td>abcd…</td>"), "{h}");
        assert!(h.contains("<td>0.12</td>") && h.contains("<td>2.00</td>"), "{h}");
    }

    #[test]
    fn table_limits_columns() {
        let df = df!("a" => [1i32], "b" => [2i32], "c" => [3i32]).unwrap();
        let h = html_table_with(&df, &TableOptions { max_cols: 2, ..TableOptions::default() }).into_string();
        assert!(h.contains("<th>a<br>") && h.contains("<th>b<br>") && !h.contains("<th>c<br>"));
        assert!(h.contains("<th>…</th>") && h.contains("<td>…</td>"));
    }

    #[test]
    fn svg_file_is_inlined_without_xml_declaration() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.svg");
        std::fs::write(&p, "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>").unwrap();
        let h = show_svg(&p).unwrap().into_string();
        assert!(h.contains("<div class=\"tunelab-plot\"><svg xmlns") && !h.contains("<?xml"));
        std::fs::write(&p, "hello").unwrap();
        assert!(matches!(show_svg(&p), Err(NotebookError::NotSvg { .. })));
        assert!(matches!(show_svg(dir.path().join("missing.svg")), Err(NotebookError::Io { .. })));
    }

    #[test]
    fn report_link_lists_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.html"), "<html>").unwrap();
        std::fs::write(dir.path().join("manifest.json"), "{}").unwrap();
        let h = show_report_link(dir.path()).into_string();
        assert!(h.contains(">report.html</a>") && h.contains(">manifest.json</a>") && !h.contains("report.md"));
    }

    #[test]
    fn relative_path_climbs_to_common_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("notebooks"), dir.path().join("reports/x"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("report.html"), "").unwrap();
        assert_eq!(relative_to(&b.join("report.html"), &a), "../reports/x/report.html");
    }

    #[test]
    fn progress_prints_every_n_and_last_step() {
        // total 10, every 4: due at steps 4, 8 and 10 (the last) = 3 lines.
        let mut p = Progress::new("t", 10).every(4).quiet();
        for s in 1..=10 {
            p.update(s, &[("loss", 10.0 - s as f64), ("lr", 0.1)]);
        }
        assert_eq!(p.lines_printed(), 3);
        assert_eq!(p.history("loss")[9], (10, 0.0));
        assert!(p.line(&[("loss", 0.5)]).starts_with("t 10/10 (100%)  loss 0.5000"));
        let svg = p.chart_svg().unwrap();
        assert_eq!(svg.matches("<svg").count(), 2, "one chart per series");
    }

    #[test]
    fn progress_chart_handles_constant_and_nan_values() {
        let mut p = Progress::new("t", 2).quiet();
        p.update(1, &[("loss", f64::NAN)]);
        p.update(2, &[("loss", 1.0)]);
        assert!(p.chart_svg().unwrap().contains("<svg"));
    }
}
