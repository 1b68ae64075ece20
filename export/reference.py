"""ONNX Runtime reference of the PHM ops: model-local ONNX functions with standard-op bodies.

A `com.phm::PHMLinear` / `PHMFFN` node runs in ONNX Runtime (CPU or CUDA, also Polygraphy's
--onnxrt runner, which cannot load custom-op libraries) when the model carries a FunctionProto of
the same domain and name. The bodies read the node's attributes by reference (n, num_bases,
bases, has_bias, activation, mlp_type), so one function serves every node of a model whatever
its shape or B:

    PHMLinear: M = reshape(transpose(reshape(bases, (B, n, n)), (1, 0, 2)), (n·B, n))
               y = reshape(reshape(M @ reshape(x, (-1, n, k)), (-1, B·k)) @ reshape(cores, (m, B·k))ᵀ,
                           (…, n·m)) + has_bias·bias, then the activation
    PHMFFN:    swiglu: down(act(gate(x)) ⊙ up(x));  plain: down(act(up(x)))  (via PHMLinear calls)

String attributes are turned into numbers with ai.onnx.ml LabelEncoder (standard ONNX-ML), the
activation is a one-hot blend of the spec's activations (exact: weights are 0 or 1). Cores are
`weight_format="float"`, `"int8"` (dequantised in the body: Cast to float32 · per-row scales) or
`"int4"` (nibbles unpacked with float arithmetic, times the group scales; an If picks the branch).

TensorRT ≤ 10.6 would import such a function instead of our plugin, so the TensorRT file is written
without `model.functions` (`strip_functions`); both come from the same rewritten graph.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from phm.trt_plugins import spec

__all__ = ["ONNX_ML", "attach_functions", "phm_functions", "strip_functions"]

ONNX_ML = ("ai.onnx.ml", 2)
OPSET = 17


class _Body:
    """Tiny builder of a function body: unique value names, nodes in order."""

    def __init__(self, prefix: str):
        self.nodes, self.prefix, self.count = [], prefix, 0

    def op(self, op_type: str, *inputs: str, domain: str = "", n_out: int = 1, **attrs) -> str | list[str]:
        outs = [f"{self.prefix}{self.count}_{i}" for i in range(n_out)]
        self.count += 1
        node = helper.make_node(op_type, list(inputs), outs, domain=domain or None)
        for key, value in attrs.items():
            if isinstance(value, _Ref):
                node.attribute.append(onnx.AttributeProto(name=key, type=value.type, ref_attr_name=value.name))
            else:
                node.attribute.append(helper.make_attribute(key, value))
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def ints(self, *values: int) -> str:
        return self.op("Constant", value_ints=list(values))

    def code(self, attr: str, keys: tuple[str, ...], like: str) -> dict[str, str]:
        """{key: 0/1 scalar in x's dtype}: which of `keys` the string attribute `attr` equals."""
        s = self.op("Constant", value_string=_Ref(attr, onnx.AttributeProto.STRING))
        out = {}
        for key in keys:
            hit = self.op("LabelEncoder", s, domain=ONNX_ML[0], keys_strings=[key], values_floats=[1.0],
                          default_float=0.0)
            out[key] = self.op("CastLike", hit, like)
        return out


class _Ref:
    def __init__(self, name: str, type_: int):
        self.name, self.type = name, type_


def _activation(b: _Body, v: str, like: str) -> str:
    """Σ_a [activation == a]·f_a(v) over spec.ACTIVATIONS (exactly one weight is 1)."""
    w = b.code("activation", spec.ACTIVATIONS, like)
    c = {x: b.op("CastLike", b.op("Constant", value_float=x), like) for x in (0.5, 1.0, 0.044715, 2.0)}
    sqrt2 = b.op("CastLike", b.op("Constant", value_float=2.0 ** 0.5), like)
    sqrt_2_pi = b.op("CastLike", b.op("Constant", value_float=(2.0 / 3.141592653589793) ** 0.5), like)
    acts = {
        "none": v,
        "silu": b.op("Mul", v, b.op("Sigmoid", v)),
        "gelu": b.op("Mul", b.op("Mul", c[0.5], v), b.op("Add", c[1.0], b.op("Erf", b.op("Div", v, sqrt2)))),
        "gelu_tanh": b.op("Mul", b.op("Mul", c[0.5], v), b.op("Add", c[1.0], b.op("Tanh", b.op(
            "Mul", sqrt_2_pi, b.op("Add", v, b.op("Mul", c[0.044715], b.op("Mul", v, b.op("Mul", v, v)))))))),
        "relu": b.op("Relu", v),
    }
    missing = set(spec.ACTIVATIONS) - set(acts)
    if missing:
        raise ValueError(f"ORT reference has no body for activation(s) {sorted(missing)} of the spec")
    total = None
    for name in spec.ACTIVATIONS:
        term = b.op("Mul", w[name], acts[name])
        total = term if total is None else b.op("Add", total, term)
    return total


def _attr_names(op: spec.OpSpec) -> list[str]:
    return [a.name for a in op.attributes]


def _dequantized_cores(b: _Body, cores: str, scales: str, like: str) -> str:
    """Cores as x's dtype, by weight_format (the layouts of phm.trt_plugins.quant): an If picks the
    INT4 unpacking or the float/INT8 blend (the INT4 shapes differ, so they cannot share a blend)."""
    codes = b.code("weight_format", ("int4", "int8"), scales)   # attribute references stay in the body
    is_int4 = b.op("Cast", codes["int4"], to=TensorProto.BOOL)
    is_int8 = b.op("Cast", codes["int8"], to=TensorProto.FLOAT)
    branches = []
    for name, body in (("int4", lambda sub: _int4_body(sub, cores, scales, like)),
                       ("int8_or_float", lambda sub: _int8_or_float_body(sub, cores, scales, like, is_int8))):
        sub = _Body(f"{cores}_{name}_")
        out = body(sub)
        sub.nodes.append(helper.make_node("Identity", [out], [f"{cores}_{name}_out"]))
        branches.append(helper.make_graph(sub.nodes, name, [], [onnx.ValueInfoProto(name=f"{cores}_{name}_out")]))
    return b.op("If", is_int4, then_branch=branches[0], else_branch=branches[1])


def _int8_or_float_body(b: _Body, cores: str, scales: str, like: str, is_int8: str) -> str:
    """"float" as stored; "int8" q (m, B, k) · scales (m,) in float32, then cast. One blend serves both
    formats (the float case multiplies by 1: its scales input is the (1,) placeholder, never read)."""
    # (m, 1, 1) | (1, 1, 1). The first m scales: the same for int8 (and the float placeholder), and a
    # shape that shape inference can match to any cores when this branch is inferred for an INT4 node
    first_m = b.op("Slice", b.op("Reshape", scales, b.ints(-1)), b.ints(0),
                   b.op("Slice", b.op("Shape", cores), b.ints(0), b.ints(1)))
    s = b.op("Reshape", first_m, b.ints(-1, 1, 1))
    one = b.op("Constant", value_float=1.0)
    factor = b.op("Add", b.op("Mul", is_int8, s), b.op("Sub", one, is_int8))
    return b.op("CastLike", b.op("Mul", b.op("Cast", cores, to=TensorProto.FLOAT), factor), like)


def _int4_body(b: _Body, cores: str, scales: str, like: str) -> str:
    """"int4": bytes (m, B, k/2) → signed nibbles (low nibble = element 2c) in float32 arithmetic
    (opset 17 has no bitwise ops), times scales (m, B, k/G) broadcast over their groups, then cast."""
    f = lambda v: b.op("Constant", value_float=v)  # noqa: E731
    p = b.op("Cast", cores, to=TensorProto.FLOAT)                                 # -128..127
    u = b.op("Where", b.op("Less", p, f(0.0)), b.op("Add", p, f(256.0)), p)       # the byte 0..255
    hi = b.op("Floor", b.op("Div", u, f(16.0)))
    lo = b.op("Sub", u, b.op("Mul", hi, f(16.0)))

    def signed(v: str) -> str:
        return b.op("Where", b.op("GreaterOrEqual", v, f(8.0)), b.op("Sub", v, f(16.0)), v)

    axis = b.ints(-1)
    pairs = b.op("Concat", b.op("Unsqueeze", signed(lo), axis), b.op("Unsqueeze", signed(hi), axis), axis=-1)
    groups = b.op("Reshape", pairs, b.op("Concat", b.op("Shape", scales), b.ints(-1), axis=0))   # (m, B, k/G, G)
    scaled = b.op("Mul", groups, b.op("Unsqueeze", b.op("Cast", scales, to=TensorProto.FLOAT), axis))
    full = b.op("Reshape", scaled, b.op("Concat", b.op("Slice", b.op("Shape", cores), b.ints(0), b.ints(2)),
                                        b.ints(-1), axis=0))                         # (m, B, k)
    return b.op("CastLike", full, like)


def phm_linear_function(opset: int = OPSET) -> onnx.FunctionProto:
    op = spec.PHM_LINEAR
    x, cores, scales, bias = op.input_names
    b = _Body("l")
    bases = b.op("Constant", value_floats=_Ref("bases", onnx.AttributeProto.FLOATS))
    n1 = b.op("Reshape", b.op("Constant", value_int=_Ref("n", onnx.AttributeProto.INT)), b.ints(1))
    b1 = b.op("Reshape", b.op("Constant", value_int=_Ref("num_bases", onnx.AttributeProto.INT)), b.ints(1))
    h = b.op("Reshape", bases, b.op("Concat", b1, n1, n1, axis=0))                # (B, n, n)
    mix_f = b.op("Reshape", b.op("Transpose", h, perm=[1, 0, 2]),
                 b.op("Concat", b.op("Mul", n1, b1), n1, axis=0))                 # (n·B, n)
    mix = b.op("CastLike", mix_f, x)
    deq = _dequantized_cores(b, cores, scales, x)                                 # (m, B, k), x's dtype
    cshape = b.op("Shape", deq)                                                   # [m, B, k]
    m1 = b.op("Slice", cshape, b.ints(0), b.ints(1))
    k1 = b.op("Slice", cshape, b.ints(2), b.ints(3))
    bk = b.op("Mul", b1, k1)
    xb = b.op("Reshape", x, b.op("Concat", b.ints(-1), n1, k1, axis=0))           # (T, n, k)
    z = b.op("Reshape", b.op("MatMul", mix, xb), b.op("Concat", b.ints(-1), bk, axis=0))  # (T·n, B·k)
    a_cat_t = b.op("Transpose", b.op("Reshape", deq, b.op("Concat", m1, bk, axis=0)),
                   perm=[1, 0])                                                   # (B·k, m)
    lead = b.op("Slice", b.op("Shape", x), b.ints(0), b.ints(-1))
    y = b.op("Reshape", b.op("MatMul", z, a_cat_t), b.op("Concat", lead, b.op("Mul", n1, m1), axis=0))
    has_bias = b.op("CastLike", b.op("Constant", value_int=_Ref("has_bias", onnx.AttributeProto.INT)), x)
    y = b.op("Add", y, b.op("Mul", has_bias, bias))
    out = _activation(b, y, x)
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    return helper.make_function(spec.DOMAIN, op.op_type, list(op.input_names), ["y"], b.nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid(*ONNX_ML)],
                                attributes=_attr_names(op), doc_string=op.doc)


