"""benchmarks/bench_export_scale.py end to end on its tiny shape: checkpoints built, both variants
exported and run in child processes, every measured field present, greedy equal to transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_export_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_export_scale.py"), "--shapes", "qwen2-tiny",
                           "--variants", "dense,phm", "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["dense", "phm"]
    for r in rows:
        assert r["export_ok"] and r["greedy_equals_transformers"] is True, r
        assert r["artifact_bytes"] > r["weight_bytes"] > 0 and r["export_peak_rss_gb"] > 0 and r["startup_s"] > 0
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"]  # PHM B=2: half the MLP bytes
