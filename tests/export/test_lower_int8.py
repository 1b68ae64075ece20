"""lower_w8a8: W8A8 Q/DQ MatMuls become QuantizeLinear(uint8) → MatMulIntegerToFloat with the same numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from phm.export.lower_int8 import lower_w8a8

K, N, N_KV = 64, 48, 16


def _graph(rng, shared_reader: bool = True) -> onnx.ModelProto:
    """x → Q/DQ (per tensor, int8) read by three W8A8 MatMuls (q/k/v-like, as the exporter shares
    one pair), a weight-only DQ → MatMul beside them, and a Reshape in front as the rotation leaves it."""
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(np.array([0, 0, K], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
             helper.make_node("QuantizeLinear", ["xr", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"])]
    outputs = []
    for name, n, w8a8 in (("q", N, True), ("k", N_KV, True), ("v", N_KV, shared_reader), ("mlp", N, False)):
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (K, n)).astype(np.int8), f"{name}.w"),
                  numpy_helper.from_array((rng.random(n) * 0.01 + 1e-3).astype(np.float32), f"{name}.ws"),
                  numpy_helper.from_array(np.zeros(n, np.int8), f"{name}.wz")]
        nodes += [helper.make_node("DequantizeLinear", [f"{name}.w", f"{name}.ws", f"{name}.wz"], [f"{name}.wd"], axis=1),
                  helper.make_node("MatMul", ["xd" if w8a8 else "xr", f"{name}.wd"], [f"{name}.y"], name=name)]
        outputs.append(helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, [2, 3, n]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, K])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("scale", [1.0, 6.0], ids=["in-range", "saturating"])
def test_lowered_w8a8_equals_qdq_graph(scale):
    """One uint8 QuantizeLinear for the three W8A8 readers, the weight-only MatMul untouched, and
    every output equal to the Q/DQ graph's to fp32 rounding, saturated activations included
    (x ~ N(0, 6²) against a scale of 0.02: most values lie past the ±127 steps)."""
    rng = np.random.default_rng(0)
    model = _graph(rng)
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    assert lower_w8a8(lowered) == 3
    onnx.checker.check_model(lowered)
    ops = [n.op_type for n in lowered.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 3 and ops.count("QuantizeLinear") == 1
    assert ops.count("DequantizeLinear") == 1 and ops.count("MatMul") == 1  # weight-only stays
    q = next(n for n in lowered.graph.node if n.op_type == "QuantizeLinear")
    zp = next(i for i in lowered.graph.initializer if i.name == q.input[2])
    assert zp.data_type == TensorProto.UINT8 and numpy_helper.to_array(zp) == 128
    x = (rng.standard_normal((2, 3, K)) * scale).astype(np.float32)
    if scale > 1:
        assert (np.abs(x) / 0.02 > 127).mean() > 0.05
    for got, want in zip(_run(lowered, x), _run(model, x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_nothing_to_lower_leaves_the_graph():
    """A graph without the W8A8 pattern (only a weight-only DQ → MatMul) is not changed."""
    model = _graph(np.random.default_rng(1))
    kept = [n for n in model.graph.node if n.op_type != "MatMul" or n.name == "mlp"]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.output[:3]
    before = model.SerializeToString()
    assert lower_w8a8(model) == 0
    assert model.SerializeToString() == before


def test_plain_gemm_with_bias_is_lowered_and_transposed_is_not():
    """GPT-2's Conv1D: Gemm(DQ(Q(x)), DQ(W), bias) becomes MatMulIntegerToFloat with the bias as
    its bias input; a Gemm with transB (weights stored (N, K)) is left to the Q/DQ graph."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(rng.integers(-127, 128, (K, N)).astype(np.int8), "w"),
             numpy_helper.from_array(rng.integers(-127, 128, (N, K)).astype(np.int8), "wt"),
             numpy_helper.from_array((rng.random(N) * 0.01 + 1e-3).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("DequantizeLinear", ["wt", "ws", "wz"], ["wtd"], axis=0),
             helper.make_node("Gemm", ["xd", "wd", "bias"], ["y"], alpha=1.0, beta=1.0),
             helper.make_node("Gemm", ["xd", "wtd", "bias"], ["yt"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [5, N]) for o in ("y", "yt")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    assert lower_w8a8(lowered) == 1
    ops = [n.op_type for n in lowered.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("Gemm") == 1
    mitf = next(n for n in lowered.graph.node if n.op_type == "MatMulIntegerToFloat")
    assert mitf.input[6] == "bias"
    x = rng.standard_normal((5, K)).astype(np.float32)
    for got, want in zip(_run(lowered, x), _run(model, x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
