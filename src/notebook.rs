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
#[cfg(feature = "models")]
mod model_views;
mod views;

#[cfg(feature = "models")]
pub use model_views::{AdapterExports, RerankView, dense_run, expansion_scores_frame, export_adapter, planned_steps, rerank_scores_frame, reply_table};
pub use views::{
    AbRuns, CLASSES, answered_queries, bm25_config, read_queries, GovernanceView, RunView, SplitView, comparison_frame, files_frame, means_frame, number_frame, per_query_diff_frame,
    stage_means_frame, text_table,
};

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

/// A report built cell by cell in a notebook (for runs that are not A/B comparisons, which
/// `report::write_ab_report` covers): headings, text, tables and plots, written as `report.md`,
/// a self-contained `report.html`, every table in full as Arrow IPC under `tables/` and every plot
/// under `plots/`. Like the report module, it never overwrites a file.
///
/// ```
/// use polars::prelude::*;
/// use tunelab::notebook::NotebookReport;
/// let dir = tempfile::tempdir().unwrap();
/// let df = df!("class" => ["public", "sacred"], "kept" => [212u32, 0]).unwrap();
/// let report = NotebookReport::new("Datasets").text("Sacred records are never kept.").table("classes", &df);
/// let files = report.write(dir.path()).unwrap();
/// assert!(std::fs::read_to_string(&files.markdown).unwrap().contains("| public | 212 |"));
/// assert!(dir.path().join("tables/classes.arrow").exists());
/// ```
#[derive(Clone, Debug, Default)]
pub struct NotebookReport {
    title: String,
    markdown: String,
    html: Html,
    tables: Vec<(String, DataFrame)>,
    plots: Vec<(String, String)>,
}

/// The files [`NotebookReport::write`] wrote.
#[derive(Clone, Debug)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub tables: Vec<PathBuf>,
    pub plots: Vec<PathBuf>,
}

