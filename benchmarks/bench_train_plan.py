"""The trainer's memory plan against a real run: `phm-train --plan`'s peak vs the measured peak RSS.

    python benchmarks/bench_train_plan.py            # SmolLM2-135M, batch 8 × 128 packed tokens, 2 steps

The run is what the plan describes: full `--max-length` windows (`--pack`, so every batch is
batch × max_length tokens), projection init (`--init projection`: no calibration stage, the KD step
is the peak), one process on the CPU, and the plan's worst case of stage A: a recipe (MID_FADE)
fades every block in together over the whole run, so the second step has λ = 0.5 everywhere (both
the dense and the PHM path computed, the reconstruction recorded). Measured: the run's peak RSS minus the peak RSS of a process
that only imports what phm-train imports (torch, transformers, peft, the trainer), both in child
processes of their own. The plan counts the model's memory, not the interpreter's. Measured twice:
with glibc's default malloc, whose dynamic mmap threshold rises after large frees so that later
tensors come from the heap and freed ones stay in RSS, and with MALLOC_MMAP_THRESHOLD_=65536, which
keeps every tensor-sized block mmapped and returned to the OS when freed (RSS then follows the live
tensors, what the plan counts). And once from the allocator's own statistics with the default
malloc: glibc's mallinfo2() bytes in use (heap blocks handed out + mmapped blocks, freed memory that
stays resident not counted), sampled every millisecond by a thread of the run's process, peak of
the run minus peak of an imports-only process. Results: --json
(benchmarks/results/train_plan_smollm2_cpu.json) and a printed table.
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
MID_FADE = "recipe_version: 1\nschedule:\n  fade_fraction: 1.0\n  ramp_width: 1.0\n  stage_b_fraction: 0.0\n"
IMPORTS = "import torch, transformers, peft, phm.trainer, phm.trainer.pipeline, torch.utils.tensorboard"
# Runs argv[1:] as phm-train (or only the imports, without arguments) with a thread sampling glibc's
# bytes in use; prints the peak in bytes as the last stderr line.
IN_USE = """
import atexit, ctypes, sys, threading, time
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
peak = [0]
def sample():
    while True:
        info = libc.mallinfo2()
        peak[0] = max(peak[0], info.uordblks + info.hblkhd)
        time.sleep(0.001)
threading.Thread(target=sample, daemon=True).start()
atexit.register(lambda: print(peak[0], file=sys.stderr))
""" + IMPORTS + """
if len(sys.argv) > 1:
    from phm.trainer.cli import main
    main(sys.argv[1:], standalone_mode=False)
time.sleep(0.01)
"""


def in_use_peak(argv: list) -> float:
    """Peak GiB in use of IN_USE run with `argv`, in a child process (a failed run exits here)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", IN_USE, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = proc.stderr.rstrip().splitlines()[-1:] or [""]
    if proc.returncode or not last[0].isdigit():
        sys.exit(f"a measured process failed: {proc.stderr.strip().splitlines()[-1:]}")
    return int(last[0]) / GiB


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

    recipe_dir = tempfile.TemporaryDirectory(prefix="phm-plan-recipe-")
    recipe = Path(recipe_dir.name) / "mid_fade.yaml"
    recipe.write_text(MID_FADE)
    settings = ["--batch-size", args.batch_size, "--max-length", args.max_length, "--init", "projection",
                "--recipe", recipe]
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
    base_gib = in_use_peak([])
    with tempfile.TemporaryDirectory(prefix="phm-plan-") as tmp:
        run_gib = in_use_peak([args.model, "--out", Path(tmp) / "out", "--data", "chatterbot", "--pack", "--steps",
                               args.steps, "--checkpoint-every", 0, *settings])
    rows["glibc default, bytes in use (mallinfo2)"] = {
        "run_peak_in_use_gib": round(run_gib, 3), "imports_peak_in_use_gib": round(base_gib, 3),
        "measured_gib": round(run_gib - base_gib, 3), "plan_over_measured": round(plan.peak / GiB / (run_gib - base_gib), 3)}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv),
              "model": args.model, "batch": [args.batch_size, args.max_length], "steps": args.steps,
              "plan_gib": {k: round(v / GiB, 3) for k, v in {**plan.items, "peak": plan.peak}.items()},
              "measured": rows}
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print("| model | batch × tokens | malloc, measure | plan peak | run peak − imports-only peak | plan / measured |\n"
          "|---|---|---|---:|---:|---:|")
    for allocator, r in rows.items():
        run, base = (r["run_peak_rss_gib"], r["imports_peak_rss_gib"]) if "run_peak_rss_gib" in r else \
            (r["run_peak_in_use_gib"], r["imports_peak_in_use_gib"])
        measure = allocator if "in use" in allocator else f"{allocator}, RSS"
        print(f"| {args.model} | {args.batch_size} × {args.max_length} | {measure} | {plan.peak / GiB:.2f} GiB | "
              f"{run:.2f} − {base:.2f} = {r['measured_gib']:.2f} GiB | {r['plan_over_measured']:.3f} |")


if __name__ == "__main__":
    main()
