"""Generate the shared PHM golden vectors (tests/golden/phm_golden.safetensors + cases.json).

Every implementation (torch module, ONNX reference, Triton kernels, TensorRT plugins) is checked
against these files. Expected outputs come straight from the definition W = Σ_b kron(H_b, A_b)
computed in float64 with torch.kron, not from any of the implementations under test.

Tensors per case `<name>`: `<name>.x` (T, d_in), `<name>.bases` (B, n, n), `<name>.cores`
(B, d_out/n, d_in/n) — A_b = cores[b], the spec's stacked form —, `<name>.bias` (d_out,) when the
case has one, `<name>.y` (T, d_out). All float32. Fixed seed: rerunning gives identical bytes.

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


def build():
    gen = torch.Generator().manual_seed(SEED)
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
        index.append({"name": name, "n": n, "num_bases": num_bases, "d_in": d_in, "d_out": d_out,
                      "T": t, "bias": bias, "basis_family": "default",
                      "basis_names": basis_names(n, num_bases)})
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
