//! `report.md` and the self-contained `report.html` (minijinja templates; plots inlined as SVG).
//!
//! Numbers are printed with 4 decimals, as trec_eval prints them, so a report can be checked
//! against `tunelab eval` / `tunelab compare` output by eye or by grep. p-values below 0.0001
//! are printed in scientific notation rather than as `0.0000`.

use minijinja::{Environment, Value, context};
use serde::Serialize;

use super::plots::Figure;
use super::{AbReportInput, ReportData, ReportError};

/// `0.4213`; `n/a` for NaN or infinities.
pub fn fmt_value(x: f64) -> String {
    if x.is_finite() { format!("{x:.4}") } else { "n/a".into() }
}

/// `+0.0412` / `-0.0100`.
pub fn fmt_signed(x: f64) -> String {
    if x.is_finite() { format!("{x:+.4}") } else { "n/a".into() }
}

/// `0.0031`, or `3.2e-5` below 0.0001.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p > 0.0 && p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

#[derive(Serialize)]
struct Row {
    measure: String,
    mean_a: String,
    mean_b: String,
    best: &'static str,
    diff: String,
    sign: &'static str,
    ci: String,
    p: String,
    p_holm: String,
    significant: bool,
    wins: u32,
    ties: u32,
    losses: u32,
    n_paired: usize,
    unpaired: usize,
    verdict: String,
}

#[derive(Serialize)]
struct Fig {
    name: String,
    title: String,
    caption: String,
    svg: String,
    svg_file: String,
    png_file: String,
}

fn rows(input: &AbReportInput, data: &ReportData) -> Vec<Row> {
    let (a, b) = (&input.system_a, &input.system_b);
    input
        .comparison
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let significant = r.p_holm < 0.05;
            let ci = format!("[{}, {}]", fmt_signed(r.ci_low), fmt_signed(r.ci_high));
            let verdict = if significant {
                let (better, worse) = if r.diff > 0.0 { (b, a) } else { (a, b) };
                format!(
                    "{better} is better than {worse} by {} (95% CI {ci}; Holm-corrected p = {}).",
                    fmt_value(r.diff.abs()),
                    fmt_p(r.p_holm)
                )
            } else {
                format!(
                    "no significant difference: {} (95% CI {ci}; Holm-corrected p = {}).",
                    fmt_signed(r.diff),
                    fmt_p(r.p_holm)
                )
            };
            Row {
                measure: r.measure.clone(),
                mean_a: fmt_value(r.mean_a),
                mean_b: fmt_value(r.mean_b),
                best: if r.mean_a > r.mean_b {
                    "a"
                } else if r.mean_b > r.mean_a {
                    "b"
                } else {
                    ""
                },
                diff: fmt_signed(r.diff),
                sign: if r.diff > 0.0 {
                    "pos"
                } else if r.diff < 0.0 {
                    "neg"
                } else {
                    ""
                },
                ci,
                p: fmt_p(r.p_value),
                p_holm: fmt_p(r.p_holm),
                significant,
                wins: r.wins,
                ties: r.ties,
                losses: r.losses,
                n_paired: data.paired[i].len(),
                unpaired: data.unpaired[i],
                verdict,
            }
        })
        .collect()
}

fn context(input: &AbReportInput, data: &ReportData, figures: &[Figure]) -> Value {
    let m = &input.manifest;
    let figs: Vec<Fig> = figures
        .iter()
        .map(|f| Fig {
            name: f.name.clone(),
            title: f.title.clone(),
            caption: f.caption.clone(),
            svg: f.svg_text.clone(),
            svg_file: format!("plots/{}.svg", f.name),
            png_file: format!("plots/{}.png", f.name),
        })
        .collect();
    let git = match &m.git {
        Some(g) => format!("{}{}", g.commit, if g.dirty { " (uncommitted changes)" } else { "" }),
        None => "not in a git checkout".into(),
    };
    let timings: Vec<(String, String)> =
        m.timings.iter().map(|t| (t.name.clone(), format!("{:.3} s", t.seconds))).collect();
    let tools: Vec<(String, String)> =
        m.tools.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    context! {
        title => input.title,
        system_a => input.system_a,
        system_b => input.system_b,
        rows => rows(input, data),
        figures => figs,
        m => m,
        git => git,
        timings => timings,
        tools => tools,
        config_json => pretty(&m.config),
        governance_json => if m.governance.is_null() { String::new() } else { pretty(&m.governance) },
        evaluation => m.evaluation,
        examples => input.examples,
        tables => input.tables,
        generator => format!("tunelab {}", crate::version()),
    }
}

