"""`lower_w8a8(model) -> int`: W8A8 Q/DQ MatMuls → ONNX Runtime's integer GEMM (the `--int8` ORT fast path).

The portable `--int8` graph holds each W8A8 linear as TensorRT's explicit-quantization pattern
(export/quantize.py):

    x ─ QuantizeLinear(s, zp 0: int8) ─ DequantizeLinear ─┐
                                     W int8 ─ DequantizeLinear(per-channel scales, axis 1) ─ MatMul ─ y

ONNX Runtime's CPU provider runs that literally when its QDQ fusions are off (every step dequantizes
every weight: measured 230 of a 266 ms SmolLM2 decode step), and with them on it rewrites weight-only
DequantizeLinear → MatMul into a kernel that also quantizes activations (quantize.ort_options). So the
ORT file says what to run itself:

    x ─ QuantizeLinear(s, zp 128: uint8) ─ com.microsoft::MatMulIntegerToFloat(W int8, s, w_scales) ─ y

The same numbers: uint8 with zero point 128 holds q + 128 for every int8 q in -128..127 (saturation
bounds included), and the integer GEMM accumulates (q_x)(q_w) exactly in int32 before scaling by
s·w_scale; only the fp32 rounding of the float reference's products differs (~3e-7 relative,
tests/export/test_lower_int8.py). uint8 activations, not int8: ONNX Runtime's int8 × int8 CPU path
is a slow fallback (benchmarks/bench_matmul_nbits.py: one 1536×576 token 646 µs against 22 µs for
uint8 × int8 and 52 µs for the fp32 MatMul, VNNI CPU). One QuantizeLinear per activation tensor
(q/k/v read one), the INT8 weights and their scales are the portable file's own initializers.
Weight-only DequantizeLinear → MatMul (dense MLPs) stays: ONNX Runtime has no exact fast kernel for
it, and phm-run lets it fold the dequantized weight once at load (runtime/ort_backend.py).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .skeleton import drop_unused, graph_index

log = logging.getLogger(__name__)

__all__ = ["lower_w8a8"]


def _scalar(inits: dict, name: str, dtype) -> np.ndarray | None:
    init = inits.get(name)
    if init is None or init.data_type != helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) or list(init.dims) \
            or init.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return numpy_helper.to_array(init)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _activation(dq: onnx.NodeProto | None, producer: dict, inits: dict) -> tuple[str, str] | None:
    """(x, scale) when `dq` dequantizes QuantizeLinear(x, scale, 0) per tensor to int8, else None."""
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return None
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[1:3] != dq.input[1:3]:
        return None
    zp = _scalar(inits, q.input[2], np.int8)
    scale = _scalar(inits, q.input[1], np.float32)
    return (q.input[0], q.input[1]) if zp is not None and zp == 0 and scale is not None else None


def _weight(dq: onnx.NodeProto | None, inits: dict) -> tuple[str, str, str] | None:
    """(W, scales, zero points) when `dq` dequantizes an int8 (K, N) initializer per output channel."""
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or _axis(dq) != 1:
        return None
    w, s, zp = (inits.get(i) for i in dq.input[:3])
    if w is None or w.data_type != onnx.TensorProto.INT8 or len(w.dims) != 2 or s is None or zp is None:
        return None
    if s.data_type != onnx.TensorProto.FLOAT or list(s.dims) != [w.dims[1]] or zp.data_type != onnx.TensorProto.INT8:
        return None
    return dq.input[0], dq.input[1], dq.input[2]


def _plain_gemm(node: onnx.NodeProto, inits: dict) -> bool:
    """A Gemm that is x @ W (+ bias (N,)): no transposes, alpha = beta = 1 (GPT-2's Conv1D)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return False
    bias = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return len(node.input) < 3 or not node.input[2] or (bias is not None and len(bias.dims) == 1
                                                        and bias.data_type == onnx.TensorProto.FLOAT)


def lower_w8a8(model: onnx.ModelProto) -> int:
    """Rewrite (in place) every MatMul (or plain Gemm: x @ W + bias) of a per-tensor int8 activation
    Q/DQ and a per-channel int8 weight DQ into QuantizeLinear(uint8, zero point 128) →
    MatMulIntegerToFloat (the Gemm's bias as its bias input); returns how many. Anything else
    (weight-only DQ, transposed Gemms, other layouts) is left as it is."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, _ = graph_index(graph.node)
    zp_name = "w8a8_zero_point_u8"
    new_inits: list[onnx.TensorProto] = []
    quantized: dict[tuple[str, str], str] = {}  # (x, scale) → its uint8 tensor, shared by q/k/v
    nodes, lowered = [], 0
    for node in graph.node:
        linear = node.op_type == "MatMul" or (node.op_type == "Gemm" and _plain_gemm(node, inits))
        act = _activation(producer.get(node.input[0]), producer, inits) if linear else None
        weight = _weight(producer.get(node.input[1]), inits) if act else None
        if weight is None:
            nodes.append(node)
            continue
        if not new_inits:
            new_inits.append(numpy_helper.from_array(np.array(128, np.uint8), zp_name))
        x, scale = act
        if (x, scale) not in quantized:
            q = f"{node.name or node.output[0]}/input_u8"
            nodes.append(helper.make_node("QuantizeLinear", [x, scale, zp_name], [q], name=q))
            quantized[(x, scale)] = q
        w, w_scale, w_zp = weight
        bias = [node.input[2]] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else []
        nodes.append(helper.make_node("MatMulIntegerToFloat", [quantized[(x, scale)], w, scale, w_scale, zp_name, w_zp,
                                                               *bias],
                                      list(node.output), name=f"{node.name or node.output[0]}/int8", domain="com.microsoft"))
        lowered += 1
    if not lowered:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused(model, new_inits)  # the int8 Q/DQ pairs and weight DQs nothing reads now
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.info("lowered %d W8A8 MatMuls to MatMulIntegerToFloat", lowered)
    return lowered
