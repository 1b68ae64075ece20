"""`lean_graph(model) -> int`: fold a traced graph's run-time shape arithmetic into constants (ONNX Runtime fast path).

The TorchScript-traced HF decoders compute every Reshape / Expand / Slice argument at run time:
Shape -> Gather -> Unsqueeze -> Concat chains for the attention reshapes, Div for the rotary
halves, Equal/Where for GQA's expand. After ORT's own optimisation that is still ~50 of the ~94
nodes per SmolLM2 layer, run every decode step, and ORT's per-node overhead is what they cost.
ORT cannot fold them itself: they start from Shape of tensors with dynamic (batch, sequence, past)
dims.

This pass runs ONNX Runtime's symbolic shape inference (onnxruntime.tools.symbolic_shape_infer),
which also propagates the *values* of small integer tensors as sympy expressions, then rewrites
in place:
  - an integer tensor whose value is fully known (head_dim // 2, the GQA repeat …) -> initializer;
  - a Reshape target that still holds dynamic dims -> constant using 0 (copy the input's dim at
    that index, when it is symbolically the same dim) and at most one -1;
  - an Expand shape that still holds dynamic dims -> constant with 1 where the (right-aligned)
    input already has that dim (Expand broadcasts, so 1 keeps it);
  - rotary's rotate_half, `cat(-x[..., h:], x[..., :h])` (Slice, Slice, Neg, Concat once the
    slice bounds are constants) -> one MatMul with a constant (D, D) signed permutation;
and drops the nodes nothing reads any more. The result is standard ONNX with the same outputs for
every input shape (tests/export/test_lean.py). A graph the inference cannot complete (custom ops
left unlowered, an unsupported op) is left unchanged: the pass returns 0.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .skeleton import drop_unused, shape_data, weightless

log = logging.getLogger(__name__)

__all__ = ["lean_graph"]

_INT = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}


def _infer(model: onnx.ModelProto):
    """The finished SymbolicShapeInference (its value and shape tables), or None where it cannot
    complete. auto_merge stays off: merging dims it cannot prove equal could fold a wrong shape."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    sym = SymbolicShapeInference(2**31 - 1, False, False, 0)
    try:
        sym._preprocess(weightless(model, shape_data))
        done = False
        while sym.run_:
            done = sym._infer_impl()
    except Exception as e:  # the inference raises plain Exceptions/AssertionErrors on ops it cannot handle
        log.info("lean: symbolic shape inference failed (%s); graph left as is",
                 (str(e).splitlines() or [type(e).__name__])[0])
        return None
    if not done:
        log.info("lean: symbolic shape inference incomplete; graph left as is")
        return None
    return sym


def _ints(values) -> list[int] | None:
    """`values` as Python ints, or None if any of them is symbolic."""
    out = []
    for v in values:
        try:
            if not getattr(v, "is_number", True):
                return None
            out.append(int(v))
        except (TypeError, ValueError):
            return None
    return out


