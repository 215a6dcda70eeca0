//! The validation gate and the model store, through the library and the `tunelab` binary.
//!
//! Runs are written as the report module writes them: `metrics.arrow`, long format
//! (`system`, `qid`, `measure`, `value`), plus a `manifest.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::*;
use tunelab::gate::{GateConfig, ModelStore, RandomizationTest, RunMetrics, Verdict, gate};

const N: usize = 30;

/// Write a run directory with per-query values `f(i)` for each measure.
fn write_run(dir: &Path, system: &str, measures: &[(&str, &dyn Fn(usize) -> f64)]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let (mut sys, mut qid, mut measure, mut value) = (vec![], vec![], vec![], vec![]);
    for (m, f) in measures {
        for i in 0..N {
            sys.push(system.to_string());
            qid.push(format!("q{i:02}"));
            measure.push(m.to_string());
            value.push(f(i));
        }
    }
    let mut df = df!("system" => sys, "qid" => qid, "measure" => measure, "value" => value).unwrap();
    let mut f = fs::File::create(dir.join("metrics.arrow")).unwrap();
    IpcWriter::new(&mut f).finish(&mut df).unwrap();
    fs::write(dir.join("manifest.json"), format!("{{\"system\": \"{system}\"}}\n")).unwrap();
    dir.to_path_buf()
}

// The current model: the relevant document at rank 2 on every query (recip_rank 0.5), P_5 = 0.2.
fn current(dir: &Path) -> PathBuf {
    write_run(dir, "current", &[("recip_rank", &|_| 0.5), ("P_5", &|_| 0.2)])
}

fn test() -> RandomizationTest {
    RandomizationTest::new(10_000, 42)
}

fn read(dir: &Path) -> RunMetrics {
    RunMetrics::read(dir, None).unwrap()
}

#[test]
fn refuses_a_deliberately_worse_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    // Worse: the relevant document drops to rank 4 on every query (1/4), P_5 unchanged.
    // All 30 differences are -0.25, so only the all-negative and all-positive sign patterns reach
    // |mean| 0.25: the exact p is 2/2^30, and the sampled p is its floor 1/(10000+1).
    let cand = write_run(&tmp.path().join("cand"), "cand", &[("recip_rank", &|_| 0.25), ("P_5", &|_| 0.2)]);
    let d = gate(&read(&cur), &read(&cand), &GateConfig::default(), &test()).unwrap();
    assert!(!d.passed, "{}", d.to_table());
    let rr = d.checks.iter().find(|c| c.measure == "recip_rank").unwrap();
    assert_eq!(rr.verdict, Verdict::Worse);
    assert!((rr.difference + 0.25).abs() < 1e-12);
    assert_eq!(rr.p_value, 1.0 / 10_001.0);
    assert_eq!((rr.wins, rr.ties, rr.losses), (0, 0, N));
}

#[test]
fn accepts_a_better_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    // Better: rank 1 on 20 of 30 queries (1.0), unchanged (0.5) on the rest: mean +1/3.
    let cand = write_run(
        &tmp.path().join("cand"),
        "cand",
        &[("recip_rank", &|i| if i < 20 { 1.0 } else { 0.5 }), ("P_5", &|_| 0.2)],
    );
    let d = gate(&read(&cur), &read(&cand), &GateConfig::default(), &test()).unwrap();
    assert!(d.passed, "{}", d.to_table());
    let rr = &d.checks[0];
    assert!(rr.primary && rr.verdict == Verdict::Better);
    assert!((rr.difference - 1.0 / 3.0).abs() < 1e-12);
    // P_5 is identical: every difference is 0, every sign pattern reaches it, p = 1.
    let p5 = d.checks.iter().find(|c| c.measure == "P_5").unwrap();
    assert_eq!((p5.p_value, p5.verdict), (1.0, Verdict::NoDifference));
}

#[test]
fn refuses_a_gain_on_the_primary_bought_with_a_loss_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    // recip_rank better everywhere, but P_5 falls from 0.2 to 0.0 on every query.
    let cand = write_run(&tmp.path().join("cand"), "cand", &[("recip_rank", &|_| 1.0), ("P_5", &|_| 0.0)]);
    let d = gate(&read(&cur), &read(&cand), &GateConfig::default(), &test()).unwrap();
    assert!(!d.passed);
    assert_eq!(d.reasons.len(), 1, "{:?}", d.reasons);
    assert!(d.reasons[0].starts_with("P_5 is significantly worse"), "{:?}", d.reasons);
    // Gating only recip_rank lets it through: the gated set is the user's choice.
    let only_rr = GateConfig { metrics: vec!["recip_rank".into()], ..GateConfig::default() };
    assert!(gate(&read(&cur), &read(&cand), &only_rr, &test()).unwrap().passed);
}

