"""`fuse_decoder(model, spec) -> dict`: a traced llama-family decoder's attention and norms as ONNX Runtime's fused ops.

Only the ONNX Runtime file gets this (the TensorRT twin keeps the standard ops TensorRT fuses
itself). Per decoder layer, on the graph the tracer named by module (`/…/layers.{i}/self_attn/…`):

- the attention core, everything of `self_attn` between the q/k/v projections and o_proj's input
  (reshapes, rotary, the KV-cache Concat, GQA's repeat, scores, mask, softmax), becomes one
  `com.microsoft::GroupQueryAttention` with its rotary embedding (cos/sin tables computed by the
  model's own rotary module, `attention_spec`). The projections stay as they were traced (float,
  INT4 DequantizeLinear, AWQ Mul); float q/k/v weights are packed into one MatMul whose weight is a
  Concat of the three initializers, which ONNX Runtime folds at load (no second copy in the file);
- a residual Add followed by an RMSNorm (`input_layernorm`, `post_attention_layernorm`, the final
  `norm`) becomes one `com.microsoft::SkipSimplifiedLayerNormalization`, whose fourth output is
  the residual sum the next Add reads.

The decoder's I/O contract is unchanged (docs/export.md § I/O contract), with one restriction:
GroupQueryAttention counts each row's tokens from `attention_mask` (seqlens_k = sum - 1), so a
row's ones must come first (no left padding; the runtime moves a left-padded batch's tokens to
the front, runtime/ort_backend.py). `position_ids` stays an input but the op computes the same
positions itself (row length so far), which is what a llama-family model's positions are for an
unpadded row. With past/present of the past length it runs like the traced graph (polygraphy's
reference check in commands.sh); bound to one buffer of the context's length per layer
(IOBinding), GroupQueryAttention appends in place and the cache is never copied.

What it fuses, and what it leaves (`attention_spec` says why in the manifest): llama, mistral
(without a sliding window) and qwen2 text decoders, LLaVA's language model of those types, with
a static rotary embedding and head_dim a multiple of 16 (the CPU kernel's requirement). Qwen2-VL's
M-RoPE, GPT-2, Qwen3's q/k norms and every layer whose traced attention does not have the expected
inputs and outputs keep the traced graph (a layer is fused whole or not at all).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .skeleton import drop_unused, graph_index

log = logging.getLogger(__name__)

__all__ = ["AttentionSpec", "attention_spec", "fuse_decoder"]

FUSED_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
_MS = "com.microsoft"
_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_NORM_OPS = {"Cast", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal", "Mul"}
_SCOPE = re.compile(r"/layers\.(\d+)/(self_attn|mlp|input_layernorm|post_attention_layernorm)/(?:(\w+_proj)/)?")
_RESIDUAL = re.compile(r"/layers\.\d+/Add(_\d+)?$")  # a decoder layer's own residual Adds
_FINAL_NORM = re.compile(r"^/(?:[^/]+/)*norm/[^/]+$")


@dataclass
class AttentionSpec:
    """What GroupQueryAttention needs that the graph does not say."""

    num_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    cos: np.ndarray  # (positions, head_dim / 2) float32: cos(pos · inv_freq) · attention_scaling
    sin: np.ndarray


def attention_spec(model, positions: int) -> AttentionSpec | str:
    """The spec of `model`'s text decoder for `positions` positions, or why its attention keeps the
    traced graph."""
    import torch

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    rope = (getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {})
    if "mrope_section" in rope or rope.get("type") == "mrope":
        return "M-RoPE (three rows of positions) is not fused"
    if cfg.model_type not in FUSED_TYPES:
        return f"{cfg.model_type} attention is not fused (fused: {', '.join(FUSED_TYPES)})"
    if getattr(cfg, "sliding_window", None) and (cfg.model_type != "qwen2" or getattr(cfg, "use_sliding_window", False)):
        return "sliding-window attention is not fused"
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE:
        return f"rotary type {rope_type!r} depends on the sequence length (fused: {', '.join(STATIC_ROPE)})"
    if getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embeddings are not fused"
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (ONNX Runtime's GroupQueryAttention needs one)"
    rotary = next((m for name, m in model.named_modules()
                   if type(m).__name__.endswith("RotaryEmbedding") and "vision" not in name), None)
    attn = next((m for name, m in model.named_modules() if name.endswith("layers.0.self_attn")), None)
    if rotary is None or attn is None:
        return "no rotary embedding / attention module found"
    # A fresh module on the CPU: the model's own may hold placeholder buffers while it streams.
    fresh = type(rotary)(config=cfg)
    with torch.no_grad():
        cos, sin = fresh(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
    half = head_dim // 2
    return AttentionSpec(heads, kv_heads, head_dim, float(getattr(attn, "scaling", head_dim ** -0.5)),
                         cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy())


def _attrs_value(node: onnx.NodeProto):
    return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))


class _Graph:
    """Who produces and who reads each tensor, and the scope each node belongs to."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer, self.readers = graph_index(self.graph.node)
        self.outputs = {o.name for o in self.graph.output}
        self.scopes: dict[tuple, list] = {}
        for n in self.graph.node:
            m = _SCOPE.search(n.name)
            if m:
                self.scopes.setdefault((int(m[1]), m[2], m[3]), []).append(n)
            elif _FINAL_NORM.match(n.name) and "/layers." not in n.name:
                self.scopes.setdefault((None, "norm", None), []).append(n)

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (an epsilon), else None; weights are never read."""
        if name in self.inits:
            if int(np.prod(self.inits[name].dims)) != 1:
                return None
            value = numpy_helper.to_array(self.inits[name])
        elif name in self.producer and self.producer[name].op_type == "Constant":
            value = _attrs_value(self.producer[name])
        else:
            return None
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    def boundary(self, nodes: list) -> tuple[set, set]:
        """(tensors `nodes` read from outside, tensors they produce that something outside reads)."""
        ids = {id(n) for n in nodes}
        made = {o for n in nodes for o in n.output}
        reads = {i for n in nodes for i in n.input if i and i not in made}
        used = {o for o in made if o in self.outputs or any(id(r) not in ids for r in self.readers.get(o, []))}
        return reads, used


class _Fuser:
    def __init__(self, model: onnx.ModelProto, spec: AttentionSpec):
        self.g = _Graph(model)
        self.spec = spec
        past = next(i for i in model.graph.input if i.name.startswith("past_key_values."))
        self.dtype = past.type.tensor_type.elem_type
        self.remove: set[int] = set()
        self.head: list = []     # nodes computed once, before the layers
        self.added: dict[int, list] = {}  # id(anchor node) -> nodes placed where it stood
        self.inits: list = []
        self.redirect: dict[str, str] = {}
        self.attention_ids = {id(n) for k, nodes in self.g.scopes.items() if k[1] == "self_attn" and k[2] is None
                              for n in nodes}

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def shared_inputs(self) -> tuple[str, str, str]:
        """seqlens_k, total_sequence_length and query_seqlens (int32), from attention_mask and the
        first input's sequence length, computed once for every layer."""
        first = self.g.graph.input[0].name  # input_ids or inputs_embeds
        one = self.const("gqa/one", np.array([1], np.int64))
        one_s = self.const("gqa/one_scalar", np.array(1, np.int64))

        def node(op, inputs, out, **kw):
            self.head.append(helper.make_node(op, inputs, [out], name=out, **kw))
            return out

        total = node("ReduceSum", ["attention_mask", one], "gqa/tokens", keepdims=0)
        seqlens = node("Cast", [node("Sub", [total, one], "gqa/seqlens_k_i64")], "gqa/seqlens_k", to=TensorProto.INT32)
        width = node("Gather", [node("Shape", ["attention_mask"], "gqa/mask_shape"), one_s], "gqa/total_i64", axis=0)
        total_len = node("Cast", [width], "gqa/total_sequence_length", to=TensorProto.INT32)
        seq = node("Gather", [node("Shape", [first], "gqa/input_shape"), one], "gqa/sequence", axis=0)
        query = node("Cast", [node("Min", [seq, total], "gqa/query_i64")], "gqa/query_seqlens", to=TensorProto.INT32)
        return seqlens, total_len, query

    def projection(self, layer: int, proj: str, core_ids: set) -> tuple[str, list] | None:
        """(the tensor the attention core reads from this projection, the projection's nodes)."""
        nodes = self.g.scopes.get((layer, "self_attn", proj))
        if not nodes:
            return None
        _, used = self.g.boundary(nodes)
        out = [t for t in used if any(id(r) in core_ids for r in self.g.readers.get(t, []))]
        return (out[0], nodes) if len(out) == 1 else None  # (AWQ's input Mul may feed k and v too)

    def pack(self, scopes: list[list], base: str) -> tuple[str, list[str], list[int]] | None:
        """One MatMul (+ Add) over the Concat of the projections' float weights (and biases), where
        each scope is one MatMul (+ bias Add) of the same input: (its output, the projections'
        outputs it replaces, their widths); None otherwise (INT4 DequantizeLinear, AWQ Mul …).
        ONNX Runtime folds the Concat at load, so the file keeps one copy of each weight."""
        parts = []
        for nodes in scopes:
            mm = [n for n in nodes if n.op_type == "MatMul"]
            add = [n for n in nodes if n.op_type == "Add"]
            if len(mm) != 1 or len(nodes) != 1 + len(add) or len(add) > 1:
                return None
            w = self.g.inits.get(mm[0].input[1])
            if w is None or w.data_type != self.dtype or len(w.dims) != 2:
                return None
            bias = None
            if add:
                bias = next((i for i in add[0].input if i != mm[0].output[0]), None)
                if bias not in self.g.inits or add[0].input[0 if add[0].input[1] == bias else 1] != mm[0].output[0]:
                    return None
            parts.append((mm[0], w, bias, (add or mm)[0].output[0]))
        if len({p[0].input[0] for p in parts}) != 1 or len({bool(p[2]) for p in parts}) != 1:
            return None
        x, out = parts[0][0].input[0], f"{base}/MatMul_output_0"
        nodes = [helper.make_node("Concat", [p[1].name for p in parts], [f"{base}/weight"], axis=1,
                                  name=f"{base}/ConcatWeight"),
                 helper.make_node("MatMul", [x, f"{base}/weight"], [out], name=f"{base}/MatMul")]
        if parts[0][2]:
            nodes += [helper.make_node("Concat", [p[2] for p in parts], [f"{base}/bias"], axis=0,
                                       name=f"{base}/ConcatBias"),
                      helper.make_node("Add", [out, f"{base}/bias"], [f"{base}/Add_output_0"], name=f"{base}/Add")]
            out = f"{base}/Add_output_0"
        for nodes_ in scopes:
            self.remove.update(id(n) for n in nodes_)
        self.added.setdefault(id(parts[0][0]), []).extend(nodes)
        return out, [p[3] for p in parts], [int(p[1].dims[1]) for p in parts]

    def gate_up(self, layer: int) -> bool:
        """A dense MLP's gate and up projections as one MatMul and a Split into their two outputs."""
        scopes = [self.g.scopes.get((layer, "mlp", p)) for p in ("gate_proj", "up_proj")]
        if not all(scopes) or any(self.g.boundary(nodes)[1].__len__() != 1 for nodes in scopes):
            return False
        packed = self.pack(scopes, f"/fused/layers.{layer}/gate_up_proj")
        if packed is None:
            return False
        out, outputs, widths = packed
        split = self.const(f"/fused/layers.{layer}/gate_up_proj/split", np.array(widths, np.int64))
        self.added.setdefault(id(scopes[0][0]), []).append(helper.make_node(
            "Split", [out, split], outputs, axis=-1, name=f"/fused/layers.{layer}/gate_up_proj/Split"))
        return True

    def attention(self, layer: int, shared: tuple, tables: tuple[str, str]) -> str | None:
        """Replace one layer's attention core by GroupQueryAttention; None when done, else why not."""
        core = self.g.scopes.get((layer, "self_attn", None))
        if not core:
            return "no traced attention"
        core_ids = {id(n) for n in core}
        projections = {p: self.projection(layer, p, core_ids) for p in ("q_proj", "k_proj", "v_proj")}
        if any(v is None for v in projections.values()):
            return "q/k/v projections not found"
        o_nodes = self.g.scopes.get((layer, "self_attn", "o_proj"), [])
        reads, used = self.g.boundary(core)
        # Tensors only other layers' attention reads (the tracer shares the rotary tables' Unsqueeze)
        # go with them: every layer is fused or none is.
        used = {t for t in used if t in self.g.outputs or any(
            id(r) not in self.attention_ids for r in self.g.readers.get(t, []))}
        past = [f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"]
        present = [f"present.{layer}.key", f"present.{layer}.value"]
        o_in = [t for t in used if t not in present]
        if sorted(used) != sorted(present + o_in) or len(o_in) != 1 or not set(present) <= used:
            return "attention outputs are not (o_proj input, present key, present value)"
        o_ids = {id(n) for n in o_nodes}
        if any(id(r) not in core_ids | o_ids for r in self.g.readers.get(o_in[0], [])):
            return "the attention output is read outside o_proj"
        qkv = [projections[p][0] for p in ("q_proj", "k_proj", "v_proj")]
        for t in reads - set(qkv) - set(past):
            src = self.g.producer.get(t)
            shape_only = all(r.op_type == "Shape" for r in self.g.readers[t] if id(r) in core_ids)
            if src is not None and _SCOPE.search(src.name) and id(src) not in self.attention_ids and not shape_only:
                return f"the attention reads {t} from another layer part"
        packed = self.pack([projections[p][1] for p in ("q_proj", "k_proj", "v_proj")],
                           f"/fused/layers.{layer}/qkv_proj")
        inputs = [packed[0], "", ""] if packed else qkv
        seqlens, total_len, query = shared
        s = self.spec
        gqa = helper.make_node(
            "GroupQueryAttention", [*inputs, *past, seqlens, total_len, *tables, *[""] * 7, query],
            [o_in[0], *present], name=f"/fused/layers.{layer}/GroupQueryAttention", domain=_MS,
            num_heads=s.num_heads, kv_num_heads=s.kv_heads, scale=s.scale, do_rotary=1, rotary_interleaved=0)
        self.remove.update(core_ids)
        self.added.setdefault(id(core[0]), []).append(gqa)
        return None

    def norm(self, key: tuple) -> bool:
        """Residual Add + RMSNorm scope -> SkipSimplifiedLayerNormalization."""
        nodes = self.g.scopes.get(key)
        if not nodes or any(n.op_type not in _NORM_OPS for n in nodes) or any(id(n) in self.remove for n in nodes):
            return False
        reads, used = self.g.boundary(nodes)
        acts = [t for t in reads if t not in self.g.inits and self.g.scalar(t) is None]
        if len(acts) != 1:
            return False
        x = acts[0]
        gamma = [i for n in nodes if n.op_type == "Mul" for i in n.input if i in self.g.inits
                 and len(self.g.inits[i].dims) == 1 and self.g.inits[i].dims[0] > 1]
        eps = [self.g.scalar(i) for n in nodes if n.op_type == "Add" for i in n.input if self.g.scalar(i) is not None]
        outs = [t for t in used if self.g.producer[t].op_type == "Mul"]
        if len(gamma) != 1 or len(eps) != 1 or len(outs) != 1:
            return False
        # The tracer may let the residual read the norm's fp32 Cast of x: in a float32 graph that is x.
        for t in set(used) - set(outs):
            cast = self.g.producer[t]
            to = next((a.i for a in cast.attribute if a.name == "to"), None)
            if cast.op_type != "Cast" or cast.input[0] != x or to != self.dtype:
                return False
        add = self.g.producer.get(x)
        if add is None or add.op_type != "Add" or id(add) in self.remove or not _RESIDUAL.search(add.name):
            return False
        for t in set(used) - set(outs):
            self.redirect[t] = x
        ids = {id(n) for n in nodes}
        keep_sum = x in self.g.outputs or any(id(r) not in ids for r in self.g.readers.get(x, [])) or \
            any(self.g.readers.get(t) for t in set(used) - set(outs))
        node = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], gamma[0]],
                                [outs[0], "", "", x if keep_sum else ""], domain=_MS, epsilon=eps[0],
                                name=f"{nodes[0].name.rsplit('/', 1)[0]}/SkipSimplifiedLayerNorm")
        self.remove.add(id(add))
        self.remove.update(id(n) for n in nodes)
        self.added.setdefault(id(nodes[-1]), []).append(node)
        return True

    def apply(self) -> None:
        graph = self.g.graph
        nodes = list(self.head)
        for n in graph.node:
            if id(n) not in self.remove:
                nodes.append(n)
            nodes.extend(self.added.get(id(n), []))
        for n in nodes:
            for i, name in enumerate(n.input):
                if name in self.redirect:
                    n.input[i] = self.redirect[name]
        # Topological order: an added node goes where its anchor stood, but may read tensors made
        # later in the traced order (o_proj's input comes after q's MatMul); sort by dependencies.
        del graph.node[:]
        graph.node.extend(_toposort(nodes))
        drop_unused(self.g.model, self.inits)
        if not any(o.domain == _MS for o in self.g.model.opset_import):
            self.g.model.opset_import.append(helper.make_opsetid(_MS, 1))


