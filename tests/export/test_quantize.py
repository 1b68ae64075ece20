"""quantize.py on hand-built graphs: Q/DQ semantics against numpy, weight channel axis, rotation, smoothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from phm.export import rotate
from phm.export.calibrate import per_channel_weight_scales, quantize_symmetric
from phm.export.quantize import _Builder, choose_scales, ort_options, plan_int8, quantize_graph

from ortloop import collect_activations


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
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
@pytest.mark.parametrize("rotated", [False, True], ids=["", "rotated"])
def test_w8a8_graph_equals_numpy_fake_quant(gemm, smooth, rotated):
    x, w = _data()
    graph = _graph(w, gemm)
    plan = plan_int8(graph)
    assert [(lin.role, lin.mode) for lin in plan.linears] == [("lm_head", "float")]  # its output is the graph's
    plan.linears[0].mode = "w8a8"
    acts = collect_activations(gs.export_onnx(graph), ["x"], [{"x": x}], {})
    scales = choose_scales(plan, acts, "minmax", smooth=smooth, rotate_inputs=rotated)
    act = scales["x"]
    assert act.rotated == rotated
    if not rotated:  # the outlier channel makes smoothing win the α search (rotation spreads it first)
        assert (act.smooth is not None) == smooth
    quantize_graph(graph, plan, scales, {})
    got = _run(graph, x)
    q = rotate.matrix(16) if rotated else np.eye(16)
    s = act.smooth if act.smooth is not None else np.ones(16, np.float32)
    xs, ws = (x @ q).astype(np.float32) / s, (q.T @ w).astype(np.float32) * s[:, None]
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
    plain, smoothed = (choose_scales(plan, acts, "percentile", smooth=s, rotate_inputs=False)["x"]
                       for s in (False, True))
    assert smoothed.alpha > 0 and smoothed.error < 0.5 * plain.error


def test_rotation_cuts_the_error_on_outlier_channels():
    """One outlier channel (x60): a per-tensor scale set by it leaves the other 63 channels a few
    levels; rotated, the outlier's energy is spread over all 64 channels and every channel gets
    fine steps. No smoothing on either side, so the rotation alone is measured."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1024, 64)).astype(np.float32)
    x[:, 11] *= 60.0
    w = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "w8a8"
    plain, rotated = (choose_scales(plan, {"x": x}, "percentile", smooth=False, rotate_inputs=r)["x"]
                      for r in (False, True))
    assert rotated.rotated and rotated.error < 0.3 * plain.error


@pytest.mark.parametrize("k", [1, 7, 16, 96, 384, 576, 1024])
def test_rotation_is_orthogonal_and_the_fast_form_matches(k):
    """Q = R_m ⊗ H_p is orthogonal, and Rᵀ·X·H on (…, m, p) (what the graph computes) equals x·Q."""
    q = rotate.matrix(k)
    np.testing.assert_allclose(q @ q.T, np.eye(k), atol=1e-10)
    r, h = rotate.factors(k)
    assert r.shape[0] * h.shape[0] == k and h.shape[0] == min(k & -k, rotate.MAX_HADAMARD)
    x = np.random.default_rng(k).standard_normal((2, 3, k)).astype(np.float32)
    np.testing.assert_allclose(rotate.apply(x), x @ q, rtol=1e-4, atol=1e-4)


def test_rotation_subgraph_keeps_any_rank():
    """The graph's x·Q on a (B, T, K) input (decoder activations) equals numpy's, shape kept."""
    k = 96
    x = gs.Variable("x", dtype=np.float32, shape=["B", "T", k])
    graph = gs.Graph(inputs=[x], opset=17)
    builder = _Builder(graph)  # the node builder quantize_graph passes to rotate.graph_nodes
    y = rotate.graph_nodes(builder.node, x, k, "rot", builder.rotations)
    y.shape = ["B", "T", k]
    graph.outputs = [y]
    xv = np.random.default_rng(0).standard_normal((2, 5, k)).astype(np.float32)
    got = _run(graph, xv)
    assert got.shape == xv.shape
    np.testing.assert_allclose(got, xv @ rotate.matrix(k), rtol=1e-4, atol=1e-4)


def test_smoothing_is_chosen_on_held_out_rows():
    """α is scored on calibration rows it was not fitted to: outlier channels that move between the
    first and second half of the rows (the attention output's behaviour on SmolLM2) make the
    smoothing fitted on the first half hurt the second, so no smoothing is chosen; a stable outlier
    channel (the test above) keeps it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    x[:256, 3] *= 40.0   # an outlier channel in the first prompts ...
    x[256:, 9] *= 40.0   # ... and another one in the rest
    w = (rng.standard_normal((16, 8)) / 4).astype(np.float32)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "w8a8"
    act = choose_scales(plan, {"x": x}, "percentile", rotate_inputs=False)["x"]
    assert act.alpha == 0 and act.smooth is None
    stable = x.copy()
    stable[:, 9] /= 40.0
    stable[256:, 3] *= 40.0
    assert choose_scales(plan, {"x": stable}, "percentile", rotate_inputs=False)["x"].alpha > 0


def test_mse_clips_a_lone_spike():
    """--calib-method mse: activations in [-1, 1] and one value of 4 (a lone spike). A minmax scale
    spends 3/4 of its levels on the spike; the output-error clip cuts near the bulk, paying the
    spike's clipping error for 4× finer steps everywhere else, and the products come out closer to
    float overall (max itself is one of its candidates, so it is never worse on these rows)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, size=(2048, 64)).astype(np.float32)
    x[7, 5] = 4.0
    w = (rng.standard_normal((64, 8)) / 8).astype(np.float32)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "w8a8"
    sw = per_channel_weight_scales(w, axis=1)
    wq = quantize_symmetric(w, sw) * sw
    errors = {}
    for method in ("minmax", "mse"):
        act = choose_scales(plan, {"x": x}, method, smooth=False, rotate_inputs=False)["x"]
        sx = np.float32(act.amax / 127)
        errors[method] = np.linalg.norm((quantize_symmetric(x, sx).astype(np.float32) * sx) @ wq - x @ w)
        if method == "mse":
            assert act.amax < 0.5 * np.abs(x).max()
    assert errors["mse"] < 0.8 * errors["minmax"]


def test_weight_only_keeps_activations_float():
    x, w = _data(2)
    graph = _graph(w)
    plan = plan_int8(graph)
    plan.linears[0].mode = "weight_only"
    quantize_graph(graph, plan, {}, {})
    assert [n.op for n in graph.nodes] == ["DequantizeLinear", "MatMul"]
    sw = per_channel_weight_scales(w, axis=1)
    np.testing.assert_allclose(_run(graph, x), x @ (quantize_symmetric(w, sw) * sw), rtol=1e-5, atol=1e-4)
