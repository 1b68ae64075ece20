"""The golden INT4 set through ONNX Runtime: the reference functions (the portable graph's PHM node)
and the lowered graph (MatMulNBits over the same bytes), fp16 activations as INT4 cores take."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from golden.loader import golden_cases
from onnx import TensorProto, helper, numpy_helper

from phm.export.lower import lower_phm
from phm.export.reference import attach_functions
from phm.trt_plugins import spec

CASES = golden_cases()


def _model(case, opset: int = 21) -> onnx.ModelProto:
    """One PHMLinear node with the case's INT4 cores as initializers, x (T, d_in) fp16 → y fp16."""
    bias = case["bias_tensor"]
    inits = [numpy_helper.from_array(case["int4_cores"].numpy(), "cores"),
             numpy_helper.from_array(case["int4_scales"].numpy(), "scales"),
             numpy_helper.from_array(bias.half().numpy() if bias is not None else np.zeros(1, np.float16), "bias")]
    attrs = {**spec.PHM_LINEAR.defaults(), "n": case["n"], "num_bases": case["num_bases"],
             "bases": spec.bases_to_field(case["bases"]), "has_bias": int(bias is not None),
             "weight_format": "int4", "group_size": case["int4_group"]}
    node = helper.make_node("PHMLinear", ["x", "cores", "scales", "bias"], ["y"], domain=spec.DOMAIN,
                            name="phm", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["T", case["d_in"]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["T", case["d_out"]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(spec.DOMAIN, 1)])
    model.ir_version = 10
    return attach_functions(model)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].astype(np.float64)


def _err(y: np.ndarray, ref) -> float:
    ref = ref.double().numpy()
    return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_int4_reference_function_matches_golden(case, opset):
    """The reference body unpacks the nibbles and scales the groups as the golden set defines."""
    y = _run(_model(case, opset), case["x"].half().numpy())
    assert _err(y, case["y_int4"]) <= 5e-3


@pytest.mark.parametrize("case", [c for c in CASES if c["int4_group"] == 16], ids=lambda c: c["name"])
def test_int4_lowered_matches_golden(case):
    """Lowered (opset 21): MatMulNBits over a uint8 view of the same bytes, nibbles flipped by XOR."""
    model = _model(case)
    assert lower_phm(model) == 1
    assert "MatMulNBits" in [n.op_type for n in model.graph.node]
    y = _run(model, case["x"].half().numpy())
    assert _err(y, case["y_int4"]) <= 5e-3


def test_int4_lowering_needs_its_kernel_constraints():
    """Groups MatMulNBits cannot take (below 16), and opset-17 graphs (no BitwiseXor), keep the node."""
    small = next(c for c in CASES if c["int4_group"] < 16)
    assert lower_phm(_model(small)) == 0
    big = next(c for c in CASES if c["int4_group"] == 16)
    assert lower_phm(_model(big, 17)) == 0
