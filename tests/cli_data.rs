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
fn the_policy_is_found_from_the_data_wherever_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture("pairs.jsonl");
    // Run from an unrelated folder without --policy: tests/fixtures/data/governance/policy.toml, beside
    // the data, applies (ben withdrew, so p7 is out; ana's consent keeps p4): the same 7 as with --policy.
    let out = tunelab(&["split", f.to_str().unwrap(), "--out", "o"], Some(dir.path()));
    let stdout = ok(&out);
    assert!(stdout.contains("fixtures/data/governance/policy.toml"), "{stdout}");
    assert!(stdout.contains("kept 7 of 12 records"), "{stdout}");
    let kept: Vec<String> = ["train", "valid", "test"].iter().flat_map(|s| ids(&dir.path().join(format!("o/{s}.jsonl")))).collect();
    assert!(kept.contains(&"p4".to_string()) && !kept.contains(&"p7".to_string()), "{kept:?}");

    // The same file where no policy can be found: only public records pass, even with the opt-in for
    // unclassified ones, and the message says how to give a policy.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(&f, bare.join("pairs.jsonl")).unwrap();
    let out = tunelab(
        &["split", "bare/pairs.jsonl", "--out", "o2", "--treat-unclassified-as-public"],
        Some(dir.path()),
    );
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no governance policy found") && stderr.contains("--policy"), "{stderr}");
    // Public: p1 p2 p3 p7 p10 p11 p12 (there is no withdrawal list to take p7 out).
    assert!(stdout.contains("kept 7 of 12 records"), "{stdout}");
    for id in ["p4", "p5", "p6", "p9"] {
        assert!(stdout.lines().any(|l| l.contains(&format!(" {id} ")) && l.contains("no_policy")), "{id}: {stdout}");
    }
    // An explicit policy still wins.
    let stdout = ok(&tunelab(&["split", "bare/pairs.jsonl", "--out", "o3", "--policy", &policy()], Some(dir.path())));
    assert!(stdout.contains("kept 7 of 12 records") && !stdout.contains("no_policy"), "{stdout}");
}

#[test]
fn a_record_that_repeats_a_key_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let gov = dir.path().join("governance");
    std::fs::create_dir_all(&gov).unwrap();
    for name in ["policy.toml", "consent-ledger.jsonl", "withdrawals.jsonl"] {
        std::fs::copy(fixture("governance").join(name), gov.join(name)).unwrap();
    }
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        concat!(
            r#"{"id":"a","query":"q","positive":"p","classification":"public"}"#,
            "\n\n",
            r#"{"id":"s","query":"q2","positive":"sacred words","classification":"sacred","doc_id":"d","classification":"public"}"#,
            "\n",
        ),
    )
    .unwrap();
    for cmd in [vec!["split", pairs.to_str().unwrap(), "--out", "o"], vec!["inspect", pairs.to_str().unwrap()]] {
        let err = failed(&tunelab(&cmd, Some(dir.path())));
        assert!(err.contains("pairs.jsonl:3: field `classification`: duplicate key"), "{err}");
    }
    // The ledger too.
    std::fs::write(&pairs, "{\"id\":\"a\",\"query\":\"q\",\"positive\":\"p\",\"classification\":\"public\"}\n").unwrap();
    std::fs::write(
        gov.join("withdrawals.jsonl"),
        "{\"contributor\":\"ben\",\"withdrawn\":\"2025-05-01\",\"contributor\":\"someone else\"}\n",
    )
    .unwrap();
    let err = failed(&tunelab(&["split", pairs.to_str().unwrap(), "--out", "o"], Some(dir.path())));
    assert!(err.contains("withdrawals.jsonl:1: field `contributor`: duplicate key"), "{err}");
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

// ---- issue 16: a withdrawn contributor written differently, end to end ----

/// Spellings of the bundled withdrawal list's "Corwin Ashby": the examples of issue 16, then seeded
/// random ones (case per letter, runs of ASCII, no-break, ideographic and zero-width spaces, fullwidth
/// letters, zero-width joiners, decomposed accents are covered by the unit property tests).
fn corwin_variants() -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut v: Vec<String> = ["corwin ashby", " Corwin Ashby ", "Corwin  Ashby", "CORWIN ASHBY", "Ｃｏｒｗｉｎ Ａｓｈｂｙ", "Corwin\u{a0}Ashby", "Corwin\u{200b}Ashby", "Cor\u{200d}win\tAshby"]
        .map(String::from)
        .to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let spaces = [" ", "  ", "\u{a0}", "\t", "\u{3000}", "\u{2003}"];
    for _ in 0..8 {
        let mut s: String = (0..rng.random_range(0..2)).map(|_| spaces[rng.random_range(0..spaces.len())]).collect();
        for (w, word) in ["Corwin", "Ashby"].iter().enumerate() {
            if w > 0 {
                s.push_str(spaces[rng.random_range(0..spaces.len())]);
            }
            for c in word.chars() {
                match rng.random_range(0..3) {
                    0 => s.push(c.to_ascii_uppercase()),
                    1 => s.push(c.to_ascii_lowercase()),
                    _ => s.push(char::from_u32(c as u32 - 0x21 + 0xff01).unwrap()),
                }
            }
        }
        s.push_str(spaces[rng.random_range(0..spaces.len())]);
        v.push(s);
    }
    v
}