def _toposort(nodes: list) -> list:
    """`nodes` in an order where every node follows the producers of its inputs, otherwise as given."""
    producer = {o: n for n in nodes for o in n.output}
    done, seen, out = set(), set(), []
    for first in nodes:
        stack = [(first, False)]
        while stack:
            node, ready = stack.pop()
            if ready:
                done.add(id(node))
                out.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((producer[i], False) for i in node.input if i in producer and id(producer[i]) not in done)
    return out


def fuse_decoder(model: onnx.ModelProto, spec: AttentionSpec | str) -> dict:
    """Fuse `model`'s attention layers and residual norms in place; returns the manifest record
    ({"attention": "GroupQueryAttention", …} or {"attention": "traced", "reason": …})."""
    if isinstance(spec, str):
        return {"attention": "traced", "reason": spec}
    fuser = _Fuser(model, spec)
    layers = sorted({k[0] for k in fuser.g.scopes if k[1] == "self_attn"})
    if not layers:
        return {"attention": "traced", "reason": "no attention scopes in the traced graph"}
    dtype = helper.tensor_dtype_to_np_dtype(fuser.dtype)
    tables = (fuser.const("gqa/cos_cache", spec.cos.astype(dtype)), fuser.const("gqa/sin_cache", spec.sin.astype(dtype)))
    shared = fuser.shared_inputs()
    for layer in layers:
        why = fuser.attention(layer, shared, tables)
        if why is not None:  # all or nothing: a half-fused decoder has two cache layouts
            log.info("attention of layer %d keeps the traced graph: %s", layer, why)
            return {"attention": "traced", "reason": f"layer {layer}: {why}"}
    norms = sum(fuser.norm(k) for k in sorted(fuser.g.scopes, key=lambda k: (k[0] is None, k[0] or 0, k[1]))
                if k[1] in ("input_layernorm", "post_attention_layernorm", "norm"))
    gate_up = sum(fuser.gate_up(layer) for layer in layers)
    packed = sum(1 for nodes in fuser.added.values() for n in nodes if n.name.endswith("/qkv_proj/MatMul"))
    fuser.apply()
    log.info("fused %d attention layers (GroupQueryAttention), %d residual norms", len(layers), norms)
    return {"attention": "GroupQueryAttention", "layers": len(layers), "packed_qkv": packed,
            "packed_gate_up": gate_up, "skip_norms": norms, "positions": int(spec.cos.shape[0]), "padding": "right"}
