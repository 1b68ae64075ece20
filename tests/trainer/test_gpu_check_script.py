"""benchmarks/train_gpu_check.py (what scripts/train_gpu_check.sh runs on a GPU) at the tiny shape
on the CPU: the paper recipe on the real Qwen2.5-VL architecture with generated weights and image
batches trains, and the report has every field the GPU run fills."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_runs_the_paper_recipe_at_tiny_shape(tmp_path):
    out = tmp_path / "tiny.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_gpu_check.py"), "--shape", "tiny",
                           "--device", "cpu", "--steps", "3", "--max-length", "48", "--image-size", "56",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["steps"] == 3 and result["phm_layers"] == 12  # both towers
    assert result["plan_peak_bytes"] > 0 and result["measured_peak_bytes"] is None  # no allocator statistics on a CPU
    assert result["median_step_s"] > 0 and result["first_loss"] is not None
    assert result["recipe"] == "paper-qwen2.5-vl-7b.yaml"
