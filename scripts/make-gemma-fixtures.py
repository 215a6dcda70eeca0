#!/usr/bin/env python3
"""Reference fixtures for tunelab's EmbeddingGemma encoder (src/model/gemma.rs).

No EmbeddingGemma weights are reachable from the build machines, so this builds a TINY random model
of the same architecture with transformers + sentence-transformers and records what
`SentenceTransformer.encode` returns for it. Every expected value comes from those libraries.

  model   tests/fixtures/gemma/tiny/: a sentence-transformers folder laid out as
          google/embeddinggemma-300m is (Transformer -> mean Pooling -> 2_Dense -> 3_Dense ->
          Normalize, `prompts` in config_sentence_transformers.json), a Gemma3TextModel with
          use_bidirectional_attention, hidden 64, 4 layers of both types, GQA (4 query / 2 key-value
          heads of width 24), query_pre_attn_scalar 20 (not head_dim, so a wrong scale shows),
          sliding_window 8 (sliding layers see 4 tokens either side), two distinct RoPE bases.
          The weights are drawn large enough that every part moves the output (RMSNorm weights
          around 0, so `1 + w` matters).
          The tokenizer is a small BPE trained on the texts below with Gemma's special-token ids
          (<pad> 0, <eos> 1, <bos> 2, <unk> 3) and `<bos> ... <eos>` around each text: the tokenizer
          is not what is under test, the architecture is.
  ref     tests/fixtures/gemma/reference.json: texts (many longer than the window, some longer than
          max_seq_length) and their embeddings without a prompt, with prompt_name="query" and with
          prompt_name="document", plus the token ids encode() feeds the model.

The reference embeddings are computed by a SentenceTransformer *re-loaded from the saved folder*,
so they are what a user of the folder gets (transformers stores `sliding_window` as the full
window and halves it at load time for bidirectional models).

Environment: the project's .venv (scripts/setup-python.sh --heavy: torch, transformers >= 5 or >= 4.56,
sentence-transformers >= 5.1, tokenizers). Run:  .venv/bin/python scripts/make-gemma-fixtures.py
"""
import json
import random
import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders, normalizers
from transformers import Gemma3TextConfig, Gemma3TextModel, PreTrainedTokenizerFast
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as st_modules

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gemma"
MODEL = OUT / "tiny"

PROMPTS = {
    # EmbeddingGemma's own prompt names and texts (a subset), as its model card lists them.
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Clustering": "task: clustering | query: ",
    "STS": "task: sentence similarity | query: ",
}


def texts():
    rng = random.Random(7)
    base = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
        "Two men pushed carts through the woods.",
        "A man is riding a white horse on an enclosed ground.",
        "A monkey is playing drums.",
        "Someone in a gorilla costume is playing a set of drums.",
        "How do I reset my password?",
        "password reset instructions for the account settings page",
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        "rust borrow checker lifetime error",
        "The borrow checker rejects code where a reference outlives the value it points to.",
        "café naïve résumé — Unicode text with accents",
        "数字 and mixed scripts 東京",
        "x",
        "",
        "   leading and trailing spaces   ",
        "UPPER CASE WORDS AND lower case words",
        "numbers 1234 5678 and symbols !@#$%",
        "qmd search engine embeddings with gemma",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    ]
    words = " ".join(base).split()
    long = []
    for n in (12, 20, 30, 45, 60, 90, 140):
        long.append(" ".join(rng.choice(words) for _ in range(n)))
    paragraphs = [
        "Sliding window attention lets each token see only its neighbours on some layers, while the "
        "global layers see the whole sequence; an embedding model built this way must reproduce both.",
        "EmbeddingGemma maps text to a 768-dimensional vector: mean pooling over the last hidden states, "
        "two dense projections and a final normalisation, trained so that truncated vectors still work.",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again, "
        "and then once more for good measure, so that this sentence is long enough to be truncated.",
    ]
    variants = []
    for t in base[:10]:
        variants.append(t.lower())
        variants.append(t + " " + t)
    out = base + long + paragraphs + variants
    return out


def train_tokenizer(corpus):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(corpus * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    assert [tok.token_to_id(t) for t in ["<pad>", "<eos>", "<bos>", "<unk>"]] == [0, 1, 2, 3]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="right",
    )


def build_model(vocab_size):
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        rms_norm_eps=1e-6,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
        },
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=20,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=256,
        use_bidirectional_attention=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = Gemma3TextModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(-0.5, 0.5)
            elif "embed_tokens" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.15)
    return model


def main():
    corpus = texts()
    assert len(corpus) >= 50, len(corpus)
    if MODEL.exists():
        shutil.rmtree(MODEL)
    tmp = OUT / "_transformer"
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer = train_tokenizer(corpus)
    model = build_model(len(tokenizer))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)

    transformer = st_modules.Transformer(str(tmp), max_seq_length=48)
    pooling = st_modules.Pooling(64, "mean")
    torch.manual_seed(1)
    dense_up = st_modules.Dense(64, 256, bias=False, activation_function=torch.nn.Identity())
    dense_down = st_modules.Dense(256, 64, bias=False, activation_function=torch.nn.Identity())
    st = SentenceTransformer(modules=[transformer, pooling, dense_up, dense_down, st_modules.Normalize()], device="cpu")
    st.prompts = dict(PROMPTS)
    st.save(str(MODEL))
    shutil.rmtree(tmp)
    (MODEL / "README.md").unlink(missing_ok=True)  # the generated model card: not needed, 5 KB

    # What a user of the folder gets.
    st = SentenceTransformer(str(MODEL), device="cpu")
    cfg = st[0].auto_model.config
    saved = json.loads((MODEL / "config.json").read_text())
    assert saved["sliding_window"] == 8, saved["sliding_window"]
    assert cfg.sliding_window == 5, cfg.sliding_window  # transformers' exclusive bound 8 // 2 + 1
    assert st.prompts["query"] == PROMPTS["query"]

    enc = lambda **kw: st.encode(corpus, batch_size=7, convert_to_numpy=True, **kw).tolist()
    tok = st.tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in corpus]
    ref = {
        "generator": f"transformers {__import__('transformers').__version__}, "
        f"sentence-transformers {__import__('sentence_transformers').__version__}, torch {torch.__version__}",
        "max_seq_length": st.max_seq_length,
        "texts": corpus,
        "token_counts": lengths,
        # As encode() tokenizes: special tokens added, truncated at max_seq_length.
        "token_ids": [st.preprocess([t])["input_ids"][0].tolist() for t in corpus],
        "plain": enc(),
        "query": enc(prompt_name="query"),
        "document": enc(prompt_name="document"),
    }
    print(f"{len(corpus)} texts; token counts {min(lengths)}..{max(lengths)}; "
          f"{sum(n > 9 for n in lengths)} longer than the window (9 tokens), "
          f"{sum(n > st.max_seq_length for n in lengths)} truncated at {st.max_seq_length}", file=sys.stderr)
    (OUT / "reference.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB under {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
