"""`lower_phm(model) -> int`: PHM nodes → lean standard ops specialised to each node (ONNX Runtime fast path).

The artifacts' `<kind>.onnx` runs its `com.phm` nodes through the generic reference functions
(export/reference.py): one body for every node, reading n, B, bases, activation … by attribute
reference. ONNX Runtime inlines them, but cannot specialise them: each call still computes all
five activations and blends them with LabelEncoder weights, rebuilds the mixing matrix and
reshapes + transposes the cores, and the If of PHMFFN stays. On SmolLM2-135M that is ~5,000 extra
small nodes per decode step, which costs more time than PHM saves in weight bytes.

This pass rewrites, in memory, each float-core node into what the node actually computes
(docs/design.md §1; M = trainer.hypercomplex.mixing_matrix, A_cat = cores (m, B, k)):

    xb = reshape(x, (…, n, k))                      n column blocks of x
    z  = reshape(M @ xb, (…, n, B·k))               cheap mixing, M (n·B, n) a constant
    y  = z @ A_catᵀ                                 one GEMM per projection; A_catᵀ (B·k, m) is
                                                    Transpose(Reshape(cores)) of the node's own core
                                                    initializer, which ONNX Runtime folds once when
                                                    it loads the graph (pre-transposed in memory, so
                                                    the big MatMul reads it once)
    PHMLinear: reshape(y (+ bias), (…, n·m)), then its own activation only
    PHMFFN:    gate and up share z, so one GEMM against [A_gateᵀ | A_upᵀ] (B·k, 2m); act(gate)·up
               stays in the (…, n, m) block layout, which is the layout down's mixing reads.

The lowering reads no weight values (shapes and types only, biases reshaped in the graph too), so
the lowered graph shares every weight initializer with the graph it came from: exported with
external data, the ONNX Runtime graph and its twins reference one copy of each tensor. INT4 cores
(weight_format "int4", opset ≥ 18 graphs) become ONNX Runtime's weight-only kernel instead of the
MatMul: `com.microsoft::MatMulNBits` reads A_cat's (m, B·k) rows in groups along k, which is the
spec's INT4 layout byte for byte, only with unsigned nibbles (`_matmul_nbits`). In an fp32 graph
the exporter wraps quantized cores in an fp16 island (Cast in, Cast out: the plugins take fp16);
the lowering starts from the island's fp32 input instead and computes the node in fp32
(`_Lowering.fp32_island`): ONNX Runtime's CPU kernels are slow in fp16 (docs/int4.md). INT8 cores
(fp32 island likewise) get A_catᵀ = Transpose(Reshape(DequantizeLinear(q, per-row scales))) into a
plain MatMul, the exact float cores: MatMulNBits' 8-bit kernel with fp32 arithmetic measured 20×
slower than an fp32 MatMul here (docs/int4.md § ONNX Runtime speed), and phm-run lets ONNX Runtime
fold the dequantization once at load (runtime/ort_backend.py). The result is
checked against the reference graph (tests/export/test_lower.py) and by the runtime's
token-for-token tests against torch.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from phm.trainer.hypercomplex import mixing_matrix
from phm.trt_plugins import spec

from .skeleton import drop_unused, graph_index, shape_data, weightless

log = logging.getLogger(__name__)

__all__ = ["lower_phm"]


class _Lowering:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.cache: dict = {}
        self.count = 0
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        inferred = onnx.shape_inference.infer_shapes(_rank_skeleton(model))
        self.rank = {v.name: len(v.type.tensor_type.shape.dim) for v in
                     [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
                     if v.type.tensor_type.HasField("shape")}
        self.elem = {v.name: v.type.tensor_type.elem_type for v in
                     [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        self.producer, self.readers = graph_index(self.graph.node)
        self.dropped: set[int] = set()  # ids of the Casts ending fp16 islands the lowering replaced

    def fp32_island(self, node: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
        """(the fp32 tensor an INT4 PHM node's fp16 island starts from, the Cast back to fp32 that
        ends it) where x = Cast(fp32 → fp16) and the output is read only by that Cast (how an fp32
        export wraps quantized cores, spec.py), or None.
        ONNX Runtime's CPU kernels are slow in fp16, and MatMulNBits takes fp32 activations as they
        are, so the lowered node computes in fp32 from there (closer to the dequantized model)."""
        cast = self.producer.get(node.input[spec.X])
        back = self.readers.get(node.output[0], [])
        if cast is None or cast.op_type != "Cast" or self.elem.get(cast.input[0]) != onnx.TensorProto.FLOAT:
            return None
        if len(back) != 1 or back[0].op_type != "Cast" or \
                next(a.i for a in back[0].attribute if a.name == "to") != onnx.TensorProto.FLOAT:
            return None
        return cast.input[0], back[0]

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}__lw{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str) -> tuple[tuple, type] | None:
        """(dims, numpy dtype) of a weight initializer (its values are never read), or None."""
        init = self.inits.get(name)
        if init is None:
            return None
        return tuple(init.dims), helper.tensor_dtype_to_np_dtype(init.data_type)

    def reinterpret(self, name: str, data_type: int, dims: tuple) -> str:
        """A new initializer over the same bytes as the initializer `name` (inline or external data),
        read as another type and shape (its values are not read)."""
        key = ("reinterpret", name, data_type, dims)
        if key not in self.cache:
            t = onnx.TensorProto()
            t.CopyFrom(self.inits[name])
            t.name = self.name(f"{name}_as")
            t.data_type = data_type
            del t.dims[:]
            t.dims.extend(dims)
            self.new_inits.append(t)
            self.cache[key] = t.name
        return self.cache[key]

    def shape(self, rank: int, *tail: int) -> str:
        """A Reshape target keeping the first rank-1 dims of x (0 = copy) and ending in `tail`."""
        key = ("shape", rank, tail)
        if key not in self.cache:
            self.cache[key] = self.const("phm_shape", np.array([0] * (rank - 1) + list(tail), np.int64))
        return self.cache[key]


def _rank_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph for rank inference: no weight data, and each PHM node as an Identity of its x (a PHM
    op keeps x's rank; ONNX's inference through the generic functions loses it after the first one)."""
    return weightless(model, keep=shape_data, nodes=[helper.make_node("Identity", [n.input[spec.X]], [n.output[0]])
                                    if n.domain == spec.DOMAIN else n for n in model.graph.node])


