"""--fp16: fp16 graphs that ONNX Runtime (CPU) runs, close to the fp32 torch model; statistics stay fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ortloop import manifest, session
from polygraphy.comparator import RunResults
from polygraphy.json import load_json

# Stated fp16 tolerance against the fp32 PyTorch reference (docs/export.md): elementwise
# |ort_fp16 - torch_fp32| ≤ ATOL + RTOL·|torch_fp32|. Measured on the tiny models: ≤ 3e-4 on
# logits, ≤ 3e-3 on BERT's (layer-normalised, O(1)) hidden states.
ATOL, RTOL = 5e-3, 2e-2


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "qwen2_5_vl"])
def test_fp16_graph_runs_in_ort_close_to_fp32_torch(store, arch):
    art = store.artifacts(arch, True, fp16=True)
    m = manifest(art)
    assert m["precision"] == "fp16"
    for kind, g in m["graphs"].items():
        floats = [io["dtype"] for io in g["io"]["inputs"] + g["io"]["outputs"] if io["dtype"].startswith("float")]
        assert floats and set(floats) == {"float16"}, kind
        model = onnx.load(str(art / g["file"]))
        cores = [i for i in model.graph.initializer if i.name.endswith(".cores")]
        assert all(c.data_type == onnx.TensorProto.FLOAT16 for c in cores)
        feeds = load_json(str(art / g["inputs"]))
        ref = RunResults.load(str(art / g["ref"]))
        expected = list(ref.values())[0]
        sess = session(art / g["file"])
        for feed, want in zip(feeds, expected):
            got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feed))))
            for name, value in want.items():
                value = np.asarray(value, np.float64)
                diff = np.abs(got[name].astype(np.float64) - value)
                assert (diff <= ATOL + RTOL * np.abs(value)).all(), (kind, name, float(diff.max()))


def test_fp16_keeps_softmax_and_norm_statistics_in_fp32(store):
    """Eager attention runs Softmax on fp32 scores; RMSNorm's mean of squares runs in fp32."""
    art = store.artifacts("llama", True, fp16=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(art / "decoder.onnx")))  # functions give PHM types
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    for op in ("Softmax", "ReduceMean"):
        nodes = [n for n in model.graph.node if n.op_type == op]
        assert nodes and {types[n.input[0]] for n in nodes} == {onnx.TensorProto.FLOAT}, op
    matmul_types = {types.get(n.input[0]) for n in model.graph.node if n.op_type == "MatMul"}
    assert onnx.TensorProto.FLOAT16 in matmul_types  # the projections themselves run in fp16
