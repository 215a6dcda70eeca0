#!/usr/bin/env python3
"""Reference fixtures for tunelab's decoder work (GGUF, tokenizer, chat templates, logits).

Every expected value in tests/fixtures/decoder/ comes from a reference implementation run by this
script, never from tunelab itself:

  quants      gguf-py (the `gguf` PyPI package, ggml's own Python reader/writer): a small GGUF file
              written by gguf-py's GGUFWriter with hand-made blocks of every tensor type we read, and
              gguf-py's dequantized values.                     -> quant_blocks.gguf, quant_blocks.json
  quantizers  gguf-py's Q8_0 and Q4_0 quantizers (numpy ports of ggml's quantize_row_*_ref) on
              random rows with ties, zero blocks and clamped values.      -> quantize_ref.json
  tokenizer   llama.cpp's tokenizer (llama-cpp-python, vocab_only) on the SmolLM2 GGUF.
                                                                 -> smollm2_tokens.json
  spm         a small SentencePiece vocabulary in a vocab-only GGUF (gguf-py) and llama.cpp's ids.
                                                                 -> spm_vocab.gguf, spm_tokens.json
  logits      llama.cpp's next-token logits (llama-cpp-python, logits_all) for SmolLM2, on the Q4_1
              file and on an F32 copy of it (gguf-py dequantized).
                                                                 -> smollm2_llamacpp.json, smollm2_f32_llamacpp.json
  templates   transformers' apply_chat_template on real chat templates.
                                                                 -> chat_templates.json
  tiny        tiny random Llama and Qwen3 models saved by transformers, with transformers' logits.
                                                                 -> tiny_llama/, tiny_qwen3/
  tiny-gguf   the tiny models converted to GGUF as llama.cpp's converter does, with llama.cpp's logits.
                                                                 -> tiny_*.gguf, tiny_*/llamacpp.json

Environment (once): python3 -m venv .venv && .venv/bin/pip install gguf numpy
  llama-cpp-python (an sdist: builds llama.cpp with cmake, ~10 min on 2 cores; set
  CMAKE_ARGS="-DGGML_NATIVE=OFF") transformers jinja2 torch safetensors
Run:  .venv/bin/python scripts/make-decoder-fixtures.py [quants|tokenizer|spm|logits|templates|tiny ...]
  (llama-cpp-python also runs from its source tree with a llama.cpp build of just the `llama`
  target: PYTHONPATH=<src> LLAMA_CPP_LIB_PATH=<build>/bin; that is how the committed fixtures were
  made, with llama-cpp-python 0.3.36.)
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "decoder"
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def f32_list(a):
    """Exact decimal reprs of float32 values (Python's float repr round-trips the f32 exactly)."""
    return [float(x) for x in a.astype("float32").ravel()]


# ---------------------------------------------------------------------------------------- quants
def make_quants():
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    rng = np.random.default_rng(20240601)

    def f16_bytes(vals):
        return np.asarray(vals, dtype=np.float16).view(np.uint8)

    def blocks(qtype, n_blocks):
        """Random quantised payload with sane (finite, varied) f16 scales at the right places."""
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        def scale(k):  # k scales per block, magnitudes 1e-3 .. 1, both signs
            return f16_bytes(rng.choice([-1, 1], size=(n_blocks, k)) * 10 ** rng.uniform(-3, 0, size=(n_blocks, k))).reshape(n_blocks, 2 * k)
        if qtype in (T.Q8_0, T.Q4_0):
            raw[:, 0:2] = scale(1)
        elif qtype == T.Q4_1:
            raw[:, 0:4] = scale(2)          # d, m
        elif qtype == T.Q4_K:
            raw[:, 0:4] = scale(2)          # d, dmin
        elif qtype == T.Q6_K:
            raw[:, size - 2:size] = scale(1)  # d is last
        return raw, block

    tensors = {}
    x = rng.standard_normal(64).astype(np.float32)
    tensors["t_f32"] = (T.F32, x.reshape(2, 32).view(np.uint8).reshape(2, 128), (2, 32))
    tensors["t_f16"] = (T.F16, x.astype(np.float16).view(np.uint8).reshape(2, 64), (2, 32))
    bf = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated bf16 bits (dequant is exact either way)
    tensors["t_bf16"] = (T.BF16, bf.view(np.uint8).reshape(2, 64), (2, 32))
    for name, qt, nb in [("t_q8_0", T.Q8_0, 4), ("t_q4_0", T.Q4_0, 4), ("t_q4_1", T.Q4_1, 4),
                         ("t_q4_k", T.Q4_K, 2), ("t_q6_k", T.Q6_K, 2)]:
        raw, block = blocks(qt, nb)
        tensors[name] = (qt, raw.reshape(2, -1), (2, nb // 2 * block))

    path = OUT / "quant_blocks.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    # One metadata entry of every value type, to test the reader on gguf-py's encoding.
    w.add_uint8("test.u8", 200); w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000); w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000); w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1); w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_uint64("test.u64", 2**63 + 5); w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 0.1)
    w.add_array("test.array_str", ["a", "bc", ""])
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_f32", [0.5, -1.25])
    for name, (qt, raw, shape) in tensors.items():
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    # Read back with gguf-py's reader and dequantize with gguf-py's quants module.
    r = gguf.GGUFReader(str(path))
    expected = {"tensors": {}, "metadata": {
        "test.u8": 200, "test.i8": -100, "test.u16": 60000, "test.i16": -30000,
        "test.u32": 4000000000, "test.i32": -2000000000, "test.f32": float(np.float32(0.1)),
        "test.bool": True, "test.string": "héllo ✓", "test.u64": 2**63 + 5, "test.i64": -(2**62),
        "test.f64": 0.1, "test.array_str": ["a", "bc", ""], "test.array_i32": [1, -2, 3],
        "test.array_f32": [0.5, -1.25]}}
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type)
        expected["tensors"][t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],  # PyTorch order
            "values": f32_list(values),
        }
    (OUT / "quant_blocks.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")
    print(f"wrote {path} and quant_blocks.json ({len(r.tensors)} tensors)")


