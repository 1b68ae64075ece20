#!/usr/bin/env bash
# Qwen2.5-VL training at scale on one GPU, unattended (≤ 10 min on one H100): the memory plan, then
# 50 steps of the paper's recipe (recipes/paper-qwen2.5-vl-7b.yaml: bf16 base, gradient
# checkpointing, PHM on both towers, top 12 layers B = 3) on the real architecture at the 7B shape
# with generated weights, then the same at the 3B shape; the measured peak memory against the plan
# and the step time, as JSON and one table (benchmarks/train_gpu_check.py does the work).
#
#   scripts/train_gpu_check.sh [OUT_DIR]          (default: ./train_gpu_check)
#   env: STEPS (default 50), MAX_LENGTH (default 512), STEP_TIMEOUT (s per shape, default 270),
#        PYTHON (the interpreter with phm-edge installed, default python3)
#
# Exit 0 when every shape ran; 1 otherwise. Run from a checkout with `pip install -e ".[models]"`.
set -uo pipefail

OUT=${1:-train_gpu_check}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LIMIT=${STEP_TIMEOUT:-270}
mkdir -p "$OUT"
status=0
for shape in 7b 3b; do
    echo "== Qwen2.5-VL-$shape: plan + ${STEPS:-50} steps (log: $OUT/$shape.log)"
    timeout "$LIMIT" "$PYTHON" "$REPO/benchmarks/train_gpu_check.py" --shape "$shape" --steps "${STEPS:-50}" \
        --max-length "${MAX_LENGTH:-512}" --json "$OUT/$shape.json" > "$OUT/$shape.log" 2>&1
    rc=$?
    if [[ $rc -ne 0 ]]; then
        status=1
        echo "   failed (exit $rc): $(tail -n 1 "$OUT/$shape.log" | cut -c1-200)"
    fi
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))]
print("| shape | device | batch × tokens | plan peak GiB | measured peak GiB | measured / plan | median step s |")
print("|---|---|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['shape']} | {r['device']} | {r['batch'][0]} × {r['batch'][1]} | {r['plan_peak_gib']} | "
          f"{r['measured_peak_gib']} | {r['measured_over_plan']} | {r['median_step_s']} |")
PY
exit $status
