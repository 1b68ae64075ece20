"""manifest.json and commands.sh of an artifacts dir: what is in it and how to run it on a target.

Commands use the TensorRT-file twin (`<kind>.trt.onnx`, no ONNX functions) with our plugin library
for `trtexec`/`polygraphy --trt`, and the function twin (`<kind>.onnx`) for `polygraphy --onnxrt`.
"""

from __future__ import annotations

import importlib.metadata
import shlex

import onnx

from phm.common.artifacts import MANIFEST_VERSION, file_entry, sha256
from phm.trt_plugins import spec
from phm.trt_plugins.library import PLUGIN_LIBRARY

from . import io_names as io
from .config import ExportConfig

# MANIFEST_VERSION, file_entry and sha256 are the artifact contract's (phm.common.artifacts) and
# PLUGIN_LIBRARY the plugin layout's (phm.trt_plugins.library), named here for the writer's convenience
__all__ = ["MANIFEST_VERSION", "PLUGIN_LIBRARY", "commands", "file_entry", "graph_io",
           "plugin_requirements", "profile_shapes", "sha256", "versions"]

INT8_ERROR_STAT = ["--check-error-stat", "median"]


def versions() -> dict:
    out = {}
    for dist in ("phm-edge", "torch", "transformers", "onnx", "onnxruntime", "onnx-graphsurgeon", "polygraphy",
                 "tensorrt"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def plugin_requirements(model: onnx.ModelProto) -> list[dict]:
    """The TensorRT plugin creators the graph's PHM nodes name: [{name, version, namespace}], sorted.

    Read from the nodes themselves (what TensorRT's parser will look up), so the runtime can refuse
    an artifact made for another plugin version before it loads any TensorRT library.
    """
    found = set()
    for node in model.graph.node:
        if node.domain == spec.DOMAIN:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            version, namespace = attrs.get("plugin_version", b"1"), attrs.get("plugin_namespace", b"")
            found.add((node.op_type, version.decode() if isinstance(version, bytes) else str(version),
                       namespace.decode() if isinstance(namespace, bytes) else str(namespace)))
    return [{"name": n, "version": v, "namespace": ns} for n, v, ns in sorted(found)]


def _value_info(v: onnx.ValueInfoProto) -> dict:
    t = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}


