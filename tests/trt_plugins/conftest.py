"""Kernel tests run the Triton kernels natively where a CUDA GPU is visible, and under Triton's CPU
interpreter everywhere else (CI). TRITON_INTERPRET must be set before triton is first imported;
the trainer tests never import triton, so setting it for the whole process is harmless."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from standin_kit import ...`

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel inputs live: 'cuda' (native JIT) or 'cpu' (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
