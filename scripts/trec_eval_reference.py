#!/usr/bin/env python3
"""Reference values for tunelab's trec_eval parity test, computed by pytrec_eval (trec_eval's C code).

    .venv/bin/python scripts/trec_eval_reference.py QRELS RUN -m P.5,10 -m map [-l LEVEL] [-c]

Prints JSON: {"tool": ..., "num_q": N, "per_query": {qid: {measure: value}}, "all": {measure: value}}
with trec_eval's measure names (P_5, ndcg_cut_10, recip_rank, ...). Files are read with
pytrec_eval's own parsers, never with tunelab's.

"all" follows trec_eval: the mean over evaluated queries, except num_* measures, which are summed.
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

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(args.measure), relevance_level=args.level)
    per_query = evaluator.evaluate(run)

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
