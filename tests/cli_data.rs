//! `tunelab data` end to end on the fixtures in tests/fixtures/data/.
//!
//! Expected numbers are read off the fixture files by hand (see the comments at each assertion).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn policy() -> String {
    fixture("governance/policy.toml").display().to_string()
}

/// Runs `tunelab data ARGS` in `cwd` (a temporary folder unless given, so no bundled policy is found).
fn tunelab(args: &[&str], cwd: Option<&Path>) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .arg("data")
        .args(args)
        .current_dir(cwd.unwrap_or(tmp.path()))
        .output()
        .expect("run tunelab")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpected success:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn inspect_pairs_prints_statistics_and_audit() {
    let f = fixture("pairs.jsonl");
    let out = ok(&tunelab(&["inspect", f.to_str().unwrap(), "--policy", &policy()], None));
    assert!(out.contains("embedding pairs"), "{out}");
    assert!(out.contains("chars_mean") && out.contains("positive"), "{out}");
    // pairs.jsonl: 12 records; kept p1 p2 p3 p4 p10 p11 p12; excluded p5 (no consent), p6 (consent not
    // in the ledger), p7 (ben withdrew), sacred-1, p9 (unclassified).
    assert!(out.contains("kept 7 of 12 records"), "{out}");
    for (id, reason) in [
        ("p5", "missing_consent"),
        ("p6", "unknown_consent"),
        ("p7", "withdrawn"),
        ("sacred-1", "sacred"),
        ("p9", "unclassified"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!(" {id} ")) && l.contains(reason)),
            "{id} {reason} missing:\n{out}"
        );
    }
}

#[test]
fn malformed_line_names_file_line_and_field() {
    let f = fixture("bad_pairs.jsonl");
    let err = failed(&tunelab(&["inspect", f.to_str().unwrap(), "--policy", &policy()], None));
    // Line 3 has "positive": 5 (line 2 is blank and still counted).
    assert!(err.contains("bad_pairs.jsonl:3: field `positive`"), "{err}");

    let err = failed(&tunelab(&["inspect", fixture("mixed.jsonl").to_str().unwrap()], None));
    assert!(err.contains("mixed.jsonl:2") && err.contains("mixed formats"), "{err}");

    let err = failed(&tunelab(
        &["inspect", fixture("qe_bad_kind.jsonl").to_str().unwrap()],
        None,
    ));
    assert!(
        err.contains("qe_bad_kind.jsonl:2: field `output[0][0]`") && err.contains("bm25"),
        "{err}"
    );

    let err = failed(&tunelab(&["inspect", fixture("corpus_bad").to_str().unwrap()], None));
    assert!(err.contains("wrong.md:3: field `classification`"), "{err}");
}

#[test]
fn skip_bad_reports_every_skipped_line() {
    let f = fixture("bad_pairs.jsonl");
    let out = tunelab(
        &["inspect", f.to_str().unwrap(), "--policy", &policy(), "--skip-bad"],
        None,
    );
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines 3 (type) and 5 (unterminated JSON) are bad; b1 and b4 remain.
    assert!(stderr.contains("skipped 2 bad line(s)"), "{stderr}");
    assert!(
        stderr.contains("bad_pairs.jsonl:3:") && stderr.contains("bad_pairs.jsonl:5:"),
        "{stderr}"
    );
    assert!(stdout.contains("kept 2 of 2 records"), "{stdout}");
}

#[test]
fn inspect_mlx_folder_reports_splits_and_leakage() {
    let out = ok(&tunelab(
        &["inspect", fixture("mlx_chat").to_str().unwrap(), "--policy", &policy()],
        None,
    ));
    assert!(out.contains("chat (messages)"), "{out}");
    // train has 3 records, valid 1, test 1; the test question "when is HIGH tide" is train's t1.
    assert!(out.contains("leakage across splits: 1 text(s)"), "{out}");
    assert!(out.contains("t1,x1"), "{out}");
    assert!(out.contains("kept 4 of 5 records"), "{out}"); // t3 is sacred
}

