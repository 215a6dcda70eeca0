#!/usr/bin/env bash
# Where a GPU training step's time goes, per kernel class (issue 17): `tunelab bench lora` (or,
# for the case "mnrl:DTYPE", `tunelab bench train-embed`: MiniLM-L6 MNRL, EMBED_BATCH pairs of
# EMBED_SEQ tokens) once as it is (the undisturbed step time) and once with CubeCL's profiling log on (every
# kernel launch timed on the GPU), then scripts/summarize-cubecl-profile.py: kernel time per
# class (matmul, fused element-wise, reductions, data movement, random, ...), the top kernels,
# and the share of the undisturbed step the GPU spends running kernels at all.
#
#   TUNELAB=path/to/tunelab [DEVICE=vulkan] [CASES="smollm2-135m:f32 qwen3-0.6b:f16 mnrl:f16"] \
#     [SEQ=512 BATCH=8 RANK=16 EMBED_SEQ=128 EMBED_BATCH=64] \
#     [STEPS=5 WARMUP=2 PROF_STEPS=3 PROF_WARMUP=2 BUDGET=570] \
#     OUT=dir scripts/profile-gpu-step.sh
#
# On the NVIDIA machine, as one device call (carry .dev/vk17 .dev/cc .dev/m2 .gl; timeout 600),
# with the Vulkan-only binary kept (git-excluded) in .dev/vk17, as .dev/run/gpu8.sh does:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json; xz -dc .dev/vk17/tunelab.xz > /tmp/tunelab && chmod +x /tmp/tunelab; if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/m2/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib; fi; [ -d target/environment ] || tar xJf .dev/cc/cubecl-env.txz; TUNELAB=/tmp/tunelab CASES="smollm2-135m:f32" bash scripts/profile-gpu-step.sh
# Measured 2026-12-07 on one NVIDIA H100 80GB HBM3 (Vulkan), CASES="qwen3-1.7b:f16": 575 ms of kernel
# time a step (undisturbed step ~600 ms); matmul 54%, matmul fused with element-wise 12%, data
# movement 12%, element-wise 16%, reductions 6%; the f16 projections at ~120 TFLOP/s (table and
# the products beside torch.matmul's in environment.md, "Where a GPU step's time goes").
# What comes back in $OUT (flat, at most 2 files a case + 1): CASE.summary.txt (the tables),
# CASE.tar.xz (the raw profiling log, both runs' stdout/stderr, summary.json, the cubecl.toml
# used), profile-gpu-step.log (progress, card, timings). Time: the first process on a fresh
# machine compiles and autotunes every kernel (~70 s f32, ~170 s f16 on the H100, 2026-12-06);
# the profiled process reuses the autotune results and (KEEP_KERNELS=1, the default) the compiled
# kernels the first one stored under target/environment, and runs every launch through its own
# flush; without the kernel store a case takes about 2 x its compile time + a minute. One
# case a call is safe; a run that no longer fits BUDGET seconds is skipped and says so.
#
# How the profiling is turned on (cubecl-runtime 0.11.3, checked in its source and with its own
# logger, scripts/testdata/cubecl-logfmt.rs): CubeClRuntimeConfig::get() reads the first of
# cubecl.toml / CubeCL.toml (then burn.toml / Burn.toml's [cubecl] section) found from the
# working directory upwards (cubecl-environment config/mod.rs, from_current_dir), then applies
# the CUBECL_* environment overrides (cubecl-runtime config/base.rs, override_from_env). No env
# variable alone gives a file sink with only profiling on (CUBECL_DEBUG_LOG also turns the
# compilation log to Full, every kernel's source, and CUBECL_DEBUG_OPTION=profile sets the
# level but no sink), so this script writes a cubecl.toml in the repository root, where tunelab
# runs (also the root cubecl's default cache path, target/environment, is found from), for the
# profiled run only, and removes it after. At level "basic" every launch goes through
# ComputeClient::profile (client.rs launch_inner): on Vulkan the queue is flushed before and
# after each kernel, which runs alone in a compute pass with timestamp queries, so the logged
# durations are GPU times of each kernel, and the profiled step is slower than the real one;
# hence the undisturbed run beside it. The summary table cubecl writes at each device sync marks
# bench lora's warm-up / timed-steps boundary (see the summarizer's doc).
set -uo pipefail
[ -n "${TUNELAB:-}" ] && TUNELAB=$(realpath "$TUNELAB")
[ -n "${OUT:-}" ] && { mkdir -p "$OUT"; OUT=$(realpath "$OUT"); }
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TL=${TUNELAB:-target/debug/tunelab}
DEVICE=${DEVICE:-vulkan}
CASES=${CASES:-${SHAPE:-smollm2-135m}:${DTYPE:-f32}}
SEQ=${SEQ:-512} BATCH=${BATCH:-8} RANK=${RANK:-16}
EMBED_SEQ=${EMBED_SEQ:-128} EMBED_BATCH=${EMBED_BATCH:-64}  # the case "mnrl:DTYPE" (bench train-embed)
STEPS=${STEPS:-5} WARMUP=${WARMUP:-2}                 # the undisturbed run, as scripts/bench-gpu.sh
PROF_STEPS=${PROF_STEPS:-3} PROF_WARMUP=${PROF_WARMUP:-2}
BUDGET=${BUDGET:-570}                                 # seconds for everything (a device call has 600)
O=${OUT:-$(mktemp -d)}
mkdir -p "$O"
t0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$O/profile-gpu-step.log"; }

