#!/usr/bin/env bash
# A stand-in for a GPU tunelab binary, to dry-run scripts/profile-gpu-step.sh on a machine
# without a GPU:   TUNELAB=scripts/testdata/fake-tunelab.sh OUT=/tmp/p scripts/profile-gpu-step.sh
# `doctor` succeeds; `bench lora` prints a JSON line like the real one and, when a cubecl.toml in
# the working directory names a profiling log file, writes one from cubecl-0.11.3-profile.log:
# its start-up and warm-up segments, then the first timed step repeated --steps times with the
# final summary table and the last 2 launches missing (as when the process exits before cubecl's
# logger thread has written them).
set -u
here=$(dirname "$(realpath "$0")")
case " $* " in *" doctor "*) echo "fake device ok"; exit 0 ;; esac
steps=5; warmup=2; dtype=f32; shape=smollm2-135m
while [ $# -gt 0 ]; do
  case $1 in --steps) steps=$2 ;; --warmup) warmup=$2 ;; --dtype) dtype=$2 ;; --shape) shape=$2 ;; esac
  shift
done
step_ms=360
if [ -f cubecl.toml ]; then
  step_ms=900
  log=$(sed -n "s/^file = '\(.*\)'$/\1/p" cubecl.toml | head -1)
  fixture=$here/cubecl-0.11.3-profile.log
  # Lines up to the second table's end (start-up, warm-up), then the timed step 1 launches.
  end2=$(grep -n '^|⎯' "$fixture" | sed -n 2p | cut -d: -f1)
  { head -n "$end2" "$fixture"
    for _ in $(seq "$steps"); do sed -n "$((end2 + 2)),$((end2 + 15))p" "$fixture"; done | head -n -2
  } >> "$log"
fi
tok=$(( 8 * 512 * 1000 / step_ms ))
echo "{\"case\": \"$shape lora r16 seq512 b8$( [ "$dtype" = f16 ] && echo ' f16')\", \"framework\": \"tunelab\", \"dtype\": \"$dtype\", \"tokens_per_s\": $tok, \"step_ms\": $step_ms, \"steps\": $steps, \"warmup\": $warmup}"
