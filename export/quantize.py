"""INT8 explicit quantization of a rewritten graph (docs/design.md §3.4): what `phm-export --int8` adds.

    plan = plan_int8(graph, lm_head=False)                 # which MatMuls get what
    acts = {name: rows for each name in plan.activation_tensors}   # capture.py: from the PyTorch model
    scales = choose_scales(plan, acts, "mse")              # rotation, (SmoothQuant α,) amax per tensor
    counts = quantize_graph(graph, plan, scales, types)     # Q/DQ + INT8 PHM cores, in place

The export calibrates layer by layer (capture.py: the rows each W8A8 linear reads, from the model
streamed from the checkpoint) and chooses each tensor's scale with `choose_scale` as soon as its rows
are in. Weights are never loaded for the whole graph: a streamed weight (weights.py)
becomes INT8 values and scales that are computed when the data file is written, one tensor at a time
(`DerivedWeight`); only small in-memory weights are quantized on the spot.

Dense linears are MatMuls whose second input is a constant 2-D weight W (K, N) (or the transpose of
one: a tied LM head reads Transpose(embedding table)). They are classified by graph structure, not by
names: a linear whose output reaches an activation×activation MatMul (Q·Kᵀ, P·V) through non-linear
ops, or whose input comes from one, is an attention projection (q/k/v feed the scores, o reads the
context); a linear whose output is a graph output is the LM head; anything else is a dense MLP
linear (a dense model, or an MLP the rewrite left alone).

What each gets (TensorRT 10 explicit quantization, ONNX opset 17 as exported):
- attention (and the LM head with `lm_head=True`): W8A8. The input activation goes through
  QuantizeLinear → DequantizeLinear with one per-tensor scale from the calibrator (one Q/DQ pair per
  tensor, shared by q/k/v), after an orthogonal rotation x·Q computed in the graph (rotate.py; Qᵀ·W
  folded into the weight; on by default) and/or SmoothQuant smoothing (by default only without the
  rotation): Mul(x, 1/s) before the Q and diag(s)·W in the weight, α chosen per tensor on held-out
  calibration activations (`choose_scales`); the weight is stored as an INT8 initializer with per-output-channel scales
  (max |W[:, n]| / 127) feeding DequantizeLinear(axis=1: the channel axis of a MatMul weight (K, N)).
  TensorRT fuses DQ → MatMul ← DQ into an INT8 GEMM.
- dense MLP linears: INT8 weight-only (weight DQ, activations float): the same treatment as the PHM
  cores, so a dense model and its PHM student are quantized alike.
- PHM nodes: weight_format "int8", cores from `phm.trt_plugins.quant.quantize_cores_int8` (int8
  (m, B, k) + float32 per-row scales (m,) as the scales input); their activations are fp16 (what the
  plugins accept for quantized cores), so in an fp32 graph each gets a Cast to fp16 in and back out.

fp16 activations: opset-17 QuantizeLinear takes float32 only (fp16 inputs need opset 19, and moving
the whole graph to opset ≥ 18 changes other ops, e.g. ReduceMean's axes become an input). So in an
fp16 graph every W8A8 linear is a float32 island: Cast(fp16→fp32) → Q → DQ → MatMul ← DQ(W), then
Cast back to fp16. DQ stays adjacent to the MatMul, which is what TensorRT's Q/DQ fusion needs; the
casts sit outside the fused INT8 GEMM.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from phm.trt_plugins import spec
from phm.trt_plugins.quant import quantize_cores_int8

from . import rotate
from .calibrate import QMAX, make_calibrator, per_channel_weight_scales, quantize_symmetric
from .rewrite import const_value
from .weights import DerivedWeight, Shared, StreamedWeight

log = logging.getLogger(__name__)

__all__ = ["ActScale", "DenseLinear", "Int8Plan", "choose_scale", "choose_scales", "input_weights", "log_scales",
           "ort_options", "plan_int8", "quantize_graph"]

_WALK = 64  # nodes a structural walk visits at most (attention: q → rope → Q·Kᵀ is ~10)
_FLOAT, _HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@dataclass
class DenseLinear:
    node: gs.Node               # MatMul, or Gemm (GPT-2's Conv1D) with a constant B
    weight: np.ndarray | StreamedWeight  # as stored: (K, N), or (N, K) for a Gemm with transB = 1
    role: str                   # "attention" | "lm_head" | "mlp"
    mode: str = "float"         # "w8a8" | "weight_only" | "float"
    channel_axis: int = 1       # the output-channel axis of `weight` (DequantizeLinear's axis)


@dataclass
class Int8Plan:
    linears: list = field(default_factory=list)
    calibrated: tuple = ("w8a8",)   # the modes whose inputs are calibrated (INT4 with AWQ: "w4")

    @property
    def activation_tensors(self) -> list[str]:
        """Input tensors that need calibration rows (W8A8 linears: a per-tensor scale), first-use order."""
        names = []
        for lin in self.linears:
            if lin.mode in self.calibrated and lin.node.inputs[0].name not in names:
                names.append(lin.node.inputs[0].name)
        return names

    def readers(self, name: str) -> list[DenseLinear]:
        """The calibrated linears whose input is the tensor `name` (q/k/v share theirs)."""
        return [lin for lin in self.linears if lin.mode in self.calibrated and lin.node.inputs[0].name == name]

    def counts(self) -> dict:
        out = {}
        for lin in self.linears:
            key = f"{lin.role}:{lin.mode}"
            out[key] = out.get(key, 0) + 1
        return out


def _loaded(value) -> np.ndarray:
    """A constant's values in memory, float32 (a streamed weight: this one tensor read from its file)."""
    return np.asarray(value.load() if isinstance(value, StreamedWeight) else value, np.float32)