# ------------------------------------------------------------------------------------ quantizers
def make_quantizers():
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, size=(4, 96)).astype(np.float32)
    x[1, :32] = 0  # an all-zero block: d = 0
    x[2, :32] = np.arange(32, dtype=np.float32) - 16  # exact ties for roundf (x * 127/16 = k + 0.5)
    x[3, 32:64] *= 1e-3  # small scales
    x[3, 64] = -5.0  # a negative block maximum (Q4_0: d > 0, +x clamps at 15)
    out = {"shape": list(x.shape), "values": f32_list(x)}
    for name, t in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0)]:
        out[name] = quantize(x, t).tobytes().hex()
    (OUT / "quantize_ref.json").write_text(json.dumps(out) + "\n")
    print("wrote quantize_ref.json")


# ------------------------------------------------------------------------------------- tokenizer
# Strings cover: plain English, contractions, digits (SmolLM2 splits every digit), whitespace runs,
# newlines and tabs, punctuation runs, code, accents, CJK, emoji, and chat special tokens.
TOKENIZER_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they've said it's fine, we'll see.",
    "Numbers: 12345 and 3.14159, 1,000,000",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\tindented",
    "def add(a, b):\n    return a + b  # sum",
    "!!! ??? ... --- ***",
    "naïve café résumé Ångström",
    "日本語のテキストと中文文本",
    "emoji 🙂👍🏽 mixed",
    "<|im_start|>user\nWhat is BM25?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "query expansion: lex vec hyde",
    "https://example.com/path?q=search&lang=en",
    "CamelCaseIdentifier snake_case_name kebab-case-name",
    "a" * 40,
    "   ",
    "",
    "Mixed\r\nline endings\rhere",
    "QMD hybrid search with RRF fusion (k=60).",
    "don't DON'T Don't",
]