/// An archive laid out like `datasets/`: the bundled governance files (Corwin Ashby withdrew, and his
/// consent c-010 is in the ledger) plus two consents whose terms do not cover training now.
fn archive(root: &Path) -> PathBuf {
    let archive = root.join("archive");
    let gov = archive.join("governance");
    std::fs::create_dir_all(&gov).unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/governance");
    for name in ["policy.toml", "consent-ledger.jsonl", "withdrawals.jsonl"] {
        std::fs::copy(bundled.join(name), gov.join(name)).unwrap();
    }
    let mut ledger = std::fs::read_to_string(gov.join("consent-ledger.jsonl")).unwrap();
    ledger.push_str("{\"consent\":\"c-900\",\"contributor\":\"Ilse Garrow\",\"scope\":\"display-only\",\"granted\":\"2026-01-01\"}\n");
    ledger.push_str("{\"consent\":\"c-901\",\"contributor\":\"Perrin Lusk\",\"scope\":\"training\",\"granted\":\"2999-01-01\"}\n");
    std::fs::write(gov.join("consent-ledger.jsonl"), ledger).unwrap();
    archive
}

/// Pairs: per Corwin spelling a public pair (`cw*`) and a community one under his consent (`cc*`);
/// then pairs that must be kept (`pub*` public, `mt*` Maren Tolliver with consent c-001) and ones the
/// consent terms refuse (`dis*` display-only, `fut*` granted in the future).
fn governed_pairs(variants: &[String]) -> (String, Vec<String>, Vec<String>) {
    let words = ["the tide", "high kelp", "storm boats", "fish spring", "rip pools", "a day"];
    let (mut lines, mut kept, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let mut push = |id: String, who: Option<&str>, class: &str, consent: Option<&str>, keep: bool| {
        let n = lines.len();
        lines.push(
            serde_json::json!({
                "id": id, "query": words[n % words.len()],
                "positive": format!("{} of {} {n}", words[(n + 1) % words.len()], words[(n + 2) % words.len()]),
                "doc_id": format!("d{n}"), "classification": class, "contributor": who, "consent": consent,
            })
            .to_string(),
        );
        if keep { kept.push(id) } else { out.push(id) }
    };
    for (i, v) in variants.iter().enumerate() {
        push(format!("cw{i}"), Some(v), "public", None, false);
        push(format!("cc{i}"), Some(v), "community", Some(if i % 2 == 0 { "c-010" } else { " C-010 " }), false);
    }
    for i in 0..6 {
        push(format!("pub{i}"), None, "public", None, true);
        push(format!("mt{i}"), Some("maren  TOLLIVER"), "community", Some("c-001"), true);
    }
    push("dis0".into(), Some("Ilse Garrow"), "community", Some("c-900"), false);
    push("fut0".into(), Some("Perrin Lusk"), "community", Some("c-901"), false);
    (lines.join("\n") + "\n", kept, out)
}

#[test]
fn withdrawn_contributor_spelled_differently_is_kept_out_of_split_mining_and_training() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let variants = corwin_variants();
    let (text, kept, out) = governed_pairs(&variants);
    let pairs = archive.join("pairs/pairs.jsonl");
    std::fs::create_dir_all(pairs.parent().unwrap()).unwrap();
    std::fs::write(&pairs, text).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(args)
            .env("TUNELAB_DEVICE", "cpu")
            .current_dir(&elsewhere)
            .output()
            .unwrap()
    };
    let excluded = |audit: &serde_json::Value| -> Vec<(String, String)> {
        audit["excluded"].as_array().unwrap().iter().map(|e| (e["id"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string())).collect()
    };
    let check_audit = |audit: &serde_json::Value, what: &str| {
        let ex = excluded(audit);
        for id in &out {
            let want = if id.starts_with("dis") || id.starts_with("fut") { "consent_terms" } else { "withdrawn" };
            assert!(ex.contains(&(id.clone(), want.to_string())), "{what}: {id} not excluded as {want}: {ex:?}");
        }
        assert_eq!(audit["kept"].as_u64(), Some(kept.len() as u64), "{what}: {ex:?}");
        assert_eq!(audit["admitted_by_consent"]["c-001"]["records"].as_u64(), Some(6), "{what}");
        assert!(audit["policy_file"].as_str().unwrap().ends_with("archive/governance/policy.toml"), "{what}");
    };

    // data split (no --policy: the archive's governance/policy.toml is found from the data).
    let split_dir = elsewhere.join("split");
    ok(&run(&["data", "split", pairs.to_str().unwrap(), "--out", split_dir.to_str().unwrap()]));
    let written: Vec<String> = ["train", "valid", "test"].iter().flat_map(|s| ids(&split_dir.join(format!("{s}.jsonl")))).collect();
    let mut sorted = written.clone();
    sorted.sort();
    let mut want = kept.clone();
    want.sort();
    assert_eq!(sorted, want);
    let audit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(split_dir.join("audit.json")).unwrap()).unwrap();
    check_audit(&audit["governance"], "split");

    // data mine-negatives: neither his pairs nor his documents (as negatives) are used.
    let corpus = archive.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for (i, v) in variants.iter().enumerate() {
        let body = format!("---\nid: corwin-{i}\nclassification: public\ncontributor: \"{v}\"\n---\n# The tide {i}\nCorwinwords the tide high kelp storm boats fish spring rip pools.\n");
        std::fs::write(corpus.join(format!("corwin-{i}.md")), body).unwrap();
    }
    for (i, w) in ["the tide table", "storm boats", "kelp pools"].iter().enumerate() {
        let body = "About the tide, high kelp, storm boats, fish in spring, rip pools: a day of it.";
        std::fs::write(corpus.join(format!("ok-{i}.md")), format!("---\nid: ok-{i}\nclassification: public\n---\n# {w}\n{body}\n")).unwrap();
    }
    let mined = elsewhere.join("mined.jsonl");
    let stdout = ok(&run(&["data", "mine-negatives", pairs.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(), "--out", mined.to_str().unwrap(), "--num-negatives", "2"]));
    let text = std::fs::read_to_string(&mined).unwrap();
    assert!(!text.contains("Corwinwords"), "a withdrawn contributor's document became a negative");
    assert!(text.contains("About"), "other documents are used: {stdout}");
    let mut mined_ids = ids(&mined);
    mined_ids.sort();
    assert_eq!(mined_ids, want);

    // train embed on the pairs (tiny random encoder): the manifest's audit keeps him out.
    use tunelab::export::sentence_transformers::write_folder;
    use tunelab::model::bert::SentenceEncoder;
    let base = tmp.path().join("base");
    let vocab = ["the", "tide", "high", "kelp", "storm", "boats", "fish", "spring", "rip", "pools", "a", "day", "of"];
    write_folder(&SentenceEncoder::random_tiny(&vocab, 5, &burn::tensor::Device::flex()), &base, serde_json::Value::Null).unwrap();
    let reports = tmp.path().join("reports");
    ok(&run(&[
        "train", "embed", "--model", base.to_str().unwrap(), "--data", pairs.to_str().unwrap(), "--reports", reports.to_str().unwrap(),
        "--name", "gov", "--epochs", "1", "--batch-size", "4", "--max-seq-length", "16",
    ]));
    let run_dir = std::fs::read_dir(reports.join("gov")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("manifest.json")).unwrap()).unwrap();
    check_audit(&manifest["governance"], "train embed");

    // train lora on completions by the same people (tiny Llama fixture).
    let lora_data = archive.join("lora");
    std::fs::create_dir_all(&lora_data).unwrap();
    let mut lines = Vec::new();
    let (mut lora_kept, mut lora_out) = (0, 0);
    for (i, v) in variants.iter().enumerate() {
        lines.push(serde_json::json!({"id": format!("cw{i}"), "prompt": format!("w{} w5", 3 + i), "completion": "w6 w7", "classification": "community", "contributor": v, "consent": "c-010"}));
        lora_out += 1;
    }
    for i in 0..6 {
        lines.push(serde_json::json!({"id": format!("mt{i}"), "prompt": format!("w{} w9", 40 + i), "completion": "w10 w11", "classification": "community", "contributor": "Maren Tolliver", "consent": "c-001"}));
        lora_kept += 1;
    }
    let jsonl: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(lora_data.join("train.jsonl"), &jsonl).unwrap();
    std::fs::write(lora_data.join("valid.jsonl"), &jsonl).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama");
    let adapters = elsewhere.join("adapters");
    let out_lora = run(&[
        "train", "lora", "--model", tiny.to_str().unwrap(), "--data", lora_data.to_str().unwrap(), "--iters", "2", "--batch-size", "2",
        "--num-layers", "1", "--adapter-path", adapters.to_str().unwrap(), "--steps-per-eval", "100",
    ]);
    ok(&out_lora);
    let stderr = String::from_utf8_lossy(&out_lora.stderr);
    let total = lora_kept + lora_out;
    assert!(stderr.contains(&format!("train: {lora_kept} of {total} records kept")), "{stderr}");
    let audit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapters.join("governance_audit.json")).unwrap()).unwrap();
    let ex = excluded(&audit);
    assert_eq!(ex.len(), lora_out, "{ex:?}");
    assert!(ex.iter().all(|(id, r)| id.starts_with("cw") && r == "withdrawn"), "{ex:?}");

    // train rerank on judgments by the same people (tiny Qwen3 reranker fixture): the policy is found
    // from the judgments' folder, and every spelling of the withdrawn name stays out.
    let rerank_data = archive.join("rerank/judgments.jsonl");
    std::fs::create_dir_all(rerank_data.parent().unwrap()).unwrap();
    let mut judgments = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        judgments.push(serde_json::json!({"id": format!("cr{i}"), "query": format!("question {i} about nets"), "document": format!("Corwin's answer {i}: mend the nets at dawn."), "relevant": 1, "classification": "community", "contributor": v, "consent": "c-010"}));
    }
    for q in 0..4 {
        for (g, doc) in [(2, format!("Answer {q}: the nets are mended at the gathering.")), (0, format!("Unrelated {q}: bread and ovens."))] {
            judgments.push(serde_json::json!({"id": format!("mr{q}-{g}"), "query": format!("question {q} about the gathering"), "document": doc, "relevant": g, "classification": "community", "contributor": "Maren Tolliver", "consent": "c-001"}));
        }
    }
    let jsonl: String = judgments.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(&rerank_data, jsonl).unwrap();
    let tiny_reranker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reranker/tiny_qwen3_reranker");
    let rerank_out = elsewhere.join("reranker");
    ok(&run(&[
        "train", "rerank", "--model", tiny_reranker.to_str().unwrap(), "--data", rerank_data.to_str().unwrap(), "--iters", "2",
        "--batch-size", "2", "--valid-fraction", "0.25", "--adapter-path", rerank_out.to_str().unwrap(),
    ]));
    let audit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rerank_out.join("governance_audit.json")).unwrap()).unwrap();
    let ex = excluded(&audit);
    assert_eq!(ex.len(), variants.len(), "train rerank: {ex:?}");
    assert!(ex.iter().all(|(id, r)| id.starts_with("cr") && r == "withdrawn"), "train rerank: {ex:?}");
    assert_eq!(audit["kept"].as_u64(), Some(8), "train rerank: {audit}");
}

