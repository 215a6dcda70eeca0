#!/usr/bin/env python3
"""Reference values for tunelab's trec_eval parity test, computed by pytrec_eval (trec_eval's C code).

    .venv/bin/python scripts/trec_eval_reference.py QRELS RUN -m P.5,10 -m map [-l LEVEL] [-c]

Prints JSON: {"tool": ..., "num_q": N, "per_query": {qid: {measure: value}}, "all": {measure: value}}
with trec_eval's measure names (P_5, ndcg_cut_10, recip_rank, ...). Files are read with
pytrec_eval's own parsers, never with tunelab's.

"all" follows trec_eval: the mean over evaluated queries, except num_* measures, which are summed.
`recip_rank_cut.k` (MRR@k; not a trec_eval measure name) is trec_eval's `-M k -m recip_rank`: the run
cut to its first k documents per query in trec_eval's order (score descending, then docno descending),
then pytrec_eval's recip_rank on that.
pytrec_eval has no -c; with -c this script divides the per-query sums by the number of qrels queries
(trec_eval's meas_avg.c does exactly that: missing queries contribute 0).
Create the environment with scripts/setup-python.sh.
"""
import argparse
import json
import sys

import pytrec_eval


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qrels")
    ap.add_argument("run")
    ap.add_argument("-m", "--measure", action="append", required=True, help="trec_eval measure, e.g. P.5,10")
    ap.add_argument("-l", "--level", type=int, default=1, help="relevance level (trec_eval -l)")
    ap.add_argument("-c", "--complete", action="store_true", help="average over all qrels queries")
    args = ap.parse_args()

    with open(args.qrels) as f:
        qrels = pytrec_eval.parse_qrel(f)
    with open(args.run) as f:
        run = pytrec_eval.parse_run(f)

    plain = [m for m in args.measure if not m.startswith("recip_rank_cut")]
    cuts = sorted({int(k) for m in args.measure if m.startswith("recip_rank_cut")
                   for k in m.replace("recip_rank_cut", "").lstrip("._").split(",")})
    per_query = {}
    if plain:
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(plain), relevance_level=args.level)
        per_query = evaluator.evaluate(run)
    for k in cuts:
        # trec_eval -M k: keep each query's first k documents in trec_eval's own order.
        top = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k])
               for q, docs in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=args.level).evaluate(top)
        for q, values in rr.items():
            per_query.setdefault(q, {})["recip_rank_cut_%d" % k] = values["recip_rank"]

    names = sorted({name for values in per_query.values() for name in values})
    denominator = len(qrels) if args.complete else len(per_query)
    summary = {}
    for name in names:
        total = sum(values[name] for values in per_query.values())
        if name == "num_q":
            summary[name] = denominator
        elif name.startswith("num_"):
            summary[name] = total
        else:
            summary[name] = total / denominator if denominator else float("nan")

    json.dump(
        {
            "tool": f"pytrec_eval {getattr(pytrec_eval, '__version__', '?')}",
            "num_q": denominator,
            "per_query": per_query,
            "all": summary,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
