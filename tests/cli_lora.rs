//! `tunelab train lora`, `generate --adapter-path`, `export` and `fuse` end to end on the tiny
//! Llama fixture (random weights, word-level vocabulary `w3`..`w127`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Device, Int, Tensor, TensorData};
use tunelab::export::{mlx, peft};
use tunelab::model::decoder::CausalLm;

fn tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama")
}

fn tunelab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab")).args(args).current_dir(cwd).output().expect("run tunelab")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "failed:\nstdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Completion records `w{k} w{a} w{b}` → `w{k} w{k+1}`, classified public.
fn write_split(path: &Path, n: usize, from: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let k = 3 + (from + i * 7) % 100;
            serde_json::json!({
                "prompt": format!("w{k} w{} w{}", 3 + (k * 3) % 120, 3 + (k * 5) % 120),
                "completion": format!("w{k} w{}", k + 1),
                "classification": "public",
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `data/train.jsonl` (8 records) and `data/valid.jsonl` (4) under `dir`.
fn write_small_data(dir: &Path) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.jsonl"), 8, 0);
    write_split(&data.join("valid.jsonl"), 4, 50);
}

fn logits(lm: &CausalLm, ids: &[i64]) -> Vec<f32> {
    let device = Device::flex();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
    lm.model.forward(x, None, None).into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn train_generate_export_and_fuse_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.jsonl"), 16, 0);
    write_split(&data.join("valid.jsonl"), 4, 50);
    write_split(&data.join("test.jsonl"), 4, 80);
    // Options from a TOML file, some overridden by flags.
    let config = tmp.path().join("lora.toml");
    std::fs::write(&config, "iters = 100\nbatch_size = 2\nlearning_rate = 0.02\nsteps_per_eval = 6\nnum_layers = 1\n[lora_parameters]\nrank = 4\nalpha = 8.0\n").unwrap();
    let model = tiny_llama().display().to_string();
    let out = ok(&tunelab(
        &["train", "lora", config.to_str().unwrap(), "--model", &model, "--data", "data", "--iters", "12", "--save-every", "6", "--num-layers", "-1", "--mask-prompt", "--test", "--adapter-path", "adapters", "--seed", "1"],
        tmp.path(),
    ));
    eprintln!("{out}");
    assert!(out.contains("Trained 12 iterations") && out.contains("Test ppl"), "{out}");
    let adapters = tmp.path().join("adapters");
    let log: Vec<serde_json::Value> = std::fs::read_to_string(adapters.join("loss.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let val: Vec<f64> = log.iter().filter_map(|l| l["val_loss"].as_f64()).collect();
    assert_eq!(val.len(), 3, "iterations 0, 6 and 12: {log:?}");
    assert!(val[2] < val[0] - 0.1, "validation loss falls: {val:?}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapters.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["iters"].as_u64(), cfg["num_layers"].as_i64(), cfg["lora_parameters"]["rank"].as_u64()), (Some(12), Some(-1), Some(4)), "flags win over the file");
    assert_eq!(cfg["lora_parameters"]["scale"], 2.0);
    assert_eq!(cfg["dtype"], "f32", "no --dtype: auto, f32 on the CPU, recorded as resolved");

    // generate with the adapter.
    let out = tunelab(&["generate", "--model", &model, "--adapter-path", "adapters", "--prompt", "w5 w6 w7", "-m", "3", "--ignore-chat-template"], tmp.path());
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Generation:"));

    // export to PEFT: the same factors.
    ok(&tunelab(&["export", "adapter", "--adapter-path", "adapters", "--format", "peft", "--output", "peft", "--base-model", "tiny_llama"], tmp.path()));
    let (m, p) = (mlx::read(&adapters).unwrap(), peft::read(&tmp.path().join("peft")).unwrap());
    assert_eq!(m.layers, p.layers);
    assert_eq!(m.layers.len(), 14);

    // fuse: the fused folder computes what base + adapter computes.
    ok(&tunelab(&["fuse", "--model", &model, "--adapter-path", "adapters", "--save-path", "fused"], tmp.path()));
    let fused = CausalLm::load(tmp.path().join("fused"), &Device::flex()).unwrap();
    let mut adapted = CausalLm::load(tiny_llama(), &Device::flex()).unwrap();
    adapted.model = adapted.model.apply_adapter(&m).unwrap();
    let base = CausalLm::load(tiny_llama(), &Device::flex()).unwrap();
    let ids = [1, 5, 17, 99, 3, 42];
    let (f, a, b) = (logits(&fused, &ids), logits(&adapted, &ids), logits(&base, &ids));
    let worst = f.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let moved = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4 && moved > 1e-3, "fused vs adapted {worst}, adapted vs base {moved}");
    assert!(fused.chat_template.is_some(), "tokenizer files copied");

    // A second fuse into the same folder is refused, naming it.
    let out = tunelab(&["fuse", "--model", &model, "--adapter-path", "adapters", "--save-path", "fused"], tmp.path());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fused"));
}

#[test]
fn bad_option_and_missing_data_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("lora.toml");
    std::fs::write(&config, "iters = 10\nbatchsize = 2\n").unwrap();
    let out = tunelab(&["train", "lora", config.to_str().unwrap()], tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lora.toml") && err.contains("batchsize"), "{err}");
    let model = tiny_llama().display().to_string();
    let out = tunelab(&["train", "lora", "--model", &model, "--data", "nowhere"], tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nowhere"), "{err}");
}

/// `TUNELAB_ATTENTION=plain` keeps burn's attention graph (every layer's scores) in training, for
/// comparisons; unset, empty or `recomputed`, attention is recomputed in the backward pass. Read
/// in any case and around whitespace; another value is named in a warning and recomputes. The
/// memory estimate follows the mode, and the losses agree.
#[test]
fn attention_mode_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_data(tmp.path());
    let model = tiny_llama().display().to_string();
    let run = |value: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunelab"));
        cmd.args(["train", "lora", "--model", &model, "--data", "data", "--iters", "2", "--batch-size", "2", "--num-layers", "-1", "--adapter-path", "a", "--overwrite"]).current_dir(tmp.path());
        match value {
            Some(v) => cmd.env("TUNELAB_ATTENTION", v),
            None => cmd.env_remove("TUNELAB_ATTENTION"),
        };
        let out = cmd.output().unwrap();
        ok(&out);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let activations = err.split("activations ").nth(1).and_then(|r| r.split(" per micro-batch").next()).unwrap_or_else(|| panic!("no estimate: {err}")).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let loss = stdout.lines().find(|l| l.starts_with("Validation loss")).unwrap_or_else(|| panic!("{stdout}")).to_string();
        (activations, loss, err.contains("neither `plain` nor `recomputed`"))
    };
    let recomputed = run(None);
    let plain = run(Some("plain"));
    assert_ne!(recomputed.0, plain.0, "the plain graph keeps the scores: a larger estimate");
    assert_eq!(recomputed.1, plain.1, "same validation losses to the printed digits");
    for v in [" PLAIN ", "Plain", "plain\n"] {
        assert_eq!(run(Some(v)), plain, "{v:?}");
    }
    for v in ["", "recomputed", " Recomputed "] {
        assert_eq!(run(Some(v)), recomputed, "{v:?}");
    }
    let typo = run(Some("plian"));
    assert!(typo.2 && typo.0 == recomputed.0, "{typo:?}");
}

/// QLoRA from the command line: `--quantize-base q4_0` (and the same option in the TOML file)
/// trains over quantized projections; the adapter fits the f32 model as any adapter does.
#[test]
fn train_lora_over_a_quantized_base() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_data(tmp.path());
    let model = tiny_llama().display().to_string();
    let args = ["train", "lora", "--model", &model, "--data", "data", "--iters", "4", "--batch-size", "2", "--num-layers", "-1", "--adapter-path", "q4"];
    let out = tunelab(&[&args[..], &["--quantize-base", "q4_0"]].concat(), tmp.path());
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("14 of 14 projections quantized (quantize_base = q4_0)"), "{err}");
    let adapter = mlx::read(&tmp.path().join("q4")).unwrap();
    assert_eq!(adapter.layers.len(), 14);
    // `keep` on an f32 folder has no blocks to keep: plain LoRA.
    let config = tmp.path().join("lora.toml");
    std::fs::write(&config, "quantize_base = \"keep\"\n").unwrap();
    // The folder holds the first run: a second run is refused unless it replaces it.
    let out = tunelab(&[&args[..], &[config.to_str().unwrap()]].concat(), tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already holds another run") && err.contains("--overwrite"), "{err}");
    let out = tunelab(&[&args[..], &[config.to_str().unwrap(), "--overwrite"]].concat(), tmp.path());
    assert!(String::from_utf8_lossy(&ok_err(&out)).contains("0 of 14 projections quantized (quantize_base = keep)"));
    let out = tunelab(&[&args[..], &["--quantize-base", "q3"]].concat(), tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'q3'") && err.contains("q4_0"), "{err}");
}

fn ok_err(out: &Output) -> Vec<u8> {
    ok(out);
    out.stderr.clone()
}

/// `tunelab eval expansions` (base and with an adapter) and `eval expansions-compare` on the tiny
/// model: the files, scores in range, the summary agreeing with its lines, and the report.
#[test]
fn eval_expansions_scores_and_compares_on_a_tiny_model() {
    use tunelab::eval::expansion::{ExpansionSummary, score_expansion_detailed};
    let tmp = tempfile::tempdir().unwrap();
    let queries: Vec<String> = ["w5 w6", "w7 w8 w9", "w10", "w11 w12"]
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"id": format!("q{i}"), "query": q, "output": [["lex", "w5"]], "classification": "public"}).to_string())
        .collect();
    std::fs::write(tmp.path().join("queries.jsonl"), queries.join("\n") + "\n").unwrap();
    let model = tiny_llama().display().to_string();
    let adapter = tiny_llama().parent().unwrap().join("peft_tiny_llama").display().to_string();
    let eval = |out: &str, extra: &[&str]| {
        let mut args = vec!["eval", "expansions", "--model", &model, "--queries", "queries.jsonl", "-m", "6", "--out", out];
        args.extend_from_slice(extra);
        tunelab(&args, tmp.path())
    };
    let out = ok(&eval("base", &[]));
    assert!(out.contains("4 queries: valid-expansion rate"), "{out}");
    ok(&eval("tuned", &["--adapter-path", &adapter]));

    for dir in ["base", "tuned"] {
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(tmp.path().join(dir).join("expansions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        let mut scores = Vec::new();
        for l in &lines {
            let score: tunelab::eval::expansion::ExpansionScore = serde_json::from_value(l["score"].clone()).unwrap();
            assert!((0.0..=1.0).contains(&score.reward) && (0.0..=100.0).contains(&score.percentage), "{l}");
            assert!(l["generated_tokens"].as_u64().unwrap() <= 6);
            // The stored breakdown is the scorer's verdict on the stored text.
            assert_eq!(score, score_expansion_detailed(l["query"].as_str().unwrap(), l["text"].as_str().unwrap()));
            scores.push(score);
        }
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join(dir).join("summary.json")).unwrap()).unwrap();
        let want = ExpansionSummary::of(&scores);
        assert_eq!(summary["summary"]["n"], 4);
        assert!((summary["summary"]["mean_reward"].as_f64().unwrap() - want.mean_reward).abs() < 1e-12);
        assert!((summary["summary"]["valid_rate"].as_f64().unwrap() - want.valid_rate).abs() < 1e-12);
        assert_eq!(summary["model"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(summary["adapter"].is_null(), dir == "base");
        assert!(summary["example_prompt"].as_str().unwrap().contains("/no_think Expand this search query: w5 w6"), "{summary}");
    }
    // Never overwrites an evaluation.
    assert!(!eval("base", &[]).status.success());

    let out = ok(&tunelab(&["eval", "expansions-compare", "base", "tuned/summary.json", "--reports-root", "reports", "--permutations", "200", "--bootstrap", "200"], tmp.path()));
    assert!(out.contains("reward") && out.contains("valid"), "{out}");
    let run = std::fs::read_dir(tmp.path().join("reports/qe-eval")).unwrap().next().unwrap().unwrap().path();
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("## Examples") && (0..4).any(|i| md.contains(&format!("| q{i} |"))), "{md}");
    assert!(std::fs::read_to_string(run.join("report.html")).unwrap().contains("<h2>Examples</h2>"));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 42);
    assert!(manifest["inputs"].as_array().unwrap().iter().any(|i| i["path"] == adapter.as_str()), "{manifest}");
    assert!(manifest["config"]["b"]["evaluation"]["adapter"]["sha256"].is_string());

    // Bad input names the file and the line.
    std::fs::write(tmp.path().join("bad.jsonl"), "{\"query\": \"w5\"}\n{\"text\": \"no query\"}\n").unwrap();
    let out = tunelab(&["eval", "expansions", "--model", &model, "--queries", "bad.jsonl", "--out", "bad"], tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl:2") && err.contains("query"), "{err}");
    // Still `tunelab eval QRELS RUN` without a subcommand.
    std::fs::write(tmp.path().join("q.qrels"), "1 0 d1 1\n").unwrap();
    std::fs::write(tmp.path().join("r.run"), "1 Q0 d1 1 1.0 t\n").unwrap();
    assert!(ok(&tunelab(&["eval", "q.qrels", "r.run", "-m", "map"], tmp.path())).contains("map"));
}

fn losses_and_scales(dir: &Path) -> (Vec<f64>, Vec<Option<f64>>) {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("loss.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    (steps.iter().map(|l| l["loss"].as_f64().unwrap()).collect(), steps.iter().map(|l| l["loss_scale"].as_f64()).collect())
}

/// `--dtype f16` (flag or TOML `dtype`), over a QLoRA base (Q4_0 blocks dequantized in f32 and
/// cast to f16 at each use): the losses follow the f32 QLoRA run within 0.05 (measured 0.017:
/// without warm-up AdamW's first update is ±lr on every element, so elements whose gradient is
/// near 0 take the sign rounding gives them; `train::sft`'s 50-iteration test holds the tighter
/// bound), the log carries the loss scale, the adapter is the same f32 MLX-LM file; bf16 and
/// DoRA are refused with the option named.
#[test]
fn train_lora_f16_over_a_quantized_base_follows_f32() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_data(tmp.path());
    let model = tiny_llama().display().to_string();
    let args = ["train", "lora", "--model", &model, "--data", "data", "--iters", "8", "--batch-size", "2", "--num-layers", "-1", "--learning-rate", "5e-3", "--quantize-base", "q4_0"];
    ok(&tunelab(&[&args[..], &["--adapter-path", "f32"]].concat(), tmp.path()));
    let config = tmp.path().join("f16.toml");
    std::fs::write(&config, "dtype = \"f16\"\ninit_loss_scale = 1024.0\n").unwrap();
    ok(&tunelab(&[&args[..], &[config.to_str().unwrap(), "--adapter-path", "f16"]].concat(), tmp.path()));
    let (l32, s32) = losses_and_scales(&tmp.path().join("f32"));
    let (l16, s16) = losses_and_scales(&tmp.path().join("f16"));
    assert_eq!(l32.len(), 8);
    assert!(s32.iter().all(Option::is_none) && s16.iter().all(|s| *s == Some(1024.0)), "{s32:?} {s16:?}");
    let worst = l32.iter().zip(&l16).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    eprintln!("f16 vs f32 QLoRA, 8 iterations: max |Δloss| {worst:.5}");
    assert!(worst <= 0.05 && worst > 0.0, "f16 vs f32 QLoRA: max |Δloss| {worst}: {l32:?} vs {l16:?}");
    let (a32, a16) = (mlx::read(&tmp.path().join("f32")).unwrap(), mlx::read(&tmp.path().join("f16")).unwrap());
    assert_eq!(a16.layers.len(), 14);
    assert_eq!(a16.layers.keys().collect::<Vec<_>>(), a32.layers.keys().collect::<Vec<_>>());
    // The flag wins over the file, and bad values name the option.
    let out = tunelab(&[&args[..], &["--dtype", "bf16", "--adapter-path", "bf16"]].concat(), tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--dtype") && err.contains("f32, f16"), "{err}");
    std::fs::write(&config, "dtype = \"f16\"\nfine_tune_type = \"dora\"\n").unwrap();
    let out = tunelab(&[&args[..], &[config.to_str().unwrap(), "--adapter-path", "dora"]].concat(), tmp.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'dtype'") && err.contains("dora"), "{err}");
}
