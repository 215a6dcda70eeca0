#!/usr/bin/env python3
"""The same search pipeline as `tunelab search --pipeline qmd` (no expansion, no reranker), in
Python: SQLite FTS5 with QMD's table and bm25() weights, sentence-transformers for the vectors,
numpy cosine, QMD's RRF (k 60, weight 2 for both original-query lists, top-rank bonus), 40
candidates. Times the per-query loop (queries/s) and, given tunelab's `hybrid.run`, reports how
many queries get the same fused top 10.

Scope: the bundled documents are under 2700 characters, so each is one chunk (as in QMD's
token chunking); the FTS5 query is `"t1"* AND "t2"* ...` of the lower-cased words (what QMD's
buildFTS5Query gives for plain-word queries such as the bundled ones).

    scripts/bench-search-pipeline.py --corpus datasets/corpus --model models/all-MiniLM-L6-v2 \
        --queries datasets/queries/test.jsonl [--rust-hybrid DIR/hybrid.run]
"""
import argparse
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import numpy as np


def read_corpus(d):
    docs = []
    for p in sorted(Path(d).rglob("*.md")):
        text = p.read_text()
        if text.startswith("---\n"):
            end = text.index("\n---", 4)
            text = text[text.index("\n", end + 1) + 1:]
        text = text.strip()
        doc_id = str(p.relative_to(d).with_suffix(""))
        m = re.search(r"^##?\s+(.+)$", text, re.M)
        title = m.group(1).strip() if m else Path(doc_id).name
        docs.append((doc_id, title, text))
    return docs


def fts_query(q):
    terms = [re.sub(r"[^\w']", "", t).lower() for t in q.split()]
    terms = [t for t in terms if t]
    return " AND ".join(f'"{t}"*' for t in terms) if terms else None


def rrf(lists, k=60.0):
    acc = {}
    for lst, w in lists:
        for rank, d in enumerate(lst):
            s, top = acc.get(d, (0.0, rank))
            acc[d] = (s + w / (k + rank + 1), min(top, rank))
    out = [(d, s + (0.05 if top == 0 else 0.02 if top <= 2 else 0.0)) for d, (s, top) in acc.items()]
    return sorted(out, key=lambda x: -x[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="datasets/corpus")
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--queries", default="datasets/queries/test.jsonl")
    ap.add_argument("--rust-hybrid")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    a = ap.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    docs = read_corpus(a.corpus)
    queries = [json.loads(l) for l in open(a.queries) if l.strip()]
    t0 = time.perf_counter()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE documents_fts USING fts5(filepath, title, body, tokenize='porter unicode61')")
    db.executemany("INSERT INTO documents_fts (rowid, filepath, title, body) VALUES (?, ?, ?, ?)",
                   [(i + 1, d[0], d[1], d[2]) for i, d in enumerate(docs)])
    model = SentenceTransformer(a.model, device="cpu")
    emb = model.encode([f"title: {d[1]} | text: {d[2]}" for d in docs], batch_size=64, normalize_embeddings=True)
    t_index = time.perf_counter() - t0

    fused_all = {}
    t0 = time.perf_counter()
    for q in queries:
        expr = fts_query(q["query"])
        fts = []
        if expr:
            rows = db.execute("SELECT rowid, bm25(documents_fts, 1.5, 4.0, 1.0) AS s FROM documents_fts "
                              "WHERE documents_fts MATCH ? ORDER BY s ASC LIMIT 20", (expr,)).fetchall()
            fts = [docs[r - 1][0] for r, _ in rows]
        qv = model.encode([f"task: search result | query: {q['query']}"], normalize_embeddings=True)[0]
        sims = emb @ qv
        top = np.argsort(-sims, kind="stable")[:60]
        vec = [docs[i][0] for i in top][:20]
        lists = [(l, 2.0) for l in (fts, vec) if l]
        fused_all[q["qid"]] = rrf(lists)[:40]
    t_query = time.perf_counter() - t0
    print(json.dumps({"impl": "python (sqlite3 fts5 + sentence-transformers + numpy)", "documents": len(docs),
                      "queries": len(queries), "index_s": round(t_index, 3), "query_s": round(t_query, 3),
                      "queries_per_s": round(len(queries) / t_query, 2), "torch_threads": a.threads}))
    if a.rust_hybrid:
        rust = {}
        for line in open(a.rust_hybrid):
            qid, _, doc, rank, score, _ = line.split()
            rust.setdefault(qid, []).append((doc, float(score)))
        same = sum(1 for qid, f in fused_all.items()
                   if [d for d, _ in f[:10]] == [d for d, _ in sorted(rust.get(qid, []), key=lambda x: -x[1])[:10]])
        print(json.dumps({"same_fused_top10": same, "of": len(fused_all)}))


if __name__ == "__main__":
    main()
