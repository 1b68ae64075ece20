"""`ort_graph(model, attention) -> (ModelProto | None, fusion record)`: the graph ONNX Runtime runs, prepared once at export time.

The artifacts' `<kind>.onnx` is the portable graph: PHM nodes with their reference functions, what
polygraphy and any ONNX consumer can read. Run as it is, ONNX Runtime pays for the generic function
bodies and the traced shape arithmetic on every step, so the exporter also writes `<kind>.ort.onnx`:
PHM nodes lowered to specialised standard ops (lower.py; INT4 cores to ONNX Runtime's MatMulNBits),
`--int8`'s W8A8 linears to ONNX Runtime's integer GEMM (lower_int8.py), and the shape arithmetic folded into
constants (lean.py; not on Q/DQ graphs, where the fold is untested), and a llama-family decoder's
attention and residual norms as ONNX Runtime's fused ops (ort_fuse.py: GroupQueryAttention with a
shared KV buffer, SkipSimplifiedLayerNormalization). phm-run loads that file as it is and rewrites
nothing at start. The passes read shapes only, never weight values, and every weight initializer
stays shared: with external data all graphs of a kind reference one copy.
"""

from __future__ import annotations

import onnx

from .lean import lean_graph
from .lower import lower_phm
from .lower_int8 import lower_w8a8
from .ort_fuse import AttentionSpec, fuse_decoder

__all__ = ["ORT_SUFFIX", "ort_graph"]

ORT_SUFFIX = ".ort.onnx"


def ort_graph(model: onnx.ModelProto, attention: AttentionSpec | str | None = None, int4_accuracy: int = 1
              ) -> tuple[onnx.ModelProto | None, dict | None]:
    """A rewritten copy of `model` for ONNX Runtime, or None when no pass changes it (then the
    portable file is the one to run), and the attention fusion's manifest record (None: not a
    decoder). `attention`: a decoder's AttentionSpec, or why its attention keeps the traced graph;
    `int4_accuracy`: the MatMulNBits accuracy level of lowered INT4 cores."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    changed = lower_phm(out, int4_accuracy) > 0
    changed |= lower_w8a8(out) > 0
    if not any(n.op_type == "DequantizeLinear" for n in out.graph.node):
        changed |= lean_graph(out) > 0
    fusion = None if attention is None else fuse_decoder(out, attention)
    changed |= fusion is not None and fusion["attention"] != "traced"
    return (out if changed else None), fusion
