#!/usr/bin/env python3
"""llama.cpp's scores of the GGUF files `tunelab export gguf` writes (tests/reranker_gguf.rs).

CI has no llama.cpp, so this script records what llama.cpp computes on tunelab's exports, with
each file's SHA-256; the CI test re-exports with the same command, checks the SHA-256 (the same
bytes llama.cpp read) and compares tunelab's own scores of the file with llama.cpp's.

  reranker   tests/fixtures/reranker/tiny_qwen3_reranker exported with --reranker (f32, f16, q8_0):
             llama.cpp's rank pooling (the output of `--pooling rank`, llama-server's /rerank,
             node-llama-cpp's ranking context) on the 20 query/document pairs of its expected.json.
             The prompt is built as QMD sends it through node-llama-cpp: the file's
             tokenizer.chat_template.rerank split at {query} and {document}, template pieces
             tokenized by llama.cpp with special tokens recognised, query and document as plain
             text; those ids are compared with the ids transformers' tokenizer gave (expected.json,
             which tunelab's own tokenization is tested against), and the script fails on any
             difference. Also: transformers' P(yes) from expected.json beside llama.cpp's.
  llama      a tiny random Llama (llama3 RoPE scaling, attention biases, untied head) with the same
             byte-level BPE vocabulary, plus a random PEFT LoRA (rank 2, all seven projections),
             fused by `tunelab export gguf --adapter-path` (f32, f16, q8_0): llama.cpp's logits at
             every position of 3 token sequences (f32) or the last one (f16, q8_0), beside
             transformers + PEFT's logits of the same adapted model (f32). Made once by
             `make-reranker-gguf-fixtures.py tiny-llama` into tests/fixtures/reranker/tiny_llama_bpe{,_lora}.
  qwen3      the tiny Qwen3 exported as a plain decoder (f32): llama.cpp's logits, beside transformers'.

llama.cpp runs with an F32 KV cache (its default F16 cache rounds keys and values).

Environment: the project's .venv (torch, transformers, peft, tokenizers: scripts/setup-python.sh --heavy) and llama-cpp-python from
scripts/setup-llama-cpp.sh (LLAMA_CPP_DIR); tunelab built (`cargo build`).
  smollm2    (a check, no fixture) the bundled SmolLM2 Q4_1 GGUF re-exported as f16: llama.cpp loads
             it, tokenizes as with the source file and gives the source file's logits (up to Q4_1).

Run:  python scripts/make-reranker-gguf-fixtures.py [tiny-llama] record [smollm2]
"""
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_env import import_llama_cpp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reranker"
QWEN3 = OUT / "tiny_qwen3_reranker"
LLAMA = OUT / "tiny_llama_bpe"
LORA = OUT / "tiny_llama_bpe_lora"
TUNELAB = ROOT / "target" / "debug" / "tunelab"
TYPES = ["f32", "f16", "q8_0"]
# Token sequences for the decoder logits (ids < 512; 5 = first ordinary token after the specials).
SEQUENCES = [[1, 40, 77, 301, 12, 9, 450, 2], [88, 88, 88, 17, 200, 511, 6], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


def export(model, out, ty, *extra):
    cmd = [str(TUNELAB), "export", "gguf", "--model", str(model), "--out", str(out), "--type", ty, *map(str, extra)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return hashlib.sha256(out.read_bytes()).hexdigest()


def header_sha(path):
    """SHA-256 of the GGUF's header (metadata and tensor table, up to the tensor data)."""
    import gguf
    return hashlib.sha256(path.read_bytes()[: gguf.GGUFReader(str(path)).data_offset]).hexdigest()


def make_tiny_llama():
    """A tiny random Llama with the tiny Qwen3's byte-level BPE vocabulary, and a random PEFT LoRA."""
    import shutil
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    LLAMA.mkdir(parents=True, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(QWEN3 / f, LLAMA / f)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                      attention_bias=True, tie_word_embeddings=False, bos_token_id=None, eos_token_id=2,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.save_pretrained(LLAMA, safe_serialization=True)
    (LLAMA / "generation_config.json").unlink(missing_ok=True)
    torch.manual_seed(2)
    lcfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lcfg)
    peft_model.save_pretrained(LORA, safe_serialization=True)
    print(f"wrote {LLAMA} and {LORA}")


def transformers_logits(model_dir, adapter=None):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].tolist() for s in SEQUENCES]


