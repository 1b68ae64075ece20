"""TensorRT backend: deserialises a decoder engine built by phm-export with our plugin library.

Written against the public TensorRT 10 Python API (10.3 on JetPack 6 up to 10.x desktop): the
plugin library is loaded into the plugin registry first, the engine is checked for the PHM plugin
creators it needs (a missing or other-version plugin is a clear BackendError, not a crash inside
deserialisation), device buffers are torch CUDA tensors bound with `set_tensor_address`, and every
step runs `execute_async_v3` on one stream. Same I/O contract as the ONNX Runtime backend.

The KV cache grows each step (dynamic `past` axis), so decode is not captured in a CUDA graph:
that needs a static-length cache graph, which the exporter does not write yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import BackendError, position_ids_from_mask

__all__ = ["TrtBackend", "check_plugins", "engine_path", "import_tensorrt", "required_plugins"]


def import_tensorrt():
    """`import tensorrt`, or a one-line BackendError saying it is not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed here (`import tensorrt` failed); use --backend ort") from None
    return trt


def required_plugins(manifest: dict) -> list[dict]:
    """The plugin creators an artifacts dir needs (manifest "plugins"), checked against this build's
    op contract (trt_plugins/spec.py) before any TensorRT library is loaded: an artifact (and its
    engine) made for another plugin version is a clear BackendError, not a failed deserialisation."""
    from phm.trt_plugins import spec

    required = manifest.get("plugins")
    if required is None:
        raise BackendError("manifest.json lists no TensorRT plugins (exported by an older phm-export): re-export")
    for plugin in required:
        if (plugin.get("version"), plugin.get("namespace")) != (spec.PLUGIN_VERSION, spec.PLUGIN_NAMESPACE):
            raise BackendError(f"artifacts built for plugin {plugin.get('name')} version {plugin.get('version')!r} "
                               f"(namespace {plugin.get('namespace')!r}); this build provides version "
                               f"{spec.PLUGIN_VERSION!r} (namespace {spec.PLUGIN_NAMESPACE!r}): re-export the model")
    return required


def engine_path(artifacts: Path, manifest: dict, kind: str = "decoder") -> Path | None:
    """The `kind` engine of an artifacts dir: the one phm-export built (manifest "engines"), else the
    one commands.sh's trtexec line saves (engines/<kind>.<target>.engine) if it has been run."""
    built = (manifest.get("engines") or {}).get(kind)
    planned = ((manifest.get("commands") or {}).get(kind) or {}).get("engine")
    for rel in (built, planned):
        if rel and (Path(artifacts) / rel).is_file():
            return Path(artifacts) / rel
    return None


def check_plugins(registry, required: list[dict]) -> None:
    """Raise BackendError unless every required {name, version, namespace} creator is registered."""
    for plugin in required:
        creator = registry.get_creator(plugin["name"], plugin["version"], plugin.get("namespace", ""))
        if creator is None:
            have = sorted({f"{c.name} v{c.plugin_version} ({c.plugin_namespace})"
                           for c in registry.all_creators if c.name == plugin["name"]})
            raise BackendError(f"engine needs plugin {plugin['name']} v{plugin['version']} "
                               f"(namespace {plugin.get('namespace', '')!r}); the loaded library provides "
                               f"{', '.join(have) or 'none'}: rebuild the engine or the plugin library")


class TrtBackend:
    name = "trt"

    def __init__(self, engine_path: str | Path, plugin_library: str | Path, required_plugins: list[dict]):
        import torch

        trt = import_tensorrt()
        engine_path, plugin_library = Path(engine_path), Path(plugin_library)
        for path, what in ((engine_path, "engine"), (plugin_library, "plugin library")):
            if not path.is_file():
                raise BackendError(f"TensorRT {what} {path} does not exist")
        if not torch.cuda.is_available():
            raise BackendError("TensorRT backend needs a CUDA device; none is visible")
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        registry = trt.get_plugin_registry()
        registry.load_library(str(plugin_library))
        check_plugins(registry, required_plugins)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"cannot deserialise {engine_path}: built by another TensorRT version or GPU?")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.past_names = sorted(n for n in self.inputs if n.startswith("past_key_values."))
        self.present = {n.replace("past_key_values.", "present."): n for n in self.past_names}
        self._torch, self._trt = torch, trt
        self.stream = torch.cuda.Stream()
        self.cache = None

    def _dtype(self, name):
        return {self._trt.float32: self._torch.float32, self._trt.float16: self._torch.float16,
                self._trt.int64: self._torch.int64, self._trt.int32: self._torch.int32}[self.engine.get_tensor_dtype(name)]

    def reset(self) -> None:
        self.cache = None

    def _step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        feeds = {"input_ids": torch.from_numpy(ids).cuda(), "attention_mask": torch.from_numpy(mask).cuda()}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = torch.from_numpy(position_ids_from_mask(mask, ids.shape[1])).cuda()
        if self.cache is None:
            for name in self.past_names:
                _, heads, _, head_dim = self.engine.get_tensor_shape(name)
                feeds[name] = torch.zeros((ids.shape[0], heads, 0, head_dim), dtype=self._dtype(name), device="cuda")
        else:
            feeds.update(self.cache)
        for name, tensor in feeds.items():
            tensor = tensor.to(self._dtype(name)).contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execution failed (see the TensorRT log above)")
        self.stream.synchronize()
        self.cache = {self.present[n]: t for n, t in outs.items() if n in self.present}
        return outs["logits"][:, -1].float().cpu().numpy()

    def prefill(self, input_ids, attention_mask, images=None):
        if images:
            raise BackendError("this engine is a text-only decoder: it takes no image")
        return self._step(input_ids, attention_mask)

    def decode(self, next_ids, attention_mask):
        return self._step(next_ids, attention_mask)
