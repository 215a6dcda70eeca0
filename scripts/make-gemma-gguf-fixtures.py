#!/usr/bin/env python3
"""llama.cpp reference embeddings for the tiny EmbeddingGemma fixture (tests/fixtures/gemma/tiny).

The tiny sentence-transformers folder is converted by llama.cpp's own converter
(`convert_hf_to_gguf.py --sentence-transformers-dense-modules`, architecture `gemma-embedding`, the
Dense layers as `dense_2` / `dense_3`) and embedded by llama.cpp (llama-cpp-python, mean pooling from
the GGUF, L2-normalised). tests/gemma_parity.rs compares tunelab's embeddings of the same folder
with them (and sentence-transformers' own vectors of it, recorded beside them), so CI checks llama.cpp agreement without llama.cpp.

The model (tests/fixtures/gemma/tiny_llamacpp/, built here with transformers + sentence-transformers)
differs from tests/fixtures/gemma/tiny where llama.cpp cannot follow transformers:
  * llama.cpp scales queries by 1/sqrt(head_dim) and ignores `query_pre_attn_scalar`: here they are
    equal, as in EmbeddingGemma (256 = head_dim);
  * llama.cpp derives the layer pattern (every 6th layer full) instead of reading `layer_types`:
    here 6 layers in that pattern, as EmbeddingGemma's 24.
  * The fixture's tokenizer is a small BPE that llama.cpp's converter does not know; a throwaway
    SentencePiece model fills `tokenizer.model` so the converter runs, and llama.cpp is fed the
    token ids of the fixture's own tokenizer.json (the tokenizer is not under test here).

Environment: the project's .venv with torch, transformers, numpy (scripts/setup-python.sh --heavy) and
sentencepiece (`.venv/bin/pip install sentencepiece`); llama.cpp built by scripts/setup-llama-cpp.sh (or
LLAMA_CPP_DIR with llama_cpp_python-<v>/ and llama-build/bin).
Run:  .venv/bin/python scripts/make-gemma-gguf-fixtures.py            (llamacpp.json, rebuilds tiny_llamacpp/)
      .venv/bin/python scripts/make-gemma-gguf-fixtures.py --gguf     (tiny_gguf/*.gguf + gguf.json)
      <venv>/bin/python scripts/make-gemma-gguf-fixtures.py --export [--retrain]   (tuned/ + export.json)

`--export` checks tunelab's own GGUF export: tests/fixtures/gemma/tuned/ is a model tunelab fine-tuned
from tiny_gguf/tiny-q8_0.gguf (LoRA r4 over the Q8_0 blocks, merged; made with `tunelab train embed`
when missing or with --retrain); it and tiny_llamacpp/ are exported by `tunelab export gguf` to f32,
f16 and q8_0, and export.json records each file's sha256 with llama.cpp's tokens and embeddings of it
(tests/gemma_gguf_export.rs re-exports, checks the sha256, and compares). Needs target/debug/tunelab
(`cargo build`).

`--gguf` keeps tiny_llamacpp/ as committed and gives it a real SentencePiece tokenizer
(`tokenizer.model`, BPE with byte fallback, `<bos>` … `<eos>` added as EmbeddingGemma's are), converts
it with llama.cpp's converter to f32, f16 and q8_0 GGUFs (committed under tiny_gguf/, they are small)
and records llama.cpp's embeddings of the fixture texts with llama.cpp's *own* tokenization (token ids
recorded too), so tests/gemma_gguf.rs checks tunelab loading a GGUF as `--model`, tokenizer included.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "gemma"
sys.path.insert(0, str(ROOT / "scripts"))


def build_model(out, texts):
    """A tiny EmbeddingGemma-shaped sentence-transformers folder llama.cpp can represent: 6 layers in
    Gemma 3's fixed pattern (5 sliding, 1 full: llama.cpp derives the pattern, not layer_types),
    query_pre_attn_scalar = head_dim (llama.cpp scales by 1/sqrt(head_dim))."""
    import importlib.util
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules

    spec = importlib.util.spec_from_file_location("mgf", ROOT / "scripts" / "make-gemma-fixtures.py")
    mgf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mgf)
    tokenizer = mgf.train_tokenizer(texts)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}},
        sliding_window=8, max_position_embeddings=256, use_bidirectional_attention=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(3)
    model = Gemma3TextModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(-0.5, 0.5)
            elif "embed_tokens" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    tmp = Path(tempfile.mkdtemp()) / "transformer"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.manual_seed(4)
    st = SentenceTransformer(modules=[
        st_modules.Transformer(str(tmp), max_seq_length=48), st_modules.Pooling(32, "mean"),
        st_modules.Dense(32, 128, bias=False, activation_function=torch.nn.Identity()),
        st_modules.Dense(128, 32, bias=False, activation_function=torch.nn.Identity()),
        st_modules.Normalize()], device="cpu")
    st.prompts = dict(mgf.PROMPTS)
    if out.exists():
        shutil.rmtree(out)
    st.save(str(out))
    (out / "README.md").unlink(missing_ok=True)
    return st


def main():
    from llama_cpp_env import import_llama_cpp

    llama_dir = Path(os.environ.get("LLAMA_CPP_DIR", ROOT / ".venv" / "llama-cpp"))
    src = sorted(llama_dir.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]
    llama_cpp = import_llama_cpp()
    import sentencepiece as spm
    from tokenizers import Tokenizer

    ref = json.loads((FIXTURE / "reference.json").read_text())
    texts = ref["texts"]
    folder = FIXTURE / "tiny_llamacpp"
    st = build_model(folder, texts)
    ref_st = st.encode(texts, convert_to_numpy=True).tolist()
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "tiny"
    shutil.copytree(folder, model)
    cfg = json.loads((model / "config.json").read_text())
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(t for t in texts if t.strip()) * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(model / "tokenizer"), vocab_size=cfg["vocab_size"],
        model_type="bpe", hard_vocab_limit=False, bos_id=2, eos_id=1, pad_id=0, unk_id=3,
    )

    out = {"generator": f"llama.cpp from {src.parent.name}", "texts": texts, "sentence_transformers": ref_st}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(48)
    ids = {t.encode("utf-8"): tok.encode(t).ids for t in texts}
    for outtype in ["f32", "f16", "q8_0"]:
        gguf = tmp / f"tiny-{outtype}.gguf"
        env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
        subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outfile", str(gguf),
                        "--outtype", outtype, "--sentence-transformers-dense-modules"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        llm = llama_cpp.Llama(model_path=str(gguf), embedding=True, n_ctx=256, n_batch=256, n_ubatch=256,
                              verbose=False)
        # Feed the fixture tokenizer's ids (see the module notes).
        llm.tokenize = lambda text, add_bos=True, special=False: ids[bytes(text)]
        out[outtype] = [llm.embed(t, normalize=True) for t in texts]
        out[f"{outtype}_bytes"] = gguf.stat().st_size
    (FIXTURE / "llamacpp.json").write_text(json.dumps(out) + "\n")
    print(f"wrote {FIXTURE / 'llamacpp.json'}", file=sys.stderr)


def gguf_fixtures():
    """tiny_gguf/tiny-{f32,f16,q8_0}.gguf converted by llama.cpp, and gguf.json: llama.cpp's
    tokens and embeddings of every fixture text (llama.cpp tokenizing from the GGUF itself)."""
    from llama_cpp_env import import_llama_cpp

    llama_dir = Path(os.environ.get("LLAMA_CPP_DIR", ROOT / ".venv" / "llama-cpp"))
    src = sorted(llama_dir.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]
    llama_cpp = import_llama_cpp()
    import sentencepiece as spm

    texts = json.loads((FIXTURE / "reference.json").read_text())["texts"]
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "tiny"
    shutil.copytree(FIXTURE / "tiny_llamacpp", model)
    cfg = json.loads((model / "config.json").read_text())
    # The converter reads tokenizer.model (as EmbeddingGemma ships it); tokenizer.json would
    # make it take the GPT-2 BPE path instead.
    (model / "tokenizer.json").unlink()
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc.update(add_bos_token=True, add_eos_token=True)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(t for t in texts if t.strip()) * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(model / "tokenizer"), vocab_size=cfg["vocab_size"],
        model_type="bpe", byte_fallback=True, hard_vocab_limit=False, bos_id=2, eos_id=1, pad_id=0,
        unk_id=3, add_dummy_prefix=False, character_coverage=1.0, split_digits=True,
        minloglevel=2,
    )
    out_dir = FIXTURE / "tiny_gguf"
    out_dir.mkdir(exist_ok=True)
    out = {"generator": f"llama.cpp from {src.parent.name}", "texts": texts}
    for outtype in ["f32", "f16", "q8_0"]:
        gguf = out_dir / f"tiny-{outtype}.gguf"
        env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
        subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outfile", str(gguf),
                        "--outtype", outtype, "--sentence-transformers-dense-modules"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[outtype] = embed_with_llama_cpp(llama_cpp, gguf, texts)
        if outtype == "f32":
            out["tokens"] = out[outtype].pop("tokens")
        else:
            out[outtype].pop("tokens")
    (FIXTURE / "gguf.json").write_text(json.dumps(out) + "\n")
    print(f"wrote {out_dir} and {FIXTURE / 'gguf.json'}", file=sys.stderr)


def embed_with_llama_cpp(llama_cpp, gguf, texts):
    """llama.cpp's own tokens (BOS/EOS as the GGUF says) and L2-normalised embeddings."""
    llm = llama_cpp.Llama(model_path=str(gguf), embedding=True, n_ctx=1024, n_batch=1024, n_ubatch=1024,
                          verbose=False)
    tokens = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in texts]
    vectors = [llm.embed(t, normalize=True) for t in texts]
    return {"tokens": tokens, "embeddings": vectors, "bytes": gguf.stat().st_size}


