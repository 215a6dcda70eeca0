#!/usr/bin/env python3
"""Where a GPU training step's time goes, per kernel class, from CubeCL's profiling log.

    summarize-cubecl-profile.py LOG --steps N [--plain plain.json] [--profiled profiled.json]
                                [--top 15] [--segment K] [--json summary.json]
    summarize-cubecl-profile.py --self-test

LOG is what cubecl-runtime 0.11.3 writes with `[profiling.logger] level = "basic"` (and,
optionally, `[compilation.logger] level = "basic"` into the same file); scripts/profile-gpu-step.sh
sets that up around `tunelab bench lora`. Standard library only.

The log's lines, as cubecl-runtime 0.11.3 writes them (src/logging/server.rs, AsyncLogger::process;
each message goes through FileLogger::log, `writeln!(self.writer, "{msg}")`):
    format!("| {duration:<10?} | {name}")              one measured launch; Duration's Debug
                                                       ("850ns", "3µs", "1.5ms", "1.25s")
    format!("| {:<10} | {name}", "not measured")       a launch whose timestamps did not come back
    self.logger.log_profiling(&self.profiled)          the summary table (src/logging/profiling.rs,
                                                       Profiled's Display), written when a
                                                       `client.sync()` follows profiled launches
                                                       (client.rs sync_buffers -> profile_summary);
                                                       then the accumulator is reset
    "[Compiling kernel] {type name up to '<'}"        a kernel compiled (cubecl-server kernel.rs,
                                                       format_basic), if compilation logging is on
The name is client.rs's profile_label: `type_name_format(type_name::<Kernel>(), Balanced)` then
KernelId::entrypoint_name's `format!("{base}_{:08x}", hash)`, e.g. "KernelBinop | AddOp_5eed0000":
the kernel struct cubecl's #[cube(launch)] makes of the function (kernel_binop -> KernelBinop),
then its generic arguments' last path segments. scripts/testdata/cubecl-0.11.3-profile.log was
written by cubecl-runtime's own logger (scripts/testdata/cubecl-logfmt.rs says how).

Which lines are the timed steps: `tunelab bench lora` calls `device.sync()` after its warm-up
steps and again after its timed steps (src/cli/bench.rs), and nothing inside a step syncs (the
per-step loss read is a read, not a sync), so the segment the last summary table closes is
exactly the timed steps. The table is written by cubecl's logger thread, which the process can
outrun at exit: then the last segment has no table, and the launches after the last table are
the timed steps, possibly missing the last step's final launches. Each step launches the same
kernels in the same order, so the step length is found as the sequence's period and only whole
steps are counted.
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

# Duration's Debug: an integer or decimal number and one of these units (core::time, fmt_decimal;
# the micro sign is U+00B5; the Greek mu and "us" are accepted too).
_UNIT_MS = {"ns": 1e-6, "\u00b5s": 1e-3, "\u03bcs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
_DURATION = r"(?P<num>\d+(?:\.\d+)?)(?P<unit>ns|\u00b5s|\u03bcs|us|ms|s)"
# "| {duration:<10?} | {name}": the duration is padded to 10 characters, longer ones are not cut.
LAUNCH_RE = re.compile(r"^\| (?:(?P<unmeasured>not measured)|" + _DURATION + r") *\| (?P<name>.+)$")
COMPILE_PREFIX = "[Compiling kernel]"
TABLE_START, TABLE_RULE, TABLE_END = "|\u23ba", "|\u23bc", "|\u23af"  # ⎺ ⎼ ⎯, Profiled's Display
HASH_RE = re.compile(r"_[0-9a-f]{8}$")


def duration_ms(text):
    m = re.fullmatch(_DURATION, text.strip())
    if not m:
        raise ValueError(f"not a Rust Duration: {text!r}")
    return float(m.group("num")) * _UNIT_MS[m.group("unit")]


class Segment:
    """Launches between two summary tables (or after the last one), and the table that closes it."""

    def __init__(self):
        self.launches = []  # (label, ms or None when not measured)
        self.compiles = []
        self.table = None  # {"rows": {label: (ms, count)}, "total_ms": float, "total_count": int}

    def measured(self):
        return [(n, ms) for n, ms in self.launches if ms is not None]


def parse_log(lines):
    """Segments in log order; the last one has no table unless the log ends with one."""
    segments, seg = [], Segment()
    table = None
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if table is not None:
            if line.startswith(TABLE_END):
                seg.table = table
                segments.append(seg)
                seg, table = Segment(), None
            elif line.startswith(TABLE_RULE) or line.startswith("| Name "):
                pass
            elif line.startswith("| ") and line.rstrip().endswith("|"):
                # "| {name:<w} | {duration:<w} | {count:<w} | {ratio:<w} |": names hold " | " too.
                name, dur, count, _ratio = line.strip()[2:-2].rsplit(" | ", 3)
                name = name.rstrip()
                if name == "Total":
                    table["total_ms"], table["total_count"] = duration_ms(dur), int(count)
                else:
                    table["rows"][name] = (duration_ms(dur), int(count))
            else:
                raise ValueError(f"line {lineno}: unexpected inside a summary table: {line[:120]!r}")
            continue
        if line.startswith(TABLE_START):
            table = {"rows": {}, "total_ms": None, "total_count": None}
            continue
        if line.startswith(COMPILE_PREFIX):
            seg.compiles.append(line[len(COMPILE_PREFIX):].strip())
            continue
        m = LAUNCH_RE.match(line)
        if m:
            ms = None if m.group("unmeasured") else float(m.group("num")) * _UNIT_MS[m.group("unit")]
            seg.launches.append((m.group("name"), ms))
            continue
        if line.strip():
            raise ValueError(f"line {lineno}: not a cubecl profiling line: {line[:120]!r}")
    # A table cut off mid-way (the process exited while it was written) closes nothing.
    segments.append(seg)
    return segments


def step_period(labels, steps):
    """Launches per step, if the label sequence repeats `steps` times (the last copy possibly cut).

    Returns (period, whole_steps) or (None, 0) when no period fits.
    """
    n = len(labels)
    if steps < 1 or n == 0:
        return None, 0
    if steps == 1:
        return n, 1
    # A tail cut at exit leaves n = steps * period - cut. The logger thread trails the launches
    # by a few kernels, so a cut of up to half a step is accepted; more is not told apart from
    # steps that differ.
    lo = -(-n // steps)
    hi = (2 * n) // (2 * steps - 1)
    for p in range(lo, hi + 1):
        if all(labels[i] == labels[i + p] for i in range(n - p)):
            return p, min(steps, n // p)
    return None, 0


# Kernel classes by the kernel's struct name (the label's first " | " field, hash removed): names
# of the #[cube(launch*)] functions in burn-cubecl 0.22.1, burn-cubecl-fusion 0.22.1, cubecl-std
# 0.11.3 and cubek-* 0.3.1 (cubecl's matmul/reduce/random/quant crates), checked against the type
# names in the vk17 tunelab binary.
MATMUL = {"MatmulEntry", "CmmaKernel", "CpuGemmKernel", "AtomicMatmul", "AtomicMatmulUnits",
          "FoldSplits", "PlainMatmul", "QuantGemvKernel", "SplitKMatmulOneLevel",
          "SplitKMatmulTwoLevels", "StagedMatmulQuantRhs"}
ATTENTION = {"Attention", "FlashAttentionBackwardDkKernel", "FlashAttentionBackwardDqKernel",
             "FlashAttentionBackwardDvKernel", "FlashAttentionBackwardPrepassKernel"}
FUSED_ELEMWISE = {"ElemwiseFuse"}  # burn-cubecl-fusion: element-wise chains in one kernel
FUSED_REDUCE = {"ReduceKernelFused", "ReduceKernelBroadcasted"}  # burn-cubecl-fusion: reduce + fused element-wise
REDUCE = {"ReduceKernel", "ReduceWithIndicesKernel", "SharedSumKernel", "CumulativeKernel"}
DATA_MOVEMENT = {"CopyKernel", "CopyKernelPack", "CopyKernelPacked", "CopyPerpendicular",  # into_contiguous
                 "IdentityKernel", "SliceKernel", "SliceWithStepsKernel", "SliceAssignKernel",
                 "SliceAssignWithStepsKernel", "GatherKernel", "GatherNdKernel", "ScatterKernel",
                 "ScatterAddAtomicKernel", "ScatterNdKernel", "SelectKernel", "SelectAssignKernel",
                 "CastElement", "BoolCastKernel", "RepeatDimKernel", "FlipKernel", "Relayout"}
ELEMWISE = {"KernelBinop", "KernelBinopInt", "KernelScalarBinop", "KernelScalarBinopInt",
            "KernelCmp", "KernelScalarCmp", "KernelPredicate", "UnaryFloat", "UnaryInt",
            "UnaryNumeric", "MaskFillKernel", "MaskWhereKernel", "FullKernel", "CrossKernel",
            "ZerosArray"}
RANDOM = {"PrngKernel"}
QUANT = {"DequantizeSymmetricNativeKernel", "DequantizeSymmetricPackedKernel",
         "QuantizeSymmetricNativeKernel", "QuantizeSymmetricPackedKernel"}
CLASS_ORDER = ["matmul", "matmul (fused read/write)", "attention", "elementwise (fused)",
               "reduce (fused)", "reduce", "elementwise (unfused)", "data movement", "random",
               "quantization", "other"]


def label_fields(label):
    """("KernelBinop", ["AddOp"]) from "KernelBinop | AddOp_5eed0000"."""
    fields = HASH_RE.sub("", label).split(" | ")
    return fields[0], fields[1:]


def classify(label):
    base, args = label_fields(label)
    if base in MATMUL or re.search(r"Matmul|Gemm|Gemv", base):
        # burn-cubecl-fusion's matmul reads and writes through fused element-wise chains.
        return "matmul (fused read/write)" if "FusedMatmulArgs" in args else "matmul"
    if base in ATTENTION:
        return "attention"
    if base in FUSED_ELEMWISE:
        return "elementwise (fused)"
    if base in FUSED_REDUCE:
        return "reduce (fused)"
    if base in REDUCE:
        return "reduce"
    if base in DATA_MOVEMENT or (base == "UnaryNumeric" and args[:1] == ["Copy"]):
        return "data movement"  # UnaryNumeric | Copy is CubeTensor::copy
    if base in ELEMWISE:
        return "elementwise (unfused)"
    if base in RANDOM:
        return "random"
    if base in QUANT:
        return "quantization"
    return "other"


def matmul_routine(label):
    """cubek-matmul's routine as far as the type name tells it: args, family, partitioner.

    The tile matmul (cooperative-matrix "cmma" or per-unit registers) is a comptime choice in the
    kernel id's hash, not in the name; PlanePartitioner routines are the plane-level (cmma-capable)
    ones, UnitPartitioner the per-unit ones.
    """
    base, args = label_fields(label)
    if base != "MatmulEntry":
        return base
    family = next((a for a in args if a.endswith("MatmulFamily")), None)
    part = next((a for a in args if a.endswith("Partitioner")), None)
    kind = args[0] if args else "?"
    if family is None:
        return f"MatmulEntry {kind} (gemm/gemv/naive entry: routine not in the name)"
    return f"MatmulEntry {kind} {family.replace('MatmulFamily', '')}/{(part or '?').replace('Partitioner', '')}"


def short_label(label, width=96):
    if label_fields(label)[0] == "MatmulEntry":
        h = HASH_RE.search(label)
        label = matmul_routine(label) + (h.group(0) if h else "")
    return label if len(label) <= width else label[: width - 3] + "..."


def last_json(path):
    """The last JSON object line of a `tunelab bench` stdout file, or None."""
    if not path or not os.path.exists(path):
        return None
    rows = [l for l in open(path, encoding="utf-8", errors="replace") if l.startswith("{")]
    return json.loads(rows[-1]) if rows else None


def summarize(segments, steps, plain=None, profiled=None, top=15, segment=None):
    notes = []
    if segment is not None:
        idx = segment if segment >= 0 else len(segments) + segment
        why = f"segment {idx} chosen with --segment"
    elif segments[-1].launches:
        idx = len(segments) - 1
        why = ("the launches after the last summary table: the final table is missing (the process "
               "exited before cubecl's logger thread wrote it)")
    else:
        idx = len(segments) - 2
        why = "closed by the last summary table (bench lora's sync after its timed steps)"
    if idx < 0 or idx >= len(segments) or not segments[idx].launches:
        raise SystemExit(f"no profiled launches in segment {idx}: is profiling on? ({len(segments)} segments)")
    seg = segments[idx]
    labels = [n for n, _ in seg.launches]
    period, whole = step_period(labels, steps)
    used = seg.launches
    if period is None:
        notes.append(f"the {len(labels)} launches do not repeat {steps} times in the same order: "
                     f"per-step figures are totals / {steps}")
        whole = steps
    elif period * whole < len(labels) or whole < steps:
        used = seg.launches[: period * whole]
        notes.append(f"{len(labels)} launches, {period} a step: counting {whole} whole step(s) of {steps}")
    if seg.table is not None:
        mine_ms = sum(ms for _, ms in seg.measured())
        if seg.table["total_count"] != len(seg.measured()) or abs(seg.table["total_ms"] - mine_ms) > 1e-3 * max(mine_ms, 1e-9) + 1e-3:
            notes.append(f"cubecl's table says {seg.table['total_count']} launches, {seg.table['total_ms']:.3f} ms; "
                         f"the lines say {len(seg.measured())}, {mine_ms:.3f} ms")
    if period and idx > 0 and len(segments[idx - 1].launches) >= period:
        # bench lora's warm-up ends with a whole step and the sync: its last `period` launches
        # should be the timed step's, which says the boundary found is the step boundary.
        before = [n for n, _ in segments[idx - 1].launches[-period:]]
        if before != labels[:period]:
            notes.append("the launches before the timed steps are not one step like theirs: check the segment "
                         "(a sync inside the steps, kernels still autotuning, or another command than bench lora)")
    if seg.compiles:
        notes.append(f"{len(seg.compiles)} kernel(s) compiled inside the timed steps: not steady state")
    unmeasured = sum(1 for _, ms in used if ms is None)
    if unmeasured:
        notes.append(f"{unmeasured} launch(es) not measured (left out of the times)")

    by_class = defaultdict(lambda: [0, 0.0])
    by_kernel = defaultdict(lambda: [0, 0.0])
    by_routine = defaultdict(lambda: [0, 0.0])
    for name, ms in used:
        c = classify(name)
        by_class[c][0] += 1
        by_kernel[name][0] += 1
        if c.startswith("matmul"):
            by_routine[matmul_routine(name)][0] += 1
        if ms is not None:
            by_class[c][1] += ms
            by_kernel[name][1] += ms
            if c.startswith("matmul"):
                by_routine[matmul_routine(name)][1] += ms
    kernel_ms = sum(v[1] for v in by_class.values())
    plain_step = plain.get("step_ms") if plain else None
    return {
        "segment": idx, "segments": len(segments), "why": why, "steps": whole, "period": period,
        "launches": len(used), "kernel_ms": kernel_ms, "kernel_ms_per_step": kernel_ms / whole,
        "classes": {c: {"launches": n, "ms": ms} for c, (n, ms) in by_class.items()},
        "matmul_routines": {r: {"launches": n, "ms": ms} for r, (n, ms) in by_routine.items()},
        "top": [{"label": k, "class": classify(k), "launches": n, "ms": ms}
                for k, (n, ms) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:top]],
        "plain": plain, "profiled": profiled, "plain_step_ms": plain_step, "notes": notes,
        "segment_overview": [{"launches": len(s.launches), "ms": sum(ms for _, ms in s.measured()),
                              "compiles": len(s.compiles), "table": s.table is not None} for s in segments],
    }


def render(s):
    out = []
    w = out.append
    steps, plain_step = s["steps"], s["plain_step_ms"]
    w("segments (split at cubecl's summary tables, i.e. at each device sync):")
    for i, o in enumerate(s["segment_overview"]):
        mark = "  <- timed steps" if i == s["segment"] else ""
        w(f"  #{i}: {o['launches']:7d} launches {o['ms']:12.3f} ms kernel time {o['compiles']:5d} compiled"
          f"  {'table' if o['table'] else 'no table'}{mark}")
    w(f"timed steps: segment #{s['segment']}, {s['why']}; {steps} step(s), "
      f"{s['period'] if s['period'] else '?'} launches a step")
    for n in s["notes"]:
        w(f"NOTE: {n}")
    w("")
    head = f"{'class':28s} {'launches':>9s} {'/step':>7s} {'total ms':>11s} {'ms/step':>9s} {'% kernels':>9s}"
    head += f" {'% step':>7s}" if plain_step else ""
    w(head)
    order = [c for c in CLASS_ORDER if c in s["classes"]] + sorted(set(s["classes"]) - set(CLASS_ORDER))
    for c in sorted(order, key=lambda c: -s["classes"][c]["ms"]):
        v = s["classes"][c]
        row = (f"{c:28s} {v['launches']:9d} {v['launches'] / steps:7.0f} {v['ms']:11.3f} {v['ms'] / steps:9.3f}"
               f" {100 * v['ms'] / max(s['kernel_ms'], 1e-12):8.1f}%")
        row += f" {100 * v['ms'] / steps / plain_step:6.1f}%" if plain_step else ""
        w(row)
    tot = (f"{'all kernels':28s} {s['launches']:9d} {s['launches'] / steps:7.0f} {s['kernel_ms']:11.3f}"
           f" {s['kernel_ms_per_step']:9.3f} {100.0:8.1f}%")
    tot += f" {100 * s['kernel_ms_per_step'] / plain_step:6.1f}%" if plain_step else ""
    w(tot)
    if s["matmul_routines"]:
        w("")
        w("matmul by routine (cubek-matmul; the tile kind, cmma or registers, is not in the name):")
        for r, v in sorted(s["matmul_routines"].items(), key=lambda kv: -kv[1]["ms"]):
            w(f"  {r[:84]:84s} {v['launches']:6d} {v['ms'] / steps:9.3f} ms/step")
    w("")
    w(f"top {len(s['top'])} kernels by time (label = kernel | generic args _ hash of its configuration):")
    w(f"  {'ms/step':>9s} {'launches':>8s} {'mean us':>9s}  {'class':26s} kernel")
    for k in s["top"]:
        mean = 1e3 * k["ms"] / max(k["launches"], 1)
        w(f"  {k['ms'] / steps:9.3f} {k['launches']:8d} {mean:9.1f}  {k['class']:26s} {short_label(k['label'])}")
    w("")
    p, q = s["plain"], s["profiled"]

    def rate(j):  # bench lora reports tokens/s, bench train-embed pairs/s
        if "pairs_per_s" in j:
            return f"{j['pairs_per_s']:,.1f} pairs/s"
        return f"{j.get('tokens_per_s', float('nan')):,.0f} tokens/s"

    if p:
        w(f"undisturbed run (no profiling): {p.get('step_ms', float('nan')):.1f} ms/step, "
          f"{rate(p)} ({p.get('case')}, {p.get('steps')} steps after {p.get('warmup')} warm-up)")
    if q:
        w(f"profiled run: {q.get('step_ms', float('nan')):.1f} ms/step, {rate(q)} "
          f"(each launch is flushed and timed on its own: only the kernel times above are meaningful)")
    if plain_step:
        busy = s["kernel_ms_per_step"] / plain_step
        w(f"kernel time per step {s['kernel_ms_per_step']:.1f} ms = {100 * busy:.0f}% of the undisturbed step "
          f"({plain_step:.1f} ms); the other {max(0.0, 100 * (1 - busy)):.0f}% the GPU is not running a kernel "
          f"(launch and submission gaps, host-side work: fusion, autodiff, the per-step loss read)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Self-test: the sample log written by cubecl-runtime 0.11.3's own logger (see the module doc).

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "cubecl-0.11.3-profile.log")

# Label bases of the kernels in the vk17 tunelab binary (its type names, formatted as
# profile_label does) and the class each must get.
REAL_LABELS = {
    "MatmulEntry | TensorArgs | DynamicScalar | __Lhs | DynamicSize | __LhsSize | DynamicScalar | __Rhs | DynamicSize | __RhsSize | DynamicScalar | __Acc | DynamicSize | __AccSize | SimpleMatmulFamily | PlanePartitioner | () | SyncFullCyclicLoading | ColMajorTilingOrder | SyncFullCyclicLoading | RowMajorTilingOrder | SyncFullCyclicLoading | RowMajorTilingOrder | PlaneWriterFamily | RowMajorGlobalPartitionMatmul_0123abcd": "matmul",
    "MatmulEntry | FusedMatmulArgs | DynamicScalar | __Lhs | DynamicSize | __LhsSize | DynamicScalar | __Rhs | DynamicSize | __RhsSize | DynamicScalar | __Acc | DynamicSize | __AccSize_0123abcd": "matmul (fused read/write)",
    "MatmulEntry | TensorMapArgs | DynamicScalar | __Lhs | DynamicSize | __LhsSize | DynamicScalar | __Rhs | DynamicSize | __RhsSize | DynamicScalar | __Acc | DynamicSize | __AccSize | SpecializedMatmulFamily | PlanePartitioner | () | AsyncPartialTmaLoading | SyncFullStridedLoading | PlaneWriterFamily | RowMajorGlobalPartitionMatmul_0123abcd": "matmul",
    "CmmaKernel_0123abcd": "matmul", "CpuGemmKernel_0123abcd": "matmul",
    "Attention | TensorArgs | DynamicScalar | __QG_0123abcd": "attention",
    "ElemwiseFuse_0123abcd": "elementwise (fused)",
    "ReduceKernelFused_0123abcd": "reduce (fused)", "ReduceKernelBroadcasted_0123abcd": "reduce (fused)",
    "ReduceKernel | TensorArgs_0123abcd": "reduce", "ReduceWithIndicesKernel | TensorArgs | Max_0123abcd": "reduce",
    "SharedSumKernel_0123abcd": "reduce", "CumulativeKernel | SumOp_0123abcd": "reduce",
    "KernelBinop | AddOp_0123abcd": "elementwise (unfused)", "KernelScalarBinop | MulOp_0123abcd": "elementwise (unfused)",
    "KernelScalarBinopInt | BitwiseAndOp_0123abcd": "elementwise (unfused)", "KernelCmp | EqualOp_0123abcd": "elementwise (unfused)",
    "KernelScalarCmp | LowerOp_0123abcd": "elementwise (unfused)", "UnaryFloat | BasicFloatUnary_0123abcd": "elementwise (unfused)",
    "UnaryFloat |  | FloatTensorOps | Powf_0123abcd": "elementwise (unfused)", "MaskFillKernel_0123abcd": "elementwise (unfused)",
    "MaskWhereKernel_0123abcd": "elementwise (unfused)", "FullKernel_0123abcd": "elementwise (unfused)",
    "UnaryNumeric | Copy_0123abcd": "data movement", "CopyKernel_0123abcd": "data movement",
    "CopyKernelPack_0123abcd": "data movement", "CopyKernelPacked_0123abcd": "data movement",
    "CopyPerpendicular_0123abcd": "data movement", "SliceKernel_0123abcd": "data movement",
    "SliceWithStepsKernel_0123abcd": "data movement", "SliceAssignKernel_0123abcd": "data movement",
    "SliceAssignWithStepsKernel_0123abcd": "data movement", "GatherKernel_0123abcd": "data movement",
    "ScatterKernel | AddOp_0123abcd": "data movement", "ScatterAddAtomicKernel_0123abcd": "data movement",
    "SelectKernel_0123abcd": "data movement", "SelectAssignKernel | AddOp_0123abcd": "data movement",
    "CastElement_0123abcd": "data movement", "BoolCastKernel_0123abcd": "data movement",
    "Relayout_0123abcd": "data movement",
    "PrngKernel | UniformFamily_0123abcd": "random", "PrngKernel | NormalFamily_0123abcd": "random",
    "PrngKernel | BernoulliFamily_0123abcd": "random",
    "DequantizeSymmetricNativeKernel_0123abcd": "quantization", "QuantizeSymmetricPackedKernel_0123abcd": "quantization",
    "ComputeCmmaThroughput_0123abcd": "other", "LaunchOverhead_0123abcd": "other",
}


def self_test():
    fails = []

    def check(what, got, want):
        ok = (abs(got - want) <= 1e-9 * max(1.0, abs(want))) if isinstance(want, float) else got == want
        if not ok:
            fails.append(f"{what}: got {got!r}, want {want!r}")

    # Duration's Debug in every unit it uses.
    for text, ms in [("850ns", 850e-6), ("3\u00b5s", 3e-3), ("1.5ms", 1.5), ("12.345678ms", 12.345678),
                     ("1.25s", 1250.0), ("0ns", 0.0)]:
        check(f"duration {text}", duration_ms(text), ms)
    for label, want in REAL_LABELS.items():
        check(f"class of {label[:40]}", classify(label), want)

    lines = open(TESTDATA, encoding="utf-8").read().splitlines(keepends=True)
    segs = parse_log(lines)
    # Start-up (2 launches), warm-up (14 compiled + 14 launches + 1 not measured), 2 timed steps
    # of 14 launches, and nothing after the last table.
    check("segments", len(segs), 4)
    check("start-up launches", len(segs[0].launches), 2)
    check("warm-up compiles", len(segs[1].compiles), 14)
    check("warm-up launches", len(segs[1].launches), 15)
    check("warm-up not measured", sum(ms is None for _, ms in segs[1].launches), 1)
    check("timed launches", len(segs[2].launches), 28)
    check("trailing launches", len(segs[3].launches), 0)
    for i in range(3):  # cubecl's own totals agree with the lines
        check(f"table {i} count", segs[i].table["total_count"], len(segs[i].measured()))
        check(f"table {i} ms", round(segs[i].table["total_ms"], 6), round(sum(ms for _, ms in segs[i].measured()), 6))
    check("table row", segs[2].table["rows"]["KernelBinop | AddOp_5eed0000"], (0.021, 2))

    s = summarize(segs, steps=2)
    check("timed segment", s["segment"], 2)
    check("period", s["period"], 14)
    check("whole steps", s["steps"], 2)
    check("notes", s["notes"], [])  # the warm-up's last launches are one step like the timed ones
    # The warm-up segment's tail differs from a timed step when its last launch is not measured.
    odd = parse_log(lines)
    odd[1].launches[-1] = ("SomethingElse_00000000", 0.001)
    check("odd boundary note", any("not one step like theirs" in n for n in summarize(odd, steps=2)["notes"]), True)
    # Kernel i takes (i+1)*10 µs (+1 µs in step 2); kernel 13 (dequantize) takes 1.25 s in step 2.
    check("kernel ms", round(s["kernel_ms"], 6), round(sum((i + 1) * 0.010 * 2 + 0.001 for i in range(13)) + 0.140 + 1250.0, 6))
    cls = {c: (v["launches"], round(v["ms"], 6)) for c, v in s["classes"].items()}
    check("matmul (fused read/write)", cls.get("matmul (fused read/write)"), (2, 0.241))
    check("matmul", cls.get("matmul"), (2, 0.261))
    check("data movement", cls.get("data movement"), (10, round(0.121 + 0.141 + 0.161 + 0.181 + 0.201, 6)))
    check("elementwise (unfused)", cls.get("elementwise (unfused)"), (4, round(0.021 + 0.041, 6)))
    check("quantization", cls.get("quantization"), (2, 1250.14))
    check("top kernel", s["top"][0]["label"], "DequantizeSymmetricNativeKernel_5eed000d")
    check("routines", sorted(s["matmul_routines"]), [
        "MatmulEntry FusedMatmulArgs Simple/Plane", "MatmulEntry TensorArgs DoubleBuffering/Unit"])

    # The exit race: the final table and the last 3 launches lost; the first step still counts.
    cut = lines[: max(i for i, l in enumerate(lines) if l.startswith(TABLE_START))]
    cut = cut[:-3]
    s2 = summarize(parse_log(cut), steps=2)
    check("cut: segment", s2["segment"], 2)
    check("cut: whole steps", (s2["period"], s2["steps"]), (14, 1))
    check("cut: kernel ms", round(s2["kernel_ms"], 6), round(sum((i + 1) * 0.010 for i in range(14)), 6))
    check("cut: note", any("1 whole step(s) of 2" in n for n in s2["notes"]), True)
    # A table cut mid-way is not a table.
    half = lines[: len(lines) - 5]
    check("half table: segment", summarize(parse_log(half), steps=2)["segment"], 2)
    check("render", "all kernels" in render(s), True)

    if fails:
        print("SELF-TEST FAILED:\n  " + "\n  ".join(fails))
        return 1
    print(f"self-test ok ({len(REAL_LABELS)} real kernel labels classified, {TESTDATA} parsed)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", nargs="?")
    ap.add_argument("--steps", type=int, help="timed steps the profiled run made (bench lora --steps)")
    ap.add_argument("--plain", help="stdout of the same bench without profiling (its JSON line)")
    ap.add_argument("--profiled", help="stdout of the profiled bench (its JSON line)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--segment", type=int, help="segment index to summarize (default: the timed steps)")
    ap.add_argument("--json", help="also write the summary here as JSON")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        try:
            return self_test()
        except Exception as e:  # a parser that raises on cubecl's own output fails the test too
            print(f"SELF-TEST FAILED: {type(e).__name__}: {e}")
            return 1
    if not a.log or not a.steps:
        ap.error("LOG and --steps are required (or --self-test)")
    with open(a.log, encoding="utf-8", errors="replace") as f:
        segs = parse_log(f)
    s = summarize(segs, a.steps, last_json(a.plain), last_json(a.profiled), a.top, a.segment)
    print(render(s))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
