"""Generate the shared PHM golden vectors (tests/golden/phm_golden.safetensors + cases.json).

Every implementation (torch module, ONNX reference, Triton kernels, TensorRT plugins) is checked
against these files. Expected outputs come straight from the definition W = Σ_b kron(H_b, A_b)
computed in float64 with torch.kron, not from any of the implementations under test.

Tensors per case `<name>`: `<name>.x` (T, d_in), `<name>.bases` (B, n, n), `<name>.cores`
(B, d_out/n, d_in/n) — A_b = cores[b], the spec's stacked form —, `<name>.bias` (d_out,) when the
case has one, `<name>.y` (T, d_out). All float32. Fixed seed: rerunning gives identical bytes.

INT4 cores per case, in the layout of the PHM op (trt_plugins/spec.py) and drawn independently of
the float cores: `<name>.int4_cores` (d_out/n, B, k/2) int8 — two signed nibbles per byte along
k = d_in/n, element 2c in the low nibble, values over the whole range -8..7 —, `<name>.int4_scales`
(d_out/n, B, k/G) float32 with G = the case's "int4_group" (the largest of 16, 8, 4, 2 dividing k),
and `<name>.y_int4` (T, d_out) = x·Wᵀ (+ bias) for A_b[r, c] = q[r, b, c]·scales[r, b, c // G], the
nibbles decoded here with integer arithmetic, the product again with torch.kron in float64.

    python tests/golden/make_golden.py          # rewrite
    python tests/golden/make_golden.py --check  # exit 1 if the files on disk differ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from phm.trainer.hypercomplex import basis_family, basis_names

HERE = Path(__file__).resolve().parent
SEED = 20261123

# (n, B, d_in, d_out, T, bias): covers B = 1..n², odd T, T = 1 (decode), non-square and n = 4.
CASES = [
    (2, 1, 16, 24, 1, True),
    (2, 2, 16, 24, 1, True),
    (2, 2, 32, 16, 7, False),
    (2, 3, 24, 40, 5, True),
    (2, 4, 16, 16, 3, True),
    (2, 2, 64, 96, 33, True),
    (2, 1, 48, 32, 17, False),
    (2, 3, 96, 64, 2, True),
    (4, 1, 32, 16, 3, True),
    (4, 2, 16, 32, 1, False),
    (4, 4, 32, 32, 9, True),
    (4, 16, 16, 24, 5, True),
]


def case_name(n, num_bases, d_in, d_out, t, bias):
    return f"n{n}_b{num_bases}_i{d_in}_o{d_out}_t{t}" + ("_bias" if bias else "")


def int4_group(k: int) -> int:
    return next(g for g in (16, 8, 4, 2) if k % g == 0)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(…, k) integers in -8..7 → (…, k/2) int8 bytes, element 2c in the low nibble (two's complement)."""
    byte = (q[..., 0::2] % 16) + 16 * (q[..., 1::2] % 16)            # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def _decode_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of _pack_nibbles, as float64."""
    byte = packed.to(torch.int64) % 256
    lo, hi = byte % 16, byte // 16
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)
    return torch.stack((lo, hi), dim=-1).flatten(-2).double()


def int4_case(gen: torch.Generator, n: int, num_bases: int, d_in: int, d_out: int, x, bases, b) -> dict:
    """Random INT4 cores + scales of one case and the exact output they give (module doc)."""
    m, k = d_out // n, d_in // n
    g = int4_group(k)
    q = torch.randint(-8, 8, (m, num_bases, k), generator=gen, dtype=torch.int64)
    scales = (0.5 + torch.rand(m, num_bases, k // g, generator=gen, dtype=torch.float64)) / (7 * d_in ** 0.5)
    scales = scales.float().double()
    packed = _pack_nibbles(q)
    a = _decode_nibbles(packed) * scales.repeat_interleave(g, dim=-1)          # (m, B, k)
    w = sum(torch.kron(bases[i], a[:, i, :]) for i in range(num_bases))
    y = x @ w.T + (b if b is not None else 0.0)
    return {"int4_cores": packed, "int4_scales": scales.float(), "y_int4": y.float()}, g


def build():
    gen = torch.Generator().manual_seed(SEED)
    gen4 = torch.Generator().manual_seed(SEED + 4)  # its own stream: the float cases keep their bytes
    tensors, index = {}, []
    for n, num_bases, d_in, d_out, t, bias in CASES:
        name = case_name(n, num_bases, d_in, d_out, t, bias)
        bases = basis_family(n, num_bases, "default", dtype=torch.float64)
        cores = torch.randn(num_bases, d_out // n, d_in // n, generator=gen, dtype=torch.float64) / d_in ** 0.5
        x = torch.randn(t, d_in, generator=gen, dtype=torch.float64)
        b = torch.randn(d_out, generator=gen, dtype=torch.float64) * 0.1 if bias else None
        # Round inputs to fp32 first so the expected output is exact for the stored operands.
        cores, x = cores.float().double(), x.float().double()
        if b is not None:
            b = b.float().double()
        w = sum(torch.kron(bases[i], cores[i]) for i in range(num_bases))
        y = x @ w.T + (b if b is not None else 0.0)
        tensors[f"{name}.x"] = x.float()
        tensors[f"{name}.bases"] = bases.float()
        tensors[f"{name}.cores"] = cores.float()
        tensors[f"{name}.y"] = y.float()
        if b is not None:
            tensors[f"{name}.bias"] = b.float()
        int4, group = int4_case(gen4, n, num_bases, d_in, d_out, x, bases, b)
        tensors.update({f"{name}.{key}": value for key, value in int4.items()})
        index.append({"name": name, "n": n, "num_bases": num_bases, "d_in": d_in, "d_out": d_out,
                      "T": t, "bias": bias, "basis_family": "default",
                      "basis_names": basis_names(n, num_bases), "int4_group": group})
    return tensors, {"format_version": 1, "seed": SEED, "cases": index}


def write(dest: Path):
    tensors, index = build()
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(dest / "phm_golden.safetensors"))
    (dest / "cases.json").write_text(json.dumps(index, indent=2) + "\n")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in ("phm_golden.safetensors", "cases.json"):
        h.update((folder / f).read_bytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the files on disk are up to date")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ok = digest(Path(tmp)) == digest(HERE)
        print("golden vectors up to date" if ok else "golden vectors differ: rerun make_golden.py")
        sys.exit(0 if ok else 1)
    write(HERE)
    print(f"wrote {len(CASES)} cases to {HERE}")


if __name__ == "__main__":
    main()
