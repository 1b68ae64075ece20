"""CPU benchmark: PHMLinear vs nn.Linear, time and weight bytes as ratios measured in one run.

    python benchmarks/bench_phm_linear_cpu.py [--threads 2] [--repeats 30]

For each (d_in, d_out, T, B) the dense layer and the PHM layer are timed back to back in the same
process (median of `repeats` runs after warm-up); the table gives ms, speed-up (dense/PHM time) and
bytes ratio (PHM cores / dense weight = B/n²). Machine details are printed with the table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from phm.trainer import PHMLinear

SHAPES = [  # (d_in, d_out): SmolLM2-135M MLP, MiniLM FFN, a Qwen2.5-VL-3B-sized gate
    (576, 1536),
    (384, 1536),
    (2048, 11008),
]
TOKENS = [1, 16, 256]


def median_ms(fn, x, repeats):
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = Table(title=f"PHMLinear vs nn.Linear, fp32, CPU ({platform.processor() or platform.machine()}, "
                        f"{args.threads} threads, torch {torch.__version__})")
    for col in ("d_in→d_out", "T", "B", "dense ms", "PHM ms", "speed-up", "bytes ratio"):
        table.add_column(col, justify="right")
    for d_in, d_out in SHAPES:
        dense = torch.nn.Linear(d_in, d_out, bias=False)
        for t in TOKENS:
            x = torch.randn(t, d_in)
            dense_ms = median_ms(dense, x, args.repeats)
            for num_bases in (1, 2, 3):
                phm = PHMLinear.from_dense(dense.weight.detach(), n=2, num_bases=num_bases)
                phm_ms = median_ms(phm, x, args.repeats)
                table.add_row(f"{d_in}→{d_out}", str(t), str(num_bases), f"{dense_ms:.3f}", f"{phm_ms:.3f}",
                              f"{dense_ms / phm_ms:.2f}×", f"{phm.cost.byte_ratio:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
