"""External data is written once: a graph whose initializers go to `model.onnx.data` has one copy of
each tensor there, which its ONNX Runtime file and its TensorRT twin both reference at the same offsets;
ONNX Runtime still loads and runs it, and the runtime checks every file's size against the manifest."""

from __future__ import annotations

import json

import numpy as np

from onnxkit import external_spans


def test_external_data_holds_each_tensor_once_shared_by_both_graphs(inputs, tmp_path):
    from phm.export import ExportConfig, export_model

    art = export_model(inputs.phm, ExportConfig(external_data_mb=0), tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["graphs"]["decoder"]["external_data"] == "model.onnx.data"
    ort, trt = external_spans(art / "decoder.onnx"), external_spans(art / "decoder.trt.onnx")
    assert ort and ort == trt  # the same tensors at the same offsets
    spans = sorted(ort.values())
    assert all(a_off + a_len <= b_off for (a_off, a_len), (b_off, _) in zip(spans, spans[1:]))  # no overlap
    size = (art / "model.onnx.data").stat().st_size
    tensors = sum(length for _, length in spans)
    assert size == spans[-1][0] + spans[-1][1]  # nothing after the last tensor: no second copy
    assert size < 1.1 * tensors, (size, tensors)  # (alignment padding only)

    import onnxruntime as ort_rt

    from phm.runtime.ort_backend import OrtBackend

    session = ort_rt.InferenceSession(str(art / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()
    backend = OrtBackend.from_artifacts(art)
    logits = backend.prefill(np.array([[5, 6, 7]], dtype=np.int64), np.ones((1, 3), dtype=np.int64))
    assert np.isfinite(logits).all()
