"""Shared pytest setup: golden-vector import path and the gpu / tensorrt markers' skip logic."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from golden.loader import ...`


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch on this machine")
    no_trt = pytest.mark.skip(reason="needs TensorRT: `import tensorrt` fails here (docs/design.md §6)")
    has_gpu = _has_cuda()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(no_trt)
