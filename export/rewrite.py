"""Graph passes (onnx-graphsurgeon): decomposed PHM math → `PHMLinear`, MLP of PHMLinears → `PHMFFN`.

The traced `phm_forward` of every PHM projection is, op by op (trainer/hypercomplex.py):

    x ─Reshape[-1, n, k]─▶ MatMul(M, ·) ─Reshape[-1, B·k]─▶ MatMul(·, A_catᵀ) ─Reshape[…, n·m]─▶ (Add bias)

with M (n·B, n) the constant mixing matrix (M[i·B + b, j] = H_b[i, j]) and A_catᵀ a constant
(B·k, m). `fuse_phm_linear` matches exactly that op pattern (never tensor names), reads n, B, the
bases and the cores back from the constants and replaces the chain by one `com.phm::PHMLinear`.
`fuse_phm_ffn` then folds gate/up/activation/mul/down (or up/activation/down) into `PHMFFN` when
the activation region between them is elementwise and numerically equals one of the spec's
activations. Op type, attribute names and input positions come from `phm.trt_plugins.spec` only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from phm.trt_plugins import spec

from .weights import StreamedWeight

log = logging.getLogger(__name__)

__all__ = ["PHMUnit", "const_value", "fuse_phm_ffn", "fuse_phm_linear", "phm_units", "share_tied_weights"]


def const_value(t: gs.Tensor) -> np.ndarray | StreamedWeight | None:
    """The value of a constant tensor (initializer or Constant-node output), else None. A streamed
    weight comes back as its lazy view (shape, dtype, transforms; never its data)."""
    if isinstance(t, gs.Constant):
        return t._values if isinstance(t._values, StreamedWeight) else np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Identity":  # the exporter dedups equal weights so
        return const_value(t.inputs[0].inputs[0])             # (Identity of the first copy)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and "value" in t.inputs[0].attrs:
        value = t.inputs[0].attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return None


def _contiguous(v):
    return v if isinstance(v, StreamedWeight) else np.ascontiguousarray(v)


def _contiguous_cores(w_t, m: int, num_bases: int, k: int):
    """A_cat (m, B, k) from the traced A_catᵀ (B·k, m): a lazy view for a streamed weight."""
    if isinstance(w_t, StreamedWeight):
        back = w_t.transposed()
        if back is None:
            raise ValueError(f"cannot express the PHM cores of a {w_t} as a view")
        return back.reshaped((m, num_bases, k))
    return np.ascontiguousarray(w_t.T.reshape(m, num_bases, k))


def _transposes(table: gs.Constant, w: gs.Constant) -> bool:
    """Is `w` the transpose of `table`? Streamed weights by their source, never by loading them."""
    if isinstance(table._values, StreamedWeight) or isinstance(w._values, StreamedWeight):
        if not (isinstance(table._values, StreamedWeight) and isinstance(w._values, StreamedWeight)):
            return False
        t = table._values.transposed()
        return t is not None and t.ident == w._values.ident
    return np.array_equal(table.values.T, w.values)


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    if len(t.inputs) == 1 and t.inputs[0].op == op:
        return t.inputs[0]
    return None


def _only_consumer(t: gs.Tensor) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 else None


def _bases_from_mixing(mix: np.ndarray, n: int) -> np.ndarray:
    """Invert `mixing_matrix`: M (n·B, n), M[i·B + b, j] = H_b[i, j] → H (B, n, n)."""
    num_bases = mix.shape[0] // n
    return mix.reshape(n, num_bases, n).transpose(1, 0, 2)


def _placeholder(name: str, dtype) -> gs.Constant:
    return gs.Constant(name, np.zeros((1,), dtype=dtype))


def _node_attrs(op: spec.OpSpec, **values) -> dict:
    attrs = {**op.defaults(), **values}
    attrs["plugin_version"], attrs["plugin_namespace"] = op.plugin_version, op.plugin_namespace
    spec.check_fields(op.op_type, attrs)
    return attrs


def fuse_phm_linear(graph: gs.Graph) -> int:
    """Replace every traced `phm_forward` chain by a PHMLinear node. Returns how many."""
    count = 0
    for gemm in [node for node in graph.nodes if node.op == "MatMul"]:
        w_t = const_value(gemm.inputs[1])                       # A_catᵀ (B·k, m)
        r2 = _producer(gemm.inputs[0], "Reshape")
        if w_t is None or w_t.ndim != 2 or r2 is None:
            continue
        mix_mm = _producer(r2.inputs[0], "MatMul")
        r1 = _producer(mix_mm.inputs[1], "Reshape") if mix_mm is not None else None
        if r1 is None:
            continue
        mix, shape1, shape2 = const_value(mix_mm.inputs[0]), const_value(r1.inputs[1]), const_value(r2.inputs[1])
        if mix is None or shape1 is None or shape2 is None or mix.ndim != 2 or shape1.shape != (3,):
            continue
        n, k = int(shape1[1]), int(shape1[2])
        num_bases = mix.shape[0] // n if n > 0 else 0
        if (shape1[0] != -1 or mix.shape != (n * num_bases, n) or list(shape2) != [-1, num_bases * k]
                or w_t.shape[0] != num_bases * k):
            continue
        r3 = _only_consumer(gemm.outputs[0])
        if r3 is None or r3.op != "Reshape" or r3.inputs[0] is not gemm.outputs[0]:
            continue
        if any(_only_consumer(t) is None for t in (r1.outputs[0], mix_mm.outputs[0], r2.outputs[0])):
            continue  # an intermediate is used elsewhere: not the plain chain, leave it
        m = w_t.shape[1]
        dtype = w_t.dtype
        out, bias = r3.outputs[0], None
        add = _only_consumer(out)
        if add is not None and add.op == "Add":
            other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
            b = const_value(other)
            if b is not None and b.shape == (n * m,):
                out, bias = add.outputs[0], b
        idx = count
        count += 1
        name = f"phm_linear_{idx}"
        bases = _bases_from_mixing(mix.astype(np.float64), n)
        cores = _contiguous_cores(w_t, m, num_bases, k)
        attrs = _node_attrs(spec.PHM_LINEAR, n=n, num_bases=num_bases, bases=spec.bases_to_field(bases),
                            has_bias=int(bias is not None), activation="none")
        inputs = [None] * len(spec.PHM_LINEAR.inputs)
        inputs[spec.X] = r1.inputs[0]
        inputs[spec.CORES] = gs.Constant(f"{name}.cores", cores)
        inputs[spec.SCALES] = _placeholder(f"{name}.scales", np.float32)
        inputs[spec.BIAS] = (gs.Constant(f"{name}.bias", _contiguous(bias)) if bias is not None
                             else _placeholder(f"{name}.bias", dtype))
        producer = out.inputs[0]
        producer.outputs.clear()
        graph.nodes.append(gs.Node(spec.PHM_LINEAR.op_type, name=name, domain=spec.DOMAIN, attrs=attrs,
                                   inputs=inputs, outputs=[out]))
    graph.cleanup().toposort()
    log.info("fuse_phm_linear: %d decomposed PHM projections → %s", count, spec.PHM_LINEAR.op_type)
    return count


# --- PHMFFN -----------------------------------------------------------------------------------

_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Sigmoid", "Tanh", "Erf", "Pow", "Relu", "Neg", "Sqrt", "Exp",
                "Gelu", "Identity"}
_MAX_REGION = 24


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(v)


_REFERENCE_ACTS = {  # spec.ACTIVATIONS in float64, the definitions the kernels implement
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "gelu": lambda v: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0))),
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))),
    "relu": lambda v: np.maximum(v, 0.0),
}
_NP_OPS = {
    "Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide, "Pow": np.power,
    "Sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "Tanh": np.tanh, "Erf": _erf, "Relu": lambda v: np.maximum(v, 0),
    "Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Identity": lambda v: v,
}


def _region(out: gs.Tensor, source: gs.Tensor) -> list[gs.Node] | None:
    """Nodes computing `out` from `source` alone (plus scalar constants), all elementwise, in
    evaluation order; None if anything else feeds in or an intermediate escapes the region."""
    nodes, stack, seen = [], [out], set()
    while stack:
        t = stack.pop()
        if t is source or id(t) in seen:
            continue
        seen.add(id(t))
        if const_value(t) is not None and const_value(t).size == 1:
            continue
        if len(t.inputs) != 1 or t.inputs[0].op not in _ELEMENTWISE or len(nodes) >= _MAX_REGION:
            return None
        node = t.inputs[0]
        if node not in nodes:
            nodes.append(node)
        stack.extend(node.inputs)
    if not nodes:
        return None
    members = {id(n) for n in nodes}
    for node in nodes:
        for t in node.outputs:
            if t is not out and any(id(c) not in members for c in t.outputs):
                return None
    if any(id(c) not in members for c in source.outputs):
        return None
    return list(reversed(nodes))


def _evaluate(nodes: list[gs.Node], source: gs.Tensor, out: gs.Tensor, v: np.ndarray) -> np.ndarray | None:
    values = {id(source): v}
    pending = list(nodes)
    for _ in range(len(nodes) + 1):
        for node in list(pending):
            args = []
            for t in node.inputs:
                if id(t) in values:
                    args.append(values[id(t)])
                elif const_value(t) is not None:
                    args.append(const_value(t).astype(np.float64).reshape(()))
                else:
                    break
            else:
                if node.op == "Gelu":
                    approx = node.attrs.get("approximate", "none")
                    res = _REFERENCE_ACTS["gelu_tanh" if approx == "tanh" else "gelu"](args[0])
                else:
                    res = _NP_OPS[node.op](*args)
                values[id(node.outputs[0])] = res
                pending.remove(node)
    return values.get(id(out))


def identify_activation(nodes: list[gs.Node], source: gs.Tensor, out: gs.Tensor) -> str | None:
    """Which spec activation the elementwise region computes (checked on [-8, 8]), else None."""
    v = np.linspace(-8.0, 8.0, 161)
    with np.errstate(all="ignore"):
        got = _evaluate(nodes, source, out, v)
        if got is None:
            return None
        for name in spec.ACTIVATIONS:
            if name in _REFERENCE_ACTS and np.allclose(got, _REFERENCE_ACTS[name](v), rtol=1e-5, atol=1e-6):
                return name
    return None


def _phm_source(t: gs.Tensor) -> gs.Node | None:
    node = _producer(t, spec.PHM_LINEAR.op_type)
    if node is None or node.attrs.get("activation") != "none":
        return None
    return node


def _projection(node: gs.Node | None, dtype) -> list:
    """(cores, scales, bias) inputs of a PHMLinear, or placeholders for an absent projection."""
    if node is None:
        return [_placeholder("", dtype), _placeholder("", np.float32), _placeholder("", dtype)]
    return [node.inputs[spec.CORES], node.inputs[spec.SCALES], node.inputs[spec.BIAS]]


def _match_ffn(down: gs.Node):
    """(mlp_type, gate|None, up, activation) when `down`'s input is a fusable MLP, else None."""
    h = down.inputs[spec.X]
    mul = _producer(h, "Mul")
    if mul is not None:
        for a, b in ((0, 1), (1, 0)):
            up = _phm_source(mul.inputs[b])
            if up is None or len(mul.inputs[b].outputs) != 1:
                continue
            act_out = mul.inputs[a]
            for cand in _sources(act_out):
                gate = _phm_source(cand)
                if gate is None or gate.inputs[spec.X] is not up.inputs[spec.X]:
                    continue
                region = _region(act_out, cand)
                act = identify_activation(region, cand, act_out) if region else None
                if act is not None:
                    return "swiglu", gate, up, act
    for cand in _sources(h):
        up = _phm_source(cand)
        region = _region(h, cand) if up is not None else None
        act = identify_activation(region, cand, h) if region else None
        if act is not None:
            return "plain", None, up, act
    return None


