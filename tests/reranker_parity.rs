//! Yes/no reranker parity against transformers (fixtures made by
//! `scripts/make-reranker-fixtures.py`, never by tunelab):
//!
//! * a tiny random Qwen3 with a byte-level BPE tokenizer (Hugging Face folder): token ids of the
//!   rerank prompt as QMD sends it, and P(yes) = softmax([yes, no])[0] at the last position, to 1e-4;
//!   batched (right-padded, several lengths) equal to one by one;
//! * the bundled SmolLM2-135M-Instruct Q4_1 GGUF against transformers on gguf-py's f32
//!   dequantization of the same file, to 1e-4.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::Value;
use tunelab::model::decoder::CausalLm;
use tunelab::model::reranker::{QWEN3_RERANK_TEMPLATE, RerankTemplate, Reranker, Scorer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/reranker").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Check token ids and P(yes) of every case, one by one and in batches of several sizes.
fn check(r: &mut Reranker, expected: &Value, tol: f64) {
    assert_eq!(
        expected["template"].as_str().unwrap(),
        QWEN3_RERANK_TEMPLATE
    );
    assert_eq!(r.yes_id as u64, expected["yes_id"].as_u64().unwrap());
    assert_eq!(r.no_id as u64, expected["no_id"].as_u64().unwrap());
    let cases = expected["cases"].as_array().unwrap();
    let mut prompts = Vec::new();
    for c in cases {
        let ids = r
            .encode_pair(
                c["query"].as_str().unwrap(),
                c["document"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(
            ids,
            u32s(&c["input_ids"]),
            "token ids of {:?} / {:?}",
            c["query"],
            c["document"]
        );
        prompts.push(ids);
    }
    let want: Vec<f64> = cases.iter().map(|c| c["p_yes"].as_f64().unwrap()).collect();
    let mut one_by_one = Vec::new();
    for batch_size in [1, 3, 8, 64] {
        r.batch_size = batch_size;
        let got = r.score_tokens(&prompts).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol,
                "case {i} (batch {batch_size}): P(yes) {g} vs transformers {w}"
            );
        }
        if batch_size == 1 {
            one_by_one = got;
        } else {
            for (a, b) in got.iter().zip(&one_by_one) {
                assert!((a - b).abs() <= 1e-5, "batched {a} vs one by one {b}");
            }
        }
    }
    // The same through the string interface the search pipeline calls.
    let q = cases[0]["query"].as_str().unwrap();
    let docs: Vec<&str> = cases
        .iter()
        .filter(|c| c["query"].as_str() == Some(q))
        .map(|c| c["document"].as_str().unwrap())
        .collect();
    let scored = Scorer::score(&*r, q, &docs).unwrap();
    assert!((scored[0] as f64 - want[0]).abs() <= tol);
}

#[test]
fn tiny_qwen3_p_yes_matches_transformers() {
    let device = Device::flex();
    let dir = fixture("tiny_qwen3_reranker");
    let mut r = Reranker::load(&dir, None, &device).unwrap();
    check(&mut r, &json(&dir.join("expected.json")), 1e-4);
}

#[test]
fn smollm2_gguf_p_yes_matches_transformers() {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    let mut r = Reranker::load(&p, None, &Device::flex()).unwrap();
    check(&mut r, &json(&fixture("smollm2.json")), 1e-4);
}

#[test]
fn long_documents_lose_their_tail_not_the_template() {
    let device = Device::flex();
    let lm = CausalLm::load(fixture("tiny_qwen3_reranker"), &device).unwrap();
    let mut r = Reranker::new(lm, RerankTemplate::default()).unwrap();
    let doc = "word ".repeat(2000);
    let full_head = r.encode_pair("q", "").unwrap();
    for max in [full_head.len() + 1, full_head.len() + 7, 300, 512] {
        r.max_length = max;
        let ids = r.encode_pair("q", &doc).unwrap();
        assert_eq!(ids.len(), max, "truncated to max_length {max}");
        // The template's end (assistant turn, empty think block) survives.
        let tail =
            r.lm.encode(
                "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
                false,
            )
            .unwrap();
        assert_eq!(&ids[ids.len() - tail.len()..], &tail[..]);
    }
    r.max_length = full_head.len() - 1;
    let err = r.encode_pair("q", "d").unwrap_err().to_string();
    assert!(err.contains("max_length"), "{err}");
}

#[test]
fn templates_need_both_placeholders_in_order() {
    assert!(RerankTemplate::parse("Q: {query} D: {document}").is_ok());
    for bad in [
        "Q: {query}",
        "D: {document}",
        "{document} then {query}",
        "{query}{query}{document}",
        "",
    ] {
        assert!(RerankTemplate::parse(bad).is_err(), "{bad:?} accepted");
    }
    let t = RerankTemplate::default();
    assert_eq!(t.text(), QWEN3_RERANK_TEMPLATE);
    assert_eq!(
        t.render("a", "b"),
        QWEN3_RERANK_TEMPLATE
            .replace("{query}", "a")
            .replace("{document}", "b")
    );
}

/// GPU back-ends pad a batch to a multiple of `GPU_PAD_MULTIPLE` tokens (few shapes to compile);
/// the padding sits after each row's last token, so P(yes) must not move, whatever the width.
/// Checked on the CPU by padding the tiny Qwen3's prompts to wider batches by hand.
#[test]
fn padding_wider_leaves_p_yes_unchanged() {
    use tunelab::device::GPU_PAD_MULTIPLE;
    use tunelab::model::reranker::{p_yes, right_padded_to, yes_no_logits};
    let device = Device::flex();
    let dir = fixture("tiny_qwen3_reranker");
    let r = Reranker::load(&dir, None, &device).unwrap();
    let expected = json(&dir.join("expected.json"));
    let prompts: Vec<Vec<u32>> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u32s(&c["input_ids"]))
        .collect();
    let rows: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let longest = rows.iter().map(|r| r.len()).max().unwrap();
    let p_at = |width: usize| -> Vec<f32> {
        let (ids, last) = right_padded_to(&rows, width, &device).unwrap();
        let logits = yes_no_logits(&r.lm.model, ids, last, r.yes_id, r.no_id);
        p_yes(logits).into_data().try_to_vec::<f32>().unwrap()
    };
    let tight = p_at(longest);
    for width in [longest + 1, longest.div_ceil(GPU_PAD_MULTIPLE) * GPU_PAD_MULTIPLE + GPU_PAD_MULTIPLE, longest + 300] {
        for (i, (a, b)) in p_at(width).iter().zip(&tight).enumerate() {
            assert!((a - b).abs() <= 1e-5, "case {i}: P(yes) {a} at width {width} vs {b} at {longest}");
        }
    }
    // Too narrow a width is an error naming the prompt's length, never a silent truncation.
    let err = right_padded_to(&rows, longest - 1, &device).unwrap_err().to_string();
    assert!(err.contains(&format!("{longest} tokens")), "{err}");
}
