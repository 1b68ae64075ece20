"""INT4 weight-only (W4A16) quantization of a rewritten graph: what `phm-export --int4` adds.

    plan = plan_int4(graph, lm_head=False)                     # which linears get INT4 (quantize.plan_int8's classes)
    counts = quantize_graph_int4(graph, plan, types, group=128)  # block-quantized weights + INT4 PHM cores, in place
    model = finish_int4(gs.export_onnx(graph))                  # opset 21 and the INT4 initializer types

Dense linears (attention q/k/v/o, any MLP linear the rewrite left dense; the LM head only with
`lm_head=True`; embeddings stay float): the weight W (K, N) of a MatMul becomes symmetric INT4 values
q ∈ [-7, 7] with one scale per block of `group` consecutive input channels per output channel,
s[g, j] = max_{i in block g} |W[i, j]| / 7, read by DequantizeLinear(axis=0, block_size=group)
into the MatMul: ONNX opset 21's blocked INT4 DequantizeLinear, the pattern TensorRT 10 builds into
weight-only INT4 GEMMs in strongly typed networks and ONNX Runtime fuses into MatMulNBits. A Gemm
whose weight is stored transposed (N, K) (transB = 1) blocks along its axis 1. The scales have the
graph's activation dtype (the DequantizeLinear output type: fp16 weights into an fp16 GEMM).

PHM nodes: weight_format "int4" and group_size, cores from `phm.trt_plugins.quant.quantize_cores_int4`
(the spec.py layout: two values per byte along k, float32 scales per (row, basis, group)). Their
activations are fp16 as for INT8 cores (quantize.py makes the node an fp16 island in an fp32 graph).

The group is the requested one where it divides the input dimension, else the largest power of two
from 16 up that does (INT4 kernels and MatMulNBits take powers of two ≥ 16); a tensor without one
stays float (warned, counted in `float_kept`).

`method` picks the weights' rounding: "rtn" rounds each block to its absmax scale; "awq" also
searches, per input tensor, AWQ's activation-aware channel scales (awq.py) from calibration rows;
"gptq" keeps RTN's scales and picks each weight's grid point by GPTQ's error compensation (gptq.py),
handed over as codes (`rounded`).

graphsurgeon and the opset-17 exporter know neither INT4 tensors nor opset 21, so the graph carries
each blocked DequantizeLinear in a private domain with its packed bytes as an int8 constant, and
`finish_int4` converts the exported model to opset 21 (onnx.version_converter, on the graph without
its weights) and turns those nodes and constants into standard ones: the bytes in the data file are
the INT4 tensor's, only its type and dims change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import TensorProto, helper

from phm.trt_plugins import spec
from phm.trt_plugins.quant import pack_int4, quantize_cores_int4, unpack_int4

from . import io_names as io
from .quantize import DenseLinear, Int8Plan, _Builder, _loaded, _outputs, _projections, _quantize_phm_cores, plan_int8
from .rewrite import const_value
from .skeleton import shape_data, weightless
from .weights import StreamedWeight

log = logging.getLogger(__name__)

__all__ = ["INT4_OPSET", "PENDING_DOMAIN", "block_group", "dequantize_blocks", "down_key", "down_scalable",
           "finish_int4", "pack_blocks", "phm_group",
           "phm_input_cores", "phm_input_firsts", "plan_int4", "quantize_blocks_int4", "quantize_graph_int4"]

MIN_GROUP = 16                # smallest block MatMulNBits and the INT4 kernels take (a power of two)
INT4_OPSET = 21               # blocked INT4 DequantizeLinear
PENDING_DOMAIN = "phm.int4"   # a blocked DequantizeLinear until finish_int4 makes it a standard one
_HALF = onnx.TensorProto.FLOAT16


def block_group(k: int, requested: int) -> int | None:
    """The largest power of two g with MIN_GROUP ≤ g ≤ requested that divides k, or None."""
    g = requested
    while g >= MIN_GROUP:
        if k % g == 0:
            return g
        g //= 2
    return None


def quantize_blocks_int4(w: np.ndarray, axis: int, group: int,
                         scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D weight → (packed INT4 bytes (size/2,) int8 in row-major order, low nibble first — ONNX's
    INT4 packing; scales with dim[axis] = shape[axis] / group) — blocks of `group` along `axis`.
    One rounding for dense weights and PHM cores: each block is a row of quantize_cores_int4."""
    w = np.asarray(w, np.float32)
    rows = w if axis == 1 else w.T                                  # (channels, K): blocks along the rows
    q, s = _quantize_rows(rows, group)
    q = q if axis == 1 else q.T
    s = s if axis == 1 else s.T
    return pack_int4(torch.from_numpy(np.ascontiguousarray(q)).reshape(-1)).numpy(), s.astype(scale_dtype)