def _sources(t: gs.Tensor, limit: int = _MAX_REGION) -> list[gs.Tensor]:
    """Tensors produced by PHMLinear nodes that `t` depends on through elementwise ops."""
    found, stack, seen = [], [t], set()
    while stack and len(seen) < 4 * limit:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if _producer(cur, spec.PHM_LINEAR.op_type) is not None:
            found.append(cur)
            continue
        if len(cur.inputs) == 1 and cur.inputs[0].op in _ELEMENTWISE:
            stack.extend(cur.inputs[0].inputs)
    return found


def fuse_phm_ffn(graph: gs.Graph) -> int:
    """Fold PHMLinear gate/up + activation (+ mul) + PHMLinear down into PHMFFN. Returns how many.

    Fuses only when the three projections share n, B, bases and weight format (the op's contract)
    and the activation is one of spec.ACTIVATIONS; anything else stays as PHMLinear nodes.
    """
    count = 0
    for down in [n for n in graph.nodes if n.op == spec.PHM_LINEAR.op_type and n.attrs.get("activation") == "none"]:
        match = _match_ffn(down)
        if match is None:
            continue
        mlp_type, gate, up, act = match
        projs = [p for p in (gate, up, down) if p is not None]
        shared = ("n", "num_bases", "bases", "weight_format", "group_size")
        if any(p.attrs[a] != down.attrs[a] for p in projs for a in shared):
            log.info("fuse_phm_ffn: %s not fused: projections differ in n/B/bases/format", down.name)
            continue
        dtype = down.inputs[spec.CORES].dtype
        has_bias = int(any(p.attrs["has_bias"] for p in projs))
        name = f"phm_ffn_{count}"
        inputs = [None] * len(spec.PHM_FFN.inputs)
        inputs[spec.X] = up.inputs[spec.X]
        for role, first, node in (("gate", spec.GATE_CORES, gate), ("up", spec.UP_CORES, up),
                                  ("down", spec.DOWN_CORES, down)):
            cores, scales, bias = _projection(node, dtype)
            if node is not None and has_bias and not node.attrs["has_bias"]:
                bias = gs.Constant("", np.zeros((cores.shape[0] * node.attrs["n"],), dtype=dtype))
            for off, (t, what) in enumerate(((cores, "cores"), (scales, "scales"), (bias, "bias"))):
                if isinstance(t, gs.Constant):
                    t.name = f"{name}.{role}.{what}"
                inputs[first + off] = t
        attrs = _node_attrs(spec.PHM_FFN, **{a: down.attrs[a] for a in shared}, has_bias=has_bias,
                            activation=act, mlp_type=mlp_type)
        out = down.outputs[0]
        down.outputs.clear()
        graph.nodes.append(gs.Node(spec.PHM_FFN.op_type, name=name, domain=spec.DOMAIN, attrs=attrs,
                                   inputs=inputs, outputs=[out]))
        count += 1
    graph.cleanup().toposort()
    log.info("fuse_phm_ffn: %d MLPs → %s", count, spec.PHM_FFN.op_type)
    return count


