"""ORT reference with INT8 cores (weight_format "int8"): the golden vectors and torch's dequantised math."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from golden.loader import golden_cases
from test_reference import TORCH_ACTS, _run, _single_node

from phm.trainer.hypercomplex import basis_family, cores_from_stack, phm_forward
from phm.trt_plugins import spec
from phm.trt_plugins.quant import dequantize_cores_int8, quantize_cores_int8


def _attrs(n, b, bases, has_bias, **extra):
    return dict(n=n, num_bases=b, bases=spec.bases_to_field(bases), has_bias=has_bias, weight_format="int8",
                plugin_version=spec.PLUGIN_VERSION, plugin_namespace=spec.PLUGIN_NAMESPACE, **extra)


@pytest.mark.parametrize("case", golden_cases(), ids=lambda c: c["name"])
def test_int8_phm_linear_matches_dequantised_golden(case):
    """fp16 activations (what INT8 cores take): ORT == torch phm_forward on the dequantised cores,
    and both stay near the golden fp32 output (the INT8 rounding error is the only difference)."""
    n, b, bias = case["n"], case["num_bases"], case["bias_tensor"]
    cores = cores_from_stack(case["cores"]).float()
    q, s = quantize_cores_int8(cores)
    x16 = case["x"].half()
    inputs = {"x": x16.numpy(), "cores": q.numpy(), "scales": s.numpy(),
              "bias": bias.half().numpy() if bias is not None else np.zeros(1, np.float16)}
    model = _single_node(spec.PHM_LINEAR, inputs, _attrs(n, b, case["bases"], int(bias is not None),
                                                         _d_out=case["d_out"]), x_dtype=torch.float16)
    y = _run(model, inputs["x"]).astype(np.float64)
    deq = phm_forward(x16.double(), dequantize_cores_int8(q, s).double(), case["bases"].double(),
                      None if bias is None else bias.half().double()).numpy()
    scale = np.abs(deq).max()
    assert np.abs(y - deq).max() <= 2e-3 * scale            # fp16 rounding of the reference body
    golden = case["y"].double().numpy()
    assert np.abs(y - golden).max() <= 3e-2 * np.abs(golden).max()  # + INT8 cores, + fp16 x
    assert not np.allclose(deq, golden, rtol=0, atol=1e-7 * scale)   # the cores really were rounded


@pytest.mark.parametrize("mlp_type", spec.MLP_TYPES)
def test_int8_phm_ffn_matches_torch(mlp_type):
    gen = torch.Generator().manual_seed(3)
    bases = basis_family(2, 2)
    d, f = 16, 24
    projs = {r: torch.randn(o // 2, 2, i // 2, generator=gen) / i ** 0.5
             for r, i, o in (("gate", d, f), ("up", d, f), ("down", f, d))}
    quant = {r: quantize_cores_int8(c) for r, c in projs.items()}
    x = torch.randn(4, 3, d, generator=gen).half()
    inputs = {"x": x.numpy()}
    for role, (q, s) in quant.items():
        if role == "gate" and mlp_type == "plain":
            q, s = torch.zeros(1, dtype=torch.int8), torch.ones(1)
        inputs.update({f"{role}_cores": q.numpy(), f"{role}_scales": s.numpy(), f"{role}_bias": np.zeros(1, np.float16)})
    model = _single_node(spec.PHM_FFN, inputs, _attrs(2, 2, bases, 0, activation="silu", mlp_type=mlp_type,
                                                      _d_out=d), x_dtype=torch.float16)
    model.graph.input[0].type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_param="B"))
    y = _run(model, inputs["x"]).astype(np.float64)
    deq = {r: dequantize_cores_int8(q, s).double() for r, (q, s) in quant.items()}
    xd = x.double()
    up = phm_forward(xd, deq["up"], bases.double())
    h = TORCH_ACTS["silu"](phm_forward(xd, deq["gate"], bases.double())) * up if mlp_type == "swiglu" \
        else TORCH_ACTS["silu"](up)
    ref = phm_forward(h, deq["down"], bases.double()).numpy()
    assert np.abs(y - ref).max() <= 5e-3 * np.abs(ref).max()
