"""PHM MLP (Triton kernels) against the cuBLAS dense MLP at Qwen2.5-VL-7B shapes, measured in one run.

    python benchmarks/bench_phm_kernels_gpu.py                      # the acceptance table
    python benchmarks/bench_phm_kernels_gpu.py --out docs/bench_phm_kernels_h100.md
    python benchmarks/bench_phm_kernels_gpu.py --sweep              # try alternative tile configs

SwiGLU MLP d_model → d_ff → d_model (3584 → 18944 → 3584), fp16 activations. Dense: three cuBLAS
GEMMs (torch F.linear) + SiLU·mul. PHM (n = 2, bases I, J, K): the fused gate/up/SiLU kernel + the
PHMLinear down kernel, cores fp16 / INT8 / INT4 (group 128). Also the naive torch PHM (mix + one
GEMM per projection) for reference. Every variant runs as a CUDA graph (launch overhead out, as a
TensorRT engine would run it); time = median of replays timed with CUDA events.

Reports per (B, format, T): time, speed-up over dense, and % of the memory-bandwidth roofline
(bytes that must move: weights + scales + activations in/out + the intermediate h, over the
device's peak DRAM bandwidth; `--bandwidth` overrides the built-in table). Exits with a clear
message where CUDA is not available.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

D_MODEL, D_FF, N = 3584, 18944, 2
GROUP = 128
# Peak DRAM bandwidth, GB/s (vendor figures), by substring of torch.cuda.get_device_name().
BANDWIDTH_GBS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H100": 3350,
                 "H200": 4800, "A100-SXM4-80GB": 2039, "A100": 1555, "L40S": 864, "RTX 4090": 1008,
                 "Orin": 204.8}
# Acceptance (issue 5) on the H100: (B, fmt, T) -> minimum speed-up over dense.
TARGETS = {(2, "fp16", 1): 1.9, (2, "int8", 1): 3.4, (2, "int4", 1): 5.5, (1, "fp16", 1): 3.4,
           (2, "fp16", 2048): 1.0, (1, "fp16", 2048): 1.8}


def bench(fn, reps: int = 50) -> float:
    """Median ms of `fn` replayed as a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()   # warm-up: JIT compile, autotune caches, allocator
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@dataclass
class PHMWeights:
    fmt: str
    cores: dict      # proj -> stored cores
    scales: dict     # proj -> scales or None
    bytes: int