def _quantize_rows(rows: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, K) → (values int8 (C, K) in [-7, 7], scales float32 (C, K/group)): quantize_cores_int4 with B = 1."""
    packed, s = quantize_cores_int4(torch.from_numpy(np.array(rows, np.float32))[:, None, :], group)
    return unpack_int4(packed)[:, 0].numpy(), s[:, 0].numpy()


def pack_blocks(q: np.ndarray, scales: np.ndarray, axis: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Codes q (K, N) in [-7, 7] and their block scales (K/group, N) (gptq.py's layout) → what
    quantize_blocks_int4 returns for a weight stored with its blocks along `axis` ((K, N): 0; a
    transposed (N, K): 1)."""
    q, scales = (np.asarray(q), np.asarray(scales)) if axis == 0 else (np.asarray(q).T, np.asarray(scales).T)
    packed = pack_int4(torch.from_numpy(np.array(q, np.int8)).reshape(-1)).numpy()  # a writable copy of a mapped file
    return packed, np.ascontiguousarray(scales).astype(scale_dtype)


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, shape: tuple, axis: int, group: int) -> np.ndarray:
    """The float32 weight a blocked INT4 DequantizeLinear computes (the inverse of quantize_blocks_int4)."""
    q = unpack_int4(torch.from_numpy(np.asarray(packed, np.int8)).reshape(-1)).numpy().reshape(shape)
    return q.astype(np.float32) * np.repeat(np.asarray(scales, np.float32), group, axis=axis)


# --- planning -----------------------------------------------------------------------------------

def plan_int4(graph: gs.Graph, lm_head: bool = False) -> Int8Plan:
    """Every dense linear of `graph` INT4 weight-only ("w4"), the LM head (the linear computing the
    logits) only with `lm_head`. A vision graph's output projector is an ordinary linear here."""
    plan = plan_int8(graph, lm_head=False)
    has_logits = any(o.name == io.LOGITS for o in graph.outputs)
    for lin in plan.linears:
        if lin.role == "lm_head" and not has_logits:
            lin.role = "mlp"
        lin.mode = "w4" if lin.role != "lm_head" or lm_head else "float"
    return plan


# --- graph surgery ------------------------------------------------------------------------------

@dataclass
class _Counts:
    dense: int = 0
    phm: int = 0
    float_kept: int = 0


def _dense_int4(b: _Builder, lin: DenseLinear, group: int, fp16: bool, counts: _Counts,
                smooth: np.ndarray | None = None, rounded=None) -> None:
    """W → blocked INT4 DequantizeLinear (pending domain) into the linear; `smooth` (K,) multiplies the
    weight's input channels first (AWQ: the graph divides the input by it); `rounded` (a
    gptq.RoundingStore holding the linear's node name): its codes and scales instead of rounding W."""
    node, axis = lin.node, 1 - lin.channel_axis       # the block (input-channel) axis of the stored weight
    shape = tuple(lin.weight.shape)
    group_k = block_group(shape[axis], group)
    if group_k is None or int(np.prod(shape)) % 2:
        log.warning("%s: input dimension %d has no INT4 block size (powers of two from %d); kept float",
                    node.name, shape[axis], MIN_GROUP)
        counts.float_kept += 1
        return
    name = node.name or f"matmul_{b.count}"
    scale_dtype = np.float16 if fp16 else np.float32

    def quantized() -> tuple[np.ndarray, np.ndarray]:
        if rounded is not None and name in rounded:
            q, scales = rounded.get(name)
            if scales.shape[0] != shape[axis] // group_k:
                raise ValueError(f"{name}: GPTQ rounded it in groups of {shape[axis] // scales.shape[0]}, "
                                 f"not {group_k}")
            return pack_blocks(q, scales, axis, scale_dtype)
        w = _loaded(lin.weight)
        if smooth is not None:
            w = w * (smooth[:, None] if axis == 0 else smooth[None, :])
        return quantize_blocks_int4(w, axis, group_k, scale_dtype)

    scale_shape = list(shape)
    scale_shape[axis] //= group_k
    packed, scales = _outputs([f"{name}.weight_int4", f"{name}.weight_int4_scale"], quantized,
                              [((int(np.prod(shape)) // 2,), np.int8), (tuple(scale_shape), scale_dtype)],
                              isinstance(lin.weight, StreamedWeight))
    out = gs.Variable(f"{name}/weight_dq", dtype=scale_dtype)
    b.graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}/weight_dq", domain=PENDING_DOMAIN,
                                 attrs={"axis": axis, "block_size": group_k}, inputs=[packed, scales], outputs=[out]))
    node.inputs[1] = out
    counts.dense += 1