#[test]
fn inspect_reports_record_problems_with_file_and_line_and_strict_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = archive(tmp.path());
    let data = archive.join("persona");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("train.jsonl"),
        [
            r#"{"id":"t1","text":"The tide turns.","classification":"public"}"#,
            r#"{"id":"t2","text":"the  TIDE turns","classification":"public"}"#,
            r#"{"id":"t1","text":"Kelp grows.","classification":"public"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    std::fs::write(
        data.join("valid.jsonl"),
        [
            r#"{"text":"No id here.","classification":"public"}"#,
            r#"{"id":"v2","text":"  ","classification":"public"}"#,
            r#"{"id":"v3","text":"Storm log.","classification":"public","contributor":"Corwin Ashbey"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = tunelab(&["inspect", data.to_str().unwrap()], Some(tmp.path()));
    let stdout = ok(&out);
    for (file, line, what) in [
        ("train.jsonl", 2, "duplicate text"),
        ("train.jsonl", 3, "duplicate id"),
        ("valid.jsonl", 1, "missing id"),
        ("valid.jsonl", 2, "empty text"),
        ("valid.jsonl", 3, "near-withdrawn name"),
    ] {
        let at = format!("{file}:{line}: {what}");
        assert!(stdout.lines().any(|l| l.starts_with("warning: ") && l.contains(&at)), "{at}:\n{stdout}");
    }
    assert!(stdout.contains("\"Corwin Ashby\""), "{stdout}");
    let out = tunelab(&["inspect", data.to_str().unwrap(), "--strict"], Some(tmp.path()));
    let err = failed(&out);
    assert!(err.contains("--strict"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("error: "), "strict prints errors");
}
