"""lower_phm: every float PHM node becomes specialised standard ops, outputs equal the reference functions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ortloop import manifest

from phm.export.lower import lower_phm
from phm.trt_plugins import spec

CASES = [("llama", "decoder"), ("gpt2", "decoder"), ("qwen2", "decoder"), ("qwen2_5_vl", "vision"),
         ("qwen2_vl", "vision"), ("qwen2_5_vl", "decoder"), ("bert", "encoder")]


def _run(model_or_path, feeds):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("arch,kind", CASES)
def test_lowered_graph_equals_reference(store, arch, kind):
    from polygraphy.json import load_json

    art = store.artifacts(arch, True)
    path = art / f"{kind}.onnx"
    model = onnx.load(str(path))
    phm_nodes = sum(n.domain == spec.DOMAIN for n in model.graph.node)
    assert phm_nodes > 0
    assert lower_phm(model) == phm_nodes
    assert not any(n.domain == spec.DOMAIN for n in model.graph.node) and not model.functions
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"LabelEncoder", "If", "CastLike"}  # the generic body's selection work is gone
    for feeds in load_json(str(art / manifest(art)["graphs"][kind]["inputs"])):  # prefill and decode feeds
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        for got, want in zip(_run(model, feeds), _run(path, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lowered_fp16_graph_equals_reference(store):
    from polygraphy.json import load_json

    art = store.artifacts("llama", True, fp16=True)
    model = onnx.load(str(art / "decoder.onnx"))
    assert lower_phm(model) > 0
    for feeds in load_json(str(art / "decoder.inputs.json")):
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        for got, want in zip(_run(model, feeds), _run(art / "decoder.onnx", feeds)):
            assert got.dtype == want.dtype == np.float16
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("phm", [True, False], ids=["phm", "dense"])
def test_int8_ort_file_runs_integer_gemms(store, phm):
    """--int8's ONNX Runtime file: INT8 PHM cores lowered (exact float cores via DequantizeLinear into
    a MatMul, no reference function left), the 8 W8A8 attention linears as MatMulIntegerToFloat, and
    under phm-run's session options it computes what the portable Q/DQ graph computes (test_lower_int8:
    the integer GEMM to fp32 rounding)."""
    from polygraphy.json import load_json

    from phm.export import Int8Config
    from phm.runtime.ort_backend import _session

    art = store.artifacts("llama", phm, int8=Int8Config())
    graph = manifest(art)["graphs"]["decoder"]
    lowered = onnx.load(str(art / graph["ort_file"]))
    ops = [n.op_type for n in lowered.graph.node]
    assert not any(n.domain == spec.DOMAIN for n in lowered.graph.node) and not (phm and lowered.functions)
    assert ops.count("MatMulIntegerToFloat") == 8 and "MatMulNBits" not in ops
    assert ops.count("DequantizeLinear") == 6  # 2 layers x gate/up/down: PHM cores or dense weight-only
    fast = _session(ort, art / graph["ort_file"], ["CPUExecutionProvider"], 1, "int8")
    for feeds in load_json(str(art / graph["inputs"])):
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        got = fast.run(["logits"], feeds)[0]
        want = _run(art / "decoder.onnx", feeds)[0]
        cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cos.min() > 0.9999, cos.min()
        # not bit-equal: fp32 summation order moves a few activations across a rounding step of the
        # next QuantizeLinear (one INT8 step each), and PHM's portable cores compute in an fp16 island
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=5e-3 * np.abs(want).max())
