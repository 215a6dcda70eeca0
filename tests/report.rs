//! A/B report end to end: synthetic per-query values → run directory with manifest, Arrow
//! tables, plots, report.md and a self-contained report.html; then `report rerun`.
//!
//! Set `TUNELAB_KEEP_REPORT=DIR` to write the synthetic report under DIR (kept) instead of a
//! temporary directory, e.g. to screenshot it with scripts/screenshot-report.sh.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use tunelab::eval::metrics::EvalOptions;
use tunelab::report::manifest::{EvaluationSpec, Manifest, RunDir, SystemRun};
use tunelab::report::{
    AbReportInput, ComparisonRow, LossPoint, QueryValue, ReportError, read_metrics, rerun,
    write_ab_report,
};

const N: usize = 40;

fn qid(i: usize) -> String {
    format!("q{i:02}")
}

/// Per-query values chosen so every mean is exact in binary and derivable by hand:
/// * ndcg_cut.10: A alternates 0.25 / 0.75 (mean 0.5), B alternates 0.5 / 1.0 (mean 0.75);
///   B − A = +0.25 on every query → 40 wins.
/// * recip_rank: A is 1.0 everywhere; B is 0.5 on every 4th query, else 1.0 → mean 1 − 10·0.5/40
///   = 0.875; B − A = −0.125 → 10 losses, 30 ties.
/// * P.5: both 0.2 everywhere → mean 0.2, 40 ties.
fn synthetic() -> (Vec<QueryValue>, Vec<QueryValue>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..N {
        let odd = i % 2 == 1;
        a.push((qid(i), "ndcg_cut.10".into(), if odd { 0.75 } else { 0.25 }));
        b.push((qid(i), "ndcg_cut.10".into(), if odd { 1.0 } else { 0.5 }));
        a.push((qid(i), "recip_rank".into(), 1.0));
        b.push((qid(i), "recip_rank".into(), if i % 4 == 0 { 0.5 } else { 1.0 }));
        a.push((qid(i), "P.5".into(), 0.2));
        b.push((qid(i), "P.5".into(), 0.2));
    }
    (a, b)
}

fn comparison() -> Vec<ComparisonRow> {
    // Means/W-T-L from the hand derivation above; CI and p-values are arbitrary distinctive
    // numbers so the test can find them in the documents.
    vec![
        ComparisonRow {
            measure: "ndcg_cut.10".into(),
            mean_a: 0.5,
            mean_b: 0.75,
            diff: 0.25,
            ci_low: 0.1875,
            ci_high: 0.3125,
            p_value: 0.0123,
            p_holm: 0.0369,
            wins: 40,
            ties: 0,
            losses: 0,
        },
        ComparisonRow {
            measure: "recip_rank".into(),
            mean_a: 1.0,
            mean_b: 0.875,
            diff: -0.125,
            ci_low: -0.2031,
            ci_high: -0.0469,
            p_value: 0.0021,
            p_holm: 0.0042,
            wins: 0,
            ties: 30,
            losses: 10,
        },
        ComparisonRow {
            measure: "P.5".into(),
            mean_a: 0.2,
            mean_b: 0.2,
            diff: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
            p_value: 1.0,
            p_holm: 1.0,
            wins: 0,
            ties: 40,
            losses: 0,
        },
    ]
}

fn loss_log() -> Vec<LossPoint> {
    (0..60)
        .map(|s| LossPoint {
            step: s * 10,
            loss: 2.0 / (1.0 + s as f64 * 0.2) + 0.05 * ((s * 7 % 5) as f64 / 5.0),
            valid_loss: (s % 10 == 9).then(|| 2.1 / (1.0 + s as f64 * 0.18)),
        })
        .collect()
}

