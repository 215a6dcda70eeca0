//! `tunelab train embed CONFIG.toml` and `tunelab data mine-negatives` end to end on a tiny random
//! encoder and the governance fixtures (sacred records and documents must never be used).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use tunelab::export::sentence_transformers::write_folder;
use tunelab::model::bert::SentenceEncoder;

const WORDS: [&str; 14] = ["the", "tide", "high", "kelp", "storm", "boats", "fish", "spring", "rip", "pools", "a", "day", "is", "of"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn tiny_model(tmp: &Path) -> PathBuf {
    let dir = tmp.join("base");
    write_folder(&SentenceEncoder::random_tiny(&WORDS, 5, &Device::flex()), &dir, serde_json::Value::Null).unwrap();
    dir
}

fn tunelab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab")).args(args).env("TUNELAB_DEVICE", "cpu").output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn embed(model: &Path, texts: &[&str]) -> Vec<Vec<f32>> {
    let enc = SentenceEncoder::load(model, &Device::flex()).unwrap();
    enc.embed_documents(texts, 8).unwrap()
}

/// The only run folder under `reports/<name>/`.
fn run_dir(reports: &Path, name: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(reports.join(name)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// Five public documents that share words with the fixture pairs' queries, and one sacred one.
fn corpus(tmp: &Path) -> PathBuf {
    let dir = tmp.join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let docs = [
        ("storms", "public", "# Storm log\nThe storm of the winter broke the boats and the pier."),
        ("spring", "public", "# Spring tide table\nA spring tide is a high tide after the new moon."),
        ("fishing", "public", "# Fishing\nFish the rip at high tide from the boats."),
        ("pools", "public", "# Rock pools\nPools of the reef hold kelp and crabs."),
        ("kelp", "public", "# Kelp forests\nKelp grows fast in spring; a storm can tear it."),
        ("rite", "sacred", "# [placeholder] Tide rite\nThe tide, the kelp, the boats, the storm: never a negative."),
    ];
    for (id, class, body) in docs {
        std::fs::write(dir.join(format!("{id}.md")), format!("---\nid: {id}\nclassification: {class}\n---\n{body}\n")).unwrap();
    }
    dir
}

fn config(tmp: &Path, base: &Path, extra_train: &str) -> PathBuf {
    let f = fixtures();
    let text = format!(
        r#"
name = "tiny"
model = "{base}"
data = "{data}"
policy = "{policy}"
reports = "{reports}"
max_seq_length = 32

[hard_negatives]
method = "bm25"
corpus = "{corpus}"
num_negatives = 1

[train]
epochs = 3
batch_size = 4
learning_rate = 1e-2
seed = 3
{extra_train}
"#,
        base = base.display(),
        data = f.join("pairs.jsonl").display(),
        policy = f.join("governance/policy.toml").display(),
        reports = tmp.join("reports").display(),
        corpus = corpus(tmp).display(),
    );
    let p = tmp.join("train.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn lora_run_trains_governed_pairs_exports_a_merged_model_and_records_the_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let cfg = config(tmp.path(), &base, "[train.lora]\nrank = 2\nalpha = 4.0\n");
    let stdout = ok(&tunelab(&["train", "embed", cfg.to_str().unwrap()]));
    assert!(stdout.contains("excluded by the policy"), "{stdout}");

    let run = run_dir(&tmp.path().join("reports"), "tiny");
    // No dtype given: `auto` is f32 on the CPU, and the run records what it resolved to.
    let json = |p: PathBuf| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap();
    assert_eq!(json(run.join("training/config.json"))["dtype"], "f32");
    assert_eq!(json(run.join("manifest.json"))["config"]["train"]["dtype"], "f32");
    // The manifest carries the audit: the sacred pair is excluded and never trained on.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let audit = manifest["governance"].to_string();
    assert!(audit.contains("sacred-1"), "the sacred pair is listed as excluded: {audit}");
    // Hard negatives were mined from allowed documents only.
    let hn: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("hard_negatives.json")).unwrap()).unwrap();
    assert!(hn["negatives_added"].as_u64().unwrap() > 0, "{hn}");
    assert_eq!(hn["documents_allowed"].as_u64(), Some(5), "the sacred document is not a candidate: {hn}");
    // LoRA went on PEFT's default BERT targets in every layer, and the export is merged.
    let layers: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("lora_layers.json")).unwrap()).unwrap();
    let names: Vec<&String> = layers.as_object().unwrap().keys().collect();
    assert!(names.iter().any(|n| n.ends_with("attention.self.query")) && names.iter().any(|n| n.ends_with("attention.self.value")), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with("key")), "key is not a default target: {names:?}");
    let tuned = run.join("model");
    let texts = ["high tide is a day", "kelp of the storm"];
    let (before, after) = (embed(&base, &texts), embed(&tuned, &texts));
    let moved: f32 = before.iter().flatten().zip(after.iter().flatten()).map(|(a, b)| (a - b).abs()).sum();
    assert!(moved > 1e-3, "training changed the exported model (sum |Δ| = {moved})");
    // The loss curve exists and fell from the first logged step to the last.
    let losses: Vec<f64> = std::fs::read_to_string(run.join("training/loss.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2, "{losses:?}");
    assert!(losses.last().unwrap() < losses.first().unwrap(), "{losses:?}");
}

/// "N parameters, M trainable" from the memory estimate line.
fn trainable(stdout: &str) -> u64 {
    let line = stdout.lines().find(|l| l.contains(" trainable;")).unwrap_or_else(|| panic!("{stdout}"));
    let before = line.split(" trainable;").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `--fine-tune-type dora`: the adapters carry DoRA's magnitudes (counted in the memory
/// estimate), the loss falls, and the adapter saved as PEFT, put back on the base model, gives
/// the embeddings of the exported (merged) sentence-transformers folder.
#[test]
fn dora_run_lowers_the_loss_and_its_peft_adapter_reloads_to_the_exported_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let cfg = config(tmp.path(), &base, "[train.lora]\nrank = 2\nalpha = 4.0\n");
    let lora_out = ok(&tunelab(&["train", "embed", cfg.to_str().unwrap(), "--fine-tune-type", "lora", "--name", "lora"]));
    let stdout = ok(&tunelab(&["train", "embed", cfg.to_str().unwrap(), "--fine-tune-type", "dora"]));
    let run = run_dir(&tmp.path().join("reports"), "tiny");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let config = manifest["config"].to_string();
    assert!(config.contains(r#""fine_tune_type":"dora""#) && config.contains(r#""use_dora":true"#), "{config}");

    let losses: Vec<f64> = std::fs::read_to_string(run.join("training/loss.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2 && losses.last().unwrap() < losses.first().unwrap(), "{losses:?}");

    let adapter = tunelab::export::peft::read(&run.join("adapter")).unwrap();
    assert!(adapter.config.use_dora && !adapter.layers.is_empty() && adapter.magnitudes.len() == adapter.layers.len());
    let peft_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((peft_config["use_dora"].as_bool(), peft_config["task_type"].as_str()), (Some(true), Some("FEATURE_EXTRACTION")));
    // One magnitude entry per output row of every adapted layer is all DoRA adds.
    let extra: usize = adapter.layers.values().map(|f| f.b_shape[0]).sum();
    assert_eq!(trainable(&stdout), trainable(&lora_out) + extra as u64, "{stdout}\n{lora_out}");

    let texts = ["high tide is a day", "kelp of the storm", "the boats"];
    let mut enc = SentenceEncoder::load(&base, &Device::flex()).unwrap();
    enc.model = enc.model.with_adapter(&adapter).unwrap();
    let reloaded = enc.embed_documents(&texts, 8).unwrap();
    let (exported, before) = (embed(&run.join("model"), &texts), embed(&base, &texts));
    let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("DoRA: PEFT adapter on the base vs merged export: max |Δ| {:e}; export vs base {:e}", diff(&reloaded, &exported), diff(&exported, &before));
    assert!(diff(&reloaded, &exported) <= 1e-5, "{}", diff(&reloaded, &exported));
    assert!(diff(&exported, &before) > 1e-3, "training moved the model");

    // A contradiction between the flag and the file is refused, naming both.
    let out = tunelab(&["train", "embed", cfg.to_str().unwrap(), "--fine-tune-type", "full", "--name", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fine_tune_type") && err.contains("[train.lora]"), "{err}");
}

#[test]
fn same_seed_gives_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let mut outs = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("r{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = config(&dir, &base, "max_steps = 2\n");
        ok(&tunelab(&["train", "embed", cfg.to_str().unwrap()]));
        outs.push(embed(&run_dir(&dir.join("reports"), "tiny").join("model"), &["the tide"]));
    }
    assert_eq!(outs[0], outs[1], "CPU runs with one seed are bit-identical");
}

#[test]
fn flags_override_the_file_and_unknown_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let cfg = config(tmp.path(), &base, "");
    let out = tunelab(&["train", "embed", cfg.to_str().unwrap(), "--print-config", "--epochs", "7", "--lora-rank", "4"]);
    let printed = ok(&out);
    let parsed: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(parsed["train"]["epochs"].as_integer(), Some(7));
    assert_eq!(parsed["train"]["lora"]["rank"].as_integer(), Some(4));

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[train]\nepochz = 2\n").unwrap();
    let out = tunelab(&["train", "embed", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml") && err.contains("epochz"), "{err}");
}

#[test]
fn mine_negatives_skips_sacred_documents_and_writes_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out_path = tmp.path().join("mined.jsonl");
    let out = tunelab(&[
        "data",
        "mine-negatives",
        f.join("pairs.jsonl").to_str().unwrap(),
        "--corpus",
        f.join("corpus").to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--num-negatives",
        "2",
        "--policy",
        f.join("governance/policy.toml").to_str().unwrap(),
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("negatives added"), "{stdout}");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!rows.iter().any(|r| r["id"] == "sacred-1"), "the sacred pair is not written");
    assert!(!text.contains("Ceremony"), "the sacred document never becomes a negative");
    assert!(rows.iter().any(|r| r["negatives"].as_array().is_some_and(|n| !n.is_empty())));
    // The pair that came with a negative keeps it first.
    let rip = rows.iter().find(|r| r["id"] == "p11").unwrap();
    assert_eq!(rip["negatives"][0], "Rips are rare in lakes.");
}

#[test]
fn embeddinggemma_folder_trains_with_lora_and_matryoshka_and_exports_its_dense_layers() {
    use tunelab::model::gemma::GemmaEncoder;
    let tmp = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/tiny");
    let cfg = config(tmp.path(), &base, "matryoshka_dims = [64, 32, 16]\n[train.lora]\nrank = 2\nalpha = 4.0\n");
    let stdout = ok(&tunelab(&["train", "embed", cfg.to_str().unwrap()]));
    assert!(stdout.contains("excluded by the policy"), "{stdout}");
    let run = run_dir(&tmp.path().join("reports"), "tiny");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["governance"].to_string().contains("sacred-1"));
    // Gemma's default LoRA targets: the attention projections.
    let layers: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("lora_layers.json")).unwrap()).unwrap();
    let names: Vec<&String> = layers.as_object().unwrap().keys().collect();
    assert!(names.iter().any(|n| n.ends_with("self_attn.q_proj")) && !names.iter().any(|n| n.contains("mlp")), "{names:?}");
    // The export is an EmbeddingGemma folder again: Dense layers, prompts, and changed vectors.
    let tuned = run.join("model");
    assert!(tuned.join("2_Dense/model.safetensors").exists() && tuned.join("3_Dense/model.safetensors").exists());
    let (b, t) = (GemmaEncoder::load(&base, &Device::flex()).unwrap(), GemmaEncoder::load(&tuned, &Device::flex()).unwrap());
    assert_eq!(t.prompts, b.prompts);
    let texts = ["high tide is a day", "kelp of the storm"];
    let (before, after) = (b.embed_with_prompt(&texts, b.prompt("query"), 2).unwrap(), t.embed_with_prompt(&texts, t.prompt("query"), 2).unwrap());
    let moved: f32 = before.iter().flatten().zip(after.iter().flatten()).map(|(a, b)| (a - b).abs()).sum();
    assert!(moved > 1e-3, "training changed the exported model (sum |Δ| = {moved})");
    // A Matryoshka dimension wider than the model is refused, naming it.
    let bad = config(&tmp.path().join("bad"), &base, "matryoshka_dims = [128]\n");
    let out = tunelab(&["train", "embed", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("matryoshka_dims") && err.contains("128"), "{err}");
}

#[test]
fn memory_estimate_is_printed_and_a_run_that_cannot_fit_is_refused_naming_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/tiny");
    let cfg = config(tmp.path(), &base, "max_steps = 1\n");
    let stdout = ok(&tunelab(&["train", "embed", cfg.to_str().unwrap()]));
    assert!(stdout.contains("memory estimate:") && stdout.contains("AdamW state") && stdout.contains("activations"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["train", "embed", cfg.to_str().unwrap(), "--name", "small"])
        .env("TUNELAB_DEVICE", "cpu")
        .env("TUNELAB_MEMORY_LIMIT", "100000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("--mini-batch-size") && err.contains("--batch-size") && err.contains("--lora-rank"), "{err}");
}

/// `--dtype f16` (the flag, or `dtype = "f16"` under `[train]`). With LoRA: the run records the
/// dtype (training/config.json, the manifest's config), every loss line carries the loss scale,
/// and the export folds the adapter into the f32 base as loaded, so a weight no adapter touches
/// (`key`) is bit for bit the base's, not its f16 rounding. Full fine-tuning (f32 master weights
/// cast at each use) trains too. bf16, DoRA and EmbeddingGemma are refused naming the option.
#[test]
fn f16_runs_record_the_dtype_export_the_f32_base_and_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let cfg = config(tmp.path(), &base, "max_steps = 4\ninit_loss_scale = 1024.0\n[train.lora]\nrank = 2\nalpha = 4.0\n");
    ok(&tunelab(&["train", "embed", cfg.to_str().unwrap(), "--dtype", "f16", "--name", "f16"]));
    let run = run_dir(&tmp.path().join("reports"), "f16");
    let json = |p: PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(json(run.join("training/config.json"))["dtype"], "f16");
    assert_eq!(json(run.join("manifest.json"))["config"]["train"]["dtype"], "f16");
    let log = std::fs::read_to_string(run.join("training/loss.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() == 4 && lines.iter().all(|l| l["loss_scale"].as_f64() == Some(1024.0) && l["loss"].as_f64().is_some_and(f64::is_finite)), "{log}");
    let tensors = |dir: &Path| SentenceEncoder::load(dir, &Device::flex()).unwrap().model.hf_tensors();
    let (before, after) = (tensors(&base), tensors(&run.join("model")));
    let get = |t: &[(String, Vec<usize>, Vec<f32>)], name: &str| t.iter().find(|(n, _, _)| n == name).unwrap().2.clone();
    let key = "encoder.layer.0.attention.self.key.weight";
    assert_eq!(get(&after, key), get(&before, key), "the export's base is the f32 base, not its f16 rounding");
    let query = "encoder.layer.0.attention.self.query.weight";
    assert_ne!(get(&after, query), get(&before, query), "the adapter is folded in");

    // Full fine-tuning, dtype from the TOML file.
    let full = config(&tmp.path().join("full"), &base, "max_steps = 4\ndtype = \"f16\"\n");
    ok(&tunelab(&["train", "embed", full.to_str().unwrap(), "--name", "full16"]));
    let run = run_dir(&tmp.path().join("full/reports"), "full16");
    assert_eq!(json(run.join("training/config.json"))["dtype"], "f16");
    let (before, after) = (tensors(&base), tensors(&run.join("model")));
    assert_ne!(get(&after, key), get(&before, key), "every weight trains");

    let refused = |args: &[&str]| {
        let out = tunelab(&[&["train", "embed", cfg.to_str().unwrap(), "--name", "refused"], args].concat());
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&["--dtype", "bf16"]);
    assert!(err.contains("--dtype") && err.contains("f32, f16"), "{err}");
    let err = refused(&["--dtype", "f16", "--fine-tune-type", "dora"]);
    assert!(err.contains("dtype") && err.contains("dora") && err.contains("--fine-tune-type lora"), "{err}");
    let gemma = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/tiny");
    let gemma_cfg = config(&tmp.path().join("gemma"), &gemma, "max_steps = 1\n[train.lora]\nrank = 2\nalpha = 4.0\n");
    let out = tunelab(&["train", "embed", gemma_cfg.to_str().unwrap(), "--dtype", "f16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("EmbeddingGemma") && err.contains("--dtype f32"), "{err}");
}
