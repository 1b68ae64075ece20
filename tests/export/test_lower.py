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


def test_int8_cores_are_left_to_the_reference(store):
    """INT8 cores keep their reference function in the ONNX Runtime graph (MatMulNBits' exact 8-bit
    path is slower than the fp32 MatMul on the CPU: docs/int4.md), which still equals the portable one."""
    from phm.export import Int8Config

    art = store.artifacts("llama", True, int8=Int8Config())
    graph = manifest(art)["graphs"]["decoder"]
    lowered = onnx.load(str(art / graph["ort_file"]))
    assert sum(n.domain == spec.DOMAIN for n in lowered.graph.node) == 2 and lowered.functions
    assert "MatMulNBits" not in [n.op_type for n in lowered.graph.node]