def graph_io(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    init = {i.name for i in model.graph.initializer}
    return ([_value_info(v) for v in model.graph.input if v.name not in init],
            [_value_info(v) for v in model.graph.output])


def profile_shapes(kind: str, inputs: list[dict], config: ExportConfig, max_positions: int,
                   patches: list | None = None) -> dict:
    """{"min"|"opt"|"max": {input: [dims]}} of one TensorRT optimisation profile.

    Decoders are profiled for the decode step (opt: 1 new token on `opt_sequence` cached ones),
    the step that dominates generation on an edge GPU; prefill runs inside the same profile. A Qwen
    vision graph's `patches` (min, opt, max) come from its pixel range (pixels.patch_range).
    """
    max_seq = min(config.max_sequence, max_positions)
    opt_seq = min(config.opt_sequence, max_seq - 1) if max_seq > 1 else 1
    decode = kind == "decoder"
    axes = {io.BATCH: (1, 1, config.max_batch),
            io.SEQUENCE: (1, 1 if decode else opt_seq, max_seq),
            io.PAST_SEQUENCE: (0, opt_seq, max_seq - 1),
            io.TOTAL_SEQUENCE: (1, opt_seq + 1 if decode else opt_seq, max_seq),
            **({io.PATCHES: tuple(patches)} if patches else {})}
    out = {"min": {}, "opt": {}, "max": {}}
    for inp in inputs:
        for i, key in enumerate(("min", "opt", "max")):
            out[key][inp["name"]] = [d if isinstance(d, int) else axes[d][i] for d in inp["shape"]]
    return out


def _shape_arg(shapes: dict) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def commands(graphs: dict, config: ExportConfig) -> dict:
    """Per graph kind: trtexec, polygraphy --trt and polygraphy --onnxrt command lines."""
    precision = config.precision
    out = {}
    for kind, g in graphs.items():
        prof = g["profile"]
        static = all(prof["min"][k] == prof["max"][k] for k in prof["min"])
        shapes = [] if static else [f"--minShapes={_shape_arg(prof['min'])}",
                                    f"--optShapes={_shape_arg(prof['opt'])}",
                                    f"--maxShapes={_shape_arg(prof['max'])}"]
        engine = f"engines/{kind}.{config.target}.engine"
        trtexec = ["trtexec", f"--onnx={g['trt_file']}", "--staticPlugins=$PLUGINS", *shapes, "--stronglyTyped",
                   *(["--noTF32"] if precision == "fp32" else []), f"--saveEngine={engine}"]
        tolerances = g["tolerances"]
        poly_shapes = [] if static else [
            "--trt-min-shapes", *(f"{k}:{list(v)}".replace(" ", "") for k, v in prof["min"].items()),
            "--trt-opt-shapes", *(f"{k}:{list(v)}".replace(" ", "") for k, v in prof["opt"].items()),
            "--trt-max-shapes", *(f"{k}:{list(v)}".replace(" ", "") for k, v in prof["max"].items())]
        poly_trt = ["polygraphy", "run", g["trt_file"], "--trt", "--plugins", "$PLUGINS", "--strongly-typed",
                    *poly_shapes, "--load-inputs", g["inputs"], "--load-outputs", g["ref"],
                    *_tolerance_args(tolerances, "trt")]
        poly_ort = ["polygraphy", "run", g["ort_file"], "--onnxrt", "--load-inputs", g["inputs"], "--load-outputs",
                    g["ref"], *_tolerance_args(tolerances, "onnxrt")]
        out[kind] = {"trtexec": _join(trtexec), "polygraphy_trt": _join(poly_trt),
                     "polygraphy_onnxrt": _join(poly_ort), "engine": engine}
    return out


def _tolerance_args(tolerances: dict, backend: str) -> list[str]:
    """polygraphy's per-output --atol/--rtol (export/tolerance.py), and the median check for INT8."""
    bounds = tolerances[backend]
    args = ["--atol", *(f"{name}:{atol:g}" for name, (atol, _) in bounds.items()),
            "--rtol", *(f"{name}:{rtol:g}" for name, (_, rtol) in bounds.items())]
    return args + (INT8_ERROR_STAT if tolerances["check"] == "median" else [])


def _join(argv: list[str]) -> str:
    return " ".join(a if a.startswith("$") or "=$" in a else shlex.quote(a) for a in argv)


def precision_note(config: ExportConfig) -> list[str]:
    """What the graphs carry, for commands.sh: precision lives in the ONNX (strongly typed builds)."""
    lines = [f"# Graph precision: weights {config.precision}, activations {config.activations}."]
    if config.int8:
        lines += [
            "# INT8 is explicit: QuantizeLinear/DequantizeLinear around the attention matmuls (per-tensor",
            "# activation scales, per-channel INT8 weights), INT8 weight-only dense MLP weights, INT8 PHM",
            "# cores (fp16 in/out of the plugins). --stronglyTyped builds it as written on TensorRT 10.x and",
            "# 11.x (no --int8/--fp16 flags: a strongly typed network rejects them). A weakly typed 10.x build",
            "# (drop --stronglyTyped) needs --int8 --fp16 instead; no calibration cache is involved either way.",
        ]
    if config.int4:
        lines += [
            f"# INT4 is weight-only (W4A16): opset 21 DequantizeLinear of INT4 weights in blocks of {config.int4.group}",
            "# input channels (block_size; smaller where a dimension needs it) into each dense MatMul, which",
            "# TensorRT >= 10 builds into weight-only INT4 GEMMs with --stronglyTyped, and INT4 PHM cores",
            "# (fp16 in/out of the plugins). No --int4 flag and no calibration cache.",
        ]
    return lines


def commands_sh(cmds: dict, config: ExportConfig) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# TensorRT engines and reference checks for target {config.target} ({config.sm}); run from this dir.",
        *precision_note(config),
        f"# Plugin library: phm-build-plugins --arch {config.sm} --out plugins/{config.target}"
        f"  (or set PHM_PLUGINS)",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f'PLUGINS="${{PHM_PLUGINS:-plugins/{config.target}/{PLUGIN_LIBRARY}}}"',
        "mkdir -p engines",
        "",
        "# 1. ONNX Runtime against the PyTorch reference (no TensorRT needed)",
        *(c["polygraphy_onnxrt"] for c in cmds.values()),
        "",
        "# 2. TensorRT engines with the PHM plugins",
        *(c["trtexec"] for c in cmds.values()),
        "",
        "# 3. TensorRT against the PyTorch reference",
        *(c["polygraphy_trt"] for c in cmds.values()),
    ]
    return "\n".join(lines) + "\n"
