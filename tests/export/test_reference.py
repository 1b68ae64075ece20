"""ORT reference functions of PHMLinear/PHMFFN: golden vectors, every activation and MLP type."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from golden.loader import golden_cases
from onnx import TensorProto, helper, numpy_helper

from phm.export.reference import attach_functions, strip_functions
from phm.trainer.hypercomplex import basis_family, cores_from_stack, phm_forward
from phm.trt_plugins import spec

TORCH_ACTS = {"none": lambda v: v, "silu": F.silu, "gelu": F.gelu,
              "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "relu": F.relu}
NP = {torch.float32: (np.float32, TensorProto.FLOAT), torch.float16: (np.float16, TensorProto.FLOAT16)}


def _single_node(op: spec.OpSpec, inputs: dict, attrs: dict, x_dtype=torch.float32) -> onnx.ModelProto:
    """A one-node model: x is the graph input, every other spec input an initializer."""
    np_dtype, onnx_dtype = NP[x_dtype]
    x = inputs["x"]
    inits = [numpy_helper.from_array(np.asarray(inputs[name]), name) for name in op.input_names[1:]]
    node = helper.make_node(op.op_type, list(op.input_names), ["y"], domain=spec.DOMAIN,
                            **{**op.defaults(), **attrs})
    d_out = attrs.pop("_d_out", None)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx_dtype, ["T", x.shape[-1]])],
                              [helper.make_tensor_value_info("y", onnx_dtype, ["T", d_out])], inits)
    return attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("case", golden_cases(), ids=lambda c: c["name"])
def test_phm_linear_function_matches_golden(case):
    n, b = case["n"], case["num_bases"]
    bias = case["bias_tensor"]
    cores = cores_from_stack(case["cores"]).float().numpy()
    inputs = {"x": case["x"].float().numpy(), "cores": cores, "scales": np.ones(1, np.float32),
              "bias": bias.float().numpy() if bias is not None else np.full(1, 7.0, np.float32)}  # placeholder unread
    attrs = dict(n=n, num_bases=b, bases=spec.bases_to_field(case["bases"]), has_bias=int(bias is not None),
                 plugin_version=spec.PLUGIN_VERSION, plugin_namespace=spec.PLUGIN_NAMESPACE, _d_out=case["d_out"])
    model = _single_node(spec.PHM_LINEAR, inputs, attrs)
    y = _run(model, inputs["x"])
    ref = case["y"].double().numpy()
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()  # fp32 tolerance of the golden set


def _random_projection(d_in, d_out, n, b, gen, bias=True):
    cores = torch.randn(d_out // n, b, d_in // n, generator=gen) / d_in ** 0.5
    return cores, (torch.randn(d_out, generator=gen) if bias else None)


@pytest.mark.parametrize("activation", spec.ACTIVATIONS)
def test_phm_linear_function_activation(activation):
    gen = torch.Generator().manual_seed(1)
    bases = basis_family(2, 3)
    cores, bias = _random_projection(24, 16, 2, 3, gen)
    x = torch.randn(5, 24, generator=gen)
    inputs = {"x": x.numpy(), "cores": cores.numpy(), "scales": np.ones(1, np.float32), "bias": bias.numpy()}
    attrs = dict(n=2, num_bases=3, bases=spec.bases_to_field(bases), has_bias=1, activation=activation, _d_out=16)
    y = _run(_single_node(spec.PHM_LINEAR, inputs, attrs), inputs["x"])
    ref = TORCH_ACTS[activation](phm_forward(x, cores, bases, bias))
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5)


FFN_CASES = [(t, a, bias, n) for t in spec.MLP_TYPES for a in spec.ACTIVATIONS if a != "none"
             for bias in (False, True) for n in (2, 4)]


@pytest.mark.parametrize("mlp_type,activation,has_bias,n", FFN_CASES)
def test_phm_ffn_function(mlp_type, activation, has_bias, n):
    gen = torch.Generator().manual_seed(2)
    d, f, b = 16, 32, 2
    bases = basis_family(n, b)
    gate, up, down = (_random_projection(d, f, n, b, gen, has_bias), _random_projection(d, f, n, b, gen, has_bias),
                      _random_projection(f, d, n, b, gen, has_bias))
    x = torch.randn(2, 3, d, generator=gen)
    act = TORCH_ACTS[activation]

    def proj(v, p):
        return phm_forward(v, p[0], bases, p[1])

    hidden = act(proj(x, gate)) * proj(x, up) if mlp_type == "swiglu" else act(proj(x, up))
    ref = proj(hidden, down)
    ph = np.zeros(1, np.float32)
    inputs = {"x": x.numpy(), "gate_scales": ph, "up_scales": ph, "down_scales": ph}
    for role, (cores, bias) in (("gate", gate), ("up", up), ("down", down)):
        plain_gate = mlp_type == "plain" and role == "gate"
        inputs[f"{role}_cores"] = ph if plain_gate else cores.numpy()
        inputs[f"{role}_bias"] = ph if plain_gate or bias is None else bias.numpy()
    attrs = dict(n=n, num_bases=b, bases=spec.bases_to_field(bases), has_bias=int(has_bias), activation=activation,
                 mlp_type=mlp_type, _d_out=d)
    model = _single_node(spec.PHM_FFN, inputs, attrs)
    model.graph.input[0].type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_param="B"))
    y = _run(model, inputs["x"])
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_phm_linear_function_fp16():
    gen = torch.Generator().manual_seed(3)
    bases = basis_family(2, 2)
    cores, bias = _random_projection(32, 48, 2, 2, gen)
    x = torch.randn(7, 32, generator=gen)
    inputs = {"x": x.half().numpy(), "cores": cores.half().numpy(), "scales": np.ones(1, np.float32),
              "bias": bias.half().numpy()}
    attrs = dict(n=2, num_bases=2, bases=spec.bases_to_field(bases), has_bias=1, _d_out=48)
    y = _run(_single_node(spec.PHM_LINEAR, inputs, attrs, torch.float16), inputs["x"])
    ref = phm_forward(x.double(), cores.half().double(), bases.double(), bias.half().double())
    assert y.dtype == np.float16
    assert np.abs(y.astype(np.float64) - ref.numpy()).max() <= 1e-2 * ref.abs().max().item()  # golden fp16 bound


def test_trt_twin_has_no_functions_but_same_graph():
    model = _single_node(spec.PHM_LINEAR, {"x": np.zeros((1, 4), np.float32), "cores": np.zeros((2, 1, 2), np.float32),
                                           "scales": np.ones(1, np.float32), "bias": np.zeros(1, np.float32)},
                         dict(n=2, num_bases=1, bases=[1.0, 0.0, 0.0, 1.0], _d_out=4))
    trt = strip_functions(model)
    assert len(model.functions) == 2 and len(trt.functions) == 0
    assert trt.graph == model.graph
    assert {(o.domain, o.version) for o in trt.opset_import} >= {("", 17), (spec.DOMAIN, 1)}