def export_fixtures(retrain):
    from llama_cpp_env import import_llama_cpp

    llama_cpp = import_llama_cpp()
    tunelab = os.environ.get("TUNELAB", str(ROOT / "target" / "debug" / "tunelab"))
    tuned = FIXTURE / "tuned"
    tmp = Path(tempfile.mkdtemp())
    if retrain or not tuned.exists():
        subprocess.run([tunelab, "train", "embed", "--model", str(FIXTURE / "tiny_gguf" / "tiny-q8_0.gguf"),
                        "--data", str(ROOT / "datasets" / "pairs" / "pairs.jsonl"), "--lora-rank", "4",
                        "--max-steps", "6", "--batch-size", "8", "--max-seq-length", "64", "--learning-rate", "0.01",
                        "--seed", "7", "--reports", str(tmp / "reports"), "--name", "tuned"], check=True)
        model = sorted((tmp / "reports" / "tuned").glob("*/model"))[-1]
        if tuned.exists():
            shutil.rmtree(tuned)
        shutil.copytree(model, tuned)
    texts = json.loads((FIXTURE / "reference.json").read_text())["texts"]
    out = {"generator": "tunelab export gguf; llama.cpp from "
           + sorted(Path(os.environ.get("LLAMA_CPP_DIR", ROOT / ".venv" / "llama-cpp")).glob("llama_cpp_python-*"))[-1].name,
           "texts": texts}
    import hashlib
    for name in ["tuned", "tiny_llamacpp"]:
        out[name] = {}
        for ty in ["f32", "f16", "q8_0"]:
            gguf = tmp / f"{name}-{ty}.gguf"
            subprocess.run([tunelab, "export", "gguf", "--model", str(FIXTURE / name), "--out", str(gguf),
                            "--type", ty], check=True, stdout=subprocess.DEVNULL)
            rec = embed_with_llama_cpp(llama_cpp, gguf, texts)
            rec["sha256"] = hashlib.sha256(gguf.read_bytes()).hexdigest()
            out[name][ty] = rec
    (FIXTURE / "export.json").write_text(json.dumps(out) + "\n")
    print(f"wrote {FIXTURE / 'export.json'}", file=sys.stderr)


if __name__ == "__main__":
    if "--export" in sys.argv[1:]:
        export_fixtures("--retrain" in sys.argv[1:])
    elif "--gguf" in sys.argv[1:]:
        gguf_fixtures()
    else:
        main()
