#!/usr/bin/env bash
# Everything a GPU machine must prove about an artifacts dir, unattended, in one run (≤ 10 min on one
# H100 or an Orin): build the plugins for the local GPU, check the machine (phm-doctor: TensorRT, driver,
# each way of loading the plugins, the cubins), run the artifacts' commands.sh (engines with the
# plugins, polygraphy ONNX Runtime and TensorRT vs the saved PyTorch reference), the GPU tests, the
# kernel benchmark, compute-sanitizer memcheck on one engine run, and one run with CUDA graphs on two
# streams. Every step runs under a time limit, its log kept; one summary table at the end and JSON.
#
#   scripts/gpu_acceptance.sh ARTIFACTS_DIR [OUT_DIR]        (OUT_DIR default: ARTIFACTS_DIR/gpu_acceptance)
#   env: CUDA_HOME (the toolkit whose ptxas builds the cubins), STEP_TIMEOUT (s, default 300),
#        PYTHON (the interpreter with phm-edge installed, default python3)
#
# Exit 0 when every step passed; 1 otherwise; 2 on bad usage. Run from a checkout of this repository
# with `pip install -e ".[models,kernels,dev]"` plus TensorRT's Python package.
set -uo pipefail

if [[ $# -lt 1 || ! -f "$1/manifest.json" ]]; then
    echo "usage: $0 ARTIFACTS_DIR [OUT_DIR]  (ARTIFACTS_DIR: a phm-export output with manifest.json)" >&2
    exit 2
fi
ART=$(cd "$1" && pwd)
OUT=${2:-$ART/gpu_acceptance}
REPO=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=${STEP_TIMEOUT:-300}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/logs"
RESULTS="$OUT/steps.tsv"
: > "$RESULTS"

step() {  # step NAME CMD... : run with a time limit, log to logs/NAME.log, record status and seconds
    local name=$1; shift
    local start=$SECONDS rc
    echo "== $name: $*" | tee -a "$OUT/logs/all.log"
    timeout "$LIMIT" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    local status=passed
    [[ $rc -eq 124 ]] && status=timeout
    [[ $rc -ne 0 && $rc -ne 124 ]] && status=failed
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$(tail -n 1 "$OUT/logs/$name.log" | tr '\t' ' ' | cut -c1-120)" >> "$RESULTS"
    echo "   $status ($((SECONDS - start)) s)"
    return 0
}

SM=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.[:space:]')
if [[ -z "$SM" ]]; then
    echo "no GPU visible to nvidia-smi: this script proves what only a GPU machine can" >&2
    exit 1
fi
PLUGINS="$OUT/plugins"
LIB="$PLUGINS/lib/libphm_trt_plugins.so"
ENGINE_OPTS=$("$PYTHON" - "$ART" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
g = m["graphs"]["decoder"]
opt = g["profile"]["opt"]
print(f"engines/decoder.{m['target']['name']}.engine",
      ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in opt.items()))
PY
)
ENGINE=${ENGINE_OPTS% *}
SHAPES=${ENGINE_OPTS#* }

step build_plugins phm-build-plugins --arch "sm_$SM" --out "$PLUGINS" ${CUDA_HOME:+--cuda-home "$CUDA_HOME"}
step doctor phm-doctor --plugins "$PLUGINS"
step commands_sh env PHM_PLUGINS="$LIB" bash "$ART/commands.sh"
step pytest_gpu "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/trt_plugins"
step kernel_bench "$PYTHON" "$REPO/benchmarks/bench_phm_kernels_gpu.py" --reps 20 --out "$OUT/bench_phm_kernels_gpu.md"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 \
    trtexec --loadEngine="$ART/$ENGINE" --staticPlugins="$LIB" --shapes="$SHAPES" --iterations=2 --warmUp=0 --duration=0
step cuda_graph_two_streams trtexec --loadEngine="$ART/$ENGINE" --staticPlugins="$LIB" --shapes="$SHAPES" \
    --useCudaGraph --infStreams=2 --iterations=20 --warmUp=100 --duration=0

"$PYTHON" - "$RESULTS" "$OUT/gpu_acceptance.json" "$SM" "$ART" <<'PY'
import datetime, json, subprocess, sys
rows = [dict(zip(("step", "status", "seconds", "last_line"), ln.rstrip("\n").split("\t"))) for ln in open(sys.argv[1])]
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "gpu": gpu,
       "sm": sys.argv[3], "artifacts": sys.argv[4], "steps": rows}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
width = max(len(r["step"]) for r in rows)
print(f"\n{gpu} (sm_{sys.argv[3]})\n{'step':<{width}}  status   seconds  last line of its log")
for r in rows:
    print(f"{r['step']:<{width}}  {r['status']:<7}  {r['seconds']:>7}  {r['last_line']}")
print(f"\nJSON: {sys.argv[2]}; logs: {sys.argv[2].rsplit('/', 1)[0]}/logs/")
sys.exit(0 if all(r["status"] == "passed" for r in rows) else 1)
PY