def make_phm(num_bases: int, fmt: str, device) -> PHMWeights:
    from phm.trt_plugins import quant

    shapes = {"gate": (D_FF // N, num_bases, D_MODEL // N), "up": (D_FF // N, num_bases, D_MODEL // N),
              "down": (D_MODEL // N, num_bases, D_FF // N)}
    cores, scales, nbytes = {}, {}, 0
    for p, s in shapes.items():
        c = torch.randn(*s, device=device) * 0.02
        if fmt == "fp16":
            cores[p], scales[p] = c.half(), None
        elif fmt == "int8":
            cores[p], scales[p] = quant.quantize_cores_int8(c)
        else:
            cores[p], scales[p] = quant.quantize_cores_int4(c, GROUP)
        nbytes += cores[p].numel() * cores[p].element_size()
        nbytes += 0 if scales[p] is None else scales[p].numel() * 4
    return PHMWeights(fmt, cores, scales, nbytes)


def run(args) -> int:
    if not torch.cuda.is_available():
        print("bench_phm_kernels_gpu: no CUDA device visible to torch; this benchmark needs a GPU "
              "(the kernels' numerics are tested on the CPU by tests/trt_plugins).")
        return 0
    from phm.trainer.hypercomplex import basis_family, phm_forward
    from phm.trt_plugins.kernels.launch import phm_ffn

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    bw = args.bandwidth or next((v for k, v in BANDWIDTH_GBS.items() if k in name), None)
    torch.manual_seed(0)
    wg, wu, wd = (torch.randn(o, i, device=dev, dtype=torch.half) * 0.02
                  for o, i in ((D_FF, D_MODEL), (D_FF, D_MODEL), (D_MODEL, D_FF)))
    dense_weight_bytes = 3 * D_MODEL * D_FF * 2
    rows = []
    print(f"device: {name}  (peak DRAM bandwidth {bw} GB/s{' assumed' if not args.bandwidth else ''})")
    print(f"SwiGLU MLP {D_MODEL}→{D_FF}→{D_MODEL}, fp16 activations, n={N}, CUDA graphs, median of "
          f"{args.reps} replays\n")
    header = f"{'B':>2} {'cores':>5} {'T':>5} {'dense ms':>9} {'PHM ms':>8} {'speed-up':>8} " \
             f"{'%BW PHM':>8} {'%BW dense':>9} {'naive ms':>9}"
    print(header)
    for t in args.tokens:
        x = torch.randn(t, D_MODEL, device=dev, dtype=torch.half)
        act_bytes = (2 * t * D_MODEL + 2 * t * D_FF) * 2   # x in, y out, h written and read
        dense_ms = bench(lambda: F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd), args.reps)
        for nb in args.bases:
            bases = basis_family(N, nb).to(dev)
            for fmt in args.formats:
                w = make_phm(nb, fmt, dev)
                g = GROUP if fmt == "int4" else 0
                wf = {"fp16": "float"}.get(fmt, fmt)

                def phm():
                    return phm_ffn(x, bases, w.cores["up"], w.cores["down"], w.cores["gate"],
                                   None, None, None, w.scales["gate"], w.scales["up"], w.scales["down"],
                                   wf, g, "silu", "swiglu")
                phm_ms = bench(phm, args.reps)
                naive_ms = float("nan")
                if fmt == "fp16":
                    hb = bases.half()
                    naive_ms = bench(lambda: phm_forward(
                        F.silu(phm_forward(x, w.cores["gate"], hb)) * phm_forward(x, w.cores["up"], hb),
                        w.cores["down"], hb), args.reps)
                pct = (lambda ms, nbytes: 100 * nbytes / (ms * 1e-3) / (bw * 1e9) if bw else float("nan"))
                row = dict(B=nb, fmt=fmt, T=t, dense_ms=dense_ms, phm_ms=phm_ms, speedup=dense_ms / phm_ms,
                           bw_phm=pct(phm_ms, w.bytes + act_bytes),
                           bw_dense=pct(dense_ms, dense_weight_bytes + act_bytes), naive_ms=naive_ms)
                rows.append(row)
                print(f"{nb:>2} {fmt:>5} {t:>5} {dense_ms:>9.4f} {phm_ms:>8.4f} {row['speedup']:>7.2f}× "
                      f"{row['bw_phm']:>7.1f}% {row['bw_dense']:>8.1f}% {naive_ms:>9.4f}")
    print("\nacceptance (issue 5, H100):")
    failed = 0
    for (nb, fmt, t), need in TARGETS.items():
        got = next((r["speedup"] for r in rows if (r["B"], r["fmt"], r["T"]) == (nb, fmt, t)), None)
        if got is None:
            continue
        ok = got >= need
        failed += not ok
        print(f"  B={nb} {fmt} T={t}: {got:.2f}× (need ≥ {need}×) {'ok' if ok else 'BELOW TARGET'}")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"# PHM MLP kernels vs cuBLAS dense MLP\n\nDevice: {name}; bandwidth {bw} GB/s; "
                     f"torch {torch.__version__}\n\n| B | cores | T | dense ms | PHM ms | speed-up | "
                     f"%BW PHM | %BW dense | naive PHM ms |\n|---|---|---|---|---|---|---|---|---|\n")
            for r in rows:
                fh.write(f"| {r['B']} | {r['fmt']} | {r['T']} | {r['dense_ms']:.4f} | {r['phm_ms']:.4f} | "
                         f"{r['speedup']:.2f}× | {r['bw_phm']:.1f} % | {r['bw_dense']:.1f} % | "
                         f"{r['naive_ms']:.4f} |\n")
    if args.sweep:
        sweep(args, dev)
    return 1 if failed and args.strict else 0


def sweep(args, dev) -> None:
    """Time PHMLinear (down-projection shape) over alternative tile configs per regime."""
    from phm.trainer.hypercomplex import basis_family
    from phm.trt_plugins.kernels import configs
    from phm.trt_plugins.kernels.launch import phm_linear

    print("\ntile sweep: PHMLinear 18944→3584, B=2, fp16")
    bases = basis_family(N, 2).to(dev)
    cores = (torch.randn(D_MODEL // N, 2, D_FF // N, device=dev) * 0.02).half()
    for t in args.tokens:
        x = torch.randn(t, D_FF, device=dev, dtype=torch.half)
        base = configs.select(t, N, 2)
        for bm in (4, 8, 16, 32, 64, 128):
            for bk in (32, 64, 128, 256, 512):
                for warps in (4, 8):
                    cfg = configs.TileConfig(base.name, base.block_t, bm, bk, base.use_dot, base.mix_w,
                                             warps, base.num_stages)
                    if cfg.use_dot and bm < 16:
                        continue
                    try:
                        ms = bench(lambda: phm_linear(x, cores, bases, config=cfg), 20)
                    except Exception as exc:  # out of resources etc.: report and go on
                        print(f"  T={t} {cfg}: {type(exc).__name__}")
                        continue
                    print(f"  T={t} BM={bm} BK={bk} warps={warps}: {ms:.4f} ms"
                          + ("  (current)" if (bm, bk, warps) == (base.block_m, base.block_k,
                                                                   base.num_warps) else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 2048])
    p.add_argument("--bases", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--formats", nargs="+", default=["fp16", "int8", "int4"], choices=["fp16", "int8", "int4"])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--bandwidth", type=float, default=None, help="peak DRAM GB/s (default: by device name)")
    p.add_argument("--out", default=None, help="also write the table as markdown here (e.g. docs/...)")
    p.add_argument("--sweep", action="store_true", help="time alternative tile configs")
    p.add_argument("--strict", action="store_true", help="exit 1 when an acceptance target is missed")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
