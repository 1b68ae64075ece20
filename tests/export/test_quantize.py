"""quantize.py on hand-built graphs: Q/DQ semantics against numpy, weight channel axis, smoothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from phm.export.calibrate import per_channel_weight_scales, quantize_symmetric
from phm.export.quantize import choose_scales, collect_activations, ort_options, plan_int8, quantize_graph


def _graph(w: np.ndarray, gemm: bool = False) -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=["T", w.shape[0]])
    y = gs.Variable("y", dtype=np.float32, shape=["T", w.shape[1]])
    if gemm:  # GPT-2 Conv1D style: B stored transposed (N, K), transB = 1
        node = gs.Node("Gemm", "lin", attrs={"transB": 1}, inputs=[x, gs.Constant("w", np.ascontiguousarray(w.T))],
                       outputs=[y])
    else:
        node = gs.Node("MatMul", "lin", inputs=[x, gs.Constant("w", w)], outputs=[y])
    return gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)


def _run(graph: gs.Graph, x: np.ndarray) -> np.ndarray:
    model = gs.export_onnx(graph)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), ort_options(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _data(seed=0, outlier=40.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    x[:, 3] *= outlier  # one outlier channel, as LLM activations have
    w = (rng.standard_normal((16, 8)) / 4).astype(np.float32)
    return x, w


@pytest.mark.parametrize("gemm", [False, True], ids=["matmul", "gemm"])
@pytest.mark.parametrize("smooth", [False, True])
def test_w8a8_graph_equals_numpy_fake_quant(gemm, smooth):
    x, w = _data()
    graph = _graph(w, gemm)
    plan = plan_int8(graph)
    assert [(lin.role, lin.mode) for lin in plan.linears] == [("lm_head", "float")]  # its output is the graph's
    plan.linears[0].mode = "w8a8"
    acts = collect_activations(gs.export_onnx(graph), ["x"], [{"x": x}], {})
    scales = choose_scales(plan, acts, "minmax", smooth=smooth)
    act = scales["x"]
    assert (act.smooth is not None) == smooth  # the outlier channel makes smoothing win the α search
    quantize_graph(graph, plan, scales, {})
    got = _run(graph, x)
    s = act.smooth if smooth else np.ones(16, np.float32)
    xs, ws = x / s, w * s[:, None]
    assert act.amax == pytest.approx(np.abs(xs).max())  # minmax of the smoothed input
    sx, sw = np.float32(act.amax / 127), per_channel_weight_scales(ws, axis=1)
    ref = (quantize_symmetric(xs, sx).astype(np.float32) * sx) @ (quantize_symmetric(ws, sw) * sw)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    exact = x @ w
    assert np.abs(got - exact).max() < 0.05 * np.abs(exact).max()


def test_smoothing_cuts_the_error_on_outlier_channels():
    x, w = _data(1, outlier=60.0)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "w8a8"
    acts = {"x": x}
    plain, smoothed = (choose_scales(plan, acts, "percentile", smooth=s)["x"] for s in (False, True))
    assert smoothed.alpha > 0 and smoothed.error < 0.5 * plain.error


def test_weight_only_keeps_activations_float():
    x, w = _data(2)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "weight_only"
    quantize_graph(graph, plan, {}, {})
    assert [n.op for n in graph.nodes] == ["DequantizeLinear", "MatMul"]
    sw = per_channel_weight_scales(w, axis=1)
    np.testing.assert_allclose(_run(graph, x), x @ (quantize_symmetric(w, sw) * sw), rtol=1e-5, atol=1e-4)
