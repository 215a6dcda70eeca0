#!/usr/bin/env python3
"""Score fixed (query, expansion) strings with QMD's own finetune/reward.py, write what it
returns, and check src/eval/expansion.rs against it (the unit test
`eval::expansion::tests::matches_reward_py_on_its_fixture`: every component, total, rating,
deduction and parsed line equal, reward and percentage within 1e-9).

    scripts/reward-parity.py PATH/TO/qmd/finetune/reward.py [OUT.jsonl]

OUT defaults to tests/fixtures/expansion/reward_py_scores.jsonl (the test's fixture; with another
OUT only the file is written). `git diff` on the fixture shows whether reward.py changed its
verdicts. reward.py is read from where you
point (a QMD checkout, e.g. `git -C qmd show 4511b9bd:finetune/reward.py > /tmp/reward.py`); it
is not copied into this repository, only its scores are. It needs nothing beyond the standard
library. Set-valued deductions ("entities dropped: {...}") are written with their elements
sorted, as the port writes them (Python's set order depends on string hashing).
"""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

CASES = [
    # reward.py's own self-test cases (its __main__ block).
    ("auth", "lex: auth setup\nlex: authentication config\nvec: how to configure authentication\nhyde: Configure auth by setting AUTH_SECRET."),
    ("auth", "auth is important for security"),
    ("who is TDS motorsports", "lex: TDS motorsports history\nlex: TDS motorsports founders\nvec: information about TDS motorsports company"),
    ("who is TDS motorsports", "lex: find information about\nlex: company details\nvec: who is this company"),
    ("how to use React hooks", "lex: React hooks tutorial\nlex: useEffect useState\nvec: how to use React hooks in functional components"),
    ("auth", "<think>Let me think...</think>\nlex: auth"),
    ("auth", "lex: auth\nThis is some explanation\nvec: more"),
    ("meeting with Bob about C++", 'lex: Bob "C++" meeting\nlex: Bob C++ discussion notes\nvec: meeting notes with Bob about C++ programming'),
    ("meeting with Bob about C++", "lex: c++ meetings\nvec: programming meeting notes"),
    ("python memory leak debugging", 'lex: "memory leak" python -java\nlex: tracemalloc profiler\nvec: how to find memory leaks in Python'),
    ("auth /only:lex", "lex: auth setup\nlex: authentication config\nlex: login credentials"),
    ("auth /only:lex", "lex: auth setup\nvec: how to configure authentication"),
    ("React hooks /only:vec", "vec: how to use React hooks in functional components\nvec: useState and useEffect patterns in React"),
    ("PostgreSQL indexing /only:hyde", "hyde: PostgreSQL uses B-tree indexes by default. Create indexes with CREATE INDEX idx_name ON table(column). EXPLAIN ANALYZE shows whether queries use indexes efficiently."),
    # Cases that must score badly: echo, missing lex, empty output, duplicates.
    ("mastmeal folklore", "lex: mastmeal folklore\nvec: what stories are told about mastmeal porridge"),
    ("mastmeal folklore", "vec: what stories are told about mastmeal porridge\nhyde: Mastmeal is a porridge of roasted hazelnut and leached acorn meal, eaten in winter."),
    ("mastmeal folklore", ""),
    ("mastmeal folklore", "   \n\n  "),
    ("mastmeal folklore", "lex: mastmeal stories\nlex: mastmeal stories\nvec: mastmeal tales and sayings\nvec: mastmeal tales and sayings"),
    ("how do I reset the Ostrel Valley water pump", "lex: reset water pump\nlex: reset water pump valve\nvec: how do I reset the water pump in the valley\nvec: how do I reset the water pump in the valley today"),
    # Junk around the lines: chat tokens, thinking, stray text, markdown.
    ("hessock", "lex: hessock barley\nvec: what is hessock made of<|im_end|>"),
    ("hessock", "lex: hessock barley\n<|im_start|>assistant\nvec: what is hessock"),
    ("hessock", "<think>\nhmm\n</think>\n\nlex: hessock barley wild garlic\nvec: what is hessock and how is it cooked"),
    ("hessock", "<think>unfinished\nlex: hessock barley\nvec: what is hessock and how is it cooked"),
    ("hessock", "Sure! Here are expansions:\nlex: hessock barley\nvec: what is hessock"),
    ("hessock", "- lex: hessock barley\n- vec: what is hessock"),
    ("hessock", "LEX: hessock barley\nvec: what is hessock and how is it cooked"),
    # Quality and entity details: filler, generic, quotes, hyde length and repetition.
    ("ancient rome timeline", "lex: ancient overview rome timeline\nlex: rome basics\nvec: a timeline of the history of ancient Rome"),
    ("who is TDS motorsports", "lex: search for\nlex: look up\nvec: who founded TDS motorsports"),
    ("tide times Ostrel harbour", 'lex: "tide times" Ostrel\nlex: Ostrel harbour tide table\nvec: when are high and low tides at Ostrel harbour\nhyde: Tide tide tide tide tide tables for the harbour are posted daily at the harbourmaster office near the quay.'),
    ("tide times", "lex: tide table\nvec: when is high tide\nhyde: short"),
    ("tide times", "lex: tide table\nvec: when is high tide\nhyde: " + "The harbour tide table lists the times of high and low water for each day of the month. " * 4),
    ("TDS", "lex: tds\nvec: tds"),
    ("meeting notes with Ana Lopez about the café budget", "lex: Ana Lopez café budget\nlex: budget meeting Ana\nvec: notes from the meeting with Ana Lopez about the café budget"),
    ("node.js streams", "lex: node.js streams backpressure\nlex: readable writable streams\nvec: how do streams work in node.js"),
    ("Configure nginx reverse proxy", "lex: nginx reverse proxy config\nlex: proxy_pass upstream\nvec: how to configure nginx as a reverse proxy"),
    ("lex lines only /only:lex", "lex: keyword lines\nlex: keyword lines"),
    ("React /ONLY:VEC ", "vec: hooks"),
    ("hyde please /only:hyde", "lex: wrong type"),
    ("auth", "vec: how to set up authentication in the app\nvec: login configuration and session handling"),
]


def load_reward(path):
    spec = importlib.util.spec_from_file_location("qmd_reward", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sorted_sets(text):
    """Python set reprs inside a deduction, elements sorted."""
    def fix(m):
        items = re.findall(r"'([^']*)'", m.group(0))
        return "{" + ", ".join(f"'{i}'" for i in sorted(items)) + "}"
    return re.sub(r"\{('[^']*'(, '[^']*')*)\}", fix, text)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    reward = load_reward(sys.argv[1])
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/expansion/reward_py_scores.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for query, expansion in CASES:
            d = reward.score_expansion_detailed(query, expansion)
            row = {
                "query": query,
                "expansion": expansion,
                "reward": reward.score_expansion(query, expansion),
                **{k: d[k] for k in ("format", "diversity", "hyde", "quality", "entity", "think_bonus", "total", "max_possible", "percentage", "rating")},
                "deductions": [sorted_sets(x) for x in d["deductions"]],
                "parsed": d["parsed"],
                "entities_detected": sorted(d["entities_detected"]),
                "only_mode": d["only_mode"],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(CASES)} cases scored by {sys.argv[1]} to {out}")
    if len(sys.argv) == 2:
        test = "eval::expansion::tests::matches_reward_py_on_its_fixture"
        rc = subprocess.call(["cargo", "test", "--locked", "--lib", test])
        print("the port agrees with reward.py on every case" if rc == 0 else "the port DISAGREES with reward.py (see the test output)")
        sys.exit(rc)


if __name__ == "__main__":
    main()