fn render(name: &str, template: &str, ctx: Value) -> Result<String, ReportError> {
    let fail = |source| ReportError::Template { name: name.to_string(), source };
    let mut env = Environment::new();
    // Markdown table cells: escape the column separator, keep one line.
    env.add_filter("md", |s: String| s.replace('|', "\\|").replace(['\n', '\r'], " "));
    // Multi-line text in a Markdown table cell: line breaks as <br>.
    env.add_filter("mdlines", |s: String| s.replace('|', "\\|").replace('\r', "").replace('\n', "<br>"));
    env.add_template(name, template).map_err(fail)?;
    env.get_template(name).and_then(|t| t.render(ctx)).map_err(fail)
}

/// `report.md`: the tables in Markdown, plots linked from `plots/`.
pub(crate) fn render_markdown(
    input: &AbReportInput,
    data: &ReportData,
    figures: &[Figure],
) -> Result<String, ReportError> {
    render("report.md", MARKDOWN, context(input, data, figures))
}

/// `report.html`: one file with the SVG plots inline and no external resources.
pub(crate) fn render_html(
    input: &AbReportInput,
    data: &ReportData,
    figures: &[Figure],
) -> Result<String, ReportError> {
    render("report.html", HTML, context(input, data, figures))
}

const MARKDOWN: &str = r#"# {{ title }}

A = **{{ system_a|md }}**, B = **{{ system_b|md }}**. Experiment `{{ m.experiment }}`, run `{{ m.run_id }}`, {{ m.created_at }}.

{% for r in rows %}- **{{ r.measure|md }}**: {{ r.verdict }}
{% endfor %}
## Summary

| system |{% for r in rows %} {{ r.measure|md }} |{% endfor %}
|---|{% for r in rows %}---:|{% endfor %}
| {{ system_a|md }} (A) |{% for r in rows %} {{ r.mean_a }} |{% endfor %}
| {{ system_b|md }} (B) |{% for r in rows %} {{ r.mean_b }} |{% endfor %}

## Comparison (B − A)

| measure | mean A | mean B | diff | 95% CI | p | Holm p | W/T/L | queries |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
{% for r in rows %}| {{ r.measure|md }} | {{ r.mean_a }} | {{ r.mean_b }} | {{ r.diff }} | {{ r.ci }} | {{ r.p }} | {{ r.p_holm }} | {{ r.wins }}/{{ r.ties }}/{{ r.losses }} | {{ r.n_paired }} |
{% endfor %}
W/T/L: queries where B is better / equal / worse. p: two-sided paired randomization test; Holm p: corrected across the {{ rows|length }} measures.

## Plots
{% for f in figures %}
### {{ f.title }}

![{{ f.title }}]({{ f.svg_file }})

{{ f.caption }} ([PNG]({{ f.png_file }}))
{% endfor %}{% if examples %}
## Examples

{{ examples.caption }}

| id | input | {{ system_a|md }} (A) | {{ system_b|md }} (B) |
|---|---|---|---|
{% for e in examples.items %}| {{ e.id|md }} | {{ e.input|mdlines }} | {{ e.a|mdlines }}<br>*{{ e.note_a|md }}* | {{ e.b|mdlines }}<br>*{{ e.note_b|md }}* |
{% endfor %}{% endif %}{% for t in tables %}
## {{ t.title }}

{{ t.caption }}

|{% for h in t.header %} {{ h|md }} |{% endfor %}
|{% for h in t.header %}---|{% endfor %}
{% for r in t.rows %}|{% for c in r %} {{ c|md }} |{% endfor %}
{% endfor %}{% endfor %}
## Run

| | |
|---|---|
| experiment | `{{ m.experiment }}` |
| run id | `{{ m.run_id }}` |
| created | {{ m.created_at }} |
| seed | {{ m.seed }} |
| git commit | `{{ git }}` |
| tunelab | {{ m.crate_version }} |
| device | {{ m.device }} |
{% for k, v in tools %}| {{ k|md }} | {{ v|md }} |
{% endfor %}
{% if evaluation %}
### Evaluation (re-run with `tunelab report rerun manifest.json`)

- qrels: `{{ evaluation.qrels.path }}` (sha256 `{{ evaluation.qrels.sha256 }}`)
{% for r in evaluation.runs %}- run {{ r.system|md }}: `{{ r.run.path }}` (sha256 `{{ r.run.sha256 }}`)
{% endfor %}- measures: {{ evaluation.measures|join(", ") }}; seed {{ evaluation.seed }}; {{ evaluation.permutations }} permutations{% if evaluation.bootstrap %}; {{ evaluation.bootstrap }} bootstrap resamples{% endif %}
{% endif %}
{% if m.inputs %}
### Inputs