def llama_logits(llama_cpp, gguf):
    llm = llama_cpp.Llama(model_path=str(gguf), logits_all=True, n_ctx=128, n_batch=128, n_ubatch=128,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    out = []
    for s in SEQUENCES:
        llm.reset()
        llm.eval(s)
        # 8 significant digits: f32 precision, half the JSON size.
        out.append([[float(f"{x:.8g}") for x in row] for row in llm.scores[: len(s)]])
    return out


def rank_scores(llama_cpp, gguf, cases):
    """llama.cpp's rank pooling of each case's prompt, and the prompt's ids as llama.cpp tokenizes it."""
    llm = llama_cpp.Llama(model_path=str(gguf), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK,
                          n_ctx=512, n_batch=512, n_ubatch=512,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    template = llm.metadata["tokenizer.chat_template.rerank"]
    prefix, rest = template.split("{query}")
    middle, suffix = rest.split("{document}")
    tok = lambda text, special: llm.tokenize(text.encode("utf-8"), add_bos=False, special=special) if text else []
    scores, ids_all = [], []
    for c in cases:
        ids = tok(prefix, True) + tok(c["query"], False) + tok(middle, True) + tok(c["document"], False) + tok(suffix, True)
        ids_all.append(ids)
        llm._ctx.kv_cache_clear()
        llm._batch.reset()
        llm._batch.add_sequence(ids, 0, False)
        llm._ctx.decode(llm._batch)
        ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)
        scores.append([float(ptr[0]), float(ptr[1])])
    return scores, ids_all, template


def record():
    llama_cpp = import_llama_cpp()
    if not TUNELAB.exists():
        sys.exit(f"{TUNELAB} is missing: run cargo build first")
    src = Path(llama_cpp.__file__).resolve().parent.parent
    expected = json.loads((QWEN3 / "expected.json").read_text())
    cases = expected["cases"]
    out = {"generator": f"llama.cpp from {src.name} (CPU, F32 KV cache), via scripts/make-reranker-gguf-fixtures.py",
           "sequences": SEQUENCES, "reranker": {}, "llama": {}, "qwen3": {}}
    tmp = Path(tempfile.mkdtemp())
    for ty in TYPES:
        g = tmp / f"rerank-{ty}.gguf"
        sha = export(QWEN3, g, ty, "--reranker")
        scores, ids, template = rank_scores(llama_cpp, g, cases)
        for c, i in zip(cases, ids):
            if i != c["input_ids"]:
                sys.exit(f"llama.cpp tokenizes the prompt of {c['query']!r} / {c['document']!r} differently:\n{i}\nvs\n{c['input_ids']}")
        assert template == expected["template"], "the exported rerank template is not the reference one"
        p_yes = [s[0] for s in scores]
        worst = max(abs(p - c["p_yes"]) for p, c in zip(p_yes, cases))
        print(f"reranker {ty}: token ids of all {len(cases)} prompts agree with transformers'; "
              f"max |P(yes) llama.cpp - transformers| = {worst:.2e}; softmax sums {min(sum(s) for s in scores):.6f}")
        out["reranker"][ty] = {"sha256": sha, "header_sha256": header_sha(g), "bytes": g.stat().st_size, "rank_output": scores,
                               "max_abs_vs_transformers": worst}
    out["reranker"]["token_ids_agree"] = True

    ref = transformers_logits(LLAMA, LORA)
    base = transformers_logits(LLAMA)
    effect = max(abs(a - b) for s, t in zip(ref, base) for r1, r2 in zip(s, t) for a, b in zip(r1, r2))
    for ty in TYPES:
        g = tmp / f"llama-{ty}.gguf"
        sha = export(LLAMA, g, ty, "--adapter-path", LORA)
        logits = llama_logits(llama_cpp, g)
        worst = max(abs(a - b) for s, t in zip(logits, ref) for r1, r2 in zip(s, t) for a, b in zip(r1, r2))
        print(f"llama (LoRA fused) {ty}: max |logit llama.cpp - transformers+PEFT| = {worst:.2e} (adapter effect {effect:.2f})")
        keep = logits if ty == "f32" else [s[-1:] for s in logits]
        out["llama"][ty] = {"sha256": sha, "header_sha256": header_sha(g), "bytes": g.stat().st_size, "logits": keep, "max_abs_vs_transformers": worst}
    out["llama"]["adapter_effect"] = effect

    ref = transformers_logits(QWEN3)
    g = tmp / "qwen3-f32.gguf"
    sha = export(QWEN3, g, "f32")
    logits = llama_logits(llama_cpp, g)
    worst = max(abs(a - b) for s, t in zip(logits, ref) for r1, r2 in zip(s, t) for a, b in zip(r1, r2))
    print(f"qwen3 f32: max |logit llama.cpp - transformers| = {worst:.2e}")
    out["qwen3"]["f32"] = {"sha256": sha, "header_sha256": header_sha(g), "bytes": g.stat().st_size, "logits": logits, "max_abs_vs_transformers": worst}

    path = OUT / "gguf_llamacpp.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def smollm2():
    """A real model (no fixture written): the bundled SmolLM2-135M-Instruct Q4_1 GGUF re-exported by
    tunelab as f16 (llama arch, tokenizer metadata copied from the source GGUF). llama.cpp must
    load it, tokenize as it tokenizes the source file, and give the source file's next tokens."""
    import numpy as np
    llama_cpp = import_llama_cpp()
    src = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tmp = Path(tempfile.mkdtemp())
    out = tmp / "smollm2-f16.gguf"
    export(src, out, "f16")
    texts = ["The capital of France is", "<|im_start|>user\nWhat is BM25?<|im_end|>\n<|im_start|>assistant\n",
             "def fibonacci(n):\n    if n < 2:", "café crème 東京 3.14159 🙂"]
    kw = dict(logits_all=True, n_ctx=128, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    a, b = llama_cpp.Llama(model_path=str(src), **kw), llama_cpp.Llama(model_path=str(out), **kw)
    worst, agree, n = 0.0, 0, 0
    for t in texts:
        ta, tb = a.tokenize(t.encode(), special=True), b.tokenize(t.encode(), special=True)
        assert ta == tb, (t, ta, tb)
        for m in (a, b):
            m.reset()
            m.eval(ta)
        la, lb = np.array(a.scores[: len(ta)]), np.array(b.scores[: len(ta)])
        worst = max(worst, float(np.abs(la - lb).max()))
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        n += len(ta)
    print(f"smollm2 f16 re-export: tokenization identical on {len(texts)} texts; logits vs the Q4_1 source max "
          f"{worst:.3f}, argmax agreement {agree}/{n} ({out.stat().st_size / 2**20:.0f} MiB)")
    out.unlink()


COMMANDS = {"tiny-llama": make_tiny_llama, "record": record, "smollm2": smollm2}

if __name__ == "__main__":
    for n in sys.argv[1:] or ["record"]:
        COMMANDS[n]()