def _attrs(node: onnx.NodeProto) -> dict:
    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def _activation(nodes: list, lw: _Lowering, v: str, activation: str, dtype) -> str:
    def op(op_type, *inputs, **attrs):
        out = lw.name(f"phm_{op_type.lower()}")
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def c(value):
        key = ("const", value, np.dtype(dtype).str)
        if key not in lw.cache:
            lw.cache[key] = lw.const("phm_c", np.array(value, dtype))
        return lw.cache[key]

    if activation == "none":
        return v
    if activation == "silu":
        return op("Mul", v, op("Sigmoid", v))
    if activation == "relu":
        return op("Relu", v)
    if activation == "gelu":
        return op("Mul", op("Mul", c(0.5), v), op("Add", c(1.0), op("Erf", op("Div", v, c(2.0 ** 0.5)))))
    if activation == "gelu_tanh":
        inner = op("Mul", c((2.0 / np.pi) ** 0.5), op("Add", v, op("Mul", c(0.044715), op("Mul", v, op("Mul", v, v)))))
        return op("Mul", op("Mul", c(0.5), v), op("Add", c(1.0), op("Tanh", inner)))
    raise ValueError(f"no lowering for activation {activation!r}")


def _nbits_ok(attrs: dict, opset: int) -> bool:
    """Whether MatMulNBits can run an INT4 node: a power-of-two group ≥ 16, BitwiseXor (opset 18)."""
    g = int(attrs.get("group_size", 0))
    return opset >= 18 and g >= 16 and g & (g - 1) == 0