# The CUBECL_* overrides are applied after the file: unset the two that would change the logs.
unset CUBECL_DEBUG_LOG CUBECL_DEBUG_OPTION
MARK="# Written by scripts/profile-gpu-step.sh"
for name in cubecl.toml CubeCL.toml; do
  [ -e "$ROOT/$name" ] || continue
  # A run killed mid-way (a device call's time limit) leaves its cubecl.toml; any other one is
  # somebody's configuration, which this script would shadow: stop.
  if [ "$(head -c ${#MARK} "$ROOT/$name")" = "$MARK" ]; then rm -f "$ROOT/$name"; el "removed a $name a killed run of this script left"
  else el "$ROOT/$name exists: this script writes its own there; move it away first"; exit 2; fi
done
d=$ROOT
while :; do  # a config above the root applies to the undisturbed run only: say so
  for name in cubecl.toml CubeCL.toml burn.toml Burn.toml; do
    [ -e "$d/$name" ] && el "WARNING: $d/$name is read by the undisturbed run, not by the profiled one"
  done
  [ "$d" = / ] && break
  d=$(dirname "$d")
done
command -v nvidia-smi >/dev/null && el "card: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
"$TL" --device "$DEVICE" doctor > "$O/doctor.txt" 2>&1 || { el "the $DEVICE device did not start:"; cat "$O/doctor.txt"; exit 1; }
rm -f "$O/doctor.txt"
trap 'rm -f "$ROOT/cubecl.toml"' EXIT

# run NAME LIMIT ARGS...: one bench lora process of the current case, its stdout and stderr in $W.
run() {
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  if [ "$shape" = mnrl ]; then
    # MiniLM-L6-shaped contrastive training (MultipleNegativesRankingLoss), as bench-gpu.sh runs it.
    timeout "$limit" "$TL" --device "$DEVICE" bench train-embed --dtype "$dtype" --seq "$EMBED_SEQ" \
      --batch-size "$EMBED_BATCH" "$@" > "$W/$name.out" 2> "$W/$name.err"
  else
    timeout "$limit" "$TL" --device "$DEVICE" bench lora --shape "$shape" --dtype "$dtype" --seq "$SEQ" \
      --batch-size "$BATCH" --rank "$RANK" "$@" > "$W/$name.out" 2> "$W/$name.err"
  fi
  local rc=$?
  el "$case $name: rc=$rc ($( [ $rc = 124 ] && echo "timed out after $limit s" || echo "$(( $(date +%s) - t )) s")): $(grep '^{' "$W/$name.out" | tail -1 | cut -c1-400)"
  [ $rc = 0 ] || tail -5 "$W/$name.err" | tee -a "$O/profile-gpu-step.log"
  return $rc
}

