//! Chat records with tools, tool calls and tool replies become the token ids transformers'
//! `apply_chat_template(messages, tools=tools)` gives (what MLX-LM trains on), and `mask_prompt`
//! keeps exactly the assistant turns in the loss, as transformers' `return_assistant_tokens_mask`
//! marks them on a `{% generation %}`-tagged copy of each template.
//!
//! Fixtures: `scripts/make-chat-tool-fixtures.py` (transformers 5.25, the SmolLM2 tokenizer
//! transformers builds from the bundled GGUF), for SmolLM2's template and a Qwen3-style template
//! with tools, over generated variants: no tools, one tool, several tools with parallel calls,
//! string and object arguments, tool replies, `content: null`, Unicode in arguments, multi-turn
//! tool use, a record ending with a tool reply, nested schemas and arguments with non-ASCII keys;
//! every record with tools or tool calls in three key orders (as written, reversed, sorted), which
//! transformers prints as written (`tojson` does not sort). Each record is read from its JSONL
//! line by tunelab's reader, and again after a round trip through the data frame.

use std::path::PathBuf;

use burn::tensor::Device;
use serde_json::Value;
use tunelab::data::chat_template::ChatTemplate;
use tunelab::data::formats::{ChatRecord, Record, read_records};
use tunelab::data::jsonl::BadLines;
use tunelab::data::governance::Policy;
use tunelab::lora::QuantizeBase;
use tunelab::model::decoder::CausalLm;
use tunelab::train::sft_data::tokenize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn tool_chats_tokenize_and_mask_as_transformers() {
    let smollm = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(smollm.exists(), "{} is missing: run scripts/fetch-models.sh", smollm.display());
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/chat_tools/expected.json")).unwrap()).unwrap();
    // Blocks kept quantized: only the tokenizer and the template matter here.
    let mut lm = CausalLm::load_with(&smollm, &Device::flex(), QuantizeBase::Keep).unwrap();
    let (bos, eos) = lm.chat_template.as_ref().map(|t| (t.bos_token.clone(), t.eos_token.clone())).unwrap();
    let template_path = |name: &str| match name {
        "smollm2.jinja" => root().join("tests/fixtures/decoder/templates/smollm2.jinja"),
        other => root().join("tests/fixtures/chat_tools").join(other),
    };
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 52);
    let dir = tempfile::tempdir().unwrap();
    let (mut same_as_mlx, mut multi) = (0, 0);
    for case in cases {
        let (tname, name) = (case["template"].as_str().unwrap(), case["name"].as_str().unwrap());
        let src = std::fs::read_to_string(template_path(tname)).unwrap();
        lm.chat_template = Some(ChatTemplate::new(&src, bos.clone(), eos.clone(), tname).unwrap());
        // The record as a user's file holds it: one JSONL line, keys in the order written.
        let file = dir.path().join("train.jsonl");
        std::fs::write(&file, format!("{}\n", case["line"].as_str().unwrap())).unwrap();
        let rec = read_records::<ChatRecord>(&file, BadLines::Fail).unwrap_or_else(|e| panic!("{tname}/{name}: {e}")).records.remove(0);
        let data = Policy::default().apply(vec![rec.clone()]);
        assert_eq!(data.len(), 1, "{name}: public records pass the default policy");

        // The text first, for a readable failure; again after the data frame (splits, imports).
        let framed = ChatRecord::from_frame(&ChatRecord::to_frame(std::slice::from_ref(&rec)).unwrap()).unwrap().remove(0);
        for (how, r) in [("read", &rec), ("through the data frame", &framed)] {
            let sample = tunelab::train::sft_data::SftRecord::sample(r);
            let tunelab::train::sft_data::Sample::Chat { messages, tools, .. } = sample else { unreachable!() };
            let text = lm.chat_template.as_ref().unwrap().render_tools(&messages, tools.as_deref(), false).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{tname}/{name}: rendered text ({how})");
        }
        let sample = tunelab::train::sft_data::SftRecord::sample(&rec);
        let tunelab::train::sft_data::Sample::Chat { messages, .. } = sample else { unreachable!() };

        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ex = &tokenize(&lm, &data, false, "train").unwrap()[0];
        assert_eq!(ex.tokens, want, "{tname}/{name}: token ids");
        assert!((1..want.len()).all(|p| ex.counts(p)), "{tname}/{name}: without mask_prompt every target counts");

        let masked = &tokenize(&lm, &data, true, "train").unwrap()[0];
        assert_eq!(masked.tokens, want);
        let mask: Vec<bool> = case["assistant_mask"].as_array().unwrap().iter().map(|v| v.as_u64() == Some(1)).collect();
        let ours: Vec<bool> = (0..want.len()).map(|p| p > 0 && masked.counts(p)).collect();
        if ours != mask {
            let show = |m: &[bool]| m.iter().map(|&b| if b { '1' } else { '.' }).collect::<String>();
            panic!("{tname}/{name}: assistant mask\n  ours        {}\n  transformers {}", show(&ours), show(&mask));
        }
        // Where the record has one assistant turn, at the end, the loss starts where MLX-LM's
        // --mask-prompt starts it.
        let assistants = messages.iter().filter(|m| m.role == "assistant").count();
        if assistants == 1 && messages.last().is_some_and(|m| m.role == "assistant") {
            assert_eq!((masked.offset, masked.masked.len()), (case["mlx_offset"].as_u64().unwrap() as usize, 0), "{tname}/{name}");
            same_as_mlx += 1;
        } else {
            multi += 1;
        }
    }
    assert!(same_as_mlx >= 2 && multi >= 40, "{same_as_mlx} single-turn, {multi} multi-turn cases");
}
