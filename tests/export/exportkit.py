"""Shared test helpers of tests/export (a uniquely named module: several test dirs have a conftest.py,
so `from conftest import ...` would depend on which one was imported first)."""

from __future__ import annotations

import torch

from phm.trainer import PHMConfig, drop_dense, inject_phm, save_phm_checkpoint, set_lambda
from tinymodels import tiny_model

ARCHS = ("llama", "qwen2", "gpt2", "bert", "qwen2_vl", "qwen2_5_vl")
VLMS = ("qwen2_vl", "qwen2_5_vl")


def make_phm_checkpoint(arch: str, out, towers=("language", "vision"), **cfg) -> object:
    """Tiny `arch` with every MLP linear of `towers` replaced by PHM (B=2 projection start)."""
    model = tiny_model(arch)
    towers = tuple(t for t in towers if t == "language" or arch in VLMS)
    config = PHMConfig(towers=towers, **cfg)
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    with torch.no_grad():  # move the cores off the projection so PHM ≠ a rounded dense model
        for name, p in model.named_parameters():
            if name.endswith(".cores"):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return save_phm_checkpoint(model, config, targets, out)
