"""ONNX Runtime's MatMulNBits and MatMulIntegerToFloat against an fp32 MatMul, one token (M = 1), on the
CPU: what the INT4 and INT8 weight-only kernels cost per accuracy level, and the exact W8A8 integer
GEMM phm-export writes for `--int8` (export/lower_int8.py), in the same process.

    python benchmarks/bench_matmul_nbits.py [--k 1536] [--n 576] [--threads 1] [--runs 300]

Accuracy level 0/1 is fp32 arithmetic on the dequantized weights (what the quantized graph says);
4 quantizes the activations to INT8 per block as well (ONNX Runtime GenAI's CPU default).
MatMulIntegerToFloat is timed with its QuantizeLinear (static per-tensor scale) in front, with uint8
activations (zero point 128, what the export writes) and int8 ones. Weights are random (speed does
not depend on them); block 64. Results: benchmarks/results/matmul_nbits_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64


def _integer_gemm(k: int, n: int, activations: str, rng) -> tuple[list, list]:
    """QuantizeLinear(x) → MatMulIntegerToFloat over int8 (K, N) weights with per-column scales."""
    zp = np.array(128, np.uint8) if activations == "uint8" else np.array(0, np.int8)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
             numpy_helper.from_array(rng.random(n).astype(np.float32) * 0.01, "ws"),
             numpy_helper.from_array(np.zeros(n, np.int8), "wz"), numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(zp, "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"]),
             helper.make_node("MatMulIntegerToFloat", ["q", "w", "xs", "ws", "xz", "wz"], ["y"], domain="com.microsoft")]
    return nodes, inits


def _session(k: int, n: int, bits: int | str, level: int, threads: int, rng) -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])
    if bits in ("uint8", "int8"):
        nodes, inits = _integer_gemm(k, n, bits, rng)
        graph = helper.make_graph(nodes, "g", [x], [y], inits)
    elif bits == 32:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    else:
        packed = rng.integers(0, 256, (n, k // BLOCK, BLOCK * bits // 8)).astype(np.uint8)
        scales = rng.random(n * (k // BLOCK)).astype(np.float32)
        node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                                block_size=BLOCK, accuracy_level=level)
        graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(packed, "w"),
                                                          numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=1536)
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "matmul_nbits_cpu.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, args.k)).astype(np.float32)
    rows = []
    for bits, level in ((32, 0), (8, 0), (8, 1), (8, 4), (4, 0), (4, 1), (4, 4), ("uint8", 0), ("int8", 0)):
        sess = _session(args.k, args.n, bits, level, args.threads, rng)
        for _ in range(10):
            sess.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(args.runs):
            sess.run(None, {"x": x})
        us = (time.perf_counter() - t) / args.runs * 1e6
        kernel = ("MatMul fp32" if bits == 32 else f"MatMulIntegerToFloat {bits} x int8" if isinstance(bits, str)
                  else f"MatMulNBits {bits}-bit")
        rows.append({"kernel": kernel, "accuracy_level": level if not isinstance(bits, str) else None,
                     "us": round(us, 1)})
        level_text = "" if isinstance(bits, str) else f" level {level}"
        print(f"{kernel + level_text:36s} {us:8.1f} us")
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "onnxruntime": ort.__version__,
            "k": args.k, "n": args.n, "m": 1, "block": BLOCK, "threads": args.threads, "runs": args.runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
