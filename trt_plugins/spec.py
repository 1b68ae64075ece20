"""The single source of the PHM op / TensorRT plugin contract (docs/design.md §3, §4).

Everything that emits, runs or checks a PHM node reads this module and nothing else: the exporter
(`phm.export`, writes the ONNX nodes), the ONNX Runtime reference, the Triton kernels' launchers,
the C++ IPluginV3 plugins (a test checks that their field-name constants equal `OpSpec.fields`)
and the tests. Change a name here and every consumer follows or fails loudly.

Two ops, ONNX op_type = TensorRT plugin name = kernel launcher family:

``PHMLinear``  y = Σ_b (H_b ⊗ A_b) x + bias, optionally followed by an activation.
``PHMFFN``     y = down(act(gate(x)) * up(x))  (mlp_type "swiglu") or down(act(up(x))) ("plain"),
               every projection a PHMLinear sharing n and the bases.

Inputs are positional and ALWAYS all present (TensorRT's ONNX parser passes a plugin node's inputs
as given; empty optional inputs are not portable across parser versions). An input that a
configuration does not use (scales of float cores, bias when has_bias = 0, gate of a plain MLP) is
a placeholder: a one-element tensor of the documented dtype, never read by the kernels.

Weights (cores, scales, bias) are initializer inputs, never attributes (docs/design.md §4: the parser
maps INT/INTS → int32 fields, FLOAT(S) → float32, STRING → char; INT8 initializers are allowed;
INT64/UINT8/BOOL attributes are avoided).

Core layouts (A_cat layout of `phm.trainer.hypercomplex`, m = d_out/n, k = d_in/n):
- ``weight_format="float"``: cores (m, B, k), same dtype as x (float32 or float16).
- ``weight_format="int8"``:  cores (m, B, k) int8, symmetric (zero point 0, values -127..127);
  scales (m,) float32, one per A_cat row: A[r, b, c] = scales[r] · q[r, b, c].
- ``weight_format="int4"``:  cores (m, B, k/2) int8, two signed 4-bit values per byte along k:
  byte c holds element 2c in its low nibble and element 2c+1 in its high nibble, each in two's
  complement (-8..7; the quantizer uses -7..7); scales (m, B, k/group_size) float32, one per group
  of `group_size` consecutive elements along k: A[r, b, c] = scales[r, b, c // g] · q[r, b, c].
  k must be a multiple of group_size and group_size even.
Quantized cores take float16 activations in and give float16 out (the kernels and the torch op
accept bfloat16 too; TensorRT plugins are FP32/FP16 at their I/O). `phm.trt_plugins.quant` makes
and inverts these layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ACTIVATIONS",
    "DOMAIN",
    "MLP_TYPES",
    "OPS",
    "PHM_FFN",
    "PHM_LINEAR",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "WEIGHT_FORMATS",
    "AttrSpec",
    "InputSpec",
    "OpSpec",
    "bases_to_field",
    "check_fields",
]

DOMAIN = "com.phm"           # ONNX domain of both ops
PLUGIN_VERSION = "1"         # node attribute `plugin_version`  = IPluginCreatorV3One version
PLUGIN_NAMESPACE = "phm"     # node attribute `plugin_namespace` = IPluginCreatorV3One namespace

# Activation names (`activation` field). "gelu" is the erf form, "gelu_tanh" the tanh approximation
# (HF "gelu_pytorch_tanh" / "gelu_new"), "silu" = x·sigmoid(x) (HF "silu"/"swish").
ACTIVATIONS = ("none", "silu", "gelu", "gelu_tanh", "relu")
WEIGHT_FORMATS = ("float", "int8", "int4")
MLP_TYPES = ("swiglu", "plain")
SUPPORTED_N = (2, 4)         # hypercomplex dimensions the kernels are specialised for
DEFAULT_GROUP_SIZE = 128     # INT4 group along k (d_in/n); Qwen2.5-VL-7B: k = 1792, 9472 both divide


@dataclass(frozen=True)
class InputSpec:
    """One positional input of a PHM node."""

    index: int
    name: str
    shape: str   # symbolic, m = d_out/n, k = d_in/n, B = num_bases
    dtypes: str  # which element types, by weight_format
    doc: str


@dataclass(frozen=True)
class AttrSpec:
    """One node attribute. `onnx_type` is the ONNX AttributeProto type name; plugin fields are the
    attributes with `is_field=True` (TensorRT plugin field types: INT → kINT32, FLOATS → kFLOAT32,
    STRING → kCHAR)."""

    name: str
    onnx_type: str           # "INT", "FLOATS", "STRING"
    default: object
    doc: str
    is_field: bool = True    # False: consumed by the parser to look the plugin up, not a field


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    inputs: tuple[InputSpec, ...]
    attributes: tuple[AttrSpec, ...]
    outputs: tuple[str, ...] = ("y",)
    domain: str = DOMAIN
    plugin_version: str = PLUGIN_VERSION
    plugin_namespace: str = PLUGIN_NAMESPACE
    doc: str = ""
    input_index: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "input_index", {i.name: i.index for i in self.inputs})
        if [i.index for i in self.inputs] != list(range(len(self.inputs))):
            raise ValueError(f"{self.op_type}: input indices must be 0..{len(self.inputs) - 1}")

    @property
    def plugin_name(self) -> str:
        return self.op_type

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def fields(self) -> tuple[str, ...]:
        """Plugin field names, in the order the C++ creator lists them."""
        return tuple(a.name for a in self.attributes if a.is_field)

    def attribute(self, name: str) -> AttrSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"{self.op_type} has no attribute {name!r}")

    def defaults(self) -> dict:
        """Every attribute with its default value (what the exporter writes unless told)."""
        return {a.name: a.default for a in self.attributes}


_COMMON_ATTRS = (
    AttrSpec("n", "INT", 2, "hypercomplex dimension; d_in and d_out divisible by n (kernels: 2, 4)"),
    AttrSpec("num_bases", "INT", 2, "B, number of bases/cores, 1..n²"),
    AttrSpec("bases", "FLOATS", [], "the B bases H_b, B·n·n floats, row-major (b, i, j)"),
    AttrSpec("weight_format", "STRING", "float", "core storage: 'float' | 'int8' | 'int4'"),
    AttrSpec("group_size", "INT", 0, "INT4 group size along k (even, divides k); 0 otherwise"),
    AttrSpec("has_bias", "INT", 0, "1: bias input(s) are added; 0: they are placeholders"),
)
_LOOKUP_ATTRS = (
    AttrSpec("plugin_version", "STRING", PLUGIN_VERSION, "TensorRT plugin version", is_field=False),
    AttrSpec("plugin_namespace", "STRING", PLUGIN_NAMESPACE,
             "TensorRT plugin namespace; always written (TRT ≥ 10.15 prefers plugins then)",
             is_field=False),
)


def _proj_inputs(first: int, proj: str, what: str) -> tuple[InputSpec, ...]:
    p = f"{proj}_" if proj else ""
    m, k = ("m", "k") if not proj else {
        "gate": ("f", "k"), "up": ("f", "k"), "down": ("k", "f")}[proj]
    return (
        InputSpec(first, f"{p}cores", f"({m}, B, {k}) float/int8, ({m}, B, {k}/2) int4",
                  "x dtype | int8 | int8 (packed int4)",
                  f"{what} cores, A_cat layout (see module doc for int8/int4)"),
        InputSpec(first + 1, f"{p}scales", f"int8: ({m},); int4: ({m}, B, {k}/group_size); else (1,)",
                  "float32", f"{what} dequantisation scales; placeholder (1,) for float cores"),
        InputSpec(first + 2, f"{p}bias", f"({m}·n,) = d_out; placeholder (1,) if has_bias=0",
                  "x dtype", f"{what} bias"),
    )


PHM_LINEAR = OpSpec(
    op_type="PHMLinear",
    doc="y = act(Σ_b (H_b ⊗ A_b) x + bias). x (..., d_in) → y (..., d_out), d_in = n·k, d_out = n·m.",
    inputs=(
        InputSpec(0, "x", "(..., n·k)", "float32 | float16 (float16 for int8/int4 cores)",
                  "activations; any leading dims (dynamic)"),
        *_proj_inputs(1, "", "the projection's"),
    ),
    attributes=_COMMON_ATTRS + (
        AttrSpec("activation", "STRING", "none", "applied after the bias: " + " | ".join(ACTIVATIONS)),
    ) + _LOOKUP_ATTRS,
)

PHM_FFN = OpSpec(
    op_type="PHMFFN",
    doc=("swiglu: y = down(act(gate(x)) * up(x)); plain: y = down(act(up(x))) (gate inputs are "
         "placeholders). x (..., d_model) → y (..., d_model); d_model = n·k, d_ff = n·f. All three "
         "projections share n, bases, weight_format, group_size and has_bias (a bias input of a "
         "projection without bias is written as zeros)."),
    inputs=(
        InputSpec(0, "x", "(..., n·k)", "float32 | float16 (float16 for int8/int4 cores)",
                  "activations; any leading dims (dynamic)"),
        *_proj_inputs(1, "gate", "gate projection (d_model → d_ff)"),
        *_proj_inputs(4, "up", "up projection (d_model → d_ff; fc1 of a plain MLP)"),
        *_proj_inputs(7, "down", "down projection (d_ff → d_model; fc2 of a plain MLP)"),
    ),
    attributes=_COMMON_ATTRS + (
        AttrSpec("activation", "STRING", "silu", "applied to gate (swiglu) or up (plain): "
                 + " | ".join(a for a in ACTIVATIONS if a != "none")),
        AttrSpec("mlp_type", "STRING", "swiglu", "'swiglu' (gate, up, down) | 'plain' (up, down)"),
    ) + _LOOKUP_ATTRS,
)

OPS = {PHM_LINEAR.op_type: PHM_LINEAR, PHM_FFN.op_type: PHM_FFN}

# Named input positions (what the C++ plugins spell kX, kCores, ...; tested against the .cpp).
X = 0
CORES, SCALES, BIAS = 1, 2, 3                                  # PHMLinear
GATE_CORES, GATE_SCALES, GATE_BIAS = 1, 2, 3                   # PHMFFN
UP_CORES, UP_SCALES, UP_BIAS = 4, 5, 6
DOWN_CORES, DOWN_SCALES, DOWN_BIAS = 7, 8, 9


def bases_to_field(bases) -> list[float]:
    """(B, n, n) tensor/array/nested list → the `bases` FLOATS attribute (row-major b, i, j)."""
    if hasattr(bases, "detach"):
        bases = bases.detach().cpu().double().reshape(-1).tolist()
    else:
        import numpy as np
        bases = np.asarray(bases, dtype=np.float64).reshape(-1).tolist()
    return [float(v) for v in bases]


def check_fields(op_type: str, attrs: dict) -> None:
    """Validate a node's attribute dict against the spec; raises ValueError naming the problem."""
    if op_type not in OPS:
        raise ValueError(f"unknown PHM op {op_type!r}; known: {', '.join(OPS)}")
    spec = OPS[op_type]
    known = {a.name for a in spec.attributes}
    extra = set(attrs) - known
    if extra:
        raise ValueError(f"{op_type}: unknown attribute(s) {sorted(extra)}; known: {sorted(known)}")
    a = {**spec.defaults(), **attrs}
    n, nb = a["n"], a["num_bases"]
    if n not in SUPPORTED_N:
        raise ValueError(f"{op_type}: n={n} not supported by the kernels (supported: {SUPPORTED_N})")
    if not 1 <= nb <= n * n:
        raise ValueError(f"{op_type}: num_bases={nb} outside 1..{n * n}")
    if len(a["bases"]) != nb * n * n:
        raise ValueError(f"{op_type}: bases has {len(a['bases'])} floats, expected B·n·n = {nb * n * n}")
    if a["weight_format"] not in WEIGHT_FORMATS:
        raise ValueError(f"{op_type}: weight_format {a['weight_format']!r} not in {WEIGHT_FORMATS}")
    if a["weight_format"] == "int4" and (a["group_size"] <= 0 or a["group_size"] % 2):
        raise ValueError(f"{op_type}: int4 needs an even group_size > 0, got {a['group_size']}")
    if a["activation"] not in ACTIVATIONS:
        raise ValueError(f"{op_type}: activation {a['activation']!r} not in {ACTIVATIONS}")
    if op_type == "PHMFFN":
        if a["mlp_type"] not in MLP_TYPES:
            raise ValueError(f"PHMFFN: mlp_type {a['mlp_type']!r} not in {MLP_TYPES}")
        if a["activation"] == "none":
            raise ValueError("PHMFFN: activation 'none' is not an MLP; use PHMLinear")
    if a["has_bias"] not in (0, 1):
        raise ValueError(f"{op_type}: has_bias must be 0 or 1, got {a['has_bias']}")
