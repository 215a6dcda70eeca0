#!/usr/bin/env python3
"""Reference fixtures for tunelab's yes/no LLM reranker (tests/reranker_parity.rs).

Every expected value comes from a reference implementation run by this script, never from tunelab:

  tiny     a tiny random Qwen3 saved by transformers, with a small byte-level BPE tokenizer in
           Qwen2's style (trained here by the `tokenizers` library; it has `yes`, `no`, <|im_start|>,
           <|im_end|>, <think>), and transformers' softmax over the `yes`/`no` logits at the last
           position of the rerank prompt for 20 query/document pairs.
                                                     -> tests/fixtures/reranker/tiny_qwen3_reranker/
  smollm2  the bundled SmolLM2-135M-Instruct Q4_1 GGUF dequantized by gguf-py (ggml's own
           dequantisation) into an f32 Hugging Face Llama checkpoint (llama.cpp's q/k row
           permutation undone), its tokenizer converted from the GGUF by transformers, and
           transformers' P(yes) on the same prompts.          -> tests/fixtures/reranker/smollm2.json

The prompt is Qwen3-Reranker's (QMD's): tokenized as QMD sends it through node-llama-cpp, template
pieces, query and document each tokenized on its own and concatenated.

Environment: a venv with torch, transformers, tokenizers, safetensors, gguf, numpy
(the project's .venv after scripts/setup-python.sh --heavy).
Run:  python scripts/make-reranker-fixtures.py [tiny|smollm2 ...]
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reranker"
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

TEMPLATE = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
            'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
            '<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n'
            '<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2/Qwen3).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def f32_list(a):
    return [float(x) for x in a.astype("float32").ravel()]


def pairs():
    """20 query/document pairs: bundled judgments (documents cut to keep prompts short) and edge
    cases (empty document, Unicode, whitespace runs, a template-like string)."""
    rows = [json.loads(l) for l in (ROOT / "datasets" / "reranker" / "judgments.jsonl").read_text().splitlines()]
    out = []
    for r in rows[:14]:
        out.append({"query": r["query"], "document": r["document"][:240]})
    out += [
        {"query": "when is the drawing", "document": ""},
        {"query": "café crème", "document": "Café au lait — naïve résumé, 東京, 🙂 emoji."},
        {"query": "  spaces  around ", "document": "tabs\tand\n\nnewlines\n   indented"},
        {"query": "yes", "document": "no"},
        {"query": "What's BM25?", "document": "BM25 (k1 = 1.2, b = 0.75) scores 3.5 > 2."},
        {"query": "x", "document": "<Query>: {query} not a placeholder"},
    ]
    return out


def qmd_ids(encode, bos, query, document):
    prefix, rest = TEMPLATE.split("{query}")
    middle, suffix = rest.split("{document}")
    ids = ([bos] if bos is not None else []) + encode(prefix) + encode(query) + encode(middle) + encode(document) + encode(suffix)
    return ids


def p_yes_cases(model, encode, bos, yes, no):
    import torch
    cases = []
    with torch.no_grad():
        for p in pairs():
            ids = qmd_ids(encode, bos, p["query"], p["document"])
            logits = model(torch.tensor([ids])).logits[0, -1]
            two = logits[[yes, no]].double()
            prob = torch.softmax(two, 0)[0].item()
            cases.append({**p, "input_ids": ids, "logits_yes_no": f32_list(two.float().numpy()), "p_yes": prob})
    return cases


# ------------------------------------------------------------------------------------------ tiny
def make_tiny():
    import numpy as np
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    d = OUT / "tiny_qwen3_reranker"
    d.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    text = [TEMPLATE, "yes\nno\nyes\nno\n" * 20] + [p["query"] + "\n" + p["document"] for p in pairs()]
    text += [l for l in (ROOT / "datasets" / "reranker" / "judgments.jsonl").read_text().splitlines()[:60]]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    tok.add_special_tokens(specials)
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    tok.save(str(d / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    (d / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=1) + "\n")

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=24, max_position_embeddings=512, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    encode = lambda s: hf_tok(s, add_special_tokens=False)["input_ids"]
    yes, no = hf_tok.convert_tokens_to_ids("yes"), hf_tok.convert_tokens_to_ids("no")
    cases = p_yes_cases(model, encode, None, yes, no)
    (d / "expected.json").write_text(json.dumps({
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32 eager",
        "template": TEMPLATE, "yes_id": yes, "no_id": no, "cases": cases}, ensure_ascii=False) + "\n")
    print(f"wrote {d} (vocab {vocab}, p_yes range {min(c['p_yes'] for c in cases):.3f}..{max(c['p_yes'] for c in cases):.3f})")


# --------------------------------------------------------------------------------------- smollm2
def smollm2_reference(path=SMOLLM):
    """transformers' LlamaForCausalLM on gguf-py's f32 dequantization of the GGUF at `path` and
    transformers' tokenizer converted from it: (model, encode, bos or None, yes id, no id)."""
    import numpy as np
    import torch
    import transformers
    import gguf
    from gguf.quants import dequantize
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    r = gguf.GGUFReader(str(path))
    field = lambda k: r.fields[k].contents()
    n_head, n_kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")

    def unpermute(w, n):  # inverse of convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    blk = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    sd = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]
        w = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if t.name in names:
            hf = names[t.name]
        else:
            _, i, mod, suffix = t.name.split(".")
            hf = f"model.layers.{i}.{blk[mod]}.{suffix}"
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))
    cfg = LlamaConfig(
        vocab_size=sd["model.embed_tokens.weight"].shape[0], hidden_size=field("llama.embedding_length"),
        intermediate_size=field("llama.feed_forward_length"), num_hidden_layers=field("llama.block_count"),
        num_attention_heads=n_head, num_key_value_heads=n_kv, rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base")), max_position_embeddings=field("llama.context_length"),
        tie_word_embeddings="lm_head.weight" not in sd)
    model = LlamaForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("lm_head" in m or "rotary" in m for m in missing), (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model = model.float()
    tok = AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    add_bos = bool(r.fields["tokenizer.ggml.add_bos_token"].contents()) if "tokenizer.ggml.add_bos_token" in r.fields else False
    bos = int(field("tokenizer.ggml.bos_token_id")) if add_bos else None
    return model, encode, bos, yes, no


def make_smollm2():
    import gguf, torch, transformers
    model, encode, bos, yes, no = smollm2_reference()
    cases = p_yes_cases(model, encode, bos, yes, no)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "smollm2.json").write_text(json.dumps({
        "model": SMOLLM.name,
        "reference": f"gguf-py {getattr(gguf, '__version__', '?')} dequantized to f32, transformers {transformers.__version__}, "
                     f"torch {torch.__version__}, float32 eager; tokenizer converted from the GGUF by transformers",
        "template": TEMPLATE, "yes_id": yes, "no_id": no, "cases": cases}, ensure_ascii=False) + "\n")
    print(f"wrote smollm2.json (p_yes range {min(c['p_yes'] for c in cases):.4f}..{max(c['p_yes'] for c in cases):.4f})")


COMMANDS = {"tiny": make_tiny, "smollm2": make_smollm2}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for n in sys.argv[1:] or list(COMMANDS):
        COMMANDS[n]()
