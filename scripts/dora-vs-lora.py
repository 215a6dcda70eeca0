#!/usr/bin/env python3
"""DoRA vs LoRA at the same rank on the bundled persona data (issue 18), on the CPU.

  python3 scripts/dora-vs-lora.py [--iters 24] [--out reports/dora-vs-lora-persona] ...

1. `tunelab train lora --fine-tune-type lora` and `--fine-tune-type dora` on datasets/persona with
   the same seed, rank, alpha, layers, learning rate and batches (`--mask-prompt`: the loss on the
   assistant turns), validation loss every --eval-every iterations on all of valid.jsonl, then
   `--test` on test.jsonl. Each run's wall time and peak RSS (`/usr/bin/time -v` when present) are
   recorded.
2. `tunelab generate` (greedy) for the first --prompts test records' system and first user
   message, with each adapter (and the base model), so the replies can be read side by side.
3. Writes OUT.md (tables, the replies), OUT.json (every number) and OUT.svg (the two validation
   curves) next to each other; the run folders (adapters, logs) stay in OUT.runs/, which git
   ignores. Standard library only.

Why not `tunelab`'s A/B report (report::write_ab_report): it compares per-query metrics of two
systems with one training curve; this comparison is two training curves and free-text replies.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(cmd, log: Path):
    """Start `cmd` with stdout+stderr to `log` (under `/usr/bin/time -v` when present, for the peak RSS)."""
    timed = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    full = ([timed, "-v"] if timed else []) + cmd
    f = open(log, "w")
    return subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT), f, time.time()


def finish(job, cmd, log: Path):
    """Wait for a job from `start`; returns (seconds, peak RSS MiB or None)."""
    p, f, t = job
    p.wait()
    secs = time.time() - t
    f.close()
    text = log.read_text(errors="replace")
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return secs, (int(m.group(1)) / 1024 if m else None)


def run(cmd, log: Path):
    """Run `cmd` to the end: (seconds, peak RSS MiB or None)."""
    return finish(start(cmd, log), cmd, log)


def read_losses(path: Path):
    train, valid, test = [], [], None
    for line in path.read_text().splitlines():
        v = json.loads(line)
        if "test_loss" in v:
            test = v
            continue
        if v.get("val_loss") is not None:
            valid.append((v["iteration"], v["val_loss"]))
        if v.get("loss") is not None:
            train.append((v["iteration"], v["loss"]))
    return train, valid, test


def svg(curves, title):
    """A line plot of [(label, colour, [(x, y)])] as a standalone SVG."""
    w, h, l, r, t, b = 640, 360, 60, 20, 40, 50
    xs = [x for _, _, pts in curves for x, _ in pts]
    ys = [y for _, _, pts in curves for _, y in pts]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 0.1
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: l + (x - x0) / ((x1 - x0) or 1) * (w - l - r)
    sy = lambda y: t + (y1 - y) / (y1 - y0) * (h - t - b)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{l}" y1="{h - b}" x2="{w - r}" y2="{h - b}" stroke="black"/>',
           f'<line x1="{l}" y1="{t}" x2="{l}" y2="{h - b}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">iteration</text>',
           f'<text x="14" y="{h / 2}" text-anchor="middle" transform="rotate(-90 14 {h / 2})">validation loss</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
        out.append(f'<line x1="{l}" y1="{sy(y):.1f}" x2="{w - r}" y2="{sy(y):.1f}" stroke="#ddd"/>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{sx(x):.1f}" y="{h - b + 16}" text-anchor="middle">{x}</text>')
    for k, (label, colour, pts) in enumerate(curves):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        out.append(f'<text x="{w - r - 90}" y="{t + 16 + 16 * k}" fill="{colour}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tunelab", default="target/debug/tunelab")
    ap.add_argument("--out", default="reports/dora-vs-lora-persona")
    ap.add_argument("--iters", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint the adapters every N iterations (0: at the end)")
    ap.add_argument("--lr", default="5e-4")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--num-layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-seq-length", type=int, default=384)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    # Both trainings at once: on a shared CPU they then see the same contention, so their wall times
    # stay comparable (run one after the other, the second can meet a busier or a quieter machine).
    ap.add_argument("--parallel", action="store_true")
    # A run cut short (the machine's time ran out): no training; the report is made from the runs'
    # checkpoint at iteration N (--save-every must divide it) and their validation losses up to N.
    # No test loss: score the checkpoint with `train lora --iters 0 --test --resume-adapter-file`
    # when there is time (on 2 shared cores one such run took over 10 minutes).
    ap.add_argument("--stopped-at", type=int, default=0, metavar="N")
    # Rebuild OUT.md/.svg (and the derived fields of OUT.json) from OUT.json and the runs' loss.jsonl,
    # with the settings recorded in OUT.json: no training, no generation.
    ap.add_argument("--rewrite", action="store_true")
    a = ap.parse_args()
    out = ROOT / a.out
    runs = Path(str(out) + ".runs")
    runs.mkdir(parents=True, exist_ok=True)
    if a.rewrite:
        result = json.loads(out.with_suffix(".json").read_text())
        a = argparse.Namespace(**{**vars(a), **result["settings"], "rewrite": True})
        result["settings"] = vars(a)
        add_step_times(a, result, runs)
        write_report(a, result, out)
        return
    T = str(ROOT / a.tunelab)
    common = ["--model", a.model, "--data", "datasets/persona", "--iters", str(a.iters), "--batch-size", str(a.batch),
              "--learning-rate", a.lr, "--rank", str(a.rank), "--alpha", str(a.alpha), "--num-layers", str(a.num_layers),
              "--max-seq-length", str(a.max_seq_length), "--steps-per-eval", str(a.eval_every), "--val-batches", "-1",
              "--steps-per-report", "1", "--save-every", str(a.save_every or a.iters), "--seed", str(a.seed), "--mask-prompt",
              "--test", "--test-batches", "-1", "--overwrite"]
    result = {"settings": vars(a), "cpu": cpu_name(), "runs": {}}
    cmds = {kind: [T, "train", "lora", *common, "--fine-tune-type", kind, "--adapter-path", str(runs / kind)]
            for kind in ["lora", "dora"]}
    adapters = {kind: runs / kind for kind in cmds}
    if a.stopped_at:
        cmds = {}
        for kind in ["lora", "dora"]:
            adapters[kind] = at = runs / f"{kind}-at-{a.stopped_at}"
            at.mkdir(exist_ok=True)
            shutil.copy(runs / kind / "adapter_config.json", at / "adapter_config.json")
            shutil.copy(runs / kind / f"{a.stopped_at:07d}_adapters.safetensors", at / "adapters.safetensors")
            train, valid, _ = read_losses(runs / kind / "loss.jsonl")
            test = None
            result["runs"][kind] = {"seconds": None, "peak_rss_mib": None, "stopped_at": a.stopped_at,
                                    "train_loss": [t for t in train if t[0] <= a.stopped_at],
                                    "valid_loss": [v for v in valid if v[0] <= a.stopped_at], "test": test}
    jobs = {}
    for kind, cmd in cmds.items():
        print(f"== train {kind} ({time.strftime('%H:%M:%S')})", flush=True)
        jobs[kind] = start(cmd, runs / f"{kind}.train.txt")
        if not a.parallel:
            jobs[kind] = finish(jobs[kind], cmd, runs / f"{kind}.train.txt")
    for kind, cmd in cmds.items():
        secs, rss = finish(jobs[kind], cmd, runs / f"{kind}.train.txt") if a.parallel else jobs[kind]
        train, valid, test = read_losses(runs / kind / "loss.jsonl")
        result["runs"][kind] = {"seconds": round(secs, 1), "peak_rss_mib": rss and round(rss), "train_loss": train,
                                "valid_loss": valid, "test": test}
    add_step_times(a, result, runs)
    for kind, r in result["runs"].items():
        valid = r["valid_loss"]
        print(f"   {kind}: valid {valid[0][1]:.4f} -> {valid[-1][1]:.4f}, step time {r['step_seconds']} s, test {r['test']}", flush=True)

    records = [json.loads(l) for l in (ROOT / "datasets/persona/test.jsonl").read_text().splitlines() if l.strip()]
    replies = []
    for rec in records[: a.prompts]:
        msgs = rec["messages"]
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        user = next(m["content"] for m in msgs if m["role"] == "user")
        reference = next(m["content"] for m in msgs if m["role"] == "assistant")
        row = {"id": rec.get("id"), "user": user, "reference": reference}
        procs = {}
        for kind in ["base", "lora", "dora"]:
            cmd = [T, "generate", "--model", a.model, "-p", user, "-m", str(a.max_tokens)]
            if system:
                cmd += ["--system-prompt", system]
            if kind != "base":
                cmd += ["--adapter-path", str(adapters[kind])]
            # The three replies at once: each process spends most of its time loading the model.
            procs[kind] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for kind, p in procs.items():
            stdout, stderr = p.communicate()
            if p.returncode != 0:
                sys.exit(f"generate failed: {stderr[-2000:]}")
            row[kind] = stdout.strip()
        replies.append(row)
        print(f"   replies for {row['id']}", flush=True)
    result["replies"] = replies
    write_report(a, result, out)


def add_step_times(a, result, runs):
    """Each run's time inside its training steps (forward, backward, update, from loss.jsonl: no
    model loading, validation or test) and the peak RSS the trainer logged."""
    for kind, r in result["runs"].items():
        steps = [json.loads(l) for l in (runs / kind / "loss.jsonl").read_text().splitlines() if '"forward_ms"' in l]
        steps = [v for v in steps if v["iteration"] <= (a.stopped_at or a.iters)]
        r["step_seconds"] = round(sum(v["forward_ms"] + v["backward_ms"] + v.get("update_ms", 0) for v in steps) / 1000, 1)
        r["logged_peak_rss_mib"] = max((v["peak_rss_mib"] for v in steps if "peak_rss_mib" in v), default=None)


def write_report(a, result, out):
    out.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    curves = [("LoRA", "#1f77b4", result["runs"]["lora"]["valid_loss"]), ("DoRA", "#d62728", result["runs"]["dora"]["valid_loss"])]
    out.with_suffix(".svg").write_text(svg(curves, f"Persona: validation loss, LoRA vs DoRA (rank {a.rank})"))
    out.with_suffix(".md").write_text(markdown(a, result, out.name))
    print(f"wrote {out}.md/.json/.svg")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return None


def fmt_s(x):
    return "-" if x is None else f"{x:.0f} s"


def markdown(a, r, stem):
    lo, do = r["runs"]["lora"], r["runs"]["dora"]
    lines = [f"# DoRA vs LoRA on the persona data (rank {a.rank})", "",
             f"`scripts/dora-vs-lora.py`: SmolLM2-135M-Instruct ({a.model}), datasets/persona (76/12/12 records), "
             f"rank {a.rank}, alpha {a.alpha}, top {a.num_layers} blocks, default targets, {a.iters} iterations of batch {a.batch}, "
             f"lr {a.lr}, max_seq_length {a.max_seq_length}, seed {a.seed}, `--mask-prompt` (loss on every assistant turn). "
             f"Same seed, so both start from the same A matrices (DoRA's magnitudes start at the row norms: "
             f"both adapters start as the base model). CPU: {r['cpu']}, shared with other work: times are indicative"
             + (" (the two trainings ran at the same time, so they met the same contention)." if a.parallel else "."), "",
             *([f"**Stopped at iteration {a.stopped_at} of {a.iters}** (the machine's time ran out): the curves end "
                f"there, the test loss and the replies are those of the iteration-{a.stopped_at} checkpoints, and the "
                f"learning rate had not finished its decay; no test loss.", ""] if a.stopped_at else []),
             f"![validation loss]({stem}.svg)", "",
             "| iteration | LoRA valid loss | DoRA valid loss |", "|---:|---:|---:|"]
    dv = dict(map(tuple, do["valid_loss"]))
    for it, v in lo["valid_loss"]:
        lines.append(f"| {it} | {v:.4f} | {dv.get(it, float('nan')):.4f} |")
    lines += ["", "| | LoRA | DoRA |", "|---|---:|---:|"]
    tl = lambda x, k: f"{x['test'][k]:.4f}" if x["test"] and k in x["test"] else "-"
    lines += [f"| test loss (`--test`, as mlx_lm.lora counts) | {tl(lo, 'test_loss')} | {tl(do, 'test_loss')} |",
              f"| test perplexity | {tl(lo, 'test_ppl')} | {tl(do, 'test_ppl')} |",
              f"| time in training steps (forward + backward + update, loss.jsonl) | {lo['step_seconds']:.0f} s | {do['step_seconds']:.0f} s |",
              f"| wall time (load + train + validation + test) | {fmt_s(lo['seconds'])} | {fmt_s(do['seconds'])} |",
              f"| peak RSS (`/usr/bin/time -v`) | {lo['peak_rss_mib'] or '-'} MiB | {do['peak_rss_mib'] or '-'} MiB |",
              f"| peak RSS logged by the trainer | {lo['logged_peak_rss_mib'] or '-'} MiB | {do['logged_peak_rss_mib'] or '-'} MiB |", "",
              f"## Replies (greedy, {a.max_tokens} tokens at most), first {len(r['replies'])} test records", ""]
    for row in r["replies"]:
        lines += [f"### {row['id']}", "", f"**User:** {row['user']}", "",
                  "| | reply |", "|---|---|"]
        for k, name in [("reference", "reference (test.jsonl)"), ("base", "base"), ("lora", "LoRA"), ("dora", "DoRA")]:
            lines.append(f"| {name} | {row[k].replace('|', '&#124;').replace(chr(10), '<br>')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
