"""Rewrite passes on small torch modules: exact pattern matches only, dense MatMuls untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import torch
from torch import nn

from phm.export.reference import attach_functions
from phm.export.rewrite import fuse_phm_ffn, fuse_phm_linear, phm_units
from phm.trainer import PHMLinear
from phm.trainer.hypercomplex import mixing_matrix


class Mixed(nn.Module):
    """A PHM projection, a dense Linear, and a look-alike whose mixed tensor is reused (no match)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.phm = PHMLinear(16, 24, n=2, num_bases=3)
        self.dense = nn.Linear(24, 16)
        self.register_buffer("mix", mixing_matrix(self.phm.bases))
        self.w = nn.Parameter(torch.randn(24, 8))

    def forward(self, x):  # x (T, 16)
        y = self.dense(self.phm(x))                      # (T, 16)
        z = torch.matmul(self.mix, y.reshape(-1, 2, 8))  # same chain shape as phm_forward …
        z2 = z.reshape(-1, 24)
        out = torch.matmul(z2, self.w).reshape(x.shape[0], -1)
        return out + z2.sum()                            # … but z2 escapes: not a PHM projection


def _export(module, x, path):
    torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "T"}, "y": {0: "T"}})
    return gs.import_onnx(onnx.load(str(path)))


def test_only_the_exact_phm_chain_is_rewritten(tmp_path):
    module, x = Mixed(), torch.randn(5, 16)
    graph = _export(module, x, tmp_path / "m.onnx")
    dense_matmuls = sum(n.op in ("MatMul", "Gemm") for n in graph.nodes)
    assert fuse_phm_linear(graph) == 1
    assert fuse_phm_ffn(graph) == 0
    units = phm_units(graph)
    assert [(u.op, u.projections[0][1:]) for u in units] == [("PHMLinear", (16, 24, 3))]
    assert sum(n.op in ("MatMul", "Gemm") for n in graph.nodes) == dense_matmuls - 2  # the PHM chain's two
    model = attach_functions(gs.export_onnx(graph))
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=1e-5)


class UnknownActivation(nn.Module):
    """PHM up → x·sigmoid(1.702x) (quick_gelu, not in the spec) → PHM down: two PHMLinear, no PHMFFN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.up, self.down = PHMLinear(16, 32), PHMLinear(32, 16)

    def forward(self, x):
        h = self.up(x)
        return self.down(h * torch.sigmoid(1.702 * h))


def test_unknown_activation_is_not_fused(tmp_path):
    graph = _export(UnknownActivation(), torch.randn(3, 16), tmp_path / "q.onnx")
    assert fuse_phm_linear(graph) == 2
    assert fuse_phm_ffn(graph) == 0