#[test]
fn split_writes_mlx_layout_and_audit_without_sacred_records() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("split");
    let f = fixture("pairs.jsonl");
    let args = [
        "split",
        f.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--policy",
        &policy(),
        "--seed",
        "3",
    ];
    ok(&tunelab(&args, None));

    let mut written: Vec<String> = Vec::new();
    for s in ["train", "valid", "test"] {
        written.extend(ids(&out_dir.join(format!("{s}.jsonl"))));
    }
    written.sort();
    // The 7 kept records of pairs.jsonl (see inspect_pairs_prints_statistics_and_audit), nothing else.
    assert_eq!(written, ["p1", "p10", "p11", "p12", "p2", "p3", "p4"]);

    let audit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("audit.json")).unwrap()).unwrap();
    let excluded: Vec<(&str, &str)> = audit["governance"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert!(excluded.contains(&("sacred-1", "sacred")), "{excluded:?}");
    assert_eq!(audit["governance"]["counts"]["sacred"]["total"], 1);
    assert_eq!(audit["governance"]["kept"], 7);
    assert_eq!(audit["config"]["seed"], 3);

    // p1 and p2 share doc_id d1: same split.
    let home = |id: &str| {
        ["train", "valid", "test"]
            .into_iter()
            .find(|s| ids(&out_dir.join(format!("{s}.jsonl"))).iter().any(|i| i == id))
    };
    assert_eq!(home("p1"), home("p2"));

    // Same seed again → byte-identical files.
    let again = dir.path().join("again");
    let args2 = [
        "split",
        f.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--policy",
        &policy(),
        "--seed",
        "3",
    ];
    ok(&tunelab(&args2, None));
    for name in ["train.jsonl", "valid.jsonl", "test.jsonl", "audit.json"] {
        assert_eq!(
            std::fs::read(out_dir.join(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn split_uses_builtin_default_policy_and_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("pairs.jsonl");
    // Built-in default: empty ledger and no withdrawal list, so p4 (community) is out too and p7
    // (public, ben) stays: kept p1 p2 p3 p7 p10 p11 p12.
    let stdout = ok(&tunelab(
        &["split", f.to_str().unwrap(), "--out", "o"],
        Some(dir.path()),
    ));
    assert!(stdout.contains("built-in default"), "{stdout}");
    assert!(stdout.contains("kept 7 of 12 records"), "{stdout}");
    assert!(
        ids(&dir.path().join("o/train.jsonl"))
            .iter()
            .chain(&ids(&dir.path().join("o/test.jsonl")))
            .all(|id| id != "p4")
    );
    // Opting in keeps the unclassified p9 as well.
    let stdout = ok(&tunelab(
        &[
            "split",
            f.to_str().unwrap(),
            "--out",
            "o2",
            "--treat-unclassified-as-public",
        ],
        Some(dir.path()),
    ));
    assert!(stdout.contains("kept 8 of 12 records"), "{stdout}");
}

#[test]
fn mine_corpus_then_split() {
    let dir = tempfile::tempdir().unwrap();
    let mined = dir.path().join("mined.jsonl");
    let out = ok(&tunelab(
        &[
            "mine",
            fixture("corpus").to_str().unwrap(),
            "--out",
            mined.to_str().unwrap(),
        ],
        None,
    ));
    // ceremony: title pair; coast/kelp: title + "Uses"; tides: title + "Spring tides" + "Neap tides"
    // (its empty subsection gives none); untitled: title pair (title from the file stem). 7 in all.
    assert!(out.contains("mined 7 pairs from 4 documents"), "{out}");
    let ids = ids(&mined);
    assert_eq!(
        ids,
        [
            "ceremony#title",
            "coast/kelp#title",
            "coast/kelp#s1",
            "tides#title",
            "tides#s1",
            "tides#s2",
            "untitled#title"
        ]
    );
    let rec = &lines(&mined)[2];
    assert_eq!(
        (rec["query"].as_str(), rec["positive"].as_str()),
        (Some("Uses"), Some("Food and fertiliser."))
    );
    assert_eq!(
        (rec["doc_id"].as_str(), rec["consent"].as_str()),
        (Some("coast/kelp"), Some("c-ana-1"))
    );

    // Governed split of the mined pairs: the sacred and the unclassified document's pairs are out.
    let split_dir = dir.path().join("split");
    let out = ok(&tunelab(
        &[
            "split",
            mined.to_str().unwrap(),
            "--out",
            split_dir.to_str().unwrap(),
            "--policy",
            &policy(),
        ],
        None,
    ));
    assert!(out.contains("kept 5 of 7 records"), "{out}");
}

#[test]
fn inspect_markdown_corpus() {
    let out = ok(&tunelab(
        &["inspect", fixture("corpus").to_str().unwrap(), "--policy", &policy()],
        None,
    ));
    assert!(out.contains("corpus (id/title/text)"), "{out}");
    // 4 documents: tides public, kelp community with ana's consent, ceremony sacred, untitled unclassified.
    assert!(out.contains("kept 2 of 4 records"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("ceremony") && l.contains("sacred")),
        "{out}"
    );
}