for c in $CASES; do
  shape=${c%%:*} dtype=${c##*:} case="$shape-$dtype"
  W=/tmp/profile-gpu-step/$case
  rm -rf "$W"; mkdir -p "$W"
  # The undisturbed run also compiles and autotunes first (autotune results go to the cache the
  # profiled run reads, measured without profiling's per-launch flushes); it leaves the profiled
  # run at least 150 s.
  if [ "$(left)" -lt 200 ]; then el "$case: skipped, $(left) s of the budget left"; continue; fi
  plain_limit=$(( $(left) - 150 )); [ $plain_limit -gt 330 ] && plain_limit=330
  # Both runs keep compiled kernels (SPIR-V) in cubecl's store beside the autotune cache
  # (`[compilation] cache`, off by default; cubecl-server compiler.rs compilation_store), so the
  # profiled run does not compile everything a second time. KEEP_KERNELS=0 turns that off.
  if [ "${KEEP_KERNELS:-1}" = 1 ]; then
    printf '%s\n[compilation]\ncache = true\n' "$MARK for the undisturbed run; removed after it." > "$ROOT/cubecl.toml"
  fi
  run plain "$plain_limit" --steps "$STEPS" --warmup "$WARMUP"
  rm -f "$ROOT/cubecl.toml"
  limit=$(( $(left) - 20 ))
  if [ $limit -lt 60 ]; then el "$case: profiled run skipped, $(left) s of the budget left"; continue; fi
  # Profiling and kernel-compilation lines into one file, in launch order (one logger channel);
  # level "basic" names each launch by kernel type and configuration hash. append = true (the
  # default) because every cubecl Logger opens the file (the autotuner has its own): one that
  # truncated would cut the others' lines; the file is removed before the run instead.
  cat > "$ROOT/cubecl.toml" <<EOF
$MARK for one profiled run; removed after it.
[compilation]
cache = $( [ "${KEEP_KERNELS:-1}" = 1 ] && echo true || echo false )

[profiling.logger]
level = "basic"
file = '$W/cubecl-profile.log'

[compilation.logger]
level = "basic"
file = '$W/cubecl-profile.log'
EOF
  cp "$ROOT/cubecl.toml" "$W/"
  rm -f "$W/cubecl-profile.log"
  run profiled "$limit" --steps "$PROF_STEPS" --warmup "$PROF_WARMUP"
  rm -f "$ROOT/cubecl.toml"
  # cubecl reports a config file it could not read on stderr and then runs without it.
  grep -h "cubecl config:" "$W/profiled.err" | tee -a "$O/profile-gpu-step.log"
  if [ ! -s "$W/cubecl-profile.log" ]; then
    el "$case: no profiling log was written ($W/cubecl-profile.log)"
  else
    el "$case: profiling log $(wc -l < "$W/cubecl-profile.log") lines, $(du -h "$W/cubecl-profile.log" | cut -f1)"
    python3 scripts/summarize-cubecl-profile.py "$W/cubecl-profile.log" --steps "$PROF_STEPS" \
      --plain "$W/plain.out" --profiled "$W/profiled.out" --json "$W/summary.json" > "$O/$case.summary.txt" 2>&1
    el "$case: summary rc=$?"
    cat "$O/$case.summary.txt"
  fi
  ( cd "$W" && tar cf - * | xz -T0 -3 > "$O/$case.tar.xz" )
done
el "done; files in $O: $(ls "$O" | tr '\n' ' ')"