def _weight(t: gs.Tensor) -> np.ndarray | StreamedWeight | None:
    """A MatMul's constant 2-D weight: a constant, or Transpose(perm=[1, 0]) of one (tied LM head)."""
    value = const_value(t)
    if value is None and len(t.inputs) == 1 and t.inputs[0].op == "Transpose":
        src = const_value(t.inputs[0].inputs[0])
        if src is not None and src.ndim == 2 and list(t.inputs[0].attrs.get("perm", [1, 0])) == [1, 0]:
            value = src.transposed() if isinstance(src, StreamedWeight) else src.T
    if value is None or value.ndim != 2 or value.dtype.kind != "f":
        return None
    return value


def _is_phm(node: gs.Node) -> bool:
    return node.domain == spec.DOMAIN and node.op in spec.OPS


def _reaches(start: list[gs.Tensor], target, stop, downstream: bool) -> bool:
    """Breadth-first walk from `start` (consumers if downstream, producers otherwise), not through
    nodes `stop` accepts; True when a node `target` accepts is met within _WALK nodes."""
    queue, seen = deque(start), set()
    while queue and len(seen) < _WALK:
        t = queue.popleft()
        nodes = t.outputs if downstream else t.inputs
        for node in nodes:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if target(node):
                return True
            if stop(node):
                continue
            queue.extend(node.outputs if downstream else node.inputs)
    return False


def _is_graph_output(t: gs.Tensor, graph: gs.Graph) -> bool:
    """`t` is a graph output, directly or through Cast/Identity."""
    outputs = {id(o) for o in graph.outputs}
    stack = [t]
    while stack:
        cur = stack.pop()
        if id(cur) in outputs:
            return True
        stack.extend(n.outputs[0] for n in cur.outputs if n.op in ("Cast", "Identity"))
    return False


