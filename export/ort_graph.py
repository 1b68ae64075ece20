"""`ort_graph(model) -> ModelProto | None`: the graph ONNX Runtime runs, prepared once at export time.

The artifacts' `<kind>.onnx` is the portable graph: PHM nodes with their reference functions, what
polygraphy and any ONNX consumer can read. Run as it is, ONNX Runtime pays for the generic function
bodies and the traced shape arithmetic on every step, so the exporter also writes `<kind>.ort.onnx`:
PHM nodes lowered to specialised standard ops (lower.py; INT4 cores to ONNX Runtime's MatMulNBits)
and the shape arithmetic folded into
constants (lean.py; not on Q/DQ graphs, where the fold is untested). phm-run loads that file as it is
and rewrites nothing at start. Both passes read shapes only, never weight values, and every weight
initializer stays shared: with external data all graphs of a kind reference one copy.
"""

from __future__ import annotations

import onnx

from .lean import lean_graph
from .lower import lower_phm

__all__ = ["ORT_SUFFIX", "ort_graph"]

ORT_SUFFIX = ".ort.onnx"


def ort_graph(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A rewritten copy of `model` for ONNX Runtime, or None when neither pass changes it (then the
    portable file is the one to run)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    changed = lower_phm(out) > 0
    if not any(n.op_type == "DequantizeLinear" for n in out.graph.node):
        changed |= lean_graph(out) > 0
    return out if changed else None