def _cores(node: gs.Node, firsts: list[int]) -> list:
    """The constant (m, B, k) cores of the projections `firsts` (placeholders and non-constants left out)."""
    values = [const_value(node.inputs[f]) for f in firsts]
    return [v for v in values if v is not None and v.ndim == 3]


def phm_group(node: gs.Node, group: int) -> int | None:
    """One group size for every projection of a PHM node (the op's group_size is shared): block_group
    of the k they all have in common."""
    return block_group(math.gcd(*(c.shape[2] for c in _cores(node, _projections(node)))), group)


def _input_projections(node: gs.Node) -> list[int]:
    """The projections that read a PHM node's input x: gate and up of a PHMFFN, the PHMLinear's own."""
    return _projections(node)[:-1] if node.op == spec.PHM_FFN.op_type else _projections(node)


def phm_input_cores(node: gs.Node) -> list:
    """The cores (constant values) that multiply a PHM node's input x (up alone for a plain MLP)."""
    return _cores(node, _input_projections(node))


def phm_input_firsts(node: gs.Node) -> list[int]:
    """The first-input indices of the projections whose cores phm_input_cores returns, in its order."""
    return [f for f in _input_projections(node) if _cores(node, [f])]


def _divided(b: _Builder, x: gs.Tensor, s: np.ndarray, fp16: bool, name: str) -> gs.Variable:
    """x / s (AWQ: the input of the linears whose weights carry s), one Mul in x's dtype."""
    dtype = np.float16 if fp16 else np.float32
    return b.node("Mul", [x, gs.Constant(f"{x.name}.awq_inv", (1.0 / s).astype(dtype))], dtype, name)


def down_key(node: gs.Node) -> str:
    """The `smooth` key of a PHMFFN's down-projection input (a tensor inside the node, no graph name)."""
    return f"{node.name}:down"


def down_scalable(node: gs.Node) -> bool:
    """Whether AWQ can scale a PHM node's down-projection input: a swiglu PHMFFN without biases, whose
    h = act(gate)·up carries 1/s in up's rows exactly (a plain MLP's activation would not commute)."""
    return (node.op == spec.PHM_FFN.op_type and node.attrs.get("mlp_type", "swiglu") == "swiglu"
            and not node.attrs.get("has_bias", 0))