# --- what is in a rewritten graph -------------------------------------------------------------

@dataclass
class PHMUnit:
    """One PHM node of a rewritten graph and the projections (in, out, B) it carries."""

    op: str
    name: str
    projections: list          # [(role, d_in, d_out, B)], roles in gate, up, down order
    activation: str
    mlp_type: str | None


def phm_units(graph: gs.Graph) -> list[PHMUnit]:
    """PHM nodes in topological order (so MLP blocks come in layer order)."""
    units = []
    for node in graph.nodes:
        if node.domain != spec.DOMAIN or node.op not in spec.OPS:
            continue
        n, b = node.attrs["n"], node.attrs["num_bases"]
        if node.op == spec.PHM_LINEAR.op_type:
            m, _, k = node.inputs[spec.CORES].shape
            projs = [("?", n * k, n * m, b)]
            units.append(PHMUnit(node.op, node.name, projs, node.attrs["activation"], None))
            continue
        roles = (("gate", spec.GATE_CORES), ("up", spec.UP_CORES), ("down", spec.DOWN_CORES))
        projs = []
        for role, idx in roles:
            if role == "gate" and node.attrs["mlp_type"] == "plain":
                continue
            m, _, k = node.inputs[idx].shape
            projs.append((role, n * k, n * m, b))
        units.append(PHMUnit(node.op, node.name, projs, node.attrs["activation"], node.attrs["mlp_type"]))
    return units


def share_tied_weights(graph: gs.Graph) -> int:
    """Tied input/output embeddings: the exporter writes the LM head as a second, transposed copy
    of the embedding matrix (a MatMul constant equal to the Gather table's transpose). Feed that
    MatMul from Transpose(table) instead, so the weights are stored once (TensorRT folds it)."""
    tables = [n.inputs[0] for n in graph.nodes if n.op == "Gather" and isinstance(n.inputs[0], gs.Constant)
              and len(n.inputs[0].shape) == 2]
    count = 0
    for node in [n for n in graph.nodes if n.op == "MatMul"]:
        w = node.inputs[1]
        if not isinstance(w, gs.Constant) or len(w.shape) != 2:
            continue
        for table in tables:
            if tuple(table.shape) == tuple(w.shape)[::-1] and _transposes(table, w):
                shared = gs.Variable(f"{table.name}.transposed", dtype=table.dtype)
                graph.nodes.append(gs.Node("Transpose", name=f"{table.name}/transpose", attrs={"perm": [1, 0]},
                                           inputs=[table], outputs=[shared]))
                node.inputs[1] = shared
                count += 1
                break
    graph.cleanup().toposort()
    log.info("share_tied_weights: %d LM head(s) now read the embedding table", count)
    return count