/// Reports root: a kept directory when TUNELAB_KEEP_REPORT is set, else a temporary one.
fn reports_root() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("TUNELAB_KEEP_REPORT") {
        Some(dir) => (None, PathBuf::from(dir)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

#[test]
fn ab_report_has_every_file_plot_and_number() {
    let (_keep, root) = reports_root();
    let run = RunDir::create(&root, "synthetic-ab").unwrap();
    let mut manifest =
        Manifest::new(&run, 1234, serde_json::json!({"k": 100, "rrf": {"k": 60}}), "cpu");
    manifest.governance = serde_json::json!({"counts": {"public": 40}, "excluded": []});
    manifest.record_timing("search", std::time::Duration::from_millis(2500));
    let corpus = tempfile::NamedTempFile::new().unwrap();
    fs::write(corpus.path(), "{\"id\": \"d1\", \"text\": \"abc\"}\n").unwrap();
    let recorded = manifest.add_input(corpus.path()).unwrap().sha256.clone();
    let (a, b) = synthetic();
    let input = AbReportInput {
        title: "BM25 vs hybrid <synthetic>".into(),
        system_a: "bm25".into(),
        system_b: "hybrid".into(),
        per_query_a: a.clone(),
        per_query_b: b.clone(),
        comparison: comparison(),
        loss_log: Some(loss_log()),
        manifest: manifest.clone(),
        examples: None,
        tables: vec![tunelab::report::ReportTable {
            title: "Reranker calibration".into(),
            caption: "Held-out <judgments>".into(),
            header: vec!["reranker".into(), "Brier | ECE".into()],
            rows: vec![vec!["base".into(), "0.5225".into()], vec!["tuned".into(), "0.2230".into()]],
        }],
    };
    let paths = write_ab_report(&run, &input).unwrap();
    // Extra tables: a section each, in Markdown (pipes escaped) and HTML (escaped).
    let md = fs::read_to_string(&paths.report_md).unwrap();
    assert!(md.contains("## Reranker calibration\n\nHeld-out <judgments>\n"), "{md}");
    assert!(md.contains("| reranker | Brier \\| ECE |\n|---|---|\n| base | 0.5225 |\n| tuned | 0.2230 |\n"), "{md}");
    let page = fs::read_to_string(&paths.report_html).unwrap();
    assert!(page.contains("<h2>Reranker calibration</h2>") && page.contains("Held-out &lt;judgments&gt;"));
    assert!(page.contains("<td>tuned</td><td>0.2230</td>"));
    if std::env::var_os("TUNELAB_KEEP_REPORT").is_some() {
        eprintln!("report written to {}", paths.report_html.display());
    }

    for p in [&paths.manifest, &paths.metrics, &paths.summary, &paths.report_md, &paths.report_html]
    {
        assert!(p.is_file(), "{} missing", p.display());
    }
    // 2 overview plots + one per measure + training curve, each as SVG and PNG.
    assert_eq!(paths.plots.len(), 2 * (2 + 3 + 1));
    for p in &paths.plots {
        assert!(fs::metadata(p).unwrap().len() > 1000, "{} is suspiciously small", p.display());
    }

    // Manifest round-trips through JSON.
    assert_eq!(Manifest::read(&paths.manifest).unwrap(), manifest);

    // metrics.arrow holds exactly the input rows.
    let stored = read_metrics(&paths.metrics).unwrap();
    let expected: Vec<(String, String, String, f64)> = a
        .iter()
        .map(|v| ("bm25".to_string(), v.0.clone(), v.1.clone(), v.2))
        .chain(b.iter().map(|v| ("hybrid".to_string(), v.0.clone(), v.1.clone(), v.2)))
        .collect();
    assert_eq!(stored, expected);

    // summary.arrow: one row per measure with the comparison numbers.
    let df = IpcReader::new(fs::File::open(&paths.summary).unwrap()).finish().unwrap();
    assert_eq!(df.height(), 3);
    let diff: Vec<f64> = df.column("diff").unwrap().f64().unwrap().into_no_null_iter().collect();
    assert_eq!(diff, [0.25, -0.125, 0.0]);
    let losses: Vec<u32> =
        df.column("losses").unwrap().u32().unwrap().into_no_null_iter().collect();
    assert_eq!(losses, [0, 10, 0]);

    let html = fs::read_to_string(&paths.report_html).unwrap();
    // Plots are inline SVG documents (6 figures), not links to files.
    assert_eq!(html.matches("<svg").count(), 6, "expected 6 inline SVGs");
    assert!(html.contains("id=\"per_query_ndcg_cut_10\""));
    // Self-contained: nothing loaded from elsewhere.
    for external in ["<script", "<link", "src=\"http", "url(http", "<img"] {
        assert!(!html.contains(external), "report.html contains {external}");
    }
    // The title is HTML-escaped, not injected.
    assert!(html.contains("BM25 vs hybrid &lt;synthetic&gt;"));
    // Numbers from the input table, printed with 4 decimals.
    for s in [
        "0.5000",
        "0.7500",
        "+0.2500",
        "[+0.1875, +0.3125]",
        "0.0123",
        "0.0369", // ndcg_cut.10
        "1.0000",
        "0.8750",
        "-0.1250",
        "[-0.2031, -0.0469]",
        "0.0021",
        "0.0042", // recip_rank
        "0.2000",
        "+0.0000",
        "40 / 0 / 0",
        "0 / 30 / 10",
        "0 / 40 / 0",
    ] {
        assert!(html.contains(s), "report.html lacks {s}");
    }
    assert!(html.contains("hybrid is better than bm25 by 0.2500"));
    assert!(html.contains("bm25 is better than hybrid by 0.1250"));
    assert!(html.contains(&manifest.run_id) && html.contains("&quot;rrf&quot;"));
    assert!(html.contains(&recorded), "the input's SHA-256 is listed");

    let md = fs::read_to_string(&paths.report_md).unwrap();
    assert!(md.contains("| ndcg_cut.10 | 0.5000 | 0.7500 | +0.2500 | [+0.1875, +0.3125] | 0.0123 | 0.0369 | 40/0/0 | 40 |"), "{md}");
    assert!(md.contains("![Mean per measure](plots/metric_bars.svg)"));
    for f in [
        "metric_bars",
        "metric_differences",
        "per_query_recip_rank",
        "per_query_P_5",
        "training_curve",
    ] {
        assert!(run.plots_dir().join(format!("{f}.svg")).is_file(), "{f}.svg");
        assert!(run.plots_dir().join(format!("{f}.png")).is_file(), "{f}.png");
    }

    // A second report into the same run directory is refused and leaves the first intact.
    let before = fs::read(&paths.report_html).unwrap();
    assert!(matches!(write_ab_report(&run, &input), Err(ReportError::Exists(_))));
    assert_eq!(fs::read(&paths.report_html).unwrap(), before);
}

#[test]
fn inconsistent_inputs_are_refused_before_writing() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::create(root.path(), "bad").unwrap();
    let (a, b) = synthetic();
    let mut rows = comparison();
    rows[0].mean_a = 0.51; // the per-query values average 0.5
    let input = AbReportInput {
        title: "t".into(),
        system_a: "bm25".into(),
        system_b: "hybrid".into(),
        per_query_a: a,
        per_query_b: b,
        comparison: rows,
        loss_log: None,
        manifest: Manifest::new(&run, 1, serde_json::Value::Null, "cpu"),
        examples: None,
        tables: Vec::new(),
    };
    let err = write_ab_report(&run, &input).unwrap_err().to_string();
    assert!(err.contains("ndcg_cut.10") && err.contains("bm25") && err.contains("0.51"), "{err}");
    assert!(!run.path().join("manifest.json").exists());
}

/// A toy metric for the rerun test: `hit.1` = 1 if the top-scored document (ties by doc id
/// descending) is judged relevant, else 0. Files are whitespace-separated TREC qrels / runs.
fn hit_at_1(qrels: &Path, run: &Path, measures: &[String], _: &EvalOptions) -> Result<Vec<QueryValue>, String> {
    assert_eq!(measures, ["hit.1"]);
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut rel: BTreeMap<(String, String), i32> = BTreeMap::new();
    for line in read(qrels)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        rel.insert((f[0].into(), f[2].into()), f[3].parse().map_err(|e| format!("{e}"))?);
    }
    let mut best: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for line in read(run)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (q, d, s) =
            (f[0].to_string(), f[2].to_string(), f[4].parse::<f64>().map_err(|e| format!("{e}"))?);
        let e = best.entry(q).or_insert((f64::NEG_INFINITY, String::new()));
        if s > e.0 || (s == e.0 && d > e.1) {
            *e = (s, d);
        }
    }
    Ok(best
        .into_iter()
        .map(|(q, (_, d))| {
            let hit = rel.get(&(q.clone(), d)).is_some_and(|r| *r > 0);
            (q, "hit.1".to_string(), if hit { 1.0 } else { 0.0 })
        })
        .collect())
}

