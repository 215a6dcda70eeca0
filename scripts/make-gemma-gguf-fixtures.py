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

Environment: /work/venv-ref-like venv with torch, transformers, sentencepiece, numpy; llama.cpp
built by scripts/setup-llama-cpp.sh (or LLAMA_CPP_DIR with llama_cpp_python-<v>/ and llama-build/bin).
Run:  <venv>/bin/python scripts/make-gemma-gguf-fixtures.py
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


if __name__ == "__main__":
    main()