class _Lean:
    def __init__(self, model: onnx.ModelProto, sym):
        self.model, self.sym = model, sym
        self.graph = model.graph
        self.cache: dict = {}
        self.new_inits: list[TensorProto] = []
        self.produced_by_constant = {o for n in self.graph.node if n.op_type == "Constant" for o in n.output}
        self.fixed = {i.name for i in self.graph.input} | {i.name for i in self.graph.initializer}
        self.inits = {i.name: i for i in self.graph.initializer}
        self.const_nodes = {n.output[0]: next(a.t for a in n.attribute if a.name == "value")
                            for n in self.graph.node if n.op_type == "Constant"
                            and any(a.name == "value" for a in n.attribute)}

    def const(self, values: np.ndarray) -> str:
        key = (values.dtype.str, values.shape, values.tobytes())
        if key not in self.cache:
            name = f"lean_c{len(self.cache)}"
            self.new_inits.append(numpy_helper.from_array(values, name))
            self.inits[name] = self.new_inits[-1]
            self.cache[key] = name
        return self.cache[key]

    def vi(self, name: str):
        return self.sym.known_vi_.get(name)

    def sym_shape(self, name: str) -> list | None:
        vi = self.vi(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        probe = helper.make_node("Identity", [name], ["_"])
        try:
            return self.sym._get_sympy_shape(probe, 0)
        except Exception:  # a dim without name or value: not foldable
            return None

    def known_value(self, name: str) -> str | None:
        """An initializer holding `name`'s value, where it is an integer tensor known at build time."""
        if name in self.fixed or name in self.produced_by_constant or name not in self.sym.sympy_data_:
            return None
        vi = self.vi(name)
        if vi is None or vi.type.tensor_type.elem_type not in _INT:
            return None
        data = self.sym.sympy_data_[name]
        ints = _ints(data if isinstance(data, list) else [data])
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if ints is None or not all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim) \
                or int(np.prod(shape)) != len(ints):
            return None
        return self.const(np.array(ints, _INT[vi.type.tensor_type.elem_type]).reshape(shape))

    def target(self, node: onnx.NodeProto) -> str | None:
        """A constant Reshape target / Expand shape for a partly dynamic one, or None."""
        name = node.input[1]
        data = self.sym.sympy_data_.get(name)
        src = self.sym_shape(node.input[0])
        if not isinstance(data, list) or src is None or name in self.fixed:
            return None
        if node.op_type == "Reshape":
            if any(a.name == "allowzero" and a.i for a in node.attribute):
                return None
            out, free = [], 0
            for i, v in enumerate(data):
                n = _ints([v])
                if n is not None:
                    out.append(n[0])
                    free += n[0] == -1
                elif i < len(src) and _same(v, src[i]):
                    out.append(0)
                else:
                    out.append(-1)
                    free += 1
            if free > 1:
                return None
        else:  # Expand: broadcast, right-aligned; 1 keeps the input's dim
            lead = len(data) - len(src)
            out = []
            for i, v in enumerate(data):
                n = _ints([v])
                if n is not None:
                    out.append(n[0])
                elif i >= lead and _same(v, src[i - lead]):
                    out.append(1)
                else:
                    return None
        return self.const(np.array(out, np.int64))


    def value(self, name: str) -> list[int] | None:
        """The ints of an initializer or Constant output (Slice arguments after the fold)."""
        init = self.const_nodes.get(name) or self.inits.get(name)
        if init is None or init.data_location == TensorProto.EXTERNAL:
            return None
        arr = numpy_helper.to_array(init)
        return [int(v) for v in arr.reshape(-1)] if arr.dtype.kind == "i" else None

    def slice_of(self, name: str, producers: dict) -> tuple | None:
        """(x, start, end) of a unit-step Slice of x's last axis producing `name`."""
        node = producers.get(name)
        if node is None or node.op_type != "Slice" or len(node.input) < 4:
            return None
        x = node.input[0]
        shape = self.sym_shape(x)
        args = [self.value(n) for n in node.input[1:4]] + [self.value(node.input[4]) if len(node.input) > 4 and
                                                            node.input[4] else [1]]
        if shape is None or any(a is None or len(a) != 1 for a in args):
            return None
        (start,), (end,), (axis,), (step,) = args
        return (x, start, end) if step == 1 and axis in (-1, len(shape) - 1) else None

    def rotate_half(self, node: onnx.NodeProto, producers: dict) -> onnx.NodeProto | None:
        """MatMul(x, R) for rotary's `cat(-x[..., h:], x[..., :h])` (Slice, Slice, Neg, Concat): R is
        the constant signed permutation, so four nodes per q/k become one small MatMul."""
        if node.op_type != "Concat" or len(node.input) != 2:
            return None
        neg = producers.get(node.input[0])
        if neg is None or neg.op_type != "Neg":
            return None
        hi, lo = self.slice_of(neg.input[0], producers), self.slice_of(node.input[1], producers)
        if hi is None or lo is None or hi[0] != lo[0]:
            return None
        x, shape = hi[0], self.sym_shape(hi[0])
        dim, axis = _ints([shape[-1]]), next((a.i for a in node.attribute if a.name == "axis"), None)
        vi = self.vi(x)
        if dim is None or dim[0] % 2 or axis not in (-1, len(shape) - 1) or vi is None \
                or vi.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            return None
        d, h = dim[0], dim[0] // 2
        if not (lo[1] == 0 and lo[2] == h and hi[1] == h and hi[2] >= d):
            return None
        rot = np.zeros((d, d), np.float32)
        rot[np.arange(h) + h, np.arange(h)] = -1.0  # out[:, :h] = -x[:, h:]
        rot[np.arange(h), np.arange(h) + h] = 1.0   # out[:, h:] = x[:, :h]
        dtype = np.float16 if vi.type.tensor_type.elem_type == TensorProto.FLOAT16 else np.float32
        return helper.make_node("MatMul", [x, self.const(rot.astype(dtype))], [node.output[0]],
                                name=f"{node.name}_lean_rotate_half")


def _same(a, b) -> bool:
    try:
        return bool(a == b) or (a - b) == 0
    except TypeError:
        return False


def lean_graph(model: onnx.ModelProto) -> int:
    """Fold `model`'s build-time-known shape arithmetic into constants (in place); returns how many
    nodes are gone (0: unchanged)."""
    sym = _infer(model)
    if sym is None:
        return 0
    lean = _Lean(model, sym)
    before = len(model.graph.node)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if not name:
                continue
            folded = lean.known_value(name)
            if folded is None and i == 1 and node.op_type in ("Reshape", "Expand"):
                folded = lean.target(node)
            if folded is not None:
                node.input[i] = folded
    producers = {o: n for n in model.graph.node for o in n.output}
    for i, node in enumerate(model.graph.node):
        rot = lean.rotate_half(node, producers)
        if rot is not None:
            model.graph.node[i].CopyFrom(rot)
    drop_unused(model, lean.new_inits)
    dropped = before - len(model.graph.node)
    log.info("lean: %d of %d nodes folded away", dropped, before)
    return dropped