/// Counts its calls in a static. Used by `notebooks/00-kernel-check` to show whether global state
/// in tunelab (and its dependencies) is shared between notebook cells.
#[doc(hidden)]
pub fn static_probe() -> usize {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

/// Rows of a table shown in `report.md`/`report.html` (the Arrow file has them all).
const REPORT_ROWS: usize = 50;

impl NotebookReport {
    pub fn new(title: &str) -> Self {
        NotebookReport { title: title.to_string(), ..Self::default() }
    }

    pub fn heading(mut self, text: &str) -> Self {
        self.markdown.push_str(&format!("\n## {text}\n\n"));
        self.html = self.html.heading(2, text);
        self
    }

    pub fn text(mut self, text: &str) -> Self {
        self.markdown.push_str(&format!("{text}\n\n"));
        self.html = self.html.text(text);
        self
    }

    /// A table, kept in full as `tables/<name>.arrow`.
    pub fn table(mut self, name: &str, df: &DataFrame) -> Self {
        self.markdown.push_str(&markdown_table(df, REPORT_ROWS));
        self.markdown.push_str(&format!("\n(`tables/{name}.arrow`)\n\n"));
        let opts = TableOptions { max_rows: REPORT_ROWS, max_cols: 50, max_chars: 200, ..TableOptions::default() };
        self.html = self.html.push(html_table_with(df, &opts));
        self.tables.push((name.to_string(), df.clone()));
        self
    }

    /// A plot (SVG markup), kept as `plots/<name>.svg` and inlined in the HTML.
    pub fn svg(mut self, name: &str, svg: &str) -> Self {
        self.markdown.push_str(&format!("![{name}](plots/{name}.svg)\n\n"));
        self.html = self.html.svg(svg);
        self.plots.push((name.to_string(), svg.to_string()));
        self
    }

    /// The report as it will look, for display in the notebook.
    pub fn to_html(&self) -> Html {
        Html::new().heading(1, &self.title).push(self.html.clone())
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }

    /// Write the report into `dir` (usually a `report::manifest::RunDir`'s path).
    pub fn write(&self, dir: &Path) -> Result<ReportFiles, NotebookError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NotebookError::Io { path, source }
        };
        let create = |path: &Path| std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path));
        let files = ReportFiles {
            markdown: dir.join("report.md"),
            html: dir.join("report.html"),
            tables: self.tables.iter().map(|(n, _)| dir.join("tables").join(format!("{n}.arrow"))).collect(),
            plots: self.plots.iter().map(|(n, _)| dir.join("plots").join(format!("{n}.svg"))).collect(),
        };
        // Refuse before writing anything if a target exists.
        for p in [&files.markdown, &files.html].into_iter().chain(&files.tables).chain(&files.plots) {
            if p.exists() {
                return Err(NotebookError::Io {
                    path: p.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists; reports never overwrite a file"),
                });
            }
        }
        for sub in ["tables", "plots"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir.join(sub)))?;
        }
        for ((_, df), path) in self.tables.iter().zip(&files.tables) {
            let mut f = create(path)?;
            use polars::prelude::SerWriter;
            polars::prelude::IpcWriter::new(&mut f)
                .finish(&mut df.clone())
                .map_err(|e| NotebookError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        }
        for ((_, svg), path) in self.plots.iter().zip(&files.plots) {
            create(path)?.write_all(svg.as_bytes()).map_err(io(path))?;
        }
        let md = format!("# {}\n{}", self.title, self.markdown);
        create(&files.markdown)?.write_all(md.as_bytes()).map_err(io(&files.markdown))?;
        let html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>\
             body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}\
             table{{border-collapse:collapse;margin:1em 0;font-size:14px}}th,td{{border:1px solid #ddd;padding:3px 8px}}\
             th{{background:#f3f4f6}}caption{{caption-side:bottom;color:#666;font-size:12px}}</style></head><body>\n{}\n</body></html>\n",
            escape(&self.title),
            self.to_html()
        );
        create(&files.html)?.write_all(html.as_bytes()).map_err(io(&files.html))?;
        Ok(files)
    }
}

/// A markdown pipe table of at most `max_rows` rows (a note says how many were left out).
pub fn markdown_table(df: &DataFrame, max_rows: usize) -> String {
    let opts = TableOptions { max_chars: 120, ..TableOptions::default() };
    let cell = |s: String| s.replace('|', "\\|").replace('\n', " ");
    let cols = df.columns();
    let mut md = String::from("|");
    for c in cols {
        md.push_str(&format!(" {} |", cell(c.name().to_string())));
    }
    md.push_str("\n|");
    for _ in cols {
        md.push_str("---|");
    }
    md.push('\n');
    for i in 0..df.height().min(max_rows) {
        md.push('|');
        for c in cols {
            let v = c.get(i).map(|v| format_value(&v, &opts)).unwrap_or_default();
            md.push_str(&format!(" {} |", cell(v)));
        }
        md.push('\n');
    }
    if df.height() > max_rows {
        md.push_str(&format!("\n… {} more rows\n", df.height() - max_rows));
    }
    md
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
        if step.is_multiple_of(self.every) || step == self.total {
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
        // No rate before the first step (a step-0 validation line): the ETA is unknown, not years.
        let eta = if self.last_step == 0 { f64::NAN } else { (self.total.saturating_sub(self.last_step)) as f64 / rate };
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

/// Follows a training loop's `loss.jsonl` (one JSON object per step: `step`, `loss`, `lr`, and
/// `valid_*` after validations, as `train::contrastive_trainer` writes it) from a background
/// thread and prints a [`Progress`] line every `every` steps while the training call runs in the
/// cell. The trainers' own progress bars are hidden in notebooks (stderr is not a terminal), so
/// this is how a notebook shows training as it happens, without the trainer knowing about it.
///
/// ```
/// use std::io::Write;
/// use tunelab::notebook::watch_loss_log_with;
/// let dir = tempfile::tempdir().unwrap();
/// let log = dir.path().join("loss.jsonl");
/// let watcher = watch_loss_log_with(&log, tunelab::notebook::Progress::new("train", 3).quiet());
/// let mut f = std::fs::File::create(&log).unwrap();
/// for step in 1..=3 {
///     writeln!(f, "{{\"step\": {step}, \"epoch\": 0, \"loss\": {}, \"lr\": 0.001}}", 1.0 / step as f64).unwrap();
/// }
/// let progress = watcher.finish();
/// assert_eq!(progress.history("loss").len(), 3);
/// ```
pub fn watch_loss_log(path: impl Into<PathBuf>, label: &str, total_steps: usize, every: usize) -> LossWatcher {
    watch_loss_log_with(path, Progress::new(label, total_steps).every(every))
}

/// [`watch_loss_log`] with a [`Progress`] set up by the caller (e.g. [`Progress::quiet`]).
pub fn watch_loss_log_with(path: impl Into<PathBuf>, progress: Progress) -> LossWatcher {
    let path = path.into();
    spawn_watcher(move |_| Some(path.clone()), progress)
}

/// Like [`watch_loss_log`] for a loop whose output folder is not known in advance (e.g.
/// `experiment::run` creates `reports/<name>/<run-id>/training/`): follows the newest `loss.jsonl`
/// under `dir` (up to four levels down) written after the watcher started.
pub fn watch_newest_loss_log(dir: impl Into<PathBuf>, progress: Progress) -> LossWatcher {
    let dir = dir.into();
    spawn_watcher(move |since| newest_loss_log(&dir, since, 4), progress)
}

fn newest_loss_log(dir: &Path, since: std::time::SystemTime, depth: usize) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let found = if p.is_dir() && depth > 0 {
            newest_loss_log(&p, since, depth - 1).and_then(|f| Some((f.metadata().ok()?.modified().ok()?, f)))
        } else if p.file_name().is_some_and(|n| n == "loss.jsonl") {
            e.metadata().ok().and_then(|m| m.modified().ok()).filter(|t| *t >= since).map(|t| (t, p))
        } else {
            None
        };
        if let Some((t, f)) = found
            && best.as_ref().is_none_or(|(bt, _)| t > *bt)
        {
            best = Some((t, f));
        }
    }
    best.map(|(_, p)| p)
}

fn spawn_watcher(find: impl Fn(std::time::SystemTime) -> Option<PathBuf> + Send + 'static, progress: Progress) -> LossWatcher {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // A second of slack: file times and the clock can disagree by that much on some filesystems.
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut progress = progress;
    let handle = std::thread::spawn(move || {
        let mut path: Option<PathBuf> = None;
        let mut consumed = 0usize;
        loop {
            // Read the flag first: after it is set, one more full read catches the last lines.
            let stopping = flag.load(std::sync::atomic::Ordering::Acquire);
            if path.is_none() {
                path = find(since);
            }
            if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
                let complete = text.rfind('\n').map_or(0, |i| i + 1);
                if complete > consumed {
                    for line in text[consumed..complete].lines() {
                        record_loss_line(&mut progress, line);
                    }
                    consumed = complete;
                }
            }
            if stopping {
                return progress;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    LossWatcher { stop, handle: Some(handle) }
}

/// The handle of [`watch_loss_log`]; [`LossWatcher::finish`] stops it and returns the progress.
#[derive(Debug)]
pub struct LossWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Progress>>,
}

impl LossWatcher {
    /// Run `train` (the training call) while following its log; stop following when it returns and
    /// give its result with the progress (whose `evcxr_display` shows the curves). The live view of
    /// a training run in one call:
    ///
    /// ```
    /// use std::io::Write;
    /// use tunelab::notebook::{watch_loss_log_with, Progress};
    /// let dir = tempfile::tempdir().unwrap();
    /// let log = dir.path().join("loss.jsonl");
    /// let (steps, progress) = watch_loss_log_with(&log, Progress::new("train", 2).quiet())
    ///     .during(|| -> std::io::Result<usize> {
    ///         let mut f = std::fs::File::create(&log)?;
    ///         writeln!(f, "{{\"step\": 1, \"loss\": 0.9}}\n{{\"step\": 2, \"loss\": 0.7}}")?;
    ///         Ok(2)
    ///     })
    ///     .unwrap();
    /// assert_eq!((steps, progress.history("loss").len()), (2, 2));
    /// ```
    pub fn during<T, E>(self, train: impl FnOnce() -> Result<T, E>) -> Result<(T, Progress), E> {
        let value = train()?;
        Ok((value, self.finish()))
    }

    /// Stop following the log (after reading what is there) and return the progress: its
    /// `evcxr_display` shows the curves.
    pub fn finish(mut self) -> Progress {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let handle = self.handle.take().expect("finish runs once");
        handle.join().unwrap_or_else(|_| Progress::new("(watcher panicked)", 0))
    }
}

impl Drop for LossWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

fn record_loss_line(progress: &mut Progress, line: &str) {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    // `step` in the contrastive trainer's log, `iteration` in the SFT trainer's (MLX-LM's word).
    let Some(step) = m.get("step").or_else(|| m.get("iteration")).and_then(|s| s.as_u64()) else {
        return;
    };
    let values: Vec<(&str, f64)> = m
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "loss" | "lr" | "val_loss" | "tokens_per_s") || k.starts_with("valid_"))
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.as_str(), x)))
        .collect();
    progress.update(step as usize, &values);
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

