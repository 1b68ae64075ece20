"""AWQ (export/awq.py): the scale search on activations with outlier channels, the PHM form of it
(a scale per column of k carried exactly by x and the cores), and --int4-method awq end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from phm.export import Int4Config
from phm.export.awq import dense_scale, mixed_rows, phm_scale
from phm.trainer.hypercomplex import basis_family, phm_forward


def _outlier_rows(rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Activations whose few channels are 30× the others (what LLM hidden states look like)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x[:, rng.choice(k, 4, replace=False)] *= 30
    return x


def test_dense_scale_beats_round_to_nearest_on_outlier_channels():
    rng = np.random.default_rng(1)
    x, w = _outlier_rows(256, 128), rng.standard_normal((128, 64)).astype(np.float32)
    a = dense_scale(x, w, 32)
    assert a.alpha > 0 and a.error < 0.8 * a.rtn_error
    assert a.s.shape == (128,) and np.isclose(a.s.max() * a.s.min(), 1.0, rtol=1e-4)


def test_dense_scale_keeps_rtn_when_it_cannot_help():
    """Isotropic activations: the search may keep α = 0 (s = 1); it never reports more error than RTN."""
    rng = np.random.default_rng(2)
    a = dense_scale(rng.standard_normal((256, 64)).astype(np.float32),
                    rng.standard_normal((64, 32)).astype(np.float32), 32)
    assert a.error <= a.rtn_error


def test_phm_scale_is_exact_before_rounding():
    """x / tile(s, n) through cores · s (each core's column c) == x through the cores: the PHM form of
    AWQ changes nothing but what is rounded; and on outlier inputs it beats round-to-nearest."""
    n, nb, k, m = 2, 2, 64, 48
    bases = basis_family(n, nb)
    gen = torch.Generator().manual_seed(3)
    cores = torch.randn(m, nb, k, generator=gen) / k ** 0.5
    x = _outlier_rows(128, n * k, seed=4)
    a = phm_scale(x, [cores.numpy()], bases.numpy(), 32)
    assert a.s.shape == (k,) and a.error < a.rtn_error
    s = torch.from_numpy(a.s)
    y = phm_forward(torch.from_numpy(x).double(), cores.double(), bases.double())
    y_s = phm_forward(torch.from_numpy(x).double() / torch.from_numpy(np.tile(a.s, n)).double(),
                      cores.double() * s.double()[None, None, :], bases.double())
    assert torch.allclose(y, y_s, rtol=1e-9, atol=1e-9)
    z = mixed_rows(x, bases.numpy(), nb)                  # the rows A_cat multiplies, as lower.py computes
    a_cat = cores.reshape(m, -1).numpy()
    assert np.allclose((z @ a_cat.T).reshape(len(x), n * m), y.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("phm", [False, True], ids=["dense", "phm"])
def test_awq_export(store, phm, fp16):
    """--int4-method awq: inputs divided by their scales in the graph (one Mul per tensor), the method and
    prompts in the manifest; in an fp16 graph the scaled input keeps fp16 (the export's own ONNX Runtime
    checks load it). On random tiny weights AWQ's gain is not measurable: benchmarks/bench_int4.py
    measures it on SmolLM2."""
    art = store.artifacts("llama", phm, fp16=fp16, int4=Int4Config(group=32, method="awq"))
    summary = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["int4"]
    assert summary["method"] == "awq" and summary["calib_prompts"] > 0
    trt = onnx.load(str(art / "decoder.trt.onnx"))
    muls = [n for n in trt.graph.node if n.op_type == "Mul" and any(i.endswith(".awq_inv") for i in n.input)]
    assert len(muls) == summary["awq_scaled_inputs"] > 0
    assert summary["awq_scaled_down"] == (2 if phm else 0)  # each swiglu PHMFFN's down input too


def test_down_scale_through_up_rows_is_exact():
    """A swiglu PHM MLP with up's core rows divided by s and down's core columns multiplied by s computes
    what it did: h = silu(gate)·up carries 1/s_c in its column (i, c) for every block i."""
    n, nb, d, f = 2, 2, 16, 24
    bases = basis_family(n, nb).double()
    gen = torch.Generator().manual_seed(5)
    gate, up = (torch.randn(f // n, nb, d // n, generator=gen, dtype=torch.float64) for _ in range(2))
    down = torch.randn(d // n, nb, f // n, generator=gen, dtype=torch.float64)
    s = torch.rand(f // n, generator=gen, dtype=torch.float64) + 0.5
    x = torch.randn(5, d, generator=gen, dtype=torch.float64)

    def mlp(up_cores, down_cores):
        h = torch.nn.functional.silu(phm_forward(x, gate, bases)) * phm_forward(x, up_cores, bases)
        return phm_forward(h, down_cores, bases)

    assert torch.allclose(mlp(up, down), mlp(up / s[:, None, None], down * s[None, None, :]), rtol=1e-12, atol=1e-12)
