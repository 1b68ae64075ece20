"""ONNX file helpers shared by tests/export and tests/faults (tests/ is on sys.path: tests/conftest.py)."""

from __future__ import annotations

import onnx


def external_spans(path) -> dict:
    """{initializer name: (offset, length)} of a graph's external tensors (the data file is not read)."""
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            meta = {e.key: e.value for e in t.external_data}
            out[t.name] = (int(meta.get("offset", 0)), int(meta["length"]))
    return out
