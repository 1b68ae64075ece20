"""TensorRT engine build (needs TensorRT: skipped with a reason where `import tensorrt` fails)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from ortloop import manifest

from phm.export import ExportConfig, export_model
from phm.export import engine as trt_engine

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_unavailable_reason_matches_import():
    reason = trt_engine.unavailable_reason()
    assert (reason is None) == HAS_TRT
    if reason:
        assert "import tensorrt" in reason and "\n" not in reason


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is importable: engines are built instead")
def test_without_tensorrt_the_export_says_so_and_succeeds(store):
    m = manifest(store.artifacts("llama", True))
    assert m["engines"] is None and m["engine_status"].startswith("not built: `import tensorrt` failed")


@pytest.mark.tensorrt
def test_dense_engine_builds_and_loads(store, tmp_path):
    import tensorrt as trt

    art = export_model(store.checkpoint("llama", False), ExportConfig(max_sequence=64, opt_sequence=16),
                       tmp_path / "dense")
    engine = art / manifest(art)["engines"]["decoder"]
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(engine.read_bytes()) is not None


@pytest.mark.tensorrt
@pytest.mark.skipif(not os.environ.get("PHM_PLUGINS"), reason="set PHM_PLUGINS to the built plugin library")
def test_phm_engine_builds_with_the_plugin_library(store, tmp_path):
    """The PHM engine deserializes in a fresh runtime with the plugin library loaded the way
    polygraphy and phm-run load it, and its I/O tensors are the manifest's contract."""
    import tensorrt as trt

    art = export_model(store.checkpoint("llama", True), ExportConfig(max_sequence=64, opt_sequence=16,
                                                                      require_engine=True), tmp_path / "phm")
    m = manifest(art)
    trt.get_plugin_registry().load_library(os.environ["PHM_PLUGINS"])
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        Path(art / m["engines"]["decoder"]).read_bytes())
    assert engine is not None
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    io = m["graphs"]["decoder"]["io"]
    assert names == {t["name"] for t in io["inputs"] + io["outputs"]}
