//! `tunelab eval` / `tunelab compare` as a user runs them: output format, errors on bad input,
//! determinism of the A/B statistics.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tunelab(args: &[&str], files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab")).args(args).args(files).output().expect("spawn tunelab")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr_of_failure(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr.clone()).unwrap()
}

const QRELS: &str = "q1 0 a 1\nq1 0 b 2\nq2 0 c 1\nq3 0 z 1\n";
// q1 ranked x (3), a (2): first relevant at rank 2. q2: c first. q9 is not judged (ignored),
// q3 is not retrieved (skipped without -c).
const RUN: &str = "q1 Q0 x 1 3 myrun\nq1 Q0 a 2 2 myrun\nq2 Q0 c 1 1 myrun\nq9 Q0 c 1 1 myrun\n";

#[test]
fn prints_trec_eval_format_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (q, r) = (write(dir.path(), "q", QRELS), write(dir.path(), "r", RUN));
    let o = tunelab(&["eval", "-q", "-m", "recip_rank", "-m", "P.1,2", "-m", "runid", "-m", "num_q"], &[&q, &r]);
    // recip_rank: q1 1/2, q2 1 → mean 0.75. P_1: q1 0, q2 1 → 0.5. P_2: q1 1/2, q2 1/2 → 0.5.
    // trec_eval order: per-query blocks, then runid, num_q, recip_rank, P (its table order).
    let want = "\
recip_rank            \tq1\t0.5000
P_1                   \tq1\t0.0000
P_2                   \tq1\t0.5000
recip_rank            \tq2\t1.0000
P_1                   \tq2\t1.0000
P_2                   \tq2\t0.5000
runid                 \tall\tmyrun
num_q                 \tall\t2
recip_rank            \tall\t0.7500
P_1                   \tall\t0.5000
P_2                   \tall\t0.5000
";
    assert_eq!(stdout(&o), want);

    // -c: q3 (judged, not retrieved) joins with zeros: recip_rank (0.5 + 1 + 0) / 3 = 0.5.
    let o = tunelab(&["eval", "-c", "-m", "recip_rank", "-m", "num_q"], &[&q, &r]);
    assert_eq!(stdout(&o), "num_q                 \tall\t3\nrecip_rank            \tall\t0.5000\n");

    // -l 2: only b (rel 2) is relevant in q1 and it was not retrieved; q2 has none → 0.
    let o = tunelab(&["eval", "-l", "2", "-m", "recip_rank"], &[&q, &r]);
    assert_eq!(stdout(&o), "recip_rank            \tall\t0.0000\n");

    // Default measures (no -m) include runid and the counts: num_ret = 2 + 1 = 3.
    let o = stdout(&tunelab(&["eval"], &[&q, &r]));
    assert!(
        o.starts_with(
            "runid                 \tall\tmyrun\nnum_q                 \tall\t2\nnum_ret               \tall\t3\n"
        ),
        "{o}"
    );
    // q1 and q2 each retrieve one relevant document: P_1000 = 1/1000 for both, mean 0.0010.
    assert!(o.contains("P_1000                \tall\t0.0010\n"), "{o}");
}

#[test]
fn bad_input_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let q = write(dir.path(), "good.qrels", QRELS);
    let r = write(dir.path(), "good.run", RUN);

    let bad = write(dir.path(), "short.run", "q1 Q0 a 1 0.5 t\nq1 Q0 b 2 0.4\n");
    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&q, &bad]));
    assert!(e.contains("short.run:2: missing column `tag`"), "{e}");

    let bad = write(dir.path(), "score.run", "q1 Q0 a 1 0.5 t\n\nq1 Q0 b 2 high t\n");
    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&q, &bad]));
    assert!(e.contains("score.run:3: field `score` is not a number: \"high\""), "{e}");

    let bad = write(dir.path(), "dup.qrels", "q1 0 a 1\nq1 0 b 0\nq1 0 a 0\n");
    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&bad, &r]));
    assert!(
        e.contains("dup.qrels:3: duplicate judgment for query \"q1\" document \"a\" (first judged at line 1)"),
        "{e}"
    );

    let bad = write(dir.path(), "dup.run", "q1 Q0 a 1 2 t\nq1 Q0 a 2 1 t\n");
    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&q, &bad]));
    assert!(e.contains("dup.run:2: document \"a\" retrieved twice"), "{e}");

    let e = stderr_of_failure(&tunelab(&["eval", "-m", "bpref"], &[&q, &r]));
    assert!(e.contains("unknown or unsupported measure \"bpref\""), "{e}");

    let other = write(dir.path(), "other.run", "q7 Q0 a 1 1 t\n");
    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&q, &other]));
    assert!(e.contains("no queries with both results"), "{e}");

    let e = stderr_of_failure(&tunelab(&["eval", "-m", "map"], &[&q, &dir.path().join("absent.run")]));
    assert!(e.contains("absent.run"), "{e}");
}

