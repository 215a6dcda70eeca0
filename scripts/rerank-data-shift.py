#!/usr/bin/env python3
"""Does the reranker's training data reward what the pipeline's test candidates reward? (issue 15)

One cheap feature, the share of a query's content words found in the document, scored as a
relevance predictor (AUC, relevant = grade >= 1) on two sets:
  * the training judgments (`datasets/reranker/judgments.jsonl`), with whatever negatives they hold;
  * the candidates QMD's pipeline hands the reranker for the held-out test queries (a TREC run,
    first DEPTH per query), judged by the test qrels.
An AUC above 0.5 on one set and below on the other means the training negatives teach the
reranker the opposite of what separates relevant candidates in the pipeline. Also prints, per
training grade, the mean overlap and the share of documents sharing any query word.

  scripts/rerank-data-shift.py [--datasets datasets] [--candidates RUN] [--depth 40]

Standard library only.
"""
import argparse
import json
import os
import re
from collections import defaultdict

# Function words left out of the overlap (the queries' frames: "how does ... stay safe").
STOP = set("the a an of to in and or for is it how what why when does do with on at by from be are was as that "
           "this can i my our your ok about who which".split())


def words(text):
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOP and len(w) > 2}


def overlap(query, doc):
    q = words(query)
    return len(q & words(doc)) / max(1, len(q))


def auc(pos, neg):
    """Mann-Whitney AUC with tied scores counted half."""
    scored = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mid = (i + 1 + j) / 2
        rank_sum += mid * sum(label for _, label in scored[i:j])
        i = j
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="datasets")
    ap.add_argument("--candidates", default="reports/rerank-ab/20261206-mrr-bound/hybrid+expansion.run")
    ap.add_argument("--depth", type=int, default=40)
    a = ap.parse_args()

    by_grade, pos, neg = defaultdict(list), [], []
    for line in open(os.path.join(a.datasets, "reranker/judgments.jsonl")):
        r = json.loads(line)
        f = overlap(r["query"], r["document"])
        by_grade[r["relevant"]].append(f)
        (pos if r["relevant"] >= 1 else neg).append(f)
    print(f"training judgments: overlap AUC {auc(pos, neg):.3f} ({len(pos)} relevant, {len(neg)} not)")
    for g, v in sorted(by_grade.items()):
        print(f"  grade {g}: {len(v)} judgments, mean overlap {sum(v) / len(v):.3f}, "
              f"sharing a query word {sum(1 for x in v if x > 0) / len(v):.3f}")

    queries = {}
    for line in open(os.path.join(a.datasets, "queries/test.jsonl")):
        r = json.loads(line)
        queries[r["qid"]] = r["query"]
    qrels = defaultdict(dict)
    for line in open(os.path.join(a.datasets, "qrels/test.qrels")):
        p = line.split()
        qrels[p[0]][p[2]] = int(p[3])
    corpus = os.path.join(a.datasets, "corpus")
    docs = {f[:-3]: open(os.path.join(corpus, f)).read() for f in os.listdir(corpus) if f.endswith(".md")}
    pos, neg = [], []
    for line in open(a.candidates):
        q, _, d, rank = line.split()[:4]
        if int(rank) <= a.depth:
            (pos if qrels[q].get(d, 0) >= 1 else neg).append(overlap(queries[q], docs[d]))
    print(f"test candidates (first {a.depth}): overlap AUC {auc(pos, neg):.3f} ({len(pos)} relevant, {len(neg)} not)")


if __name__ == "__main__":
    main()