def plan_int8(graph: gs.Graph, lm_head: bool = False) -> Int8Plan:
    """Find and classify the dense linears of a rewritten graph (module doc); decide their modes."""
    linears = {}
    for node in graph.nodes:
        if node.op == "MatMul" and len(node.inputs) == 2:
            w = _weight(node.inputs[1])
            if w is not None:
                linears[id(node)] = DenseLinear(node, w, "mlp")
        elif (node.op == "Gemm" and node.attrs.get("transA", 0) == 0 and node.attrs.get("alpha", 1.0) == 1.0
              and node.attrs.get("beta", 1.0) == 1.0):
            w = const_value(node.inputs[1])
            if w is not None and w.ndim == 2 and w.dtype.kind == "f":
                linears[id(node)] = DenseLinear(node, w, "mlp", channel_axis=0 if node.attrs.get("transB", 0) else 1)
    act_mm = {id(n) for n in graph.nodes if n.op == "MatMul" and id(n) not in linears
              and all(const_value(t) is None for t in n.inputs)}

    def stop(node):  # other linears and PHM nodes end a walk; Shape outputs carry no data
        return id(node) in linears or _is_phm(node) or node.op == "Shape"

    def target(node):
        return id(node) in act_mm

    for lin in linears.values():
        if _is_graph_output(lin.node.outputs[0], graph):
            lin.role, lin.mode = "lm_head", "w8a8" if lm_head else "float"
        elif (_reaches(list(lin.node.outputs), target, stop, downstream=True)
              or _reaches([lin.node.inputs[0]], target, stop, downstream=False)):
            lin.role, lin.mode = "attention", "w8a8"
        else:
            lin.mode = "weight_only"
    plan = Int8Plan(list(linears.values()))
    log.info("int8 plan: %s", plan.counts())
    return plan


# --- calibration ------------------------------------------------------------------------------