def quantize_graph_int4(graph: gs.Graph, plan: Int8Plan, types: dict[str, int], group: int = 128,
                        smooth: dict | None = None, rounded=None) -> dict:
    """Apply `plan` (plan_int4) to `graph` in place: blocked INT4 dense weights, INT4 PHM cores.
    `smooth`: {input tensor name: AWQ channel scales} (awq.py): (K,) for dense linears, (k,) for a
    PHM node (tiled over x's n blocks); the graph divides that tensor by them before its readers.
    Under `down_key(node)`, the (f/n,) scales of a swiglu PHMFFN's down input: up's core rows are
    divided by them and down's core columns multiplied, which the node computes exactly.
    `rounded`: a gptq.RoundingStore of GPTQ's codes and scales, by dense linear node name and by
    (PHM node name, first core input index); what it holds replaces rounding to nearest.
    Returns counts."""
    b, counts, smooth = _Builder(graph), _Counts(), smooth or {}
    scaled: dict = {}
    scaled_down = 0
    for lin in plan.linears:
        if lin.mode != "w4":
            continue
        x = lin.node.inputs[0]
        fp16 = types.get(x.name) == _HALF
        s = smooth.get(x.name)
        if s is not None:  # x / s once per tensor (q/k/v share theirs), diag(s)·W in each weight
            if x.name not in scaled:
                scaled[x.name] = _divided(b, x, s, fp16, f"{lin.node.name}/awq")
            lin.node.inputs[0] = scaled[x.name]
        _dense_int4(b, lin, group, fp16, counts, s, rounded)
    done: dict = {}
    for node in [n for n in graph.nodes if n.domain == spec.DOMAIN and n.op in spec.OPS]:
        g = phm_group(node, group)
        if g is None:
            log.warning("%s: no INT4 group size divides its input dimensions; cores kept float", node.name)
            counts.float_kept += 1
            continue
        s = smooth.get(node.inputs[spec.X].name)
        if s is not None:  # AWQ: x / tile(s, n) before the node, each input core's column c times s_c
            x = node.inputs[spec.X]
            node.inputs[spec.X] = _divided(b, x, np.tile(s, node.attrs["n"]), types.get(x.name) == _HALF,
                                           f"{node.name}/awq")
            scaled[x.name] = node.inputs[spec.X]
            types = {**types, node.inputs[spec.X].name: types.get(x.name)}  # the node's x keeps its dtype
        inputs = _input_projections(node)
        s_down = smooth.get(down_key(node)) if down_scalable(node) else None
        scaled_down += s_down is not None

        def quantizer(cores, first, g=g, s=s, inputs=inputs, s_down=s_down, name=node.name):
            if rounded is not None and (name, first) in rounded:
                q, scales = rounded.get((name, first))
                return pack_int4(torch.from_numpy(np.array(q, np.int8))).numpy(), np.array(scales, np.float32)
            if s is not None and first in inputs:
                cores = cores * torch.from_numpy(s)[None, None, :]
            if s_down is not None and first == spec.UP_CORES:    # h = act(gate)·up: up's row c carries 1/s_c
                cores = cores / torch.from_numpy(s_down)[:, None, None]
            if s_down is not None and first == spec.DOWN_CORES:  # and down's column c s_c
                cores = cores * torch.from_numpy(s_down)[None, None, :]
            return tuple(t.numpy() for t in quantize_cores_int4(cores, g))

        _quantize_phm_cores(b, node, types, done, "int4", quantizer, group_size=g)
        counts.phm += 1
    graph.cleanup().toposort()
    out = {**{k.replace("w4", "int4"): v for k, v in plan.counts().items()}, "dense_int4": counts.dense,
           "phm_int4_nodes": counts.phm, "float_kept": counts.float_kept, "group": group,
           "awq_scaled_inputs": len(scaled), "awq_scaled_down": scaled_down}
    log.info("quantize_graph_int4: %s", out)
    return out


# --- to standard ONNX ---------------------------------------------------------------------------

def finish_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exported graph at opset 21 with its pending DequantizeLinear nodes standard and their packed
    weights typed INT4 (dims from the scales: dim[axis] · block_size), in place; returns it."""
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", 0) < INT4_OPSET:
        _convert_opset(model, INT4_OPSET)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.domain != PENDING_DOMAIN:
            continue
        node.domain = ""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight, scales = inits[node.input[0]], inits[node.input[1]]
        dims = list(scales.dims)
        dims[attrs["axis"]] *= attrs["block_size"]
        weight.data_type = TensorProto.INT4
        del weight.dims[:]
        weight.dims.extend(dims)
    keep = [o for o in model.opset_import if o.domain != PENDING_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.ir_version = max(model.ir_version, 10)  # INT4 tensors
    return model


def _convert_opset(model: onnx.ModelProto, version: int) -> None:
    """onnx.version_converter on the graph without its weights (the converter's IR does not keep
    external-data references), then the weights put back; in place."""
    from onnx import version_converter

    skeleton = weightless(model, keep=shape_data)
    if not any(o.domain == PENDING_DOMAIN for o in skeleton.opset_import):
        skeleton.opset_import.append(helper.make_opsetid(PENDING_DOMAIN, 1))
    converted = version_converter.convert_version(skeleton, version)
    weights = {i.name for i in model.graph.initializer}
    new_inits = [i for i in converted.graph.initializer if i.name not in weights]
    del model.graph.node[:]
    model.graph.node.extend(converted.graph.node)
    model.graph.initializer.extend(new_inits)
    del model.opset_import[:]
    model.opset_import.extend(converted.opset_import)