| path | sha256 | bytes |
|---|---|---:|
{% for i in m.inputs %}| `{{ i.path|md }}` | `{{ i.sha256 }}` | {{ i.bytes }}{% if i.files %} ({{ i.files }} files){% endif %} |
{% endfor %}{% endif %}
{% if timings %}
### Timings

| step | time |
|---|---:|
{% for n, t in timings %}| {{ n|md }} | {{ t }} |
{% endfor %}{% endif %}
### Configuration

```json
{{ config_json }}
```
{% if governance_json %}
### Governance audit

```json
{{ governance_json }}
```
{% endif %}
"#;

const HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{{ generator }}">
<title>{{ title }}</title>
<style>
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --soft: #f1f5f9; --a: #9aa5b1; --b: #2563eb; --win: #15803d; --loss: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; background: #f8fafc; color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 32px 32px 64px; background: #fff; min-height: 100vh; }
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.verdicts { list-style: none; padding: 0; margin: 0; }
.verdicts li { padding: 8px 12px; margin: 6px 0; border-left: 4px solid var(--line); background: var(--soft); border-radius: 0 6px 6px 0; }
.verdicts li.pos { border-left-color: var(--win); }
.verdicts li.neg { border-left-color: var(--loss); }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pos { color: var(--win); } td.neg { color: var(--loss); }
.best { font-weight: 700; }
.sig { font-weight: 700; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 0; }
figure { margin: 18px 0; padding: 14px; border: 1px solid var(--line); border-radius: 8px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 8px; }
figcaption a { color: inherit; }
.kv th { width: 190px; font-weight: 600; color: var(--muted); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
code.hash { word-break: break-all; }
pre { background: var(--soft); padding: 12px; border-radius: 6px; overflow: auto; max-height: 420px; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
pre.ex { white-space: pre-wrap; margin: 0; padding: 6px; max-height: none; }
table.examples td { vertical-align: top; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="sub"><span class="swatch" style="background: var(--a)"></span>A = <strong>{{ system_a }}</strong> &nbsp; <span class="swatch" style="background: var(--b)"></span>B = <strong>{{ system_b }}</strong> &nbsp;·&nbsp; experiment <code>{{ m.experiment }}</code>, run <code>{{ m.run_id }}</code> &nbsp;·&nbsp; {{ m.created_at }}</p>

<ul class="verdicts">
{% for r in rows %}<li class="{% if r.significant %}{{ r.sign }}{% endif %}"><strong>{{ r.measure }}</strong>: {{ r.verdict }}</li>
{% endfor %}</ul>

<h2>Summary</h2>
<table>
<thead><tr><th>system</th>{% for r in rows %}<th class="num">{{ r.measure }}</th>{% endfor %}</tr></thead>
<tbody>
<tr><td><span class="swatch" style="background: var(--a)"></span>{{ system_a }} (A)</td>{% for r in rows %}<td class="num{% if r.best == "a" %} best{% endif %}">{{ r.mean_a }}</td>{% endfor %}</tr>
<tr><td><span class="swatch" style="background: var(--b)"></span>{{ system_b }} (B)</td>{% for r in rows %}<td class="num{% if r.best == "b" %} best{% endif %}">{{ r.mean_b }}</td>{% endfor %}</tr>
</tbody>
</table>

<h2>Comparison (B − A)</h2>
<table>
<thead><tr><th>measure</th><th class="num">mean A</th><th class="num">mean B</th><th class="num">diff</th><th class="num">95% CI</th><th class="num">p</th><th class="num">Holm p</th><th class="num">W / T / L</th><th class="num">queries</th></tr></thead>
<tbody>
{% for r in rows %}<tr><td>{{ r.measure }}</td><td class="num">{{ r.mean_a }}</td><td class="num">{{ r.mean_b }}</td><td class="num {{ r.sign }}">{{ r.diff }}</td><td class="num">{{ r.ci }}</td><td class="num">{{ r.p }}</td><td class="num{% if r.significant %} sig{% endif %}">{{ r.p_holm }}</td><td class="num">{{ r.wins }} / {{ r.ties }} / {{ r.losses }}</td><td class="num">{{ r.n_paired }}{% if r.unpaired %} (+{{ r.unpaired }} unpaired){% endif %}</td></tr>
{% endfor %}</tbody>
</table>
<p class="note">W / T / L: queries where B is better / equal / worse. p: two-sided paired randomization test; Holm p: corrected across the {{ rows|length }} measures; bold where below 0.05.</p>

<h2>Plots</h2>
{% for f in figures %}<figure id="{{ f.name }}">
{{ f.svg|safe }}
<figcaption>{{ f.caption }} <a href="{{ f.svg_file }}">SVG</a> · <a href="{{ f.png_file }}">PNG</a></figcaption>
</figure>
{% endfor %}
{% if examples %}
<h2>Examples</h2>
<p class="note">{{ examples.caption }}</p>
<table class="examples">
<thead><tr><th>id</th><th>input</th><th>{{ system_a }} (A)</th><th>{{ system_b }} (B)</th></tr></thead>
<tbody>
{% for e in examples.items %}<tr><td><code>{{ e.id }}</code></td><td>{{ e.input }}</td><td><pre class="ex">{{ e.a }}</pre><div class="note">{{ e.note_a }}</div></td><td><pre class="ex">{{ e.b }}</pre><div class="note">{{ e.note_b }}</div></td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
{% for t in tables %}<h2>{{ t.title }}</h2>
<p class="note">{{ t.caption }}</p>
<table>
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endfor %}

<h2>Run</h2>
<table class="kv">
<tr><th>experiment</th><td><code>{{ m.experiment }}</code></td></tr>
<tr><th>run id</th><td><code>{{ m.run_id }}</code></td></tr>
<tr><th>created</th><td>{{ m.created_at }}</td></tr>
<tr><th>seed</th><td>{{ m.seed }}</td></tr>
<tr><th>git commit</th><td><code>{{ git }}</code></td></tr>
<tr><th>tunelab</th><td>{{ m.crate_version }}</td></tr>
<tr><th>device</th><td>{{ m.device }}</td></tr>
{% for k, v in tools %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if evaluation %}
<h3>Evaluation</h3>
<p class="note">Re-run with <code>tunelab report rerun manifest.json</code>: recomputes the per-query metrics from the stored files and checks them against <code>metrics.arrow</code>.</p>
<table>
<thead><tr><th>file</th><th>path</th><th>sha256</th></tr></thead>
<tbody>
<tr><td>qrels</td><td><code>{{ evaluation.qrels.path }}</code></td><td><code class="hash">{{ evaluation.qrels.sha256 }}</code></td></tr>
{% for r in evaluation.runs %}<tr><td>run {{ r.system }}</td><td><code>{{ r.run.path }}</code></td><td><code class="hash">{{ r.run.sha256 }}</code></td></tr>
{% endfor %}</tbody>
</table>
<p class="note">Measures: {{ evaluation.measures|join(", ") }} · seed {{ evaluation.seed }} · {{ evaluation.permutations }} permutations{% if evaluation.bootstrap %} · {{ evaluation.bootstrap }} bootstrap resamples{% endif %}</p>
{% endif %}
{% if m.inputs %}
<h3>Inputs</h3>
<table>
<thead><tr><th>path</th><th>sha256</th><th class="num">bytes</th></tr></thead>
<tbody>
{% for i in m.inputs %}<tr><td><code>{{ i.path }}</code></td><td><code class="hash">{{ i.sha256 }}</code></td><td class="num">{{ i.bytes }}{% if i.files %} ({{ i.files }} files){% endif %}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
{% if timings %}
<h3>Timings</h3>
<table>
<thead><tr><th>step</th><th class="num">time</th></tr></thead>
<tbody>
{% for n, t in timings %}<tr><td>{{ n }}</td><td class="num">{{ t }}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
<details open><summary>Configuration</summary>
<pre>{{ config_json }}</pre>
</details>
{% if governance_json %}<details><summary>Governance audit</summary>
<pre>{{ governance_json }}</pre>
</details>{% endif %}
<footer>Generated by {{ generator }}. Numbers are printed to 4 decimals, as trec_eval prints them; full precision is in <code>metrics.arrow</code> and <code>summary.arrow</code>.</footer>
</main>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_value(0.5), "0.5000");
        assert_eq!(fmt_value(1.0 / 3.0), "0.3333");
        assert_eq!(fmt_signed(0.04), "+0.0400");
        assert_eq!(fmt_signed(-0.01), "-0.0100");
        assert_eq!(fmt_p(0.00312), "0.0031");
        assert_eq!(fmt_p(0.00003), "3.0e-5");
        assert_eq!(fmt_p(0.0), "0.0000");
        assert_eq!(fmt_value(f64::NAN), "n/a");
    }
}