def llama_vocab(path, n_ctx=512):
    from llama_cpp import Llama
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def make_tokenizer():
    llm = llama_vocab(SMOLLM)
    cases = []
    for text in TOKENIZER_STRINGS:
        # add_bos=False: we compare the text tokens; special=True parses <|im_start|> as llama.cpp
        # does for chat prompts (parse_special).
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        cases.append({"text": text, "ids": ids})
    out = {"model": SMOLLM.name, "reference": "llama.cpp (llama-cpp-python tokenize, add_bos=False, special=True)",
           "cases": cases}
    (OUT / "smollm2_tokens.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote smollm2_tokens.json ({len(cases)} strings)")


SPM_STRINGS = ["the thing", "Hello world", "in the sea", "hello  world", " leading space", "trailing ",
               "snow ☃ man", "<|user|>hello<|end|>", "the<s>the", "", "a", "ing ing ing", "thing sing ring",
               "tab\tnewline\n", "Über naïve", "worldhello", "on the one hand", "soon", "     ", "the the the the"]


def make_spm():
    """A small SentencePiece-style vocabulary (tokens + scores + types) in a vocab-only GGUF, and
    llama.cpp's token ids for it (vocab_only, add_bos=True, special=True)."""
    import gguf
    pieces = ["▁t", "he", "▁the", "▁a", "in", "er", "▁in", "ing", "▁th", "▁s", "on", "▁on", "▁hello", "ll",
              "lo", "▁w", "or", "ld", "▁world", "▁wor", "▁H", "el", "▁He", "▁sea", "ea", "▁one", "▁hand", "an",
              "nd", "oo", "▁so", "▁r", "▁thing", "th", "▁sing", "▁ring", "▁", "e", "t", "h", "a", "i", "n", "g",
              "r", "s", "o", "l", "w", "d", "H", "c", "m", "▁man", "▁snow", "no", "ow", "ü", "▁Ü", "ber", "ï", "ve"]
    # SentencePiece's trainer always keeps every character of its pieces as a piece of its own
    # (llama.cpp could merge through a missing character; a real model never has one).
    pieces += sorted({c for p in pieces for c in p} - set(pieces))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<|user|>", "<|end|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4, 3]
    # Real SentencePiece models score pieces by (negative) rank; single characters come last.
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))] + [0.0, 0.0]
    path = OUT / "spm_vocab.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(32)
    w.add_feed_forward_length(32); w.add_head_count(4); w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama"); w.add_token_list(tokens); w.add_token_scores(scores)
    w.add_token_types(types); w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    w.add_add_bos_token(True); w.add_add_eos_token(False)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    llm = llama_vocab(path)
    cases = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)} for t in SPM_STRINGS]
    out = {"reference": "llama.cpp (llama-cpp-python vocab_only tokenize, add_bos=True, special=True)", "cases": cases}
    (OUT / "spm_tokens.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote spm_vocab.gguf and spm_tokens.json ({len(cases)} strings)")


# ---------------------------------------------------------------------------------------- logits
LOGIT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):\n    ",
    "The quick brown fox",
    "1, 2, 3, 4, 5,",
    "Search engines rank documents by",
    "BM25 is a ranking function used by",
    "The best way to learn a new language is",
    "In machine learning, overfitting means",
    "Water boils at a temperature of",
    "The opposite of hot is",
    "My favourite colour is",
    "Paris, London, Berlin and",
    "import numpy as np\nimport",
    "Question: What is 2 + 2?\nAnswer:",
    "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a haiku about search.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExpand the query: rust tokenizer<|im_end|>\n<|im_start|>assistant\nlex:",
    "Translate to French: good morning =>",
    "A long time ago in a galaxy far, far away",
    "The Eiffel Tower is located in",
    "Hello",
]
LOGIT_SAMPLE_IDS = 256  # seeded random vocabulary positions stored in full, besides the top 20


