#!/usr/bin/env python3
"""transformers' side of scripts/bench-rerank.sh: the same rerank work as `tunelab rerank` (same
prompts, token ids, truncation and batch size, f32, CPU), timed, with its P(yes) scores written as
a TREC run so the two runs can be compared.

  python scripts/bench-rerank.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --queries Q.jsonl \
      --run RUN --corpus datasets/corpus --out RUN.out [--depth 40 --max-length 1024 --batch-size 8]

The GGUF is dequantized to f32 by gguf-py and loaded into transformers' LlamaForCausalLM (see
make-reranker-fixtures.py); loading is not timed. Needs torch, transformers, gguf (the reference venv).
"""
import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fixtures", HERE / "make-reranker-fixtures.py")
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)


def body(path):
    """The markdown body as tunelab reads it: front matter removed, trimmed."""
    text = path.read_text(encoding="utf-8").lstrip("\ufeff")
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        nl = text.find("\n", end + 4)
        text = text[nl + 1:] if nl >= 0 else ""
    doc_id = path.stem
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.startswith("id:"):
            doc_id = line.split(":", 1)[1].strip().strip('"')
            break
        if line == "---":
            break
    return doc_id, text.strip()


def main():
    ap = argparse.ArgumentParser()
    for a in ("--model", "--queries", "--run", "--corpus", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--depth", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    model, encode, bos, yes, no = fx.smollm2_reference(Path(args.model))
    queries = {}
    for line in Path(args.queries).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            queries[r["qid"]] = r["query"]
    run = {}
    for line in Path(args.run).read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, []).append((float(score), doc))
    texts = dict(body(p) for p in sorted(Path(args.corpus).rglob("*.md")))
    prefix, rest = fx.TEMPLATE.split("{query}")
    middle, suffix = rest.split("{document}")
    head_extra = [bos] if bos is not None else []
    work = []
    for qid, docs in sorted(run.items()):
        docs.sort(key=lambda x: (-x[0], x[1]))  # trec_eval order (ties by doc id, descending in trec_eval)
        for _, doc in docs[:args.depth]:
            head = head_extra + encode(prefix) + encode(queries[qid]) + encode(middle)
            tail = encode(suffix)
            ids = head + encode(texts[doc])[:args.max_length - len(head) - len(tail)] + tail
            work.append((qid, doc, ids))
    # Same batching as tunelab: all prompts of a query sorted by length, right-padded, last real position.
    t0 = time.perf_counter()
    scores = {}
    with torch.inference_mode():
        by_q = {}
        for w in work:
            by_q.setdefault(w[0], []).append(w)
        for qid, items in by_q.items():
            items.sort(key=lambda w: len(w[2]))
            for i in range(0, len(items), args.batch_size):
                chunk = items[i:i + args.batch_size]
                t = max(len(w[2]) for w in chunk)
                ids = torch.tensor([w[2] + [w[2][-1]] * (t - len(w[2])) for w in chunk])
                mask = torch.tensor([[1] * len(w[2]) + [0] * (t - len(w[2])) for w in chunk])
                hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
                last = hidden[torch.arange(len(chunk)), torch.tensor([len(w[2]) - 1 for w in chunk])]
                two = last @ model.lm_head.weight[[yes, no]].T
                p = torch.softmax(two, -1)[:, 0]
                for w, s in zip(chunk, p.tolist()):
                    scores[(w[0], w[1])] = s
    secs = time.perf_counter() - t0
    with open(args.out, "w") as f:
        for qid in sorted(by_q):
            ranked = sorted(((s, d) for (q, d), s in scores.items() if q == qid), key=lambda x: (-x[0], x[1]))
            for rank, (s, d) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {d} {rank} {s:.9g} transformers\n")
    print(json.dumps({"tool": "transformers", "version": __import__("transformers").__version__, "torch": torch.__version__,
                      "threads": args.threads, "documents": len(work), "seconds": secs, "documents_per_s": len(work) / secs,
                      "tokens": sum(len(w[2]) for w in work)}))


if __name__ == "__main__":
    main()