#[test]
fn compare_is_seeded_and_reports_every_statistic() {
    let dir = tempfile::tempdir().unwrap();
    // 12 queries, one relevant document each. A finds it at rank 2 everywhere; B at rank 1 in
    // q0..q8, misses it in q9, and ties A in q10, q11 (rank 2).
    let mut qrels = String::new();
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..12 {
        qrels += &format!("q{i} 0 rel{i} 1\n");
        a += &format!("q{i} Q0 junk 1 2 A\nq{i} Q0 rel{i} 2 1 A\n");
        b += &match i {
            0..=8 => format!("q{i} Q0 rel{i} 1 2 B\nq{i} Q0 junk 2 1 B\n"),
            9 => format!("q{i} Q0 junk 1 2 B\n"),
            _ => format!("q{i} Q0 junk 1 2 B\nq{i} Q0 rel{i} 2 1 B\n"),
        };
    }
    let q = write(dir.path(), "q", &qrels);
    let ra = write(dir.path(), "a", &a);
    let rb = write(dir.path(), "b", &b);
    let args = [
        "compare",
        "-m",
        "recip_rank",
        "-m",
        "P.1",
        "--seed",
        "3",
        "--permutations",
        "2000",
        "--bootstrap",
        "2000",
        "--json",
    ];
    let j1 = stdout(&tunelab(&args, &[&q, &ra, &rb]));
    let j2 = stdout(&tunelab(&args, &[&q, &ra, &rb]));
    assert_eq!(j1, j2, "same seed, different numbers");
    let v: serde_json::Value = serde_json::from_str(&j1).unwrap();
    let m = &v["metrics"][0];
    assert_eq!(m["measure"], "recip_rank");
    // A: 1/2 on all 12 → 0.5. B: 1 ×9, 0 ×1, 1/2 ×2 → 10/12.
    assert!((m["mean_a"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((m["mean_b"].as_f64().unwrap() - 10.0 / 12.0).abs() < 1e-12);
    assert_eq!((m["wins"].as_u64(), m["ties"].as_u64(), m["losses"].as_u64()), (Some(9), Some(2), Some(1)));
    let p = m["p_value"].as_f64().unwrap();
    assert!(p > 0.0 && p < 0.05, "p = {p}");
    assert!(m["p_holm"].as_f64().unwrap() >= p);
    let (lo, hi) = (m["ci_low"].as_f64().unwrap(), m["ci_high"].as_f64().unwrap());
    assert!(lo < 1.0 / 3.0 && 1.0 / 3.0 < hi && lo > 0.0, "[{lo}, {hi}]");

    let other_seed = stdout(&tunelab(
        &["compare", "-m", "recip_rank", "--seed", "4", "--permutations", "2000", "--json"],
        &[&q, &ra, &rb],
    ));
    assert_ne!(j1, other_seed);

    let table = stdout(&tunelab(&["compare", "-m", "recip_rank", "-m", "P.1"], &[&q, &ra, &rb]));
    assert!(table.contains("recip_rank") && table.contains("P_1") && table.contains("9/2/1"), "{table}");
}

/// Numbers that would give nonsense are refused before anything is computed: a negative `-l`
/// (MAP above 1), an empty run in `compare` (a "significant" difference from a file that failed
/// to be written) or in `eval`, an empty qrels file. A BOM-started qrels/run reads as the plain one.
#[test]
fn nonsense_levels_and_empty_runs_are_refused_and_a_bom_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (q, r) = (write(dir.path(), "q", QRELS), write(dir.path(), "r", RUN));
    let empty = write(dir.path(), "empty.run", "");
    let blank = write(dir.path(), "blank.run", "# no results\n\n");
    for level in ["-1", "-7", "x"] {
        let err = stderr_of_failure(&tunelab(&["eval", "-l", level], &[&q, &r]));
        assert!(err.contains("level-for-rel") || err.contains("-l"), "{level}: {err}");
    }
    for e in [&empty, &blank] {
        let err = stderr_of_failure(&tunelab(&["compare"], &[&q, &r, e]));
        assert!(err.contains("holds no results"), "{err}");
        let err = stderr_of_failure(&tunelab(&["compare"], &[&q, e, &r]));
        assert!(err.contains("holds no results"), "{err}");
        let err = stderr_of_failure(&tunelab(&["eval", "-c"], &[&q, e]));
        assert!(err.contains("holds no results"), "{err}");
    }
    let err = stderr_of_failure(&tunelab(&["eval"], &[&empty, &r]));
    assert!(err.contains("no judgments"), "{err}");
    // BOM + CRLF variants give exactly the plain files' output.
    let plain = stdout(&tunelab(&["eval", "-q", "-c"], &[&q, &r]));
    let qb = write(dir.path(), "qb", &format!("\u{feff}{}", QRELS.replace('\n', "\r\n")));
    let rb = write(dir.path(), "rb", &format!("\u{feff}{}", RUN.replace('\n', " \r\n")));
    assert_eq!(stdout(&tunelab(&["eval", "-q", "-c"], &[&qb, &rb])), plain);
}