def ort_options(int4_accuracy: int = 1):
    """ONNX Runtime session options that execute a Q/DQ graph as written. ORT's extended graph
    optimizations rewrite a weight-only DequantizeLinear → MatMul into a kernel that also quantizes
    the activations dynamically (measured: errors of an outlier channel's size on a 16×8 MatMul),
    which is neither the ONNX semantics nor what TensorRT builds; basic optimizations keep them.
    `int4_accuracy` 4 (an --int4 export with `int4.accuracy` 4) asks for exactly that kernel instead,
    as phm-run runs it: extended optimizations, MatMulNBits at accuracy level 4."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if int4_accuracy != 1:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int4_accuracy))
    return opts


# SmoothQuant migration strengths tried per tensor: none, or the paper's default 0.5. A wider grid
# (0.3 … 0.8) picks 0.7-0.8 on SmolLM2 by per-layer output error, yet end to end (top-1 agreement,
# fake-quant in torch, 256 held-out tokens) α = 0.5 gave 94.9 % against 91.3 % for 0.8 and 87.0 % for none.
ALPHAS = (0.0, 0.5)
MAX_ROWS = 2048                                # calibration tokens kept per tensor (the α search)
CLIP_RATIOS = np.linspace(0.3, 1.0, 15)      # "mse": activation clips tried, as fractions of max |x / s|
MIN_SPLIT_ROWS = 64                            # fewer rows per half: α is scored on the rows it was fitted to


@dataclass
class ActScale:
    """Quantization of one activation tensor: per-tensor amax of x / smooth (smooth None: none)."""

    amax: float
    smooth: np.ndarray | None = None   # (K,) per-channel divisor of x, multiplied into the weights' rows
    alpha: float = 0.0
    error: float = 0.0                 # relative output error of the W8A8 linears on calibration data
    rotated: bool = False              # x·Q (rotate.py) is quantized, Qᵀ·W is the weight; amax/smooth are of x·Q


def _fake_quant(x: np.ndarray, scale) -> np.ndarray:
    return quantize_symmetric(x, scale).astype(np.float32) * scale


def _amax(x: np.ndarray, method: str) -> float:
    cal = make_calibrator(method)
    cal.observe(x)
    a = cal.amax()
    return a if a > 0 else 1.0  # never observed non-zero: any scale quantizes 0 exactly


def input_weights(plan: Int8Plan, name: str) -> np.ndarray:
    """The W8A8 weights that read the tensor `name`, side by side as one float32 (K, ΣN) matrix."""
    return np.concatenate([_loaded(lin.weight).T if lin.channel_axis == 0 else _loaded(lin.weight)
                           for lin in plan.readers(name)], axis=1)   # each (K, N)


def choose_scales(plan: Int8Plan, acts: dict[str, np.ndarray], method: str, smooth: bool = True,
                  rotate_inputs: bool = True) -> dict:
    """ActScale per W8A8 input tensor of `acts` (rows of each): `choose_scale` with its weights."""
    out = {name: choose_scale(x, input_weights(plan, name), method, smooth, rotate_inputs)
           for name, x in acts.items()}
    log_scales(out)
    return out


def choose_scale(x: np.ndarray, w: np.ndarray, method: str, smooth: bool = True,
                 rotate_inputs: bool = True) -> ActScale:
    """The ActScale of one W8A8 input tensor: rows x (R, K) read by the weights w (K, N).

    With `rotate_inputs`, the rows are rotated first (rotate.py:
    x·Q is quantized against Qᵀ·W) and everything below is chosen on x·Q. With `smooth`, SmoothQuant:
    x / s and diag(s)·W compute the same product, s_j = max|x_j|^α / max|W_j|^(1−α) moves outlier
    channels of x into the weights. α (0 = no smoothing) is picked per tensor by the relative error of
    the quantized linears' outputs on
    *held-out* calibration rows: s and the scale are fitted on the first half of the rows (the first
    prompts) and scored on the second. Scoring on the rows s was fitted to favours smoothing where it
    overfits: on SmolLM2 the attention output (o_proj's input) has channels whose calibration maxima
    do not carry over to other text, and smoothing it cost 4.4 points of top-1 on held-out text
    where the plain scale cost 2.4 (benchmarks/int8_sensitivity.py, docs/int8.md). The chosen α's s
    and scale are then taken from all rows.

    `method` picks the activation amax: a calibrator of calibrate.py (minmax, percentile, entropy;
    the α search uses percentile when it is entropy, ≈2 s per call), or "mse": the clip among
    CLIP_RATIOS × max|x / s| with the smallest output error of the quantized linears (x/s quantized
    against the INT8 weights), which needs the weights and so lives here, not in calibrate.py."""
    if rotate_inputs:
        x, w = rotate.apply(x), (rotate.matrix(w.shape[0]).T @ w).astype(np.float32)
    half = len(x) // 2
    fit, held = (x[:half], x[half:]) if half >= MIN_SPLIT_ROWS else (x, x)
    search = "percentile" if method == "entropy" else method
    best = None
    for alpha in ALPHAS if smooth else (0.0,):
        s = _smoothing(fit, w, alpha)
        wq = _quantized_weight(w, s)
        err = _output_error(held / s, held @ w, _act_amax(fit, w, s, wq, search), wq)
        if best is None or err < best.error:
            best = ActScale(0.0, None if alpha == 0 else s, alpha, err, rotate_inputs)
    s = _smoothing(x, w, best.alpha)
    best.smooth = None if best.alpha == 0 else s
    best.amax = _act_amax(x, w, s, _quantized_weight(w, s), method)
    return best


def log_scales(scales: dict[str, ActScale]) -> None:
    if scales:
        errs = [a.error for a in scales.values()]
        log.info("activation scales: %d tensors (%d rotated, %d smoothed), α %s, held-out output error mean %.4f "
                 "max %.4f", len(scales), sum(a.rotated for a in scales.values()),
                 sum(a.smooth is not None for a in scales.values()), sorted({a.alpha for a in scales.values()}),
                 float(np.mean(errs)), float(np.max(errs)))


def _quantized_weight(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """diag(s)·W (K, N) through its per-output-channel INT8 rounding, as quantize_graph stores it."""
    wsm = w * s[:, None]
    sw = per_channel_weight_scales(wsm, axis=1)
    return _fake_quant(wsm, sw)


def _output_error(xs: np.ndarray, ref: np.ndarray, amax: float, wq: np.ndarray) -> float:
    """‖Q(x / s) · Q(diag(s)·W) − x · W‖ / ‖x · W‖ for an activation amax; xs = x / s, ref = x · W."""
    err = _fake_quant(xs, np.float32(amax / QMAX)) @ wq - ref
    return float(np.linalg.norm(err)) / (float(np.linalg.norm(ref)) or 1.0)


def _act_amax(x: np.ndarray, w: np.ndarray, s: np.ndarray, wq: np.ndarray, method: str) -> float:
    """The activation amax of x / s: a calibrator's, or ("mse") the clip with the least output error."""
    xs = x / s
    if method != "mse":
        return _amax(xs, method)
    ref = x @ w  # once for every candidate clip
    top = float(np.abs(xs).max()) or 1.0
    return min((top * float(r) for r in CLIP_RATIOS), key=lambda a: _output_error(xs, ref, a, wq))


def _smoothing(x: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel divisor s_j = max|x_j|^α / max|W_j|^(1−α) (ones for α = 0)."""
    if alpha == 0:
        return np.ones(x.shape[1], np.float32)
    xmax, wmax = np.abs(x).max(0), np.abs(w).max(1)
    return (np.maximum(xmax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)).astype(np.float32)


# --- graph surgery ----------------------------------------------------------------------------

class _Builder:
    def __init__(self, graph: gs.Graph):
        self.graph, self.count = graph, 0
        self.rotations: dict = {}  # rotate.graph_nodes' shared constants

    def node(self, op: str, inputs: list, dtype, name: str, **attrs) -> gs.Variable:
        self.count += 1
        out = gs.Variable(f"{name}/{op}_{self.count}", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, name=f"{name}/{op}_{self.count}", attrs=attrs, inputs=inputs,
                                        outputs=[out]))
        return out

    def cast(self, x, to: int, name: str) -> gs.Variable:
        return self.node("Cast", [x], onnx.helper.tensor_dtype_to_np_dtype(to), name, to=to)


_KEYS = itertools.count()  # DerivedWeight keys: every quantized tensor its own bytes in the data file


def _outputs(names: list[str], fn, specs: list[tuple], lazy: bool) -> list[gs.Constant]:
    """Constants holding the outputs of `fn()` ((shape, dtype) each in `specs`): computed now for a
    small in-memory weight, or when the data file is written for a streamed one (DerivedWeight)."""
    if not lazy:
        return [gs.Constant(n, np.ascontiguousarray(v)) for n, v in zip(names, fn())]
    shared, key = Shared(fn), next(_KEYS)
    return [gs.Constant(n, DerivedWeight(lambda i=i: shared.part(i), shape, dtype, (n, key, i)))
            for i, (n, (shape, dtype)) in enumerate(zip(names, specs))]


def _weight_dq(b: _Builder, lin: DenseLinear, name: str, smooth: np.ndarray | None = None,
               rotated: bool = False) -> gs.Variable:
    """INT8 weight + per-output-channel scales → DequantizeLinear(axis = channel axis), float32.
    A MatMul weight (K, N) has its channels on axis 1 (a Gemm's transposed B (N, K) on axis 0).
    `rotated`: the weight is Qᵀ·W (rotate.py) before smoothing and rounding."""
    axis = lin.channel_axis

    def quantized() -> tuple[np.ndarray, np.ndarray]:
        w = _loaded(lin.weight)
        if rotated:
            q = rotate.matrix(w.shape[1 - axis])
            w = (q.T @ w if axis == 1 else w @ q).astype(np.float32)
        if smooth is not None:  # diag(s)·W: the input channels are W's rows (K, N), a transposed B's columns
            w = w * (smooth[None, :] if axis == 0 else smooth[:, None])
        scales = per_channel_weight_scales(w, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        return quantize_symmetric(w, scales.reshape(shape)), scales

    channels = (lin.weight.shape[axis],)
    q, s = _outputs([f"{name}.weight_int8", f"{name}.weight_scale"], quantized,
                    [(lin.weight.shape, np.int8), (channels, np.float32)], isinstance(lin.weight, StreamedWeight))
    zp = gs.Constant(f"{name}.weight_zero_point", np.zeros(channels, np.int8))
    return b.node("DequantizeLinear", [q, s, zp], np.float32, name, axis=axis)


def _cast_constant(name: str, value, dtype) -> gs.Constant:
    """A constant's values at another float type (a streamed one as a cast view)."""
    return gs.Constant(name, value.cast(dtype) if isinstance(value, StreamedWeight) else value.astype(dtype))


def _activation_qdq(b: _Builder, x: gs.Tensor, act: ActScale, fp16: bool, k: int, name: str) -> gs.Variable:
    x32 = b.cast(x, _FLOAT, name) if fp16 else x
    if act.rotated:  # x·Q before the Q (float32, inside the island), weights hold Qᵀ·W
        x32 = rotate.graph_nodes(b.node, x32, k, name, b.rotations)
    if act.smooth is not None:  # x / s (a per-channel Mul TensorRT fuses with the producer's pointwise ops)
        x32 = b.node("Mul", [x32, gs.Constant(f"{name}.smooth_inv", (1.0 / act.smooth).astype(np.float32))],
                     np.float32, name)
    s = gs.Constant(f"{name}.input_scale", np.array(max(act.amax, 1e-12) / QMAX, np.float32))
    zp = gs.Constant(f"{name}.input_zero_point", np.array(0, np.int8))
    q = b.node("QuantizeLinear", [x32, s, zp], np.int8, name)
    return b.node("DequantizeLinear", [q, s, zp], np.float32, name)


def _quantize_linear(b: _Builder, lin: DenseLinear, scales: dict, types: dict, shared: dict) -> None:
    node = lin.node
    name = node.name or f"matmul_{b.count}"
    x = node.inputs[0]
    fp16 = types.get(x.name) == _HALF
    if lin.mode == "weight_only":
        w = _weight_dq(b, lin, name)
        node.inputs[1] = b.cast(w, _HALF, name) if fp16 else w
        return
    act = scales[x.name]
    w = _weight_dq(b, lin, name, act.smooth, act.rotated)
    key = x.name
    if key not in shared:  # one Q/DQ pair per activation tensor (q/k/v share their input)
        shared[key] = _activation_qdq(b, x, act, fp16, lin.weight.shape[1 - lin.channel_axis], f"{name}/input")
    node.inputs[0], node.inputs[1] = shared[key], w
    if fp16 and len(node.inputs) > 2 and const_value(node.inputs[2]) is not None:  # Gemm bias joins the island
        node.inputs[2] = _cast_constant(f"{name}.bias_fp32", const_value(node.inputs[2]), np.float32)
    if fp16:  # float32 island: the MatMul now computes in fp32, cast its output back
        y = node.outputs[0]
        y32 = gs.Variable(f"{name}/fp32_out", dtype=np.float32)
        node.outputs[0] = y32
        b.graph.nodes.append(gs.Node("Cast", name=f"{name}/cast_out", attrs={"to": _HALF}, inputs=[y32],
                                     outputs=[y]))


def _projections(node: gs.Node) -> list[int]:
    if node.op == spec.PHM_LINEAR.op_type:
        return [spec.CORES]
    return [spec.GATE_CORES, spec.UP_CORES, spec.DOWN_CORES]


def _int8_quantizer(cores: torch.Tensor, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    q, s = quantize_cores_int8(cores)
    return q.numpy(), s.numpy()


def _quantized_cores(node: gs.Node, first: int, done: dict, fmt: str, quantizer) -> None:
    """Replace one projection's float cores/placeholder scales by `fmt` cores + their scales:
    `quantizer(float32 cores (m, B, k), first)` → (cores, scales) arrays in spec.py's layout."""
    cores = node.inputs[first]
    if id(cores) in done:
        node.inputs[first], node.inputs[first + 1] = done[id(cores)]
        return
    value = const_value(cores)
    if value is None:
        raise ValueError(f"{node.name}: cores are not a constant; cannot quantize")
    prefix = cores.name or f"{node.name}.{first}"
    if value.ndim != 3:  # placeholder (gate of a plain MLP): an int8 placeholder, float32 scales
        pair = (gs.Constant(f"{prefix}.{fmt}", np.zeros((1,), np.int8)),
                gs.Constant(f"{prefix}.scales", np.ones((1,), np.float32)))
    else:
        m, nb, k = value.shape
        group = node.attrs.get("group_size", 0)
        shapes = {"int8": [((m, nb, k), np.int8), ((m,), np.float32)],
                  "int4": [((m, nb, k // 2), np.int8), ((m, nb, k // max(group, 1)), np.float32)]}[fmt]

        def quantized(value=value) -> tuple[np.ndarray, np.ndarray]:
            return quantizer(torch.from_numpy(np.array(_loaded(value))), first)

        pair = tuple(_outputs([f"{prefix}.{fmt}", f"{prefix}.{fmt}_scales"], quantized, shapes,
                              isinstance(value, StreamedWeight)))
    done[id(cores)] = pair
    node.inputs[first], node.inputs[first + 1] = pair


def _fp16_bias(node: gs.Node, first: int) -> None:
    bias = node.inputs[first + 2]
    value = const_value(bias)
    if value is not None and value.dtype != np.float16:
        node.inputs[first + 2] = _cast_constant(f"{bias.name or node.name}.fp16", value, np.float16)


def _quantize_phm_cores(b: _Builder, node: gs.Node, types: dict, done: dict, fmt: str, quantizer,
                        group_size: int = 0) -> None:
    """A PHM node's cores in `fmt` ("int8" | "int4", quantizer: see _quantized_cores); in an fp32
    graph the node becomes an fp16 island (quantized cores take fp16 activations: spec.py)."""
    node.attrs["weight_format"] = fmt
    if group_size:
        node.attrs["group_size"] = group_size
    for first in _projections(node):
        _quantized_cores(node, first, done, fmt, quantizer)
    spec.check_fields(node.op, node.attrs)
    x, y = node.inputs[spec.X], node.outputs[0]
    if types.get(x.name, _FLOAT) == _HALF:
        return
    for first in _projections(node):
        _fp16_bias(node, first)
    node.inputs[spec.X] = b.cast(x, _HALF, node.name)
    y16 = gs.Variable(f"{node.name}/fp16_out", dtype=np.float16)
    node.outputs[0] = y16
    b.graph.nodes.append(gs.Node("Cast", name=f"{node.name}/cast_out", attrs={"to": _FLOAT}, inputs=[y16],
                                 outputs=[y]))


def quantize_graph(graph: gs.Graph, plan: Int8Plan, scales: dict[str, ActScale], types: dict[str, int]) -> dict:
    """Apply `plan` to `graph` in place (module doc); `scales` from `choose_scales`. Returns counts."""
    b = _Builder(graph)
    shared: dict = {}
    for lin in plan.linears:
        if lin.mode != "float":
            _quantize_linear(b, lin, scales, types, shared)
    done: dict = {}
    phm = [n for n in graph.nodes if _is_phm(n)]
    for node in phm:
        _quantize_phm_cores(b, node, types, done, "int8", _int8_quantizer)
    graph.cleanup().toposort()
    counts = {**plan.counts(), "activation_qdq": len(shared), "phm_int8_nodes": len(phm),
              "smoothed": sum(1 for a in scales.values() if a.smooth is not None),
              "rotated": sum(1 for a in scales.values() if a.rotated)}
    log.info("quantize_graph: %s", counts)
    return counts
