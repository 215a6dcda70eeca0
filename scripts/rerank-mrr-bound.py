#!/usr/bin/env python3
"""How far can a reranker move MRR@10 inside QMD's pipeline? (issue 15)

QMD blends the reranker's P(yes) with the fused rank: w/rrf_rank + (1 - w)·P, w = 0.75 for ranks
1-3, 0.60 for 4-10, 0.40 after. Fused rank 1 scores at least 0.75, more than any other candidate
can (rank 2 at most 0.625, rank 11+ at most 0.4/11 + 0.6), so it is never displaced: MRR@10 moves
only on queries whose fused top-1 is not relevant, and there at best to 1/2 (a relevant candidate
lifted to rank 2). This script counts those queries on the fused candidates (`hybrid+expansion`)
and gives the bound; with full-stage runs it says what base and tuned rerankers made of them.

  scripts/rerank-mrr-bound.py QRELS CANDIDATES.run [--depth 40] [--full NAME=RUN ...] [--json OUT]

Relevant = grade >= 1, as trec_eval's MRR counts it and as the report's MRR@10 does.
Standard library only.
"""
import argparse
import json
import random
from collections import defaultdict


def read_qrels(path):
    rel = defaultdict(dict)
    for line in open(path):
        p = line.split()
        if len(p) >= 4:
            rel[p[0]][p[2]] = int(p[3])
    return rel


def read_run(path):
    """TREC run -> {qid: [docid, ...]} in the run's own rank order (column 4): the order the
    pipeline fused and blended, ties already broken there."""
    rows = defaultdict(list)
    for line in open(path):
        p = line.split()
        if len(p) >= 5:
            rows[p[0]].append((int(p[3]), p[2]))
    return {q: [d for _, d in sorted(r)] for q, r in rows.items()}


def rr_at(docs, rel, k=10):
    for i, d in enumerate(docs[:k]):
        if rel.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qrels")
    ap.add_argument("candidates", help="the fused run the reranker rescored (hybrid+expansion)")
    ap.add_argument("--depth", type=int, default=40, help="candidates reranked per query (QMD: 40)")
    ap.add_argument("--full", action="append", default=[], metavar="NAME=RUN",
                    help="a full-stage run (fused candidates blended with a reranker's scores)")
    ap.add_argument("--json", help="write the numbers here too")
    ap.add_argument("--permutations", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    qrels = read_qrels(a.qrels)
    cand = read_run(a.candidates)
    qids = sorted(qrels)
    fulls = {}
    for spec in a.full:
        name, _, path = spec.partition("=")
        fulls[name] = read_run(path)

    top1_rel, movable, stuck, bound, fused_mrr = [], [], [], 0.0, 0.0
    for q in qids:
        docs, rel = cand.get(q, []), qrels[q]
        fused_mrr += rr_at(docs, rel)
        if docs and rel.get(docs[0], 0) >= 1:
            top1_rel.append(q)
            bound += 1.0
        elif any(rel.get(d, 0) >= 1 for d in docs[1:a.depth]):
            movable.append(q)
            bound += 0.5
        else:
            stuck.append(q)  # no relevant candidate to lift: the reranker cannot help
    n = len(qids)
    out = {
        "queries": n,
        "fused_top1_relevant": len(top1_rel),
        "fused_top1_not_relevant_with_relevant_in_2_to_depth": len(movable),
        "no_relevant_candidate_in_depth": len(stuck),
        "fused_mrr10": fused_mrr / n,
        "mrr10_bound_under_blend": bound / n,
        "movable_already_at_rank2": sum(1 for q in movable if rr_at(cand.get(q, []), qrels[q]) == 0.5),
        "movable_fused_rr_mean": (sum(rr_at(cand.get(q, []), qrels[q]) for q in movable) / len(movable)
                                   if movable else None),
    }
    for name, run in fulls.items():
        rr = {q: rr_at(run.get(q, []), qrels[q]) for q in qids}
        on_movable = [rr[q] for q in movable]
        out[name] = {
            "mrr10": sum(rr.values()) / n,
            "movable_at_rank2": sum(1 for x in on_movable if x == 0.5),
            "movable_rr_mean": sum(on_movable) / len(on_movable) if on_movable else None,
            "top1_kept": sum(1 for q in top1_rel if rr[q] == 1.0),
        }
    names = list(fulls)
    if len(names) == 2:
        b, t = (fulls[x] for x in names)
        # MRR@10 (the report's recip_rank has no cut-off): two-sided paired randomization test,
        # sign flips of the per-query differences, as the report tests its measures.
        d = [rr_at(t.get(q, []), qrels[q]) - rr_at(b.get(q, []), qrels[q]) for q in qids]
        obs, rng, hits, perms = abs(sum(d)), random.Random(a.seed), 0, a.permutations
        for _ in range(perms):
            hits += abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= obs - 1e-12
        out[f"mrr10_{names[1]}_minus_{names[0]}"] = {
            "diff": sum(d) / n, "p_randomization": (hits + 1) / (perms + 1), "permutations": perms,
            "queries_better": sum(x > 0 for x in d), "queries_worse": sum(x < 0 for x in d)}
        better = worse = 0
        for q in movable:
            rb, rt = rr_at(b.get(q, []), qrels[q]), rr_at(t.get(q, []), qrels[q])
            better += rt > rb
            worse += rt < rb
        out[f"{names[1]}_vs_{names[0]}_on_movable"] = {"better": better, "worse": worse,
                                                       "equal": len(movable) - better - worse}
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