#[test]
fn rerun_reproduces_metrics_and_detects_differences() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("qrels.txt"), "q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 1\n").unwrap();
    // A: q1 top d2 (not relevant), q2 top d3 (relevant). B: q1 top d1 (tie with d0 on score;
    // trec order puts d1 first), q2 top d4 (unjudged).
    fs::write(src.join("a.run"), "q1 Q0 d2 1 0.9 a\nq1 Q0 d1 2 0.5 a\nq2 Q0 d3 1 0.7 a\n").unwrap();
    fs::write(src.join("b.run"), "q1 Q0 d0 1 0.8 b\nq1 Q0 d1 2 0.8 b\nq2 Q0 d4 1 0.9 b\n").unwrap();

    let run = RunDir::create(root.path(), "rerun").unwrap();
    let mut manifest = Manifest::new(&run, 5, serde_json::json!({}), "cpu");
    let qrels = run.store_input(&src.join("qrels.txt"), "qrels.txt").unwrap();
    let ra = run.store_input(&src.join("a.run"), "a.run").unwrap();
    let rb = run.store_input(&src.join("b.run"), "b.run").unwrap();
    manifest.evaluation = Some(EvaluationSpec {
        qrels,
        runs: vec![
            SystemRun { system: "a".into(), run: ra },
            SystemRun { system: "b".into(), run: rb },
        ],
        measures: vec!["hit.1".into()],
        seed: 5,
        permutations: 1000,
        bootstrap: None,
        options: EvalOptions::default(),
    });
    let measures = vec!["hit.1".to_string()];
    let a = hit_at_1(&src.join("qrels.txt"), &src.join("a.run"), &measures, &EvalOptions::default()).unwrap();
    let b = hit_at_1(&src.join("qrels.txt"), &src.join("b.run"), &measures, &EvalOptions::default()).unwrap();
    // By hand: A = {q1: 0, q2: 1}, B = {q1: 1, q2: 0}.
    assert_eq!(a.iter().map(|v| v.2).collect::<Vec<_>>(), [0.0, 1.0]);
    assert_eq!(b.iter().map(|v| v.2).collect::<Vec<_>>(), [1.0, 0.0]);
    let input = AbReportInput {
        title: "rerun".into(),
        system_a: "a".into(),
        system_b: "b".into(),
        per_query_a: a,
        per_query_b: b,
        comparison: vec![ComparisonRow {
            measure: "hit.1".into(),
            mean_a: 0.5,
            mean_b: 0.5,
            diff: 0.0,
            ci_low: -1.0,
            ci_high: 1.0,
            p_value: 1.0,
            p_holm: 1.0,
            wins: 1,
            ties: 0,
            losses: 1,
        }],
        loss_log: None,
        manifest,
        examples: None,
        tables: Vec::new(),
    };
    let paths = write_ab_report(&run, &input).unwrap();

    let ok = rerun(&paths.manifest, &hit_at_1).unwrap();
    assert!(ok.matches(), "{ok:?}");
    assert_eq!(ok.compared, 4);

    // An evaluator that disagrees on one value is reported value by value.
    let off = |q: &Path, r: &Path, m: &[String], o: &EvalOptions| -> Result<Vec<QueryValue>, String> {
        let mut v = hit_at_1(q, r, m, o)?;
        if r.ends_with("b.run") {
            v[0].2 += 1e-12;
        }
        Ok(v)
    };
    let bad = rerun(&paths.manifest, &off).unwrap();
    assert!(!bad.matches());
    assert_eq!(bad.mismatches.len(), 1);
    assert_eq!((bad.mismatches[0].system.as_str(), bad.mismatches[0].qid.as_str()), ("b", "q1"));

    // A stored file changed after the run is caught by its hash.
    fs::write(run.path().join("inputs/a.run"), "q1 Q0 d1 1 0.9 a\n").unwrap();
    assert!(matches!(rerun(&paths.manifest, &hit_at_1), Err(ReportError::HashMismatch { .. })));
}

