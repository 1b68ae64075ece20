"""TensorRT engine build (TensorRT 10 Python API; 10.3 on JetPack 6 and later 10.x/11.x).

    build_engine(onnx_path, engine_path, profile, plugin_library, precision)

The ONNX parser maps each `com.phm::PHMLinear`/`PHMFFN` node to our IPluginV3 creators (op type =
plugin name, `plugin_version`/`plugin_namespace` attributes), which the plugin library registers
when loaded through `trt.get_plugin_registry().load_library`. Precision lives in the ONNX
(docs/design.md §4): the network is created strongly typed where the API has it, so an fp16 graph gives
an fp16 engine on 10.3 and on 11.x, where the kFP16 builder flag is gone. fp32 graphs are built with
TF32 off, so they match the fp32 reference within the manifest's tolerances.

Nothing here runs on machines without TensorRT (docs/design.md §6); there `unavailable_reason()` says
why, and the exporter writes the trtexec commands instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from phm.common.fsutil import atomic_write_bytes
from phm.trt_plugins.library import load_plugins, plugin_library

log = logging.getLogger(__name__)

__all__ = ["EngineBuildError", "build_all", "build_engine", "unavailable_reason"]


class EngineBuildError(ValueError):
    pass


def unavailable_reason() -> str | None:
    """None where `import tensorrt` works, else one line saying why not."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or an OSError from a missing libnvinfer
        return f"`import tensorrt` failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def build_engine(onnx_path: Path, engine_path: Path, profile: dict, plugin_lib: Path | None,
                 precision: str) -> Path:
    """Parse `onnx_path` (the .trt.onnx twin), build with one optimisation profile, write atomically."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    if plugin_lib is not None:
        load_plugins(trt, plugin_lib)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    static = all(profile["min"][k] == profile["max"][k] for k in profile["min"])
    if not static:
        opt = builder.create_optimization_profile()
        for name in profile["min"]:
            opt.set_shape(name, profile["min"][name], profile["opt"][name], profile["max"][name])
        config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    log.info("built %s (%d bytes)", engine_path, engine_path.stat().st_size)
    return engine_path


def build_all(artifacts: Path, graphs: dict, config) -> dict:
    """Engines for every graph of an artifacts dir; returns {kind: engine path relative to it}."""
    lib = plugin_library(artifacts, config.target)
    needs_plugins = any(sum(g["phm_nodes"].values()) for g in graphs.values())
    if needs_plugins and lib is None:
        raise EngineBuildError("the graphs have PHM nodes but no plugin library was found: build it with "
                               f"`phm-build-plugins --arch {config.sm}` and set PHM_PLUGINS to the .so")
    out = {}
    for kind, g in graphs.items():
        engine = artifacts / "engines" / f"{kind}.{config.target}.engine"
        engine.parent.mkdir(exist_ok=True)
        build_engine(artifacts / g["trt_file"], engine, g["profile"], lib, config.precision)
        out[kind] = engine.relative_to(artifacts).as_posix()
    return out