def phm_ffn_function(opset: int = OPSET) -> onnx.FunctionProto:
    """PHMFFN through three PHMLinear calls; an If picks gate (swiglu) or up (plain) as the
    activation's input, so the placeholder gate of a plain MLP is never read."""
    op = spec.PHM_FFN
    names = op.input_names
    x = names[spec.X]
    b = _Body("f")
    shared = ("n", "num_bases", "bases", "weight_format", "group_size", "has_bias")
    refs = {a: _Ref(a, getattr(onnx.AttributeProto, op.attribute(a).onnx_type)) for a in shared}

    def linear(inp: str, first: int, activation: str = "none") -> str:
        return b.op(spec.PHM_LINEAR.op_type, inp, names[first], names[first + 1], names[first + 2],
                    domain=spec.DOMAIN, activation=activation, **refs)

    swiglu = b.code("mlp_type", ("swiglu",), x)["swiglu"]
    up = linear(x, spec.UP_CORES)
    branch_out = []
    for first in (spec.GATE_CORES, spec.UP_CORES):
        outs = [f"f_sel{first}_{i}" for i in range(3)]
        nodes = [helper.make_node("Identity", [names[first + i]], [outs[i]]) for i in range(3)]
        vinfo = [onnx.ValueInfoProto(name=o) for o in outs]
        branch_out.append(helper.make_graph(nodes, f"select_{first}", [], vinfo))
    cond = b.op("Cast", swiglu, to=TensorProto.BOOL)
    sel = b.op("If", cond, n_out=3, then_branch=branch_out[0], else_branch=branch_out[1])
    pre = b.op(spec.PHM_LINEAR.op_type, x, *sel, domain=spec.DOMAIN, activation="none", **refs)
    act = _activation(b, pre, x)
    one = b.op("CastLike", b.op("Constant", value_float=1.0), x)
    mult = b.op("Add", b.op("Mul", swiglu, up), b.op("Sub", one, swiglu))        # up (swiglu) | 1 (plain)
    h = b.op("Mul", act, mult)
    y = linear(h, spec.DOWN_CORES)
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return helper.make_function(spec.DOMAIN, op.op_type, list(names), ["y"], b.nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid(*ONNX_ML),
                                 helper.make_opsetid(spec.DOMAIN, 1)],
                                attributes=_attr_names(op), doc_string=op.doc)


def phm_functions(opset: int = OPSET) -> list[onnx.FunctionProto]:
    """The reference functions, their bodies at the model's default-domain opset (ONNX requires the
    two to agree; the bodies' ops mean the same from opset 17 to 21)."""
    return [phm_linear_function(opset), phm_ffn_function(opset)]


def _ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` with the PHM reference functions (the ONNX Runtime twin)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.functions[:]
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    out.functions.extend(phm_functions(opset))
    _ensure_opset(out, spec.DOMAIN, 1)
    _ensure_opset(out, *ONNX_ML)
    return out


def strip_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` without model-local functions (the TensorRT file; docs/design.md §4)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.functions[:]
    keep = [o for o in out.opset_import if o.domain != ONNX_ML[0]]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    _ensure_opset(out, spec.DOMAIN, 1)
    return out