#[test]
fn cli_rerun_explains_a_manifest_without_evaluation() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::create(root.path(), "cli").unwrap();
    let path = Manifest::new(&run, 1, serde_json::Value::Null, "cpu").write(&run).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["report", "rerun"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("manifest.json") && err.contains("no `evaluation` section"), "{err}");
}

/// A report evaluated with trec_eval's `-c` (as the experiment's `--skip-training` BM25 run, which
/// leaves queries unanswered) and `-l 2` must re-run with them: the manifest records every
/// evaluation option and `report rerun` uses them. Variants: `-c` with levels 1, 2 and 0.
#[cfg(feature = "models")]
#[test]
fn rerun_uses_the_evaluation_options_recorded_in_the_manifest() {
    use tunelab::data::trec::{Qrels, Run};
    use tunelab::eval::compare::{CompareOptions, compare};
    use tunelab::eval::metrics::{Measure, evaluate};
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("qrels.txt"), "q1 0 d1 2\nq1 0 d2 1\nq2 0 d3 1\nq3 0 d4 2\n").unwrap();
    // A answers only q1; B answers q1 and q2: without -c, q2 and q3 drop out of A's values.
    fs::write(src.join("a.run"), "q1 Q0 d2 1 0.9 a\nq1 Q0 d1 2 0.5 a\n").unwrap();
    fs::write(src.join("b.run"), "q1 Q0 d1 1 0.8 b\nq2 Q0 d3 1 0.9 b\n").unwrap();
    let names = vec!["map".to_string(), "recip_rank".to_string()];
    let measures = Measure::parse_list(&names).unwrap();
    let qrels = Qrels::read(src.join("qrels.txt")).unwrap();
    let (run_a, run_b) = (Run::read(src.join("a.run")).unwrap(), Run::read(src.join("b.run")).unwrap());
    for (i, options) in [(true, 1), (true, 2), (true, 0)].into_iter().enumerate() {
        let options = EvalOptions { complete: options.0, relevance_level: options.1 };
        let copts = CompareOptions {
            complete: options.complete,
            relevance_level: options.relevance_level,
            permutations: 100,
            bootstrap_samples: 100,
            ..CompareOptions::default()
        };
        let run = RunDir::create(root.path(), &format!("opts{i}")).unwrap();
        let mut manifest = Manifest::new(&run, 5, serde_json::json!({}), "cpu");
        let values = |name: &str| {
            tunelab::report::per_query_values(&evaluate(&qrels, &Run::read(src.join(name)).unwrap(), &measures, &options))
        };
        manifest.evaluation = Some(EvaluationSpec {
            qrels: run.store_input(&src.join("qrels.txt"), "qrels.txt").unwrap(),
            runs: vec![
                SystemRun { system: "a".into(), run: run.store_input(&src.join("a.run"), "a.run").unwrap() },
                SystemRun { system: "b".into(), run: run.store_input(&src.join("b.run"), "b.run").unwrap() },
            ],
            measures: names.clone(),
            seed: 5,
            permutations: 100,
            bootstrap: None,
            options: options.clone(),
        });
        let input = AbReportInput {
            title: "options".into(),
            system_a: "a".into(),
            system_b: "b".into(),
            per_query_a: values("a.run"),
            per_query_b: values("b.run"),
            comparison: compare(&qrels, &run_a, &run_b, &measures, &copts).metrics.iter().map(ComparisonRow::from).collect(),
            loss_log: None,
            manifest,
            examples: None,
            tables: Vec::new(),
        };
        let paths = write_ab_report(&run, &input).unwrap();
        let outcome = rerun(&paths.manifest, &tunelab::cli::report::metrics_evaluator()).unwrap();
        assert!(outcome.matches(), "{options:?}: {:?}", outcome.mismatches);
        let text = fs::read_to_string(&paths.manifest).unwrap();
        assert!(text.contains("\"complete\"") && text.contains("\"relevance_level\""), "{text}");
    }
}

/// A machine without fonts draws the report's plots too: the A/B report test above, run again in
/// a child process whose fontconfig knows no font directory but an empty one (as on the headless
/// GPU machine, where `tunelab experiment` stopped at its first plot with "No such font:
/// sans-serif", after writing its runs but before its report).
#[test]
fn reports_draw_without_system_fonts() {
    let tmp = tempfile::tempdir().unwrap();
    let (empty, cache) = (tmp.path().join("no-fonts"), tmp.path().join("cache"));
    std::fs::create_dir_all(&empty).unwrap();
    let conf = tmp.path().join("fonts.conf");
    std::fs::write(&conf, format!("<?xml version=\"1.0\"?>\n<fontconfig><dir>{}</dir><cachedir>{}</cachedir></fontconfig>\n", empty.display(), cache.display())).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["report::ab_report_has_every_file_plot_and_number", "--exact", "--test-threads=1"])
        .env("FONTCONFIG_FILE", &conf)
        .env("HOME", tmp.path())
        .env("XDG_DATA_HOME", &empty)
        .env("XDG_DATA_DIRS", &empty)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}