def dequantized_copy(src, dst):
    """The same model with every tensor dequantized to F32 by gguf-py (ggml's own dequantisation),
    metadata copied unchanged: llama.cpp then multiplies f32 weights with f32 activations."""
    import gguf
    from gguf.quants import dequantize
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        w.add_tensor(t.name, dequantize(t.data, t.tensor_type).reshape(shape).astype("float32"))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def make_logits():
    """llama.cpp's logits on the Q4_1 file, and on an F32 copy of it (same weights, no activation
    quantisation), to separate implementation differences from llama.cpp's Q8 activation rounding."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "smollm2_f32.gguf"
        dequantized_copy(SMOLLM, f32)
        logits_fixture(SMOLLM, "smollm2_llamacpp.json")
        logits_fixture(f32, "smollm2_f32_llamacpp.json")


def logits_fixture(model_path, out_name):
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=str(model_path), n_ctx=512, n_batch=512, logits_all=True, n_threads=2,
                seed=0, verbose=False)
    rng = np.random.default_rng(7)
    sample_ids = sorted(rng.choice(llm.n_vocab(), size=LOGIT_SAMPLE_IDS, replace=False).tolist())
    cases = []
    for prompt in LOGIT_PROMPTS:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(tokens)
        logits = np.array(llm.scores[len(tokens) - 1], dtype=np.float32)
        top = np.argsort(-logits, kind="stable")[:20]
        m = float(logits.max())
        cases.append({
            "prompt": prompt,
            "tokens": tokens,
            "top20_ids": [int(i) for i in top],
            "top20_logits": f32_list(logits[top]),
            "sample_logits": f32_list(logits[sample_ids]),
            "summary": {"mean": float(logits.mean()), "std": float(logits.std()), "min": float(logits.min()),
                        "max": m, "logsumexp": m + float(np.log(np.exp(logits.astype(np.float64) - m).sum()))},
        })
    import llama_cpp
    weights = "F32 copy (gguf-py dequantized) of " if model_path != SMOLLM else ""
    out = {"model": weights + SMOLLM.name,
           "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU, logits_all)",
           "sample_ids": sample_ids, "cases": cases}
    (OUT / out_name).write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {out_name} ({len(cases)} prompts)")


# ------------------------------------------------------------------------------------- templates
TEMPLATE_DIR = OUT / "templates"
# Tool schemas have their keys in sorted order at every level: tunelab passes JSON through
# serde_json, whose objects are sorted (Python keeps insertion order).
WEATHER_TOOL = {"function": {"description": "Get the weather in a city", "name": "get_weather",
                             "parameters": {"properties": {"city": {"description": "City name", "type": "string"}},
                                            "required": ["city"], "type": "object"}},
                "type": "function"}


def template_cases():
    chat = [{"role": "user", "content": "What is BM25?"}]
    sys_chat = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hi <b>there</b> & welcome"}]
    multi = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
             {"role": "user", "content": "  Tell me a joke.  "}]
    think = [{"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "<think>\nsimple sum\n</think>\n\nIt is 4."},
             {"role": "user", "content": "And 3+3?"}]
    tool_chat = [{"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": "", "tool_calls": [
                     {"function": {"arguments": {"city": "Paris"}, "name": "get_weather"}, "id": "abcdefghi", "type": "function"}]},
                 {"role": "tool", "content": "{\"temp_c\": 21}", "tool_call_id": "abcdefghi"}]
    cases = []
    for gen in (True, False):
        for msgs in (chat, sys_chat, multi):
            cases.append(("smollm2", msgs, gen, {}))
            cases.append(("qwen3", msgs, gen, {}))
            cases.append(("llama3", msgs, gen, {"date_string": "26 Jul 2024"}))
    for msgs in (chat, multi):
        cases.append(("mistral", msgs, False, {}))
        cases.append(("mistral", msgs, True, {}))
    cases.append(("mistral", sys_chat, False, {}))
    cases.append(("qwen3", think, True, {}))
    cases.append(("qwen3", chat, True, {"enable_thinking": False}))
    cases.append(("qwen3", tool_chat, True, {"tools": [WEATHER_TOOL]}))
    cases.append(("llama3", chat, True, {"date_string": "26 Jul 2024", "tools": [WEATHER_TOOL]}))
    # Errors raised by the template itself (raise_exception).
    cases.append(("mistral", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], True, {}))
    cases.append(("llama3", [{"role": "system", "content": "Only a system message."}], True,
                  {"date_string": "26 Jul 2024", "tools": [WEATHER_TOOL]}))
    return cases


def make_templates():
    import gguf
    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template
    r = gguf.GGUFReader(str(SMOLLM))
    f = r.fields["tokenizer.chat_template"]
    (TEMPLATE_DIR / "smollm2.jinja").write_text(bytes(f.parts[f.data[0]]).decode("utf-8"))
    files = {"smollm2": ("smollm2.jinja", "<|im_start|>", "<|im_end|>"),
             # Third-party templates (Qwen3, Llama 3, Mistral) are not committed: add their .jinja files
             # locally and list them here to extend the check.
             }
    out_cases = []
    for name, msgs, gen, kwargs in template_cases():
        fname, bos, eos = files[name]
        template = (TEMPLATE_DIR / fname).read_text()
        kw = dict(kwargs)
        tools = kw.pop("tools", None)
        special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
        case = {"template": fname, "messages": msgs, "add_generation_prompt": gen, "kwargs": kwargs,
                "bos_token": bos, "eos_token": eos}
        try:
            rendered, _ = render_jinja_template(conversations=[msgs], tools=tools, chat_template=template,
                                                add_generation_prompt=gen, **special, **kw)
            case["expected"] = rendered[0]
        except Exception as e:  # jinja2 TemplateError from raise_exception
            case["error"] = str(e)
        out_cases.append(case)
    out = {"reference": f"transformers {transformers.__version__} render_jinja_template (what apply_chat_template calls), "
                        "special tokens passed as bos_token/eos_token",
           "cases": out_cases}
    (OUT / "chat_templates.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote chat_templates.json ({len(out_cases)} cases)")


# ------------------------------------------------------------------------------------------ tiny
TINY_INPUTS = [[1, 5, 9, 33, 64, 2, 100, 7, 7, 81], [3, 3, 3, 120, 0, 45]]


def make_tiny():
    """Tiny random models saved by transformers (safetensors + config.json) with transformers' logits.

    Llama: GQA (4 heads / 2 KV heads), Llama 3 RoPE scaling, untied embeddings, attention bias.
    Qwen3: GQA, q/k RMSNorm, head_dim (24) != hidden/heads (16), tied embeddings.
    Weights are drawn with std 0.2 (not the default 0.02) so attention is far from uniform and
    errors in RoPE, masking or GQA show up in the logits.
    """
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    specs = {
        "tiny_llama": (LlamaConfig, LlamaForCausalLM, dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            attention_bias=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
        "tiny_qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, max_position_embeddings=256, rms_norm_eps=1e-6,
            tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    }
    for name, (cfg_cls, model_cls, kw) in specs.items():
        torch.manual_seed(0)
        model = model_cls(cfg_cls(**kw)).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))  # non-trivial norm weights
                else:
                    p.copy_(0.2 * torch.randn_like(p))
        d = OUT / name
        model.save_pretrained(d, safe_serialization=True)
        cases = []
        with torch.no_grad():
            for ids in TINY_INPUTS:
                logits = model(torch.tensor([ids])).logits[0]
                cases.append({"input_ids": ids, "logits": [f32_list(row.numpy()) for row in logits]})
            # A right-padded batch: padding positions masked out of attention.
            a, b = TINY_INPUTS
            pad = len(a) - len(b)
            batch = torch.tensor([a, b + [0] * pad])
            mask = torch.tensor([[1] * len(a), [1] * len(b) + [0] * pad])
            logits = model(batch, attention_mask=mask).logits
            padded = {"input_ids": batch.tolist(), "attention_mask": mask.tolist(),
                      "logits_row1_valid": [f32_list(row.numpy()) for row in logits[1, :len(b)]]}
            # Greedy generation (transformers' generate, KV cache, stops at eos id 2).
            prompt = [1, 5, 9, 33, 64]
            gen = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=2,
                                 pad_token_id=0)[0, len(prompt):].tolist()
            if 2 in gen:
                gen = gen[:gen.index(2)]
        # A word-level tokenizer and a chat template, so the folder loads as a whole model.
        from tokenizers import Tokenizer, models, pre_tokenizers
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, kw["vocab_size"])}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens(["<s>", "</s>"])
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }} {% endfor %}"}, indent=1) + "\n")
        (d / "expected.json").write_text(json.dumps({
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32 eager",
            "cases": cases, "padded_batch": padded,
            "generate": {"prompt_ids": prompt, "greedy_new_ids": gen}}) + "\n")
        for extra in ("generation_config.json",):
            (d / extra).unlink(missing_ok=True)
        print(f"wrote {d}")


def make_tiny_gguf():
    """The tiny models converted to GGUF the way llama.cpp's convert_hf_to_gguf.py does (gguf-py's
    writer and tensor-name map; Llama q/k rows permuted; Llama 3 RoPE factors as rope_freqs.weight),
    with llama.cpp's logits on them (no vocabulary: tokenizer.ggml.model = "none")."""
    import numpy as np
    import gguf
    import llama_cpp
    from llama_cpp import Llama
    from safetensors.numpy import load_file

    def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for name, arch in (("tiny_llama", gguf.MODEL_ARCH.LLAMA), ("tiny_qwen3", gguf.MODEL_ARCH.QWEN3)):
        d = OUT / name
        cfg = json.loads((d / "config.json").read_text())
        tensors = load_file(str(d / "model.safetensors"))
        arch_name = gguf.MODEL_ARCH_NAMES[arch]
        path = OUT / f"{name}.gguf"
        w = gguf.GGUFWriter(str(path), arch=arch_name)
        hd = cfg["head_dim"]
        w.add_block_count(cfg["num_hidden_layers"]); w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"]); w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"]); w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_key_length(hd); w.add_value_length(hd)
        rope = cfg["rope_parameters"]
        w.add_rope_freq_base(rope["rope_theta"]); w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_vocab_size(cfg["vocab_size"]); w.add_tokenizer_model("none")
        if rope.get("rope_type") == "llama3":  # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
            base, factor = rope["rope_theta"], rope["factor"]
            lo, hi, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
            freqs = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
            factors = []
            for f in freqs:
                wavelen = 2 * np.pi / f
                if wavelen < old / hi:
                    factors.append(1)
                elif wavelen > old / lo:
                    factors.append(factor)
                else:
                    smooth = (old / wavelen - lo) / (hi - lo)
                    factors.append(1 / ((1 - smooth) / factor + smooth))
            w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
        tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
        for hf_name, t in tensors.items():
            t = t.astype(np.float32)
            if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                t = permute(t, cfg["num_attention_heads"])
            if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                t = permute(t, cfg["num_key_value_heads"])
            w.add_tensor(tmap.get_name(hf_name, try_suffixes=(".weight", ".bias")), t)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

        llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False)
        cases = []
        for ids in TINY_INPUTS:
            llm.reset()
            llm.eval(ids)
            cases.append({"input_ids": ids, "logits": [f32_list(np.array(llm.scores[i])) for i in range(len(ids))]})
        (d / "llamacpp.json").write_text(json.dumps({
            "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU, logits_all) on {path.name}",
            "cases": cases}) + "\n")
        print(f"wrote {path.name} and {name}/llamacpp.json")


COMMANDS = {"quants": make_quants, "quantizers": make_quantizers, "tokenizer": make_tokenizer, "logits": make_logits,
            "templates": make_templates, "tiny": make_tiny,
            "spm": make_spm, "tiny-gguf": make_tiny_gguf}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or list(COMMANDS)
    for n in names:
        COMMANDS[n]()