#[test]
fn a_gain_that_is_not_significant_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    // One query of 30 improves (0.5 -> 1.0): with a single non-zero difference d, every sign
    // pattern gives |mean| = |d|/30, the observed value, so p = (10000 + 1)/(10000 + 1) = 1.
    let cand = write_run(
        &tmp.path().join("cand"),
        "cand",
        &[("recip_rank", &|i| if i == 0 { 1.0 } else { 0.5 }), ("P_5", &|_| 0.2)],
    );
    let d = gate(&read(&cur), &read(&cand), &GateConfig::default(), &test()).unwrap();
    assert!(!d.passed);
    assert_eq!(d.checks[0].p_value, 1.0);
    assert!(d.reasons[0].contains("not significantly better"), "{:?}", d.reasons);
    let lenient = GateConfig { require_significant_gain: false, ..GateConfig::default() };
    assert!(gate(&read(&cur), &read(&cand), &lenient, &test()).unwrap().passed);
}

#[test]
fn a_missing_measure_is_an_error_naming_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    let cand = write_run(&tmp.path().join("cand"), "cand", &[("P_5", &|_| 0.2)]);
    let e = gate(&read(&cur), &read(&cand), &GateConfig::default(), &test()).unwrap_err().to_string();
    assert!(e.contains("recip_rank") && e.contains("cand"), "{e}");
}

fn tunelab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tunelab"))
}

#[test]
fn cli_gate_exit_status_and_decision_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cur = current(&tmp.path().join("cur"));
    let better = write_run(&tmp.path().join("better"), "b", &[("recip_rank", &|_| 1.0), ("P_5", &|_| 0.2)]);
    let worse = write_run(&tmp.path().join("worse"), "w", &[("recip_rank", &|_| 0.2), ("P_5", &|_| 0.2)]);
    let out = tmp.path().join("decision.json");
    let ok = tunelab()
        .args(["gate", "--candidate"])
        .arg(&better)
        .arg("--current")
        .arg(&cur)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("PASS"));
    let decision: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(decision["passed"], true);

    let refused = tunelab().args(["gate", "--candidate"]).arg(&worse).arg("--current").arg(&cur).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "refusal is exit status 2");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("REFUSED"));

    // An unreadable run is an error (status 1) naming the path.
    let err = tunelab().args(["gate", "--candidate", "/nonexistent/run", "--current"]).arg(&cur).output().unwrap();
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("/nonexistent/run"));
}

#[test]
fn promote_and_rollback_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::open(tmp.path().join("store")).unwrap();
    let a = write_run(&tmp.path().join("a"), "a", &[("recip_rank", &|_| 0.5)]);
    let b = write_run(&tmp.path().join("b"), "b", &[("recip_rank", &|_| 0.6)]);
    let c = write_run(&tmp.path().join("c"), "c", &[("recip_rank", &|_| 0.7)]);
    let manifest = |v: u32| fs::read_to_string(store.version_dir(v).join("manifest.json")).unwrap();

    assert_eq!(store.current().unwrap(), None);
    assert_eq!(store.promote(&a, None).unwrap().version, 1);
    assert_eq!(store.promote(&b, None).unwrap().previous, Some(1));
    assert_eq!(store.current().unwrap(), Some(2));
    assert_eq!(fs::read_to_string(store.root().join("current/manifest.json")).unwrap(), manifest(2));
    assert!(manifest(2).contains("\"b\""));

    assert_eq!(store.rollback().unwrap(), (2, 1));
    assert_eq!(store.current().unwrap(), Some(1));
    assert!(fs::read_to_string(store.root().join("current/manifest.json")).unwrap().contains("\"a\""));
    // v2 is kept side by side after the rollback.
    assert_eq!(store.versions().unwrap(), vec![1, 2]);

    // Promoting after a rollback records the version it replaced (v1), so rolling back returns there.
    let v3 = store.promote(&c, None).unwrap();
    assert_eq!((v3.version, v3.previous), (3, Some(1)));
    assert_eq!(store.rollback().unwrap(), (3, 1));
    let e = store.rollback().unwrap_err().to_string();
    assert!(e.contains("first version"), "{e}");

    // `current` is a relative symlink, so the store can be moved.
    assert_eq!(fs::read_link(store.root().join("current")).unwrap(), PathBuf::from("v1"));
    let history = fs::read_to_string(store.root().join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 5, "3 promotions + 2 rollbacks");
    // The manifest hash recorded is the copied file's.
    let info = store.info(1).unwrap();
    assert_eq!(info.manifest_sha256.len(), 64);
}

#[test]
fn promote_refuses_a_directory_without_manifest_and_cli_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("bare");
    fs::create_dir_all(&bare).unwrap();
    let store_dir = tmp.path().join("store");
    let out = tunelab().arg("promote").arg(&bare).arg("--store").arg(&store_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no manifest.json"));
    assert!(!store_dir.join("v1").exists(), "nothing half-promoted");

    let a = write_run(&tmp.path().join("a"), "a", &[("recip_rank", &|_| 0.5)]);
    let b = write_run(&tmp.path().join("b"), "b", &[("recip_rank", &|_| 0.6)]);
    for src in [&a, &b] {
        let o = tunelab().arg("promote").arg(src).arg("--store").arg(&store_dir).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = tunelab().arg("rollback").arg("--store").arg(&store_dir).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("v2 -> v1"));
    assert_eq!(fs::read_link(store_dir.join("current")).unwrap(), PathBuf::from("v1"));
}
