"""The trainer's memory plan against a real run: `phm-train --plan`'s peak vs the measured peak RSS.

    python benchmarks/bench_train_plan.py            # SmolLM2-135M, batch 8 × 128 packed tokens, 2 steps

The run is what the plan describes: full `--max-length` windows (`--pack`, so every batch is
batch × max_length tokens), projection init (`--init projection`: no calibration stage, the KD step
is the peak), one process on the CPU. Measured: the run's peak RSS minus the peak RSS of a process
that only imports what phm-train imports (torch, transformers, peft, the trainer), both in child
processes of their own. The plan counts the model's memory, not the interpreter's. Measured twice:
with glibc's default malloc, whose dynamic mmap threshold rises after large frees so that later
tensors come from the heap and freed ones stay in RSS, and with MALLOC_MMAP_THRESHOLD_=65536, which
keeps every tensor-sized block mmapped and returned to the OS when freed (RSS then follows the live
tensors, what the plan counts). Results: --json (benchmarks/results/train_plan_smollm2_cpu.json)
and a printed table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_export_scale import BIN, measured  # noqa: E402 - one way of measuring a child's peak RSS

GiB = 1024 ** 3
IMPORTS = "import torch, transformers, peft, phm.trainer, phm.trainer.pipeline, torch.utils.tensorboard"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sample:smollm2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "train_plan_smollm2_cpu.json")
    args = ap.parse_args()
    from phm.common.fsutil import atomic_write_text
    from phm.trainer import PHMConfig
    from phm.trainer.distill import DistillConfig
    from phm.trainer.models import resolve_model_dir
    from phm.trainer.plan import plan_training

    settings = ["--batch-size", args.batch_size, "--max-length", args.max_length, "--init", "projection"]
    plan = plan_training(resolve_model_dir(args.model), PHMConfig(init="projection"),
                         DistillConfig(batch_size=args.batch_size, max_length=args.max_length, pack=True,
                                       calibrate_init=False))
    print(plan.table())
    rows = {}
    for allocator, env in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=65536", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            base, _, base_gib = measured([sys.executable, "-c", IMPORTS])
            with tempfile.TemporaryDirectory(prefix="phm-plan-") as tmp:
                run, wall, run_gib = measured([BIN / "phm-train", args.model, "--out", Path(tmp) / "out", "--data",
                                               "chatterbot", "--pack", "--steps", args.steps, "--checkpoint-every", 0,
                                               *settings])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if base.returncode or run.returncode:
            sys.exit(f"a measured process failed: {(base.stderr or run.stderr).strip().splitlines()[-1:]}")
        rows[allocator] = {"run_peak_rss_gib": round(run_gib, 3), "imports_peak_rss_gib": round(base_gib, 3),
                           "measured_gib": round(run_gib - base_gib, 3),
                           "plan_over_measured": round(plan.peak / GiB / (run_gib - base_gib), 3),
                           "run_s": round(wall, 1)}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv),
              "model": args.model, "batch": [args.batch_size, args.max_length], "steps": args.steps,
              "plan_gib": {k: round(v / GiB, 3) for k, v in {**plan.items, "peak": plan.peak}.items()},
              "measured": rows}
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print("| model | batch × tokens | malloc | plan peak | run peak RSS − imports | plan / measured |\n"
          "|---|---|---|---:|---:|---:|")
    for allocator, r in rows.items():
        print(f"| {args.model} | {args.batch_size} × {args.max_length} | {allocator} | {plan.peak / GiB:.2f} GiB | "
              f"{r['run_peak_rss_gib']:.2f} − {r['imports_peak_rss_gib']:.2f} = {r['measured_gib']:.2f} GiB | "
              f"{r['plan_over_measured']:.3f} |")


if __name__ == "__main__":
    main()