/// A grouped bar chart as an SVG string: one group per category, one bar per series.
///
/// ```
/// let svg = tunelab::notebook::bar_chart_svg("records", "count", &["public", "sacred"], &[("kept", &[212.0, 0.0]), ("excluded", &[0.0, 8.0])]).unwrap();
/// assert!(svg.starts_with("<svg") && svg.contains("sacred"));
/// ```
pub fn bar_chart_svg(title: &str, y_label: &str, categories: &[&str], series: &[(&str, &[f64])]) -> Result<String, NotebookError> {
    const COLORS: [RGBColor; 4] =
        [RGBColor(0x25, 0x63, 0xeb), RGBColor(0xdc, 0x26, 0x26), RGBColor(0x16, 0xa3, 0x4a), RGBColor(0x9c, 0xa3, 0xaf)];
    let err = |e: &dyn fmt::Display| NotebookError::Plot { what: title.to_string(), message: e.to_string() };
    let top = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let n = series.len().max(1) as f64;
    let mut svg = String::new();
    {
        crate::report::fonts::register();
        let root = SVGBackend::with_string(&mut svg, (720, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (crate::report::fonts::FAMILY, 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            // a..b has b - a + 1 segments: one per category.
            .build_cartesian_2d((0..categories.len().saturating_sub(1).max(1)).into_segmented(), 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => categories.get(*i).map(|c| c.to_string()).unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(&e))?;
        // Grouped bars: each category's segment split between the series, drawn in pixels.
        {
            let px = |i: usize, v: f64| chart.backend_coord(&(SegmentValue::Exact(i), v));
            let width = (px(1, 0.0).0 - px(0, 0.0).0) as f64;
            for (s, (_, values)) in series.iter().enumerate() {
                let color = COLORS[s % COLORS.len()];
                for (i, v) in values.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                    let (x, bottom) = px(i, 0.0);
                    let left = x + (width * (0.1 + 0.8 * s as f64 / n)) as i32;
                    let right = left + (width * 0.8 / n) as i32;
                    root.draw(&Rectangle::new([(left, px(i, *v).1), (right, bottom)], color.filled())).map_err(|e| err(&e))?;
                }
            }
        }
        for (s, (name, _)) in series.iter().enumerate() {
            let color = COLORS[s % COLORS.len()];
            chart
                .draw_series(std::iter::empty::<Circle<(SegmentValue<usize>, f64), i32>>())
                .map_err(|e| err(&e))?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
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
        crate::report::fonts::register();
        let root = SVGBackend::with_string(&mut svg, (640, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (crate::report::fonts::FAMILY, 16))
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
    fn notebook_report_refuses_to_overwrite_and_writes_full_tables() {
        let dir = tempfile::tempdir().unwrap();
        // 60 rows: report.md shows REPORT_ROWS (50) and says 10 more; the Arrow file keeps all 60.
        let df = df!("i" => (0..60i64).collect::<Vec<_>>()).unwrap();
        let r = NotebookReport::new("T").heading("H").table("t", &df).svg("p", "<svg></svg>");
        let files = r.write(dir.path()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.starts_with("# T\n") && md.contains("… 10 more rows") && md.contains("![p](plots/p.svg)"));
        use polars::prelude::SerReader;
        let back = polars::prelude::IpcReader::new(std::fs::File::open(&files.tables[0]).unwrap()).finish().unwrap();
        assert_eq!(back.height(), 60);
        let before = std::fs::read_to_string(&files.html).unwrap();
        assert!(r.write(dir.path()).is_err());
        assert_eq!(std::fs::read_to_string(&files.html).unwrap(), before);
    }

    #[test]
    fn loss_lines_feed_progress_and_skip_junk() {
        let mut p = Progress::new("t", 2).quiet();
        record_loss_line(&mut p, r#"{"step": 1, "epoch": 0, "loss": 2.5, "lr": 0.1, "grad_norm": 3.0}"#);
        record_loss_line(&mut p, "not json");
        record_loss_line(&mut p, r#"{"step": 2, "loss": 2.0, "lr": 0.05, "valid_ndcg_cut_10": 0.4}"#);
        assert_eq!(p.history("loss"), &[(1, 2.5), (2, 2.0)]);
        assert_eq!(p.history("valid_ndcg_cut_10"), &[(2, 0.4)]);
        assert!(p.history("grad_norm").is_empty(), "only loss, lr and validation values are shown");
    }

    #[test]
    fn the_sft_trainers_loss_log_is_followed_too() {
        let mut p = Progress::new("sft", 2).quiet();
        assert!(p.line(&[]).ends_with("eta ?"), "{}", p.line(&[]));
        record_loss_line(&mut p, r#"{"iteration":0,"val_loss":4.5}"#);
        record_loss_line(&mut p, r#"{"iteration":1,"loss":4.7,"lr":0.0,"tokens_per_s":31.5}"#);
        record_loss_line(&mut p, r#"{"iteration":2,"loss":2.7,"lr":0.001,"val_loss":2.4}"#);
        assert_eq!(p.history("loss"), &[(1, 4.7), (2, 2.7)]);
        assert_eq!(p.history("val_loss"), &[(0, 4.5), (2, 2.4)]);
        assert_eq!(p.history("tokens_per_s").len(), 1);
    }

    #[test]
    fn newest_loss_log_is_found_below_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let since = std::time::SystemTime::now() - Duration::from_secs(1);
        assert_eq!(newest_loss_log(dir.path(), since, 4), None);
        let run = dir.path().join("exp/run-1/training");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("loss.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("exp/other.jsonl"), "").unwrap();
        assert_eq!(newest_loss_log(dir.path(), since, 4), Some(run.join("loss.jsonl")));
        // Files older than the watcher are someone else's.
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        assert_eq!(newest_loss_log(dir.path(), later, 4), None);
    }

    #[test]
    fn progress_chart_handles_constant_and_nan_values() {
        let mut p = Progress::new("t", 2).quiet();
        p.update(1, &[("loss", f64::NAN)]);
        p.update(2, &[("loss", 1.0)]);
        assert!(p.chart_svg().unwrap().contains("<svg"));
    }
}