def _lower_node(node: onnx.NodeProto, lw: _Lowering) -> list | None:
    """Standard-op replacement of one PHM node, or None to keep it (quantized cores, unknown rank)."""
    a = _attrs(node)
    fmt = a.get("weight_format", "float")
    if fmt not in spec.WEIGHT_FORMATS or (fmt == "int4" and not _nbits_ok(a, lw.opset)):
        return None
    n, num_bases = int(a["n"]), int(a["num_bases"])
    x, rank = node.input[spec.X], lw.rank.get(node.input[spec.X])
    if not rank:
        return None
    island = lw.fp32_island(node) if fmt != "float" else None
    if island:  # the lowered node reads the fp32 input and writes the island's fp32 output itself
        x, back = island
        lw.dropped.add(id(back))
    is_ffn = node.op_type == spec.PHM_FFN.op_type
    firsts = ((spec.GATE_CORES, spec.UP_CORES, spec.DOWN_CORES) if a.get("mlp_type", "swiglu") == "swiglu"
              else (spec.UP_CORES, spec.DOWN_CORES)) if is_ffn else (1,)
    weights = [lw.weight(node.input[f]) for f in firsts]
    if any(w is None for w in weights):
        return None  # cores computed at run time (not an initializer): the reference handles it
    # (m, B, k) each (INT4: k/2 bytes per row, two values each); quantized cores take fp16 x (spec.py)
    cores = [(m, b, 2 * k if fmt == "int4" else k) for (m, b, k), _ in weights]
    names = [node.input[f] for f in firsts]
    dtype = weights[0][1] if fmt == "float" else np.float32 if island else np.float16
    bases = torch.tensor(np.asarray(a["bases"], np.float32)).reshape(num_bases, n, n)
    mix = lw.const(f"{node.name}_mix", mixing_matrix(bases).numpy().astype(dtype))
    has_bias = int(a.get("has_bias", 0))
    biases = [node.input[f + 2] if has_bias and node.input[f + 2] in lw.inits else None for f in firsts]
    nodes: list = []

    def op(op_type, *inputs, **attrs):
        out = lw.name(f"{node.name}_{op_type.lower()}")
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def mixed(v: str, k: int) -> str:
        """(…, n·k) or (…, n, k) → z (…, n, B·k)."""
        xb = op("Reshape", v, lw.shape(rank, n, k))
        return op("Reshape", op("MatMul", mix, xb), lw.shape(rank, n, num_bases * k))

    def gemm(z: str, *which: int) -> str:
        """z @ A_catᵀ of the cores `which`, side by side along the output."""
        if fmt != "int4":
            return op("MatMul", z, a_cat_t(*which))
        return _matmul_nbits(nodes, lw, node.name, z, [names[i] for i in which],
                             [node.input[firsts[i] + 1] for i in which], [cores[i] for i in which],
                             int(a["group_size"]), helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def a_cat_t(*which: int) -> str:
        """A_catᵀ (B·k, m) of the cores `which`, side by side: graph ops on the shared initializers."""
        parts = []
        for i in which:
            m, b, k = cores[i]
            value = names[i]
            if fmt == "int8":  # q · per-row scale (m,): folded once at load where DQ folding is on (phm-run)
                value = op("DequantizeLinear", value, node.input[firsts[i] + 1], axis=0)
                if dtype != np.float32:
                    value = op("Cast", value, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
            flat = op("Reshape", value, lw.const(f"{node.name}_acat_shape", np.array([m, b * k], np.int64)))
            parts.append(op("Transpose", flat, perm=[1, 0]))
        return parts[0] if len(parts) == 1 else op("Concat", *parts, axis=1)

    def add_bias(v: str, bias: str | None) -> str:
        """+ bias (n·m,) in the (…, n, m) block layout: a Reshape of the shared initializer."""
        if bias is None:
            return v
        b = op("Reshape", bias, lw.const(f"{node.name}_bias_shape", np.array([n, -1], np.int64)))
        if lw.weight(bias)[1] != dtype:  # fp16 biases of quantized cores, in an fp32 island
            b = op("Cast", b, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        return op("Add", v, b)

    k_in = cores[0][2]
    if not is_ffn:
        y = add_bias(gemm(mixed(x, k_in), 0), biases[0])
        y = op("Reshape", y, lw.shape(rank, n * cores[0][0]))
        out = _activation(nodes, lw, y, a.get("activation", "none"), dtype)
    else:
        z = mixed(x, k_in)
        if len(cores) == 3:  # swiglu: gate and up in one GEMM, split in the block layout
            m = cores[0][0]
            gu = gemm(z, 0, 1)
            gate_out, up_out = lw.name(f"{node.name}_gate"), lw.name(f"{node.name}_up")
            nodes.append(helper.make_node("Split", [gu, lw.const("phm_split", np.array([m, m], np.int64))],
                                          [gate_out, up_out], axis=-1, name=gate_out))
            gate, up = add_bias(gate_out, biases[0]), add_bias(up_out, biases[1])
            h = op("Mul", _activation(nodes, lw, gate, a["activation"], dtype), up)
        else:
            up = add_bias(gemm(z, 0), biases[0])
            h = _activation(nodes, lw, up, a["activation"], dtype)
        down = cores[-1]
        y = add_bias(gemm(mixed(h, down[2]), len(cores) - 1), biases[-1])
        out = op("Reshape", y, lw.shape(rank, n * down[0]))
    result = back.output[0] if island else node.output[0]
    nodes.append(helper.make_node("Identity", [out], [result], name=lw.name(f"{node.name}_out")))
    return nodes


def _matmul_nbits(nodes: list, lw: _Lowering, base: str, z: str, weights: list[str], scales: list[str],
                  shapes: list[tuple], group: int, dtype: int) -> str:
    """z (…, B·k) @ A_catᵀ of INT4 cores (several side by side along the output) as one
    com.microsoft::MatMulNBits, `dtype` z's ONNX type: its B input (N, K/G, G/2) is the cores' own
    bytes read as uint8 (a second initializer over the same data) with each nibble's sign bit flipped
    (BitwiseXor 0x88: MatMulNBits stores q + 8), its scales the cores' (m·B·k/G,). ONNX Runtime folds
    the XOR, Concat and Cast once at load and prepacks the result."""
    def op(op_type, *inputs, domain=None, **attrs):
        out = lw.name(f"{base}_{op_type.lower()}")
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    flat_shape = lw.const("phm_flat", np.array([-1], np.int64))
    raw = [lw.reinterpret(name, onnx.TensorProto.UINT8, (m, b * k // group, group // 2)) for name, (m, b, k)
           in zip(weights, shapes)]
    flat = [op("Reshape", s, flat_shape) for s in scales]
    if "xor88" not in lw.cache:
        lw.cache["xor88"] = lw.const("phm_xor88", np.array([0x88], np.uint8))
    packed = op("BitwiseXor", raw[0] if len(raw) == 1 else op("Concat", *raw, axis=0), lw.cache["xor88"])
    scale = flat[0] if len(flat) == 1 else op("Concat", *flat, axis=0)
    m_total, (_, b, k) = sum(s[0] for s in shapes), shapes[0]
    accuracy = {"accuracy_level": lw.accuracy} if lw.accuracy != 1 else {}
    return op("MatMulNBits", z, packed, op("Cast", scale, to=dtype), domain="com.microsoft", K=b * k, N=m_total,
              bits=4, block_size=group, **accuracy)


def lower_phm(model: onnx.ModelProto, int4_accuracy: int = 1) -> int:
    """Rewrite the PHM nodes of `model` (float, INT8 and INT4 cores; in place) into specialised standard ops
    (INT4: MatMulNBits at `int4_accuracy`, ExportConfig.int4.accuracy); returns how many were lowered.
    Initializers only the replaced nodes read are dropped."""
    lw = _Lowering(model)
    lw.accuracy = int4_accuracy
    new_nodes, lowered = [], 0
    for node in model.graph.node:
        if id(node) in lw.dropped:
            continue
        repl = _lower_node(node, lw) if node.domain == spec.DOMAIN else None
        if repl is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(repl)
            lowered += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    drop_unused(model, lw.new_inits)  # (the fp16 islands' input Casts)
    if any(nd.domain == "com.microsoft" for nd in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))  # MatMulNBits
    if lowered and not any(nd.domain == spec.DOMAIN for nd in model.graph.node):
        del model.functions[:]  # nothing calls the reference functions any more
    log.info("lowered %d PHM nodes to standard ops", lowered)
    return lowered
